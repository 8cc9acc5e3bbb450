/**
 * send: write one archive of an image file or block device.
 * - full: every allocated block (holes are skipped with SEEK_DATA/SEEK_HOLE and recorded as UNMAP);
 * - incremental: the ranges a thin_delta XML document lists, on top of a parent archive, whose chain,
 *   volume identity and block size the new archive takes over.
 */
import { randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { basename } from 'node:path';
import { ioError, ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import { withPool } from '../archive/pool.js';
import { ArchiveFile } from '../archive/reader.js';
import { normalizeExtents, writeArchive, type ArchiveSink, type NewArchive, type WriteProgress } from '../archive/writer.js';
import { ExtentKind, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE } from '../format/constants.js';
import { isValidBlockSize } from '../format/frames.js';
import type { ArchiveHeader, MapExtent } from '../format/types.js';
import { volumeBlocks } from '../format/types.js';
import { openThinDelta } from '../lvm/thin-delta.js';
import { FileVolume } from '../source/volume.js';
import { DirectoryStore } from '../store/dir.js';
import { resolveArchiveRef } from './inputs.js';
import { TOOL_VERSION } from '../version.js';

export interface SendOptions {
  image: string;
  /** thin_delta XML describing what changed since the parent. */
  changes?: string;
  /** Parent archive (file) or a store directory (its newest archive). */
  parent?: string;
  /** Store directory, or a sink for a pipe (then `toLabel` names it). */
  to: string | { sink: ArchiveSink; label: string };
  blockSize?: number;
  level?: number;
  name?: string;
  volumeUuid?: string;
  dryRun?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: WriteProgress) => void;
}

export interface SendResult {
  dryRun: boolean;
  archiveId: string;
  chainId: string;
  sequence: number;
  parentId: string | null;
  full: boolean;
  path: string | null;
  volumeSize: number;
  blockSize: number;
  extents: number;
  dataBytes: number;
  unmapBytes: number;
  zeroBytes: number;
  rawBytes: number;
  storedBytes: number;
  archiveBytes: number;
  seconds: number;
}

/** Largest power of two that divides `n`, within the archive's block size limits. */
export function archiveBlockSizeFor(poolBlockBytes: number): number {
  let b = MIN_BLOCK_SIZE;
  while (b * 2 <= MAX_BLOCK_SIZE && poolBlockBytes % (b * 2) === 0) b *= 2;
  if (poolBlockBytes % b !== 0) throw new UsageError(`pool block size ${poolBlockBytes} is not a multiple of ${MIN_BLOCK_SIZE}`);
  return b;
}

/** Converts thin_delta ranges (pool blocks) into archive extents (archive blocks), clamped to the volume. */
async function* deltaExtents(path: string, blockSize: number, volumeSize: number): AsyncGenerator<MapExtent> {
  const stream = createReadStream(path);
  try {
    let delta;
    try {
      delta = await openThinDelta(stream, { file: path });
    } catch (e) {
      throw e instanceof ThinarchiveError ? e : ioError(e, `cannot read ${path}`);
    }
    const poolBytes = delta.header.blockSizeBytes;
    if (poolBytes % blockSize !== 0) {
      throw new UsageError(`the delta's pool block size (${poolBytes} bytes) is not a multiple of the chain's block size (${blockSize})`);
    }
    const k = poolBytes / blockSize;
    const blocks = volumeBlocks(volumeSize, blockSize);
    for await (const r of delta.ranges) {
      const first = r.begin * k;
      const count = Math.min(r.length * k, blocks - first);
      if (count <= 0) continue;
      yield { firstBlock: first, blockCount: count, kind: r.kind === 'data' ? ExtentKind.DATA : ExtentKind.UNMAP };
    }
  } finally {
    stream.destroy();
  }
}

export async function send(opts: SendOptions): Promise<SendResult> {
  const started = performance.now();
  if ((opts.changes === undefined) !== (opts.parent === undefined)) {
    throw new UsageError('an incremental send needs both --changes and --parent');
  }
  if (opts.level !== undefined && (!Number.isInteger(opts.level) || opts.level < 1 || opts.level > 19)) {
    throw new UsageError('--level must be an integer from 1 to 19');
  }
  const source = await FileVolume.open(opts.image);
  try {
    let parent: ArchiveHeader | undefined;
    if (opts.parent !== undefined) {
      const ref = await resolveArchiveRef(opts.parent);
      const pf = await ArchiveFile.open(ref);
      parent = pf.header;
      await pf.close();
    }
    const blockSize = parent?.blockSize ?? opts.blockSize ?? 64 * 1024;
    if (!isValidBlockSize(blockSize)) throw new UsageError(`invalid block size ${blockSize}: a power of two from 4 KiB to 4 MiB`);
    if (parent && opts.blockSize !== undefined && opts.blockSize !== parent.blockSize) {
      throw new UsageError(`--block-size ${opts.blockSize} differs from the chain's block size ${parent.blockSize}`);
    }
    const full = parent === undefined;
    const header: NewArchive = {
      full,
      blockSize,
      archiveId: randomUUID(),
      parentId: parent?.archiveId ?? null,
      chainId: parent?.chainId ?? randomUUID(),
      sequence: parent ? parent.sequence + 1 : 0,
      volumeUuid: parent?.volumeUuid ?? opts.volumeUuid ?? randomUUID(),
      volumeSize: source.size,
      sourceChunkSize: blockSize,
      meta: {
        volume: { name: opts.name ?? parent?.meta.volume.name ?? basename(opts.image) },
        source: { kind: source.isBlockDevice ? 'blockdev' : 'image', path: opts.image },
        tool: `thinarchive ${TOOL_VERSION}`,
      },
    };
    const extents = (): AsyncIterable<MapExtent> => (full ? source.allocatedExtents(blockSize) : deltaExtents(opts.changes!, blockSize, source.size));

    const base = {
      archiveId: header.archiveId!, chainId: header.chainId, sequence: header.sequence, parentId: header.parentId, full,
      volumeSize: source.size, blockSize,
    };
    if (opts.dryRun) {
      const counts = { extents: 0, data: 0, unmap: 0, zero: 0 };
      for await (const e of normalizeExtents(extents(), volumeBlocks(source.size, blockSize), full)) {
        counts.extents++;
        const bytes = Math.min((e.firstBlock + e.blockCount) * blockSize, source.size) - e.firstBlock * blockSize;
        if (e.kind === ExtentKind.DATA) counts.data += bytes;
        else if (e.kind === ExtentKind.UNMAP) counts.unmap += bytes;
        else counts.zero += bytes;
      }
      return {
        ...base, dryRun: true, path: null, extents: counts.extents, dataBytes: counts.data, unmapBytes: counts.unmap, zeroBytes: counts.zero,
        rawBytes: 0, storedBytes: 0, archiveBytes: 0, seconds: (performance.now() - started) / 1000,
      };
    }

    let path: string | null = null;
    let sink: ArchiveSink;
    let pending: Awaited<ReturnType<DirectoryStore['createArchive']>> | undefined;
    if (typeof opts.to === 'string') {
      const store = new DirectoryStore(opts.to);
      // Never fork a chain: the parent must be the newest archive of its chain in this store.
      const newer = (await store.chainArchives(header.chainId)).filter((a) => a.sequence >= header.sequence);
      if (newer.length > 0) {
        throw new UnsafeError('CHAIN_FORK', `the chain in ${opts.to} already has sequence ${newer[0].sequence} (${newer[0].name}); `
          + `an archive on parent ${header.parentId} would fork it (send from the newest archive, or start a new chain with a full send)`);
      }
      pending = await store.createArchive(header.chainId, header.sequence, header.archiveId!);
      sink = pending.sink;
      path = pending.path;
    } else {
      sink = opts.to.sink;
    }
    try {
      const res = await withPool((pool) => writeArchive({
        header, extents: extents(), source, sink, pool, level: opts.level, signal: opts.signal, onProgress: opts.onProgress,
      }));
      opts.signal?.throwIfAborted();
      await pending?.commit();
      pending = undefined;
      const bs = blockSize;
      return {
        ...base, dryRun: false, path, extents: res.mapEnd.extentCount,
        dataBytes: res.trailer.rawBytes, zeroBytes: res.trailer.zeroBlocks * bs,
        unmapBytes: Math.min(res.mapEnd.unmapBlocks * bs, source.size),
        rawBytes: res.trailer.rawBytes, storedBytes: res.trailer.storedBytes, archiveBytes: res.bytesWritten,
        seconds: (performance.now() - started) / 1000,
      };
    } finally {
      await pending?.abort();
    }
  } finally {
    await source.close();
  }
}
