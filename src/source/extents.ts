/**
 * Archive extents from pool metadata files (thin_delta and thin_dump XML): pool block ranges scaled to
 * archive blocks and clamped to the volume.
 */
import { createReadStream } from 'node:fs';
import { FormatError, ioError, ThinarchiveError, UsageError } from '../errors.js';
import { ExtentKind, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE } from '../format/constants.js';
import type { MapExtent } from '../format/types.js';
import { volumeBlocks } from '../format/types.js';
import { openThinDelta } from '../lvm/thin-delta.js';

/** Largest power of two that divides `n`, within the archive's block size limits. */
export function archiveBlockSizeFor(poolBlockBytes: number): number {
  let b = MIN_BLOCK_SIZE;
  while (b * 2 <= MAX_BLOCK_SIZE && poolBlockBytes % (b * 2) === 0) b *= 2;
  if (poolBlockBytes % b !== 0) throw new UsageError(`pool block size ${poolBlockBytes} is not a multiple of ${MIN_BLOCK_SIZE}`);
  return b;
}

/** A run of pool blocks from thin_delta or thin_dump: `data` must be copied, `unmap` reads as zeroes. */
export interface PoolRange {
  begin: number;
  length: number;
  kind: 'data' | 'unmap';
}

/**
 * Streams the pool-block ranges a thin tool's XML file holds as archive extents: scaled from pool
 * blocks to archive blocks and clamped to the volume (ranges can run past the end of a shrunk LV).
 * `open` parses the file's header and returns the pool block size and the ranges.
 */
export async function* poolFileExtents(
  path: string,
  open: (stream: AsyncIterable<string | Uint8Array>) => Promise<{ poolBytes: number; ranges: AsyncIterable<PoolRange> }>,
  blockSize: number,
  volumeSize: number,
): AsyncGenerator<MapExtent> {
  const stream = createReadStream(path);
  try {
    let parsed;
    try {
      parsed = await open(stream);
    } catch (e) {
      throw e instanceof ThinarchiveError ? e : ioError(e, `cannot read ${path}`);
    }
    const { poolBytes } = parsed;
    if (poolBytes % blockSize !== 0) {
      throw new UsageError(`the pool block size (${poolBytes} bytes) in ${path} is not a multiple of the chain's block size (${blockSize})`);
    }
    const k = poolBytes / blockSize;
    const blocks = volumeBlocks(volumeSize, blockSize);
    for await (const r of parsed.ranges) {
      const first = r.begin * k;
      const count = Math.min(r.length * k, blocks - first);
      if (count <= 0) continue;
      yield { firstBlock: first, blockCount: count, kind: r.kind === 'data' ? ExtentKind.DATA : ExtentKind.UNMAP };
    }
  } finally {
    stream.destroy();
  }
}

/**
 * The changed ranges of a thin_delta XML file as archive extents. The file is the user's input (send
 * --image --changes): XML that does not parse is a usage error (CHANGES_INVALID), not a damaged archive.
 */
export async function* deltaFileExtents(path: string, blockSize: number, volumeSize: number): AsyncGenerator<MapExtent> {
  try {
    yield* poolFileExtents(path, async (stream) => {
      const d = await openThinDelta(stream, { file: path });
      return { poolBytes: d.header.blockSizeBytes, ranges: d.ranges };
    }, blockSize, volumeSize);
  } catch (e) {
    if (e instanceof FormatError) throw new UsageError(`--changes ${e.file ? '' : `${path}: `}${e.message} (${e.code})`, 'CHANGES_INVALID');
    throw e;
  }
}
