import { describe, expect, it } from 'vitest';
import { changedBlockRuns, COW_MAGIC, readCowTable, type CowTable } from './cow-store.js';

/** A persistent snapshot COW store as the kernel lays it out (dm-snap-persistent.c): header, then areas of E entries + E data chunks. */
function cowStore(chunkBytes: number, olds: number[], o: { valid?: boolean; version?: number; magic?: number; truncateAfterAreas?: number } = {}): Buffer {
  const perArea = chunkBytes / 16;
  const areas = Math.max(1, Math.ceil((olds.length + 1) / perArea));
  const total = o.truncateAfterAreas !== undefined ? (1 + o.truncateAfterAreas * (perArea + 1)) : (1 + areas * (perArea + 1));
  const buf = Buffer.alloc(total * chunkBytes);
  buf.writeUInt32LE(o.magic ?? COW_MAGIC, 0);
  buf.writeUInt32LE(o.valid === false ? 0 : 1, 4);
  buf.writeUInt32LE(o.version ?? 1, 8);
  buf.writeUInt32LE(chunkBytes / 512, 12);
  olds.forEach((old, i) => {
    const area = Math.floor(i / perArea);
    const at = (1 + area * (perArea + 1)) * chunkBytes + (i % perArea) * 16;
    if (at + 16 > buf.length) return;
    buf.writeBigUInt64LE(BigInt(old), at);
    buf.writeBigUInt64LE(BigInt(2 + area * (perArea + 1) + (i % perArea)), at + 8); // its data chunk, never 0
  });
  return buf;
}

const reader = (b: Buffer) => async (offset: number, length: number): Promise<Buffer> => b.subarray(Math.min(offset, b.length), Math.min(offset + length, b.length));

describe('classic snapshot exception table', () => {
  it('reads every area up to the terminating entry: origin chunks sorted, each once', async () => {
    // 4 KiB chunks: 256 entries per area; 300 exceptions span two areas, in the kernel's (write) order
    const olds = Array.from({ length: 300 }, (_, i) => (i * 7919) % 5000);
    olds.push(olds[3]!); // (a chunk is copied once; duplicates are tolerated all the same)
    const t = await readCowTable(reader(cowStore(4096, olds)), 'test');
    expect(t.valid).toBe(true);
    expect(t.chunkBytes).toBe(4096);
    expect(t.chunks).toEqual([...new Set(olds)].sort((a, b) => a - b));
  });

  it('an empty table, and a store that ends right after a full area (a short read)', async () => {
    expect((await readCowTable(reader(cowStore(4096, [])), 't')).chunks).toEqual([]);
    const full = Array.from({ length: 256 }, (_, i) => 1000 - i);
    const t = await readCowTable(reader(cowStore(4096, full, { truncateAfterAreas: 1 })), 't');
    expect(t.chunks).toHaveLength(256);
    expect(t.chunks[0]).toBe(745);
  });

  it('an overflowed (invalid) store says so; a foreign device or version is COW_INVALID', async () => {
    expect(await readCowTable(reader(cowStore(4096, [1, 2], { valid: false })), 't')).toEqual({ valid: false, chunkBytes: 4096, chunks: [] });
    await expect(readCowTable(reader(cowStore(4096, [1], { magic: 0x12345678 })), 'dev')).rejects.toMatchObject({ code: 'COW_INVALID' });
    await expect(readCowTable(reader(cowStore(4096, [1], { version: 2 })), 'dev')).rejects.toMatchObject({ code: 'COW_INVALID' });
    await expect(readCowTable(reader(Buffer.alloc(8)), 'dev')).rejects.toMatchObject({ code: 'COW_INVALID' });
    const odd = cowStore(4096, [1]);
    odd.writeUInt32LE(12, 12); // 6 KiB chunks: not a power of two
    await expect(readCowTable(reader(odd), 'dev')).rejects.toMatchObject({ code: 'COW_INVALID' });
  });

  it('chunks become runs of archive blocks, whichever is larger, clipped to the volume', () => {
    const t = (chunkBytes: number, chunks: number[]): CowTable => ({ valid: true, chunkBytes, chunks });
    // 4 KiB chunks in 64 KiB blocks: chunks 0-15 are block 0, 16 block 1, 40 block 2
    expect([...changedBlockRuns(t(4096, [0, 3, 15, 16, 40]), 65536, 1 << 20)]).toEqual([{ firstBlock: 0, blockCount: 3 }]);
    expect([...changedBlockRuns(t(4096, [0, 48]), 65536, 1 << 20)]).toEqual([{ firstBlock: 0, blockCount: 1 }, { firstBlock: 3, blockCount: 1 }]);
    // 128 KiB chunks in 64 KiB blocks: chunk 2 is blocks 4 and 5
    expect([...changedBlockRuns(t(131072, [2, 3, 7]), 65536, 1 << 20)]).toEqual([{ firstBlock: 4, blockCount: 4 }, { firstBlock: 14, blockCount: 2 }]);
    // past the volume's end: dropped; the last partial block kept
    expect([...changedBlockRuns(t(65536, [15, 16, 99]), 65536, 16 * 65536 + 512)]).toEqual([{ firstBlock: 15, blockCount: 2 }]);
  });
});
