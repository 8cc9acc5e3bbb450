import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { mulberry32Float } from '../../scripts/lib/prng.mjs';
import { checkOverlayRuns, IntervalMap, OverlayExport } from './overlay.js';
import type { NbdExport } from './server.js';

describe('IntervalMap (the overlay of serve --writable)', () => {
  it('agrees with a per-byte model after random sets, and stays merged', () => {
    const N = 2000;
    for (let seed = 1; seed <= 40; seed++) {
      const rand = mulberry32Float(seed);
      const map = new IntervalMap();
      const model = new Uint8Array(N);
      for (let step = 0; step < 60; step++) {
        const a = Math.floor(rand() * N);
        const b = Math.min(N, a + 1 + Math.floor(rand() * 300));
        const kind = 1 + Math.floor(rand() * 2);
        map.set(a, b, kind);
        model.fill(kind, a, b);
        // runs are sorted, non-empty, non-overlapping, and touching runs differ in kind
        for (let i = 0; i < map.runs; i++) {
          expect(map.starts[i]).toBeLessThan(map.ends[i]);
          if (i > 0) {
            expect(map.ends[i - 1]).toBeLessThanOrEqual(map.starts[i]);
            if (map.ends[i - 1] === map.starts[i]) expect(map.kinds[i - 1]).not.toBe(map.kinds[i]);
          }
        }
        const qa = Math.floor(rand() * N);
        const qb = Math.min(N, qa + 1 + Math.floor(rand() * 500));
        const parts = map.split(qa, qb);
        expect(parts[0].start).toBe(qa);
        expect(parts[parts.length - 1].end).toBe(qb);
        for (let i = 0; i < parts.length; i++) {
          if (i > 0) expect(parts[i].start).toBe(parts[i - 1].end);
          for (let x = parts[i].start; x < parts[i].end; x++) expect(model[x], `seed ${seed} byte ${x}`).toBe(parts[i].kind);
        }
      }
    }
  });
});

describe('OverlayExport: keep and resume', () => {
  const SIZE = 5 * 4096 + 1000; // the last granule is short
  const below = Buffer.alloc(SIZE, 0x33);
  const base: NbdExport = {
    name: '0', description: 'test', size: SIZE, preferredBlock: 4096,
    read: async (offset, length) => ({ pieces: [{ offset, data: below.subarray(offset, offset + length) }] }),
    status: async (_offset, length) => [{ length, hole: false }],
  };
  const bytes = async (o: OverlayExport): Promise<Buffer> => {
    const b = Buffer.alloc(SIZE);
    const r = await o.read(0, SIZE);
    for (const p of r.pieces) if ('data' in p) b.set(p.data, p.offset);
    return b;
  };

  it('a kept overlay resumed from its file and runs reads as it did, and goes on taking writes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'overlay-test-'));
    try {
      const path = join(dir, 'o');
      const a = await OverlayExport.create(base, path);
      await a.write(100, Buffer.alloc(5000, 0xab));
      await a.zero(2 * 4096, 4096);
      await a.write(SIZE - 10, Buffer.alloc(10, 0xee));
      const before = await bytes(a);
      const runs = await a.keep();
      expect(runs).toEqual({ data: [[0, 8192], [5 * 4096, 1000]], zero: [[8192, 4096]] });
      expect(checkOverlayRuns(runs, SIZE)).toBeUndefined();
      const b = await OverlayExport.resume(base, path, runs);
      expect((await bytes(b)).equals(before)).toBe(true);
      await b.write(3 * 4096, Buffer.alloc(4096, 0x77));
      expect(b.runs()).toEqual({ data: [[0, 8192], [3 * 4096, 4096], [5 * 4096, 1000]], zero: [[8192, 4096]] });
      before.fill(0x77, 3 * 4096, 4 * 4096);
      expect((await bytes(b)).equals(before)).toBe(true);
      await b.close();
      await expect(OverlayExport.resume(base, path, runs)).rejects.toThrow(/ENOENT/); // close() discarded it
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('checkOverlayRuns names what is wrong', () => {
    expect(checkOverlayRuns({ data: [[0, 4096]], zero: [[4096, 4096]] }, 8192)).toBeUndefined();
    expect(checkOverlayRuns({ data: [[0, 8192]], zero: [[4096, 4096]] }, 8192)).toMatch(/overlap at byte 4096/);
    expect(checkOverlayRuns({ data: [[100, 4096]], zero: [] }, 8192)).toMatch(/boundaries/);
    expect(checkOverlayRuns({ data: [[4096, 8192]], zero: [] }, 8192)).toMatch(/past the end/);
    expect(checkOverlayRuns({ data: [[0, 0]], zero: [] }, 8192)).toMatch(/empty/);
    expect(checkOverlayRuns({ data: [['0', 4096]] as unknown as [number, number][], zero: [] }, 8192)).toMatch(/not \[offset, length\]/);
    expect(checkOverlayRuns({ data: [], zero: {} as unknown as [number, number][] }, 8192)).toMatch(/"zero" is not a list/);
    expect(checkOverlayRuns({ data: [[4096, 1000]], zero: [] }, 5096)).toBeUndefined(); // ends at the volume's end
  });
});
