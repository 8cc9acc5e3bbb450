/**
 * send: write one archive of an image file or block device.
 * - full: every allocated block (holes are skipped with SEEK_DATA/SEEK_HOLE and recorded as UNMAP);
 * - incremental: the ranges a thin_delta XML document lists, on top of a parent archive, whose chain,
 *   volume identity and block size the new archive takes over.
 * The pieces every send shares (pool ranges to extents, the dry-run count, the destination with its
 * chain-fork check, write + commit) are exported for send-lv.ts.
 */
import { randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { basename } from 'node:path';
import { ioError, ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import { withPool } from '../archive/pool.js';
import {
  normalizeExtents, writeArchive, type ArchiveSink, type NewArchive, type VolumeSource, type WriteProgress,
} from '../archive/writer.js';
import { ExtentKind, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE } from '../format/constants.js';
import { isValidBlockSize } from '../format/frames.js';
import type { ArchiveHeader, MapExtent } from '../format/types.js';
import { rangeBytes, volumeBlocks } from '../format/types.js';
import { openThinDelta } from '../lvm/thin-delta.js';
import { FileVolume } from '../source/volume.js';
import type { StoreOptions } from '../store/open.js';
import type { RemoteApplyResult } from './remote-apply.js';
import type { ArchiveStore } from '../store/types.js';
import { openArchiveRef, storeFor } from './inputs.js';
import { TOOL_VERSION } from '../version.js';

export interface SendOptions {
  image: string;
  /** thin_delta XML describing what changed since the parent. */
  changes?: string;
  /** Parent archive (file or URL) or a store (directory or URL: its newest archive). */
  parent?: string;
  /** Store (directory, ssh:// or s3:// URL), or a sink for a pipe (then `label` names it). */
  to: SendDestination;
  /** Options for remote stores (ssh options, S3 endpoint, ...). */
  storeOptions?: StoreOptions;
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
  /** With `send --apply-remote`: what the remote apply reported. */
  remoteApply?: RemoteApplyResult;
}

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

/** The changed ranges of a thin_delta XML file as archive extents. */
export function deltaFileExtents(path: string, blockSize: number, volumeSize: number): AsyncGenerator<MapExtent> {
  return poolFileExtents(path, async (stream) => {
    const d = await openThinDelta(stream, { file: path });
    return { poolBytes: d.header.blockSizeBytes, ranges: d.ranges };
  }, blockSize, volumeSize);
}

/** Where an archive goes: a store (directory or URL), or a sink (a pipe) that `label` names and `end` flushes. */
export type SendDestination = string | { sink: ArchiveSink; label: string; end?: () => Promise<void>; abort?: () => Promise<void> };

export function checkLevel(level: number | undefined): void {
  if (level !== undefined && (!Number.isInteger(level) || level < 1 || level > 19)) {
    throw new UsageError('--level must be an integer from 1 to 19');
  }
}

/** The result fields that only depend on the header. */
function resultBase(header: NewArchive): Pick<SendResult, 'archiveId' | 'chainId' | 'sequence' | 'parentId' | 'full' | 'volumeSize' | 'blockSize'> {
  return {
    archiveId: header.archiveId!, chainId: header.chainId, sequence: header.sequence, parentId: header.parentId, full: header.full,
    volumeSize: header.volumeSize, blockSize: header.blockSize,
  };
}

/** What an archive of these extents would hold, counted from the map alone (no data is read). */
export async function dryRunResult(header: NewArchive, extents: AsyncIterable<MapExtent>, started: number): Promise<SendResult> {
  const { blockSize, volumeSize: size, full } = header;
  const counts = { extents: 0, data: 0, unmap: 0, zero: 0 };
  for await (const e of normalizeExtents(extents, volumeBlocks(size, blockSize), full)) {
    counts.extents++;
    const bytes = rangeBytes(e.firstBlock, e.blockCount, size, blockSize);
    if (e.kind === ExtentKind.DATA) counts.data += bytes;
    else if (e.kind === ExtentKind.UNMAP) counts.unmap += bytes;
    else counts.zero += bytes;
  }
  return {
    ...resultBase(header), dryRun: true, path: null, extents: counts.extents, dataBytes: counts.data, unmapBytes: counts.unmap,
    zeroBytes: counts.zero, rawBytes: 0, storedBytes: 0, archiveBytes: 0, seconds: (performance.now() - started) / 1000,
  };
}

/** An archive being written to its destination: committed (durable, visible) or aborted. */
export interface OpenedDestination {
  path: string | null;
  sink: ArchiveSink;
  commit(): Promise<void>;
  /** Remove what was written; harmless after commit. */
  abort(): Promise<void>;
}

/** Never fork a chain: the new archive's sequence must be past every archive of its chain in the store. */
export async function checkNoFork(store: string | ArchiveStore, header: Pick<NewArchive, 'chainId' | 'sequence' | 'parentId'>, storeOptions?: StoreOptions): Promise<void> {
  const s = typeof store === 'string' ? await storeFor(store, storeOptions) : store;
  const newer = (await s.chainArchives(header.chainId)).filter((a) => a.sequence >= header.sequence);
  if (newer.length > 0) {
    throw new UnsafeError('CHAIN_FORK', `the chain in ${s.url} already has sequence ${newer[0].sequence} (${newer[0].name}); `
      + `an archive on parent ${header.parentId} would fork it (send from the newest archive, or start a new chain with a full send)`);
  }
}

/**
 * Start an archive at its destination. A store directory refuses to fork a chain: the new archive's
 * sequence must be past every archive of its chain already there.
 */
export async function openDestination(to: SendDestination, header: NewArchive, storeOptions?: StoreOptions): Promise<OpenedDestination> {
  if (typeof to !== 'string') {
    let ended = false;
    return {
      path: null,
      sink: to.sink,
      commit: async () => {
        ended = true;
        await to.end?.();
      },
      abort: async () => {
        if (!ended) await to.abort?.();
      },
    };
  }
  const store = await storeFor(to, storeOptions);
  await checkNoFork(store, header);
  const pending = await store.createArchive(header.chainId, header.sequence, header.archiveId!);
  let committed = false;
  return {
    path: pending.path,
    sink: pending.sink,
    commit: async () => {
      await pending.commit();
      committed = true;
    },
    abort: async () => {
      if (!committed) await pending.abort();
    },
  };
}

export interface WriteToOptions {
  header: NewArchive;
  extents: AsyncIterable<MapExtent>;
  source: VolumeSource;
  level?: number;
  signal?: AbortSignal;
  onProgress?: (p: WriteProgress) => void;
  /** performance.now() when the send started */
  started: number;
}

/** Write the archive into an opened destination and commit it; aborts the destination on failure. */
export async function writeAndCommit(dest: OpenedDestination, o: WriteToOptions): Promise<SendResult> {
  const { header, source } = o;
  try {
    const res = await withPool((pool) => writeArchive({
      header, extents: o.extents, source, sink: dest.sink, pool, level: o.level, signal: o.signal, onProgress: o.onProgress,
    }));
    o.signal?.throwIfAborted();
    await dest.commit();
    const bs = header.blockSize;
    return {
      ...resultBase(header), dryRun: false, path: dest.path, extents: res.mapEnd.extentCount,
      dataBytes: res.trailer.rawBytes, zeroBytes: res.trailer.zeroBlocks * bs,
      unmapBytes: Math.min(res.mapEnd.unmapBlocks * bs, header.volumeSize),
      rawBytes: res.trailer.rawBytes, storedBytes: res.trailer.storedBytes, archiveBytes: res.bytesWritten,
      seconds: (performance.now() - o.started) / 1000,
    };
  } finally {
    await dest.abort();
  }
}

export async function send(opts: SendOptions): Promise<SendResult> {
  const started = performance.now();
  if ((opts.changes === undefined) !== (opts.parent === undefined)) {
    throw new UsageError('an incremental send needs both --changes and --parent');
  }
  checkLevel(opts.level);
  const source = await FileVolume.open(opts.image);
  try {
    let parent: ArchiveHeader | undefined;
    if (opts.parent !== undefined) {
      const pf = await openArchiveRef(opts.parent, opts.storeOptions);
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
    const extents = (): AsyncIterable<MapExtent> => (full ? source.allocatedExtents(blockSize) : deltaFileExtents(opts.changes!, blockSize, source.size));
    if (opts.dryRun) return await dryRunResult(header, extents(), started);
    const dest = await openDestination(opts.to, header, opts.storeOptions);
    return await writeAndCommit(dest, { header, extents: extents(), source, level: opts.level, signal: opts.signal, onProgress: opts.onProgress, started });
  } finally {
    await source.close();
  }
}
