/**
 * The exception table of a classic (dm-snapshot) LVM snapshot: which chunks of the origin were written
 * since the snapshot was taken. A classic snapshot copies a chunk of the origin into its copy-on-write
 * (COW) store the first time the origin writes it, and records the copy as an exception: the table is
 * exactly the set of origin chunks changed since the snapshot's creation (docs/LVM.md, section 10, says
 * what this code relies on). Read from the snapshot's `-cow` device (`/dev/mapper/VG-SNAP-cow`).
 *
 * The kernel's persistent format (drivers/md/dm-snap-persistent.c), all little-endian:
 * - chunk 0: header `u32 magic = 0x70416e53 ("SnAp") | u32 valid | u32 version = 1 | u32 chunk_size`
 *   (chunk size in 512-byte sectors); `valid` is 0 once the snapshot overflowed or was invalidated.
 * - metadata area i at chunk `1 + i * (E + 1)`, E = chunk bytes / 16: E entries of
 *   `u64 old_chunk | u64 new_chunk`, followed by the E data chunks it describes. The first entry whose
 *   new_chunk is 0 ends the table (chunk 0 is the header: never a data chunk).
 */
import { open } from 'node:fs/promises';
import { ioError, ThinarchiveError } from '../errors.js';

export const COW_MAGIC = 0x70416e53;
const HEADER_BYTES = 16;
const ENTRY_BYTES = 16;

export interface CowTable {
  /** false: the snapshot overflowed (or was invalidated); its table says nothing reliable */
  valid: boolean;
  /** the snapshot's chunk size in bytes */
  chunkBytes: number;
  /** origin chunks with an exception, ascending, each once */
  chunks: number[];
}

/** Read a COW store through `read(offset, length)` (which returns at most `length` bytes; fewer only at the end). */
export async function readCowTable(read: (offset: number, length: number) => Promise<Buffer>, what: string): Promise<CowTable> {
  const h = await read(0, HEADER_BYTES);
  if (h.length < HEADER_BYTES || h.readUInt32LE(0) !== COW_MAGIC) {
    throw new ThinarchiveError('COW_INVALID', `${what} is not a persistent snapshot's copy-on-write store (no "SnAp" header)`);
  }
  const valid = h.readUInt32LE(4) !== 0;
  const version = h.readUInt32LE(8);
  const sectors = h.readUInt32LE(12);
  if (version !== 1) throw new ThinarchiveError('COW_INVALID', `${what}: copy-on-write store version ${version}, this thinarchive reads version 1`);
  if (sectors === 0 || (sectors & (sectors - 1)) !== 0 || sectors > 2048 * 1024) {
    throw new ThinarchiveError('COW_INVALID', `${what}: copy-on-write chunk size of ${sectors} sectors is not a power of two up to 1 GiB`);
  }
  const chunkBytes = sectors * 512;
  if (!valid) return { valid, chunkBytes, chunks: [] };
  const perArea = chunkBytes / ENTRY_BYTES;
  const seen: number[] = [];
  for (let area = 0; ; area++) {
    const at = (1 + area * (perArea + 1)) * chunkBytes;
    const buf = await read(at, chunkBytes);
    let end = false;
    for (let i = 0; i + ENTRY_BYTES <= buf.length && i < chunkBytes; i += ENTRY_BYTES) {
      const oldChunk = buf.readBigUInt64LE(i);
      const newChunk = buf.readBigUInt64LE(i + 8);
      if (newChunk === 0n) {
        end = true;
        break;
      }
      if (oldChunk > BigInt(Number.MAX_SAFE_INTEGER)) throw new ThinarchiveError('COW_INVALID', `${what}: exception for origin chunk ${oldChunk} is out of range`);
      seen.push(Number(oldChunk));
    }
    // A short read: the store ends inside this area (it was full to its last chunk).
    if (end || buf.length < chunkBytes) break;
  }
  seen.sort((a, b) => a - b);
  const chunks = seen.filter((c, i) => i === 0 || c !== seen[i - 1]);
  return { valid, chunkBytes, chunks };
}

/**
 * Read the table from the COW device. The kernel writes the table past the block device's page cache,
 * so the cache is dropped first (`flush`: `blockdev --flushbufs DEV`) and the device read afresh.
 */
export async function readCowDevice(dev: string, flush: () => Promise<void>): Promise<CowTable> {
  await flush();
  const fh = await open(dev, 'r').catch((e) => { throw ioError(e, `copy-on-write device ${dev}`); });
  try {
    return await readCowTable(async (offset, length) => {
      const buf = Buffer.alloc(length);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      return buf.subarray(0, bytesRead);
    }, dev);
  } finally {
    await fh.close();
  }
}

/** Runs of archive blocks (of `blockSize` bytes) that hold the chunks of `t`, up to `volumeBytes`. */
export function* changedBlockRuns(t: CowTable, blockSize: number, volumeBytes: number): Generator<{ firstBlock: number; blockCount: number }> {
  const blocks = Math.ceil(volumeBytes / blockSize);
  let first = -1;
  let next = -1;
  for (const c of t.chunks) {
    const a = Math.floor((c * t.chunkBytes) / blockSize);
    const b = Math.min(blocks, Math.ceil(((c + 1) * t.chunkBytes) / blockSize));
    if (a >= blocks) break;
    if (first >= 0 && a <= next) {
      next = Math.max(next, b);
      continue;
    }
    if (first >= 0) yield { firstBlock: first, blockCount: next - first };
    first = a;
    next = b;
  }
  if (first >= 0) yield { firstBlock: first, blockCount: next - first };
}
