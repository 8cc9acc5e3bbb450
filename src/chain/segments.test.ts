/**
 * The chain's expected state (chain/segments.ts) on a 32 TiB volume: a full archive and an incremental
 * with a few extents each. The sweep yields run-length segments (nothing per block), the newest
 * archive wins, ZERO records and extents and UNMAP are told apart, and ChainReader returns the newest
 * version of each block. Also the prune planner and duration parsing.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withPool } from '../archive/pool.js';
import { ArchiveFile } from '../archive/reader.js';
import { writeArchive, type VolumeSource } from '../archive/writer.js';
import { ExtentKind } from '../format/constants.js';
import type { ArchiveHeader, MapExtent } from '../format/types.js';
import { DirectoryStore } from '../store/dir.js';
import { type ChainArchive } from './chain.js';
import { ChainReader } from './reader.js';
import { chainSegments, type Segment } from './segments.js';
import { planPrune } from './merge-plan.js';
import { parseDuration } from '../units.js';

const BS = 65536;
const SIZE = 32 * 1024 ** 4; // 32 TiB: 2^29 blocks
const BLOCKS = SIZE / BS;

/** Every block of `version` holds one non-zero byte value, except blocks listed as zero. */
function source(version: number, zeroBlocks: Set<number> = new Set()): VolumeSource {
  return {
    size: SIZE,
    async read(buf, offset, length, position) {
      for (let at = 0; at < length;) {
        const block = Math.floor((position + at) / BS);
        const n = Math.min(length - at, (block + 1) * BS - (position + at));
        buf.fill(zeroBlocks.has(block) ? 0 : valueOf(version, block), offset + at, offset + at + n);
        at += n;
      }
      return length;
    },
  };
}
const valueOf = (version: number, block: number): number => 1 + ((version * 31 + block) % 250);

async function* extents(list: [number, number, number][]): AsyncGenerator<MapExtent> {
  for (const [firstBlock, blockCount, kind] of list) yield { firstBlock, blockCount, kind: kind as MapExtent['kind'] };
}

let dir: string;
const files: ArchiveFile[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ta-chain-state-'));
  const store = new DirectoryStore(dir);
  const chainId = '11111111-2222-4333-8444-555555555555';
  let parent: ArchiveHeader | null = null;
  const plans: { full: boolean; ext: [number, number, number][]; zero?: Set<number> }[] = [
    { full: true, ext: [[0, 4, ExtentKind.DATA], [1_000_000, 8, ExtentKind.DATA], [500_000_000, 2, ExtentKind.DATA]] },
    // the incremental: overlapping data (block 3 written as zeroes: a ZERO record), a ZERO extent, an UNMAP
    { full: false, ext: [[2, 4, ExtentKind.DATA], [1_000_002, 2, ExtentKind.ZERO], [500_000_000, 1, ExtentKind.UNMAP]], zero: new Set([3]) },
  ];
  await withPool(async (pool) => {
    for (const [v, p] of plans.entries()) {
      const archiveId = `00000000-0000-4000-8000-00000000000${v}`;
      const pending = await store.createArchive(chainId, v, archiveId);
      const r = await writeArchive({
        header: {
          full: p.full, blockSize: BS, archiveId, parentId: parent?.archiveId ?? null, chainId, sequence: v,
          volumeUuid: '99999999-2222-4333-8444-555555555555', volumeSize: SIZE, sourceChunkSize: BS, meta: { volume: { name: 'big' }, tool: 'test' },
        },
        extents: extents(p.ext), source: source(v, p.zero), sink: pending.sink, pool,
      });
      await pending.commit();
      parent = r.header;
      files.push(await ArchiveFile.open(pending.path));
    }
  }, 2);
}, 300_000);

afterAll(async () => {
  for (const f of files) await f.close();
  await rm(dir, { recursive: true, force: true });
});

describe('chainSegments', () => {
  it('derives the newest state of a 32 TiB volume as a few run-length segments', async () => {
    const heap0 = process.memoryUsage().heapUsed;
    const t0 = performance.now();
    const segs: Segment[] = [];
    for await (const s of chainSegments(files, { hashes: true })) segs.push(s);
    const ms = performance.now() - t0;
    const brief = segs.map((s) => [s.first, s.count, s.kind, s.archive]);
    expect(brief).toEqual([
      [0, 2, 'data', 0],
      [2, 1, 'data', 1],
      [3, 1, 'zero', 1], // written as zeroes: a ZERO record in a DATA extent
      [4, 2, 'data', 1],
      [6, 1_000_000 - 6, 'unmap', 0],
      [1_000_000, 2, 'data', 0],
      [1_000_002, 2, 'zero', 1],
      [1_000_004, 4, 'data', 0],
      [1_000_008, 500_000_000 - 1_000_008, 'unmap', 0],
      [500_000_000, 1, 'unmap', 1],
      [500_000_001, 1, 'data', 0],
      [500_000_002, BLOCKS - 500_000_002, 'unmap', 0],
    ]);
    for (const s of segs) if (s.kind === 'data') expect(s.hashes).toHaveLength(s.count);
    // Nothing per block: 2^29 blocks take no time and no memory.
    expect(ms).toBeLessThan(5000);
    expect(process.memoryUsage().heapUsed - heap0).toBeLessThan(32 * 1024 * 1024);
  });

  it('the incremental alone gives only the blocks it touches (verify --changed-only)', async () => {
    const segs: [number, number, string][] = [];
    for await (const s of chainSegments([files[1]])) segs.push([s.first, s.count, s.kind]);
    expect(segs).toEqual([[2, 1, 'data'], [3, 1, 'zero'], [4, 2, 'data'], [1_000_002, 2, 'zero'], [500_000_000, 1, 'unmap']]);
  });

  it('ChainReader reads the newest version of each block, each record once', async () => {
    await withPool(async (pool) => {
      const r = new ChainReader(files, pool);
      const buf = new Uint8Array(8 * BS);
      await r.read(buf, 0, 8 * BS, 0);
      const at = (b: number): number => buf[b * BS + 100];
      expect([0, 1, 2, 3, 4, 5, 6, 7].map(at)).toEqual([valueOf(0, 0), valueOf(0, 1), valueOf(1, 2), 0, valueOf(1, 4), valueOf(1, 5), 0, 0]);
      const far = new Uint8Array(8 * BS);
      await r.read(far, 0, 8 * BS, 1_000_000 * BS);
      expect([0, 1, 2, 3, 4, 5, 6, 7].map((b) => far[b * BS])).toEqual([0, 1, 2, 3, 4, 5, 6, 7].map((b) => (b === 2 || b === 3 ? 0 : valueOf(0, 1_000_000 + b))));
      await r.close();
      expect(r.stats.map((s) => s.rereads)).toEqual([0, 0]);
      // archive 0 has 3 records holding newest blocks (the reader's lookahead already read the third): each once
      expect(r.stats[0].records).toBe(3);
    }, 2);
  });
});

describe('prune planning', () => {
  const fake = (n: number, ageMs: (i: number) => number): ChainArchive[] => Array.from({ length: n }, (_, i) => ({
    point: i, header: { sequence: i, createdMs: 1_000_000_000 - ageMs(i), archiveId: `a${i}` } as ArchiveHeader,
  }) as ChainArchive);

  it('keeps the newest N and merges every run of dropped archives into the next kept one', () => {
    const { kept, groups } = planPrune(fake(10, () => 0), { grid: { last: 3 }, now: 1_000_000_000 });
    expect(kept).toEqual([false, false, false, false, false, false, false, true, true, true]);
    expect(groups.map((g) => g.map((a) => a.point))).toEqual([[0, 1, 2, 3, 4, 5, 6, 7]]);
  });

  it('keeps points within a duration and always the newest; no merge where nothing is dropped', () => {
    const hour = 3_600_000;
    // archive i is (9 - i) hours old
    const { kept, groups } = planPrune(fake(10, (i) => (9 - i) * hour), { grid: { last: 1, within: 2.5 * hour }, now: 1_000_000_000 });
    expect(kept.map((k, i) => (k ? i : -1)).filter((i) => i >= 0)).toEqual([7, 8, 9]);
    expect(groups.map((g) => g.map((a) => a.point))).toEqual([[0, 1, 2, 3, 4, 5, 6, 7]]);
    const all = planPrune(fake(4, () => 0), { grid: { last: 10 }, now: 1_000_000_000 });
    expect(all.groups).toEqual([]);
  });

  it('drops exactly the archives named (prune --group), never the newest', () => {
    const { kept, groups } = planPrune(fake(6, () => 0), { drop: new Set(['a0', 'a2', 'a4', 'a5', 'zz']) });
    expect(kept).toEqual([false, true, false, true, false, true]);
    expect(groups.map((g) => g.map((a) => a.point))).toEqual([[0, 1], [2, 3], [4, 5]]);
    expect(planPrune(fake(3, () => 0), { drop: new Set() }).groups).toEqual([]);
    expect(planPrune([], { drop: new Set(['a0']) })).toEqual({ kept: [], groups: [] });
  });

  it('reads durations', () => {
    expect(parseDuration('30d')).toBe(30 * 86_400_000);
    expect(parseDuration('90m')).toBe(90 * 60_000);
    expect(parseDuration('2w')).toBe(14 * 86_400_000);
    expect(() => parseDuration('3 fortnights')).toThrow(/duration/);
  });
});
