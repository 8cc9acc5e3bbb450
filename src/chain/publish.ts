/**
 * Publishing an archive: where it goes (a store, or a pipe), the fork check, writing and committing it,
 * and the result a send reports (also for a dry run, counted from the map alone).
 */
import { withPool } from '../archive/pool.js';
import { normalizeExtents, writeArchive, type ArchiveSink, type NewArchive, type VolumeSource, type WriteProgress } from '../archive/writer.js';
import { UnsafeError } from '../errors.js';
import { ExtentKind } from '../format/constants.js';
import type { MapExtent } from '../format/types.js';
import { rangeBytes, volumeBlocks } from '../format/types.js';
import type { StoreOptions } from '../store/open.js';
import { storeFor } from '../store/refs.js';
import type { RemoteApplyResult } from '../store/remote-apply.js';
import type { ArchivePipe, ArchiveStore } from '../store/types.js';

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
  /** --dry-run only: the extents in block order (the first DRY_RUN_EXTENTS of them). */
  extentList?: DryRunExtent[];
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

/** Where an archive goes: a store (directory or URL), or a pipe. */
export type SendDestination = string | ArchivePipe;


/** The result fields that only depend on the header. */
export function resultBase(header: NewArchive): Pick<SendResult, 'archiveId' | 'chainId' | 'sequence' | 'parentId' | 'full' | 'volumeSize' | 'blockSize'> {
  return {
    archiveId: header.archiveId!, chainId: header.chainId, sequence: header.sequence, parentId: header.parentId, full: header.full,
    volumeSize: header.volumeSize, blockSize: header.blockSize,
  };
}

/** What an archive of these extents would hold, counted from the map alone (no data is read). */
/** A dry run lists at most this many extents (SendResult.extentList). */
export const DRY_RUN_EXTENTS = 10_000;

/** One extent a dry run would write: blocks of the archive's block size. */
export interface DryRunExtent {
  firstBlock: number;
  blockCount: number;
  kind: 'data' | 'zero' | 'unmap';
  /** bytes of the volume it covers */
  bytes: number;
}

export async function dryRunResult(header: NewArchive, extents: AsyncIterable<MapExtent>, started: number): Promise<SendResult> {
  const { blockSize, volumeSize: size, full } = header;
  const counts = { extents: 0, data: 0, unmap: 0, zero: 0 };
  const extentList: DryRunExtent[] = [];
  for await (const e of normalizeExtents(extents, volumeBlocks(size, blockSize), full)) {
    counts.extents++;
    const bytes = rangeBytes(e.firstBlock, e.blockCount, size, blockSize);
    if (extentList.length < DRY_RUN_EXTENTS) {
      extentList.push({ firstBlock: e.firstBlock, blockCount: e.blockCount, kind: e.kind === ExtentKind.DATA ? 'data' : e.kind === ExtentKind.UNMAP ? 'unmap' : 'zero', bytes });
    }
    if (e.kind === ExtentKind.DATA) counts.data += bytes;
    else if (e.kind === ExtentKind.UNMAP) counts.unmap += bytes;
    else counts.zero += bytes;
  }
  return {
    ...resultBase(header), dryRun: true, path: null, extents: counts.extents, extentList, dataBytes: counts.data, unmapBytes: counts.unmap,
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
