import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { FormatError } from '../errors.js';
import { mulberry32 } from '../../scripts/lib/prng.mjs';
import { PositionalReader, type PositionalSource } from './byte-reader.js';

const KiB = 1024;

/** `bytes` as positional reads that return at most `most` bytes each (random short reads with a seed), counting calls. */
function source(bytes: Uint8Array, seed: number, most = 300 * KiB): PositionalSource & { calls: number; inFlight: number; maxInFlight: number; closed: boolean } {
  const rnd = mulberry32(seed);
  const s = {
    calls: 0,
    inFlight: 0,
    maxInFlight: 0,
    closed: false,
    async readInto(buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
      s.calls++;
      s.inFlight++;
      s.maxInFlight = Math.max(s.maxInFlight, s.inFlight);
      await new Promise((r) => setImmediate(r));
      s.inFlight--;
      const n = Math.max(0, Math.min(length, bytes.length - position, seed === 0 ? length : 1 + (rnd() % most)));
      buf.set(bytes.subarray(position, position + n), offset);
      return n;
    },
    async close() {
      s.closed = true;
    },
  };
  return s;
}

/** A plan of reads: frame-like reads (`read`) and payloads of every size class, into slots or buffers of their own. */
function plan(seed: number, total: number): { kind: 'read' | 'payload'; n: number; at: number }[] {
  const rnd = mulberry32(seed);
  const sizes = [1, 16, 100, 4 * KiB, 130 * KiB, 511 * KiB, 513 * KiB, 1100 * KiB, 4096 * KiB];
  const out: { kind: 'read' | 'payload'; n: number; at: number }[] = [];
  let used = 0;
  while (used < total) {
    const kind = rnd() % 3 === 0 ? 'read' : 'payload';
    const n = Math.min(total - used, sizes[rnd() % sizes.length] + (rnd() % 7));
    out.push({ kind, n, at: kind === 'payload' ? rnd() % 3 : 0 });
    used += n;
  }
  return out;
}

describe('PositionalReader (read-ahead over positional reads)', () => {
  const bytes = randomBytes(12 * 1024 * KiB);

  it('returns exactly the file, whatever mix of reads, payload sizes and short reads', async () => {
    for (const seed of [0, 1, 2, 3, 4, 5]) {
      const src = source(bytes, seed);
      const r = new PositionalReader(src, 'f');
      let at = 0;
      for (const step of plan(seed + 10, bytes.length)) {
        let got: Uint8Array;
        if (step.kind === 'read') got = await r.read(step.n);
        else {
          // (a slot at `at` of a larger buffer, or a buffer too small: the reader makes its own)
          const small = step.at === 2;
          const into = new ArrayBuffer(small ? step.n - 1 : step.n + 64 * step.at);
          got = await r.readPayload(step.n, into, small ? 0 : 64 * step.at);
          expect(got.buffer === into, `seed ${seed}: into the slot`).toBe(!small);
          if (!small) expect(got.byteOffset).toBe(64 * step.at);
        }
        expect(got.length).toBe(step.n);
        expect(Buffer.compare(Buffer.from(got), bytes.subarray(at, at + step.n)), `seed ${seed} at ${at} (${step.kind} ${step.n})`).toBe(0);
        at += step.n;
        expect(r.offset).toBe(at);
      }
      expect(await r.atEnd()).toBe(true);
      await r.close();
      expect(src.closed).toBe(true);
    }
  });

  it('small records cost a read per piece, not one per record', async () => {
    const src = source(bytes, 0);
    const r = new PositionalReader(src, 'f');
    let n = 0;
    for (let at = 0; at + 130 * KiB + 32 <= 8 * 1024 * KiB; at += 130 * KiB + 32) {
      await r.read(32);
      await r.readPayload(130 * KiB, new ArrayBuffer(4096 * KiB));
      n++;
    }
    // 8 MiB in 512 KiB pieces (and the pieces read ahead past it), where each record was two reads
    expect(n).toBe(63);
    expect(src.calls).toBeLessThanOrEqual(8 * 2 + 2);
    // read ahead: two reads in flight
    expect(src.maxInFlight).toBe(2);
    await r.close();
  });

  it('a long payload goes straight into its buffer past what was read ahead', async () => {
    const src = source(bytes, 0);
    const r = new PositionalReader(src, 'f');
    await r.read(10);
    const into = new ArrayBuffer(4096 * KiB);
    const before = src.calls;
    const p = await r.readPayload(4096 * KiB, into);
    expect(Buffer.compare(Buffer.from(p), bytes.subarray(10, 10 + 4096 * KiB))).toBe(0);
    // the pieces read ahead at the first read (2), then one read for the rest
    expect(src.calls - before).toBeLessThanOrEqual(1);
    expect(Buffer.compare(Buffer.from(await r.read(100)), bytes.subarray(10 + 4096 * KiB, 10 + 4096 * KiB + 100))).toBe(0);
    await r.close();
  });

  it('after a long payload it reads ahead little, so the next long one is read straight into its buffer too', async () => {
    const reads: { buf: Uint8Array; length: number }[] = [];
    const inner = source(bytes, 0);
    const src: PositionalSource = {
      readInto(buf, offset, length, position) {
        reads.push({ buf, length });
        return inner.readInto(buf, offset, length, position);
      },
    };
    const r = new PositionalReader(src, 'f');
    for (let i = 0; i < 3; i++) {
      await r.read(100);
      const into = new ArrayBuffer(3072 * KiB);
      await r.readPayload(3072 * KiB, into);
      const direct = reads.filter((x) => x.buf.buffer === into).reduce((a, x) => a + x.length, 0);
      // the first one after two 512 KiB pieces, the next ones after one 64 KiB piece
      expect(direct, `payload ${i}`).toBeGreaterThanOrEqual(3072 * KiB - (i === 0 ? 1024 : 64) * KiB);
    }
    await r.close();
  });

  it('fails TRUNCATED with the offset of the read that did not fit, at every kind of cut', async () => {
    for (const cut of [0, 1, 15, 511 * KiB, 512 * KiB, 512 * KiB + 1, 1024 * KiB, 3000 * KiB + 7]) {
      const src = source(bytes.subarray(0, cut), cut + 1);
      const r = new PositionalReader(src, 'cut');
      let at = 0;
      let err: unknown;
      try {
        for (const step of plan(7, bytes.length)) {
          if (step.kind === 'read') await r.read(step.n);
          else await r.readPayload(step.n, new ArrayBuffer(step.n));
          at += step.n;
        }
      } catch (e) {
        err = e;
      }
      expect(err, `cut ${cut}`).toBeInstanceOf(FormatError);
      expect((err as FormatError).code).toBe('TRUNCATED');
      expect((err as FormatError).offset, `cut ${cut}`).toBe(at);
      expect(at).toBeLessThanOrEqual(cut);
      await r.close();
    }
  });

  it('an error of a read ahead is thrown when its bytes are needed', async () => {
    const failing: PositionalSource = {
      async readInto(buf, offset, length, position) {
        if (position >= 512 * KiB) throw new Error('EIO at the second piece');
        const n = Math.min(length, 512 * KiB - position);
        buf.set(bytes.subarray(position, position + n), offset);
        return n;
      },
    };
    const r = new PositionalReader(failing, 'f');
    // the first piece is good, whatever was read ahead after it
    expect((await r.read(512 * KiB - 1)).length).toBe(512 * KiB - 1);
    await expect(r.read(2)).rejects.toThrow('EIO at the second piece');
    await r.close();
  });
});
