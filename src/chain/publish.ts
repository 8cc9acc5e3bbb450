/**
 * Publishing an archive: where it goes (a store, or a pipe), the fork check, writing and committing it,
 * and the result a send reports (also for a dry run, counted from the map alone).
 */
import { withPool, type WorkerPool } from '../archive/pool.js';
import { normalizeExtents, writeArchive, type ArchiveSink, type NewArchive, type VolumeSource, type WriteProgress } from '../archive/writer.js';
import { UnsafeError } from '../errors.js';
import { ExtentKind } from '../format/constants.js';
import type { MapExtent } from '../format/types.js';
import { rangeBytes, volumeBlocks } from '../format/types.js';
import type { Logger } from '../log.js';
import { ChainLeaseHolder, checkLease, type LeaseSubject } from '../store/lease.js';
import type { StoreOptions } from '../store/open.js';
import { storeFor } from '../store/refs.js';
import type { RemoteApplyResult } from '../store/remote-apply.js';
import type { ArchivePipe, ArchiveStore, PendingArchive, StoredArchive } from '../store/types.js';
import { isEncrypted } from '../store/layout.js';
import { AgeEncryptor } from '../archive/encrypted.js';

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
  /** Remove what was written (harmless after commit) and let go of a lease the send held itself. */
  abort(): Promise<void>;
  /**
   * An encrypted destination: seal on `pool` from the first write; `undefined` (before the pool
   * closes) writes what was sealed on it.
   */
  usePool?(pool: WorkerPool | undefined): Promise<void>;
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
 * How a send treats the chain's lease in a store (store/lease.ts). Without `holder` the send holds the
 * lease itself for its own duration (renewed while it writes, released at the end); a long-lived
 * writer (a daemon unit) passes its holder, which keeps the lease after the send.
 */
export interface LeaseUse {
  holder?: ChainLeaseHolder;
  /** Take the lease over even while another writer holds it (`--take-lease`). */
  take?: boolean;
  /** The lease's ttl when the send holds it itself. */
  ttlMs?: number;
  log?: Logger;
}

/** The lease options of `send` (image and LV): README "One writer per chain". */
export interface SendLeaseOptions {
  /** A long-lived writer's lease holder (`chainLease()` of the API); default: the send holds the chain's lease itself, for its duration. */
  lease?: ChainLeaseHolder;
  /** Take the chain's lease over even while another writer holds it (`--take-lease`). */
  takeLease?: boolean;
  /** The ttl of the lease the send holds itself (default 5 minutes). */
  leaseTtlMs?: number;
}

export function leaseUseOf(o: SendLeaseOptions, log?: Logger): LeaseUse {
  return { holder: o.lease, take: o.takeLease, ttlMs: o.leaseTtlMs, log };
}

/** What the lease records of the writer of this archive. */
function leaseSubject(header: NewArchive): LeaseSubject {
  const m = header.meta;
  return { volume: m.volume.name, source: m.source?.kind === 'lv' ? `/dev/${m.volume.name}` : m.source?.path ?? null };
}

/**
 * Refuse early (CHAIN_LEASED) when another writer holds the chain's lease in store `to` (nothing for a
 * pipe): a send checks before it does expensive work (an LV send before its snapshot).
 */
export async function checkChainLease(to: SendDestination, chainId: string, storeOptions?: StoreOptions, lease: LeaseUse = {}): Promise<void> {
  if (typeof to !== 'string') return;
  await checkLease(await storeFor(to, storeOptions), chainId, lease.holder, lease.take);
}

/**
 * Start an archive at its destination. A store refuses to fork a chain (the new archive's sequence
 * must be past every archive of its chain already there) and to write a chain another writer holds
 * the lease of (CHAIN_LEASED); the lease is held from here to the end of the send (or by the caller's
 * holder) and confirmed right before the commit; a chain this send starts is leased right before the
 * commit, and its lease discarded when nothing is published.
 */
export async function openDestination(to: SendDestination, header: NewArchive, storeOptions?: StoreOptions, lease: LeaseUse = {}): Promise<OpenedDestination> {
  const recipients = storeOptions?.recipients;
  if (!recipients?.length) return openPlainDestination(to, header, storeOptions, lease);
  // An encrypted archive (FORMAT.md §3.4): the writer's bytes go through the age encryptor; its last
  // chunk is sealed right before the commit.
  const dest = await openPlainDestination(to, header, storeOptions, lease, true);
  let enc: AgeEncryptor;
  try {
    enc = new AgeEncryptor(recipients, (b) => dest.sink.write(b));
  } catch (e) {
    await dest.abort();
    throw e;
  }
  return {
    path: dest.path,
    sink: { write: (chunk) => enc.write(chunk) },
    commit: async () => {
      await enc.finish();
      await dest.commit();
    },
    abort: () => dest.abort(),
    usePool: (pool) => enc.usePool(pool),
  };
}

/** A chain is all encrypted or all plain (FORMAT.md §3.4): CHAIN_ENCRYPTION_MIXED when `archives` are not all as `encrypted`. */
export function checkSameEncryption(archives: StoredArchive[], encrypted: boolean, where: string): void {
  const other = archives.find((a) => isEncrypted(a) !== encrypted);
  if (other) {
    throw new UnsafeError('CHAIN_ENCRYPTION_MIXED', `the chain in ${where} holds ${encrypted ? 'plain' : 'encrypted'} archives (${other.name}); `
      + `a chain is all encrypted or all plain: ${encrypted ? 'start a new chain with a full send, or send without --encrypt-to/--recipients-file/--passphrase-file' : 'send with the chain\'s recipients (--encrypt-to, --recipients-file or --passphrase-file)'}`);
  }
}

async function openPlainDestination(to: SendDestination, header: NewArchive, storeOptions: StoreOptions | undefined, lease: LeaseUse, encrypted = false): Promise<OpenedDestination> {
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
  // A chain this send starts has a fresh random id no other writer knows: its lease is taken right
  // before the commit, so that a send that fails or is killed before it leaves no lease behind.
  const existing = await store.chainArchives(header.chainId);
  checkSameEncryption(existing, encrypted, store.url);
  const newChain = existing.length === 0;
  const own = !lease.holder;
  const holder = lease.holder ?? new ChainLeaseHolder({ ttlMs: lease.ttlMs, log: lease.log });
  const hold = (): Promise<unknown> => holder.hold(store, header.chainId, leaseSubject(header), !!lease.take);
  if (!newChain) await hold();
  let committed = false;
  let ended = false;
  /** A new chain's lease goes unless the archive was published; a send's own lease is released. */
  const endLease = async (): Promise<void> => {
    if (ended) return;
    ended = true;
    if (!committed && newChain) await holder.discard();
    else if (own) await holder.release();
  };
  let pending: PendingArchive;
  try {
    pending = await store.createArchive(header.chainId, header.sequence, header.archiveId!, { encrypted, leaseToken: holder.token, log: lease.log });
  } catch (e) {
    await endLease();
    throw e;
  }
  return {
    path: pending.path,
    sink: pending.sink,
    commit: async () => {
      if (newChain) await hold();
      else await holder.confirm();
      await pending.commit();
      committed = true;
    },
    abort: async () => {
      // (A new chain's directory can only go once its lease markers have.)
      if (!committed && newChain) await endLease();
      try {
        if (!committed) await pending.abort();
      } finally {
        await endLease();
      }
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
    const res = await withPool(async (pool) => {
      // An encrypted archive is sealed on the same workers as it is compressed.
      await dest.usePool?.(pool);
      const r = await writeArchive({
        header, extents: o.extents, source, sink: dest.sink, pool, level: o.level, signal: o.signal, onProgress: o.onProgress,
      });
      await dest.usePool?.(undefined);
      return r;
    });
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
