/**
 * sync: bring a target that already holds an older or unknown copy of a volume up to date by
 * comparing block hashes (docs/SYNC.md). The target side hashes every block it has and sends the
 * hashes (`hashTarget`, then an apply of the resync archive under the same target lock: api
 * `syncTarget`); the source side (`sync`) hashes the blocks it holds data in (only the mapped blocks
 * of a thin LV, the allocated ones of an image, every block of a block device), compares, and sends
 * one archive of the blocks that differ — data, and unmapped/zero ranges as such — whose parent is the
 * session's nonce, so that only the target that was hashed, unchanged, accepts it. It becomes the
 * target's new chain point: ordinary incrementals continue from it.
 */
import { randomUUID } from 'node:crypto';
import { stat, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename } from 'node:path';
import { open as openFile, type FileHandle } from 'node:fs/promises';
import { withPool } from '../archive/pool.js';
import { checkLevel, type ArchiveSink, type NewArchive, type VolumeSource, type WriteProgress } from '../archive/writer.js';
import { hashRuns, zeroHashes } from '../chain/block-hashes.js';
import { ByteReader, checkHello, helloState, newHello, parseLine, writeHashes, type SyncHashed, type SyncHello } from '../chain/hash-exchange.js';
export { SYNC_PROTOCOL, SYNC_VERSION, type SyncHashed, type SyncHello } from '../chain/hash-exchange.js';
import { openDestination, writeAndCommit, type SendResult } from '../chain/publish.js';
import { openScanTargetLocked } from '../chain/scan.js';
import { ioError, ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import { ExtentKind, type ExtentKindCode } from '../format/constants.js';
import { isValidBlockSize } from '../format/frames.js';
import type { MapExtent } from '../format/types.js';
import { volumeBlocks } from '../format/types.js';
import type { Logger } from '../log.js';
import { FileVolume } from '../source/volume.js';
import type { StoreOptions } from '../store/open.js';
import { remoteSession, type RemoteSession } from '../store/remote-apply.js';
import { MemoryPipe } from '../store/stream.js';
import type { ArchivePipe } from '../store/types.js';
import { recover } from '../target/recover.js';
import type { TargetKind } from '../target/state.js';
import { checkTargetOptions, lockTarget, type TargetLock } from '../target/target.js';
import { TOOL_VERSION } from '../version.js';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { defaultStateDir } from '../fsutil.js';
import { silentLogger } from '../log.js';
import { createLvmExec, runLvmCommand, type LvmExec } from '../lvm/exec.js';
import { assertLvmName, lvDevicePath } from '../lvm/names.js';
import { checkPoolForSend, resolveThresholds } from '../lvm/pool-status.js';
import type { LvInfo } from '../lvm/report.js';
import { activateReadOnly, deactivate, listLvs, poolStatus, thinToolsVersion } from '../lvm/tools.js';
import { archiveBlockSizeFor } from '../source/extents.js';
import {
  checkChainName, createPendingSnapshot, DEFAULT_CHAIN, discardPendingSnapshot, lockSnapshotChain, promoteSnapshot, settleInterrupted, snapshotName,
  snapshotTags, TAG_OURS, volumeUuidForLv,
} from '../source/snapshot-chain.js';
import { readThinMap } from '../source/thin-map.js';
import { CLASSIC_CHUNK, classicMap, createClassicPending, DEFAULT_TRACKER_SIZE, type TrackerSize } from '../source/classic.js';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

// ---------------------------------------------------------------------------------------------
// Target side

export interface HashTargetOptions {
  to: string;
  blockSize: number;
  volumeSize: number;
  stateDir?: string;
  /** Wait for another thinarchive process holding the target instead of TARGET_LOCKED. */
  wait?: boolean;
  /** Where the hello line, the hashes and the hashed line go. */
  out: ArchiveSink;
  signal?: AbortSignal;
  log?: Logger;
}

/** The target hashed, still locked: what the apply of the resync archive needs. */
export interface HashedTarget {
  hello: SyncHello;
  hashed: SyncHashed;
  lock: TargetLock;
  /** Throws TARGET_CHANGED when the target is not as it was hashed (what can be told: docs/SYNC.md). */
  unchanged: () => Promise<void>;
}

/** What identifies an image's content without reading it: inode, size and modification time. */
async function fingerprint(path: string, kind: TargetKind): Promise<string | null> {
  if (kind !== 'image') return null;
  const st = await stat(path, { bigint: true });
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
}

/**
 * The target side's first part: take the target lock (kept until the resync archive is applied),
 * roll back an interrupted apply, hash every block up to the volume size and write the hello line,
 * the hashes and the hashed line to `out`. The lock is the caller's to release.
 */
export async function hashTarget(o: HashTargetOptions): Promise<HashedTarget> {
  const bs = o.blockSize;
  if (!isValidBlockSize(bs)) throw new UsageError(`invalid block size ${bs}: a power of two from 4 KiB to 4 MiB`);
  if (!Number.isSafeInteger(o.volumeSize) || o.volumeSize <= 0) throw new UsageError(`invalid volume size ${o.volumeSize}`);
  await checkTargetOptions(o.to, {});
  const lock = await lockTarget(o.to, { stateDir: o.stateDir, command: 'sync', wait: o.wait, signal: o.signal, log: o.log });
  try {
    const t0 = performance.now();
    // An interrupted apply (or sync) is rolled back first: the hashes must be of a settled target.
    await recover({ target: o.to, stateDir: o.stateDir, log: o.log, fromApply: true, accept: () => true, lock });
    const t = await openScanTargetLocked(o.to, o.stateDir);
    let hello: SyncHello;
    let hashed: SyncHashed;
    let fp: string | null;
    try {
      if (t.kind !== 'image' && t.source.size < o.volumeSize) {
        throw new UnsafeError('TARGET_TOO_SMALL', `target ${o.to} has ${t.source.size} bytes, the volume needs ${o.volumeSize}`);
      }
      fp = await fingerprint(o.to, t.kind);
      hello = newHello({ target: o.to, targetKind: t.kind, targetSize: t.source.size, blockSize: bs, volumeSize: o.volumeSize, state: helloState(t.state) });
      await o.out.write(Buffer.from(JSON.stringify(hello) + '\n'));
      const totals = await withPool((pool) => writeHashes({
        source: t.source, sourceSize: t.source.size, blockSize: bs, volumeSize: o.volumeSize, pool, out: o.out, signal: o.signal,
      }));
      hashed = { hashedBlocks: totals.blocksHashed, bytesRead: totals.bytesRead, seconds: (performance.now() - t0) / 1000 };
      await o.out.write(Buffer.from(JSON.stringify(hashed) + '\n'));
    } finally {
      await t.close();
    }
    const unchanged = async (): Promise<void> => {
      if (fp !== null && (await fingerprint(o.to, 'image')) !== fp) {
        throw new UnsafeError('TARGET_CHANGED', `target ${o.to} was modified after it was hashed; nothing was written: run sync again`);
      }
    };
    return { hello, hashed, lock, unchanged };
  } catch (e) {
    await lock.release();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Source side

/** The target side run in this process (sync --to): the api's syncTarget over in-memory pipes. */
export type LocalTargetSide = (io: { out: ArchiveSink; input: AsyncIterable<Uint8Array>; blockSize: number; volumeSize: number }) => Promise<unknown>;

export interface SyncOptions {
  /** An image file or a block device. */
  source: string;
  /** A local target (image, block device, VG/LV) and the function that runs its side (the api gives it). */
  local?: { target: string; run: LocalTargetSide };
  /** A remote target: `thinarchive sync-target` runs on `host` over ssh. */
  remote?: { host: string; target: string; remoteCommand?: string; stateDir?: string };
  storeOptions?: StoreOptions;
  /** Block size (default 64 KiB). */
  blockSize?: number;
  volumeUuid?: string;
  name?: string;
  /** Keep a copy of the resync archive in this (new) file: the parent for `send --image … --parent FILE`. */
  save?: string;
  level?: number;
  signal?: AbortSignal;
  log?: Logger;
  onProgress?: (p: WriteProgress) => void;
  /** Thin LV sources: the managed snapshot chain (default "default") the resync point starts. */
  chain?: string;
  /** Classic LV sources: the size of the classic snapshot left as the change tracker (default 20% of the LV). */
  trackerSize?: TrackerSize;
  /** Thin LV sources: locks and reservation records (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive). */
  stateDir?: string;
  /** Thin LV sources: how LVM commands are run. */
  exec?: LvmExec;
  /** Tests: called after the comparison, before the archive is sent (the target may be changed there). */
  beforeSend?: () => Promise<void>;
}

export interface SyncResult {
  source: string;
  sourceKind: 'image' | 'blockdev' | 'lv';
  target: string;
  targetKind: TargetKind;
  /** ssh://… for a remote target */
  host: string | null;
  blockSize: number;
  volumeSize: number;
  blocks: number;
  /** Blocks whose content the target already had. */
  sameBlocks: number;
  /** Blocks sent as data (or as zero records, when the source's block is all zeroes). */
  dataBlocks: number;
  /** Blocks the source does not hold (holes) that the target had data in: sent as unmapped. */
  unmapBlocks: number;
  sourceSide: {
    /** Blocks hashed at the source (allocated or mapped ones). */
    blocksHashed: number;
    /** Bytes read from the source: hashing, then the differing blocks again for the archive. */
    bytesRead: number;
  };
  targetSide: { blocksHashed: number; bytesRead: number; previousState: SyncHello['state'] };
  /** Bytes of hashes received from the target (8 per block) and of the protocol lines. */
  bytesReceived: number;
  /** Bytes sent to the target: the resync archive. */
  bytesSent: number;
  archive: SendResult;
  /** The copy kept with `save`. */
  saved: string | null;
  /** What the target side's apply reported. */
  apply: unknown;
  /** An LV source: its new managed snapshot, now the base of `chain` (`send VG/LV` continues from it); pool null for a classic LV. */
  lv?: { vg: string; lv: string; pool: string | null; poolChunkSize: number; chain: string; snapshot: string; removed: string[]; warnings: string[] };
  seconds: number;
}

/** A volume source that counts what is read. */
function counting(src: FileVolume): VolumeSource & { bytes: number } {
  const c = {
    bytes: 0,
    size: src.size,
    concurrentReads: src.concurrentReads,
    read: async (buf: Uint8Array, offset: number, length: number, position: number): Promise<number> => {
      const n = await src.read(buf, offset, length, position);
      c.bytes += n;
      return n;
    },
  };
  return c;
}

interface Session {
  label: string;
  host: string | null;
  target: string;
  output: AsyncIterable<Uint8Array>;
  input: ArchiveSink;
  endInput(): Promise<void>;
  /** The target side's result (remote: its --json output after the hashed line). */
  finish(reader: ByteReader): Promise<unknown>;
  abort(e: unknown): Promise<void>;
  received(): number;
  /** The other side's own error, when it failed (a broken exchange is then reported by its cause). */
  failure(): Promise<unknown>;
}

function localSession(target: string, run: LocalTargetSide, blockSize: number, volumeSize: number): Session {
  const toSource = new MemoryPipe();
  const toTarget = new MemoryPipe();
  let received = 0;
  const counted: ArchiveSink = {
    write: (c) => {
      received += c.length;
      return toSource.sink.write(c);
    },
  };
  const p = run({ out: counted, input: toTarget, blockSize, volumeSize }).then(
    (r) => {
      toSource.end();
      return r;
    },
    (e: unknown) => {
      // Both directions: the source side may be waiting to write the archive (the pipe full).
      toSource.fail(e);
      toTarget.fail(e);
      throw e;
    },
  );
  p.catch(() => {});
  return {
    label: target, host: null, target, output: toSource, input: toTarget.sink,
    endInput: async () => toTarget.end(),
    finish: () => p,
    abort: async (e) => {
      toTarget.fail(e);
      await p.catch(() => {});
    },
    received: () => received,
    failure: () => p.then(() => undefined, (e: unknown) => e),
  };
}

function sshSession(o: NonNullable<SyncOptions['remote']>, blockSize: number, volumeSize: number, storeOptions?: StoreOptions): Session {
  const args = ['sync-target', o.target, '--block-size', String(blockSize), '--volume-size', String(volumeSize), '--json',
    ...(o.stateDir !== undefined ? ['--state-dir', o.stateDir] : [])];
  const s: RemoteSession = remoteSession({ host: o.host, args, remoteCommand: o.remoteCommand, storeOptions });
  return {
    label: `${o.target} on ${s.label}`, host: s.label, target: o.target, output: s.output, input: s.input,
    endInput: () => s.endInput(),
    finish: async (reader) => {
      const text = (await reader.rest()).trim();
      await s.wait();
      try {
        return JSON.parse(text) as unknown;
      } catch {
        return text;
      }
    },
    abort: () => s.abort(),
    received: () => s.bytes().received,
    failure: async () => {
      const w = s.wait().then(() => undefined, (e: unknown) => e);
      return Promise.race([w, new Promise((r) => setTimeout(r, 10_000).unref())]);
    },
  };
}

/** A file the resync archive is copied into (created; never replaces). */
async function saveFile(path: string): Promise<{ sink: ArchiveSink; close: (ok: boolean) => Promise<void> }> {
  let fh: FileHandle;
  try {
    fh = await openFile(path, 'wx');
  } catch (e) {
    throw ioError(e, `cannot create ${path}`);
  }
  return {
    sink: { write: async (c) => void (await fh.write(c)) },
    close: async (ok) => {
      if (ok) await fh.sync();
      await fh.close();
      if (!ok) await unlink(path).catch(() => {});
    },
  };
}

/** Runs of equal kind of `kinds` (0: same, DATA, UNMAP) as map extents. */
function* extentsOf(kinds: Uint8Array): Generator<MapExtent> {
  let i = 0;
  while (i < kinds.length) {
    const k = kinds[i];
    let j = i + 1;
    while (j < kinds.length && kinds[j] === k && j - i < 0xffffffff) j++;
    if (k !== 0) yield { firstBlock: i, blockCount: j - i, kind: k as ExtentKindCode };
    i = j;
  }
}

async function* asAsync<T>(it: Iterable<T>): AsyncGenerator<T> {
  yield* it;
}

/** What is synced from: an image or block device, or a thin LV through a new managed snapshot. */
interface SyncSource {
  kind: 'image' | 'blockdev' | 'lv';
  volume: FileVolume;
  blockSize: number;
  /** The runs of blocks the source holds data in (the rest reads as zeroes / is unmapped). */
  runs(): AsyncIterable<{ firstBlock: number; blockCount: number }>;
  /** Header fields of the resync archive that depend on the source. */
  header(nonce: string): NewArchive;
  /** The target applied the archive: a thin LV's snapshot becomes its chain's base. */
  done(): Promise<SyncResult['lv']>;
  /** Always, at the end: what was made and not kept is removed. */
  close(): Promise<void>;
}

async function fileSource(o: SyncOptions): Promise<SyncSource> {
  const bs = o.blockSize ?? 64 * 1024;
  if (!isValidBlockSize(bs)) throw new UsageError(`invalid block size ${bs}: a power of two from 4 KiB to 4 MiB`);
  const volume = await FileVolume.open(o.source);
  const archiveId = randomUUID();
  return {
    kind: volume.isBlockDevice ? 'blockdev' : 'image', volume, blockSize: bs,
    runs: () => volume.allocatedExtents(bs),
    header: (nonce) => ({
      full: false, blockSize: bs, archiveId, parentId: nonce, chainId: randomUUID(), sequence: 1,
      volumeUuid: o.volumeUuid ?? randomUUID(), volumeSize: volume.size, sourceChunkSize: bs,
      meta: {
        volume: { name: o.name ?? basename(o.source) },
        source: { kind: volume.isBlockDevice ? 'blockdev' : 'image', path: o.source, host: hostname() },
        tool: `thinarchive ${TOOL_VERSION}`,
      },
    }),
    done: async () => undefined,
    close: () => volume.close(),
  };
}

/** `VG/LV` (not an existing path): a thin LV. */
function lvSpec(source: string): { vg: string; lv: string } | null {
  if (existsSync(source)) return null;
  const m = /^([^/]+)\/([^/]+)$/.exec(source);
  if (!m) return null;
  assertLvmName(m[1], 'VG');
  assertLvmName(m[2], 'LV');
  return { vg: m[1], lv: m[2] };
}

/**
 * A thin LV: a new managed snapshot of chain `chain` (pending until the target applied the archive,
 * then the chain's base: `send VG/LV` continues from it), read through its thin_dump map (only
 * mapped blocks are read). A classic LV: a new classic snapshot, every block read; it becomes the
 * base and change tracker of the chain (an overflowed tracker is replaced: source/classic.ts).
 */
async function lvSource(o: SyncOptions, ref: { vg: string; lv: string }): Promise<SyncSource> {
  if (o.blockSize !== undefined) throw new UsageError('--block-size does not go with a thin LV source: its block size follows the pool chunk size');
  if (o.volumeUuid !== undefined || o.name !== undefined) throw new UsageError('--volume-uuid and --name do not go with a thin LV source: they come from the LV');
  const { vg, lv: lvName } = ref;
  const log = o.log ?? silentLogger;
  const exec = o.exec ?? (o.log ? createLvmExec({ logger: o.log }) : runLvmCommand);
  const stateDir = o.stateDir ?? defaultStateDir();
  const tools = { exec, ...(o.signal ? { signal: o.signal } : {}), stateDir };
  const cleanup = { exec };
  const chain = o.chain ?? DEFAULT_CHAIN;
  checkChainName(chain);
  const lock = await lockSnapshotChain(join(stateDir, 'locks'), vg, lvName, chain, log);
  let snapLv: LvInfo | undefined;
  let name = '';
  let map: Awaited<ReturnType<typeof readThinMap>> | undefined;
  let volume: FileVolume | undefined;
  let activated = false;
  let kept = false;
  const close = async (): Promise<void> => {
    try {
      await volume?.close();
      if (activated) await deactivate(vg, name, cleanup).catch((e: Error) => log.warn({ snapshot: `${vg}/${name}`, err: e.message }, 'could not deactivate the snapshot'));
      await map?.remove();
      if (!kept && name) await discardPendingSnapshot(vg, name, snapLv, { tools: cleanup, log });
    } finally {
      await lock.release();
    }
  };
  try {
    let lvs = await listLvs(vg, tools);
    const lv = lvs.find((l) => l.name === lvName && !l.hidden);
    if (!lv) throw new ThinarchiveError('LV_NOT_FOUND', `logical volume ${vg}/${lvName} not found`);
    const classic = lv.isClassicVolume;
    if (!classic && (!lv.isThinVolume || lv.pool === null || lv.thinId === null)) {
      throw new UsageError(`${vg}/${lvName} is neither a thin nor a classic LV (attr ${lv.attr}); sync reads a thin or classic LV, an image or a block device`, 'NOT_THIN_VOLUME');
    }
    if (lv.tags.includes(TAG_OURS)) throw new UsageError(`${vg}/${lvName} is a snapshot thinarchive manages; sync its origin`);
    // Pending snapshots of interrupted runs go (a sync's archive is in no store).
    const settled = await settleInterrupted(vg, lv, lvs, chain, async () => false, { tools, log });
    lvs = settled.lvs;
    const oldBase = settled.snaps.base?.lv ?? null;
    // The snapshot is read through its map: a thin LV's mapped blocks (thin_dump), every block of a classic LV.
    let thinPool: string | null = null;
    let chunk = CLASSIC_CHUNK;
    if (!classic) {
      thinPool = lv.pool!;
      await thinToolsVersion('thin_dump', tools);
      const poolLv = lvs.find((l) => l.name === thinPool && !l.hidden);
      if (!poolLv || !poolLv.isThinPool || !(poolLv.chunkSizeBytes > 0)) {
        throw new ThinarchiveError('POOL_REPORT', `${vg}/${thinPool} (the pool of ${lvName}) is not reported as a thin pool with a chunk size`);
      }
      const crit = resolveThresholds(`${vg}/${thinPool}`, undefined, { warn: { data: 0, metadata: 0 } }).crit;
      checkPoolForSend(`${vg}/${thinPool}`, await poolStatus(vg, thinPool, tools), { maxDataPercent: crit.data, maxMetadataPercent: crit.metadata });
      chunk = poolLv.chunkSizeBytes;
    }
    const bs = archiveBlockSizeFor(chunk);
    const archiveId = randomUUID();
    const chainId = randomUUID();
    const createdAt = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    name = snapshotName(lvName, chain, 1, archiveId);
    o.signal?.throwIfAborted();
    const tags = snapshotTags({ originUuid: lv.uuid, chain, chainId, archiveId, sequence: 1, createdAt }, true);
    snapLv = classic
      ? await createClassicPending(vg, lv, name, tags, o.trackerSize ?? DEFAULT_TRACKER_SIZE, { tools, log })
      : await createPendingSnapshot(vg, lvName, name, tags, { tools, log });
    const snap = snapLv;
    // (a classic snapshot's lv_size is its copy-on-write store's: the volume is the origin's size)
    const volumeSize = classic ? lv.sizeBytes : snap.sizeBytes;
    map = thinPool === null
      ? await classicMap(vg, null, `${vg}/${lvName}`, bs, volumeSize, tools)
      : await readThinMap({ vg, pool: thinPool, chunk, blockSize: bs, volumeSize, snapThinId: snap.thinId!, base: null }, {
        exec, logger: log, ...(o.signal ? { signal: o.signal } : {}), stateDir,
      });
    const m = map;
    // (a classic snapshot is active with its origin)
    const dev = classic ? lvDevicePath(vg, name) : await activateReadOnly(vg, name, tools, snap);
    activated = !classic;
    volume = await FileVolume.open(dev);
    if (volume.size !== volumeSize) throw new ThinarchiveError('SNAPSHOT_SIZE', `${dev} is ${volume.size} bytes, lvs says ${volumeSize}`);
    const identity = { name: `${vg}/${name}`, uuid: snap.uuid, ...(snap.thinId !== null ? { thinId: snap.thinId } : {}), createdAt };
    return {
      kind: 'lv', volume, blockSize: bs,
      runs: () => dataRuns(m.extents()),
      header: (nonce) => ({
        full: false, blockSize: bs, archiveId, parentId: nonce, chainId, sequence: 1, volumeUuid: volumeUuidForLv(lv.uuid), volumeSize,
        sourceChunkSize: chunk,
        meta: {
          volume: { name: `${vg}/${lvName}`, vg, lv: lvName, lvUuid: lv.uuid },
          snapshot: identity,
          source: { kind: 'lv', path: `/dev/${vg}/${name}`, host: hostname() },
          tool: `thinarchive ${TOOL_VERSION}`,
        },
      }),
      done: async () => {
        await volume?.close();
        volume = undefined;
        kept = true;
        const r = await promoteSnapshot(vg, name, oldBase, { tools: cleanup, log });
        for (const w of r.warnings) log.warn({ volume: `${vg}/${lvName}` }, w);
        return {
          vg, lv: lvName, pool: thinPool === null ? null : `${vg}/${thinPool}`, poolChunkSize: chunk, chain, snapshot: name, removed: [...settled.removed, ...r.removed], warnings: r.warnings,
        };
      },
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

async function* dataRuns(extents: AsyncIterable<MapExtent>): AsyncGenerator<{ firstBlock: number; blockCount: number }> {
  for await (const e of extents) if (e.kind === ExtentKind.DATA) yield { firstBlock: e.firstBlock, blockCount: e.blockCount };
}

export async function sync(o: SyncOptions): Promise<SyncResult> {
  const started = performance.now();
  if ((o.local === undefined) === (o.remote === undefined)) throw new UsageError('name the target: --to TARGET, or --apply-remote ssh://HOST with --remote-to TARGET');
  checkLevel(o.level);
  if (o.volumeUuid !== undefined && !UUID_RE.test(o.volumeUuid)) throw new UsageError(`--volume-uuid must be a UUID, got ${JSON.stringify(o.volumeUuid)}`);
  const ref = lvSpec(o.source);
  if (ref && o.save !== undefined) throw new UsageError('--save goes with an image or block device source (a thin LV\'s next send finds its parent from the managed snapshot)');
  if (!ref && o.chain !== undefined) throw new UsageError('--chain goes with a thin LV source (VG/LV)');
  const save = o.save !== undefined ? await saveFile(o.save) : undefined;
  let saved = false;
  let src: SyncSource;
  try {
    src = ref ? await lvSource(o, ref) : await fileSource(o);
  } catch (e) {
    if (save) await save.close(false).catch(() => {});
    throw e;
  }
  const source = src.volume;
  const bs = src.blockSize;
  try {
    const size = source.size;
    const blocks = volumeBlocks(size, bs);
    const session = o.local ? localSession(o.local.target, o.local.run, bs, size) : sshSession(o.remote!, bs, size, o.storeOptions);
    const reader = new ByteReader(session.output, `the target side (${session.label})`);
    try {
      // 1. The target's hello, then its hashes while the source hashes its own blocks.
      const hello = parseLine<SyncHello>(await reader.line(), 'the target side');
      checkHello(hello, bs, size);
      if (!UUID_RE.test(hello.nonce)) throw new ThinarchiveError('SYNC_PROTOCOL', `the target side's nonce is not a UUID: ${JSON.stringify(hello.nonce)}`);
      const target = new BigUint64Array(blocks);
      const readTarget = async (): Promise<void> => {
        const per = 65536;
        for (let b = 0; b < blocks; b += per) {
          const n = Math.min(per, blocks - b);
          target.set(await reader.hashes(n), b);
        }
      };
      const mine = new BigUint64Array(blocks);
      const mapped = new Uint8Array(blocks);
      const sourceRead = counting(source);
      const { srcTotals, zeroOf } = await withPool(async (pool) => {
        const zeroOf = await zeroHashes(pool, size, bs);
        const [srcTotals] = await Promise.all([
          hashRuns({
            source: sourceRead, runs: src.runs(), blockSize: bs, volumeSize: size, pool, signal: o.signal,
            onHashes: (first, hashes) => {
              mine.set(hashes, first);
              mapped.fill(1, first, first + hashes.length);
            },
          }),
          readTarget(),
        ]);
        return { srcTotals, zeroOf };
      });
      const hashed = parseLine<SyncHashed>(await reader.line(), 'the target side');

      // 2. Compare: a block the source holds must hash alike; a hole must be zeroes at the target.
      const kinds = new Uint8Array(blocks);
      let same = 0;
      let data = 0;
      let unmap = 0;
      for (let i = 0; i < blocks; i++) {
        if (mapped[i]) {
          if (mine[i] === target[i]) same++;
          else {
            kinds[i] = ExtentKind.DATA;
            data++;
          }
        } else if (target[i] === zeroOf(i)) same++;
        else {
          kinds[i] = ExtentKind.UNMAP;
          unmap++;
        }
      }

      await o.beforeSend?.();
      // 3. The resync archive: its parent is the session's nonce.
      const header = src.header(hello.nonce);
      let sent = 0;
      const pipe: ArchivePipe = {
        label: session.label,
        sink: {
          write: async (c) => {
            if (save) await save.sink.write(c);
            await session.input.write(c);
            sent += c.length;
          },
        },
        end: () => session.endInput(),
      };
      const dest = await openDestination(pipe, header);
      const archive = await writeAndCommit(dest, {
        header, extents: asAsync(extentsOf(kinds)), source: sourceRead, level: o.level, signal: o.signal, onProgress: o.onProgress, started,
      });
      if (save) {
        await save.close(true);
        saved = true;
      }
      const applied = await session.finish(reader);
      const lv = await src.done();
      return {
        source: o.source, sourceKind: src.kind, target: session.target, targetKind: hello.targetKind, host: session.host,
        blockSize: bs, volumeSize: size, blocks, sameBlocks: same, dataBlocks: data, unmapBlocks: unmap,
        sourceSide: { blocksHashed: srcTotals.blocksHashed, bytesRead: sourceRead.bytes },
        targetSide: { blocksHashed: hashed.hashedBlocks, bytesRead: hashed.bytesRead, previousState: hello.state },
        bytesReceived: session.received(), bytesSent: sent, archive, saved: save ? o.save! : null, apply: applied,
        ...(lv ? { lv } : {}),
        seconds: (performance.now() - started) / 1000,
      };
    } catch (e) {
      if (e instanceof ThinarchiveError && e.code === 'SYNC_PROTOCOL') {
        const cause = await session.failure();
        if (cause) {
          await reader.cancel().catch(() => {});
          throw cause;
        }
      }
      // The target side stops: before the archive began it writes nothing (no archive header); a
      // truncated archive is refused by its apply, which rolls back what it wrote.
      await session.abort(e);
      await reader.cancel().catch(() => {});
      throw e;
    }
  } finally {
    if (save && !saved) await save.close(false).catch(() => {});
    await src.close();
  }
}
