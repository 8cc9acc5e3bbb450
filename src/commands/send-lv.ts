/**
 * send VG/LV: archive a thin LV that stays in use, from pool metadata and a thin snapshot; managed
 * snapshots (one base per volume and chain, source/snapshot-chain.ts) or user-managed ones
 * (`--snapshot [--base]`). The steps, their order and what an interrupted run leaves: README
 * ("send VG/LV") and docs/ARCHITECTURE.md.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { statSync } from 'node:fs';
import { checkLevel, type NewArchive, type WriteProgress } from '../archive/writer.js';
import {
  checkChainLease, checkNoFork, dryRunResult, leaseUseOf, openDestination, writeAndCommit, type SendDestination, type SendLeaseOptions, type SendResult,
} from '../chain/publish.js';
import { ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import type { ArchiveHeader, SnapshotIdentity } from '../format/types.js';
import { GROUP_NAME_RE, MAX_GROUP_MEMBERS, type GroupMeta } from '../format/group.js';
import { lvKernelName, topHolders } from '../lvm/holders.js';
import { withQuiesce, type QuiesceReport, type QuiesceSpec, type StepRunner } from '../source/quiesce.js';
import { defaultStateDir } from '../fsutil.js';
import { silentLogger, type Logger } from '../log.js';
import { createLvmExec, runLvmCommand, type LvmExec } from '../lvm/exec.js';
import { assertLvmName, lvDevicePath } from '../lvm/names.js';
import { checkPoolForSend, DEFAULT_MAX_DATA_PERCENT, DEFAULT_MAX_METADATA_PERCENT, resolveThresholds, type PoolThresholdSettings } from '../lvm/pool-status.js';
import type { LvInfo } from '../lvm/report.js';
import { activateReadOnly, deactivate, listLvs, makeReadOnly, poolStatus, thinToolsVersion, type ToolOptions } from '../lvm/tools.js';
import { archiveBlockSizeFor } from '../source/extents.js';
import { checkTracker, classicMap, CLASSIC_CHUNK, createClassicPending, DEFAULT_TRACKER_SIZE, type TrackerSize } from '../source/classic.js';
import {
  checkChainName, createPendingSnapshot, DEFAULT_CHAIN, discardPendingSnapshot, lockSnapshotChain, promoteSnapshot, settleInterrupted, snapshotName,
  snapshotTags, TAG_OURS, UUID, volumeUuidForLv,
} from '../source/snapshot-chain.js';
import { readThinMap, readThinMaps, type ThinMap, type ThinMapRequest } from '../source/thin-map.js';
import { FileVolume } from '../source/volume.js';
import type { StoreOptions } from '../store/open.js';
import { openArchiveRef, storeFor } from '../store/refs.js';
import { TOOL_VERSION } from '../version.js';

export interface SendLvOptions extends SendLeaseOptions {
  /** `VG/LV`: the volume (managed snapshots), or the origin a user-managed --snapshot must be of. */
  volume?: string;
  /** `VG/SNAP`: a user-managed snapshot to archive instead of a managed one. */
  snapshot?: string;
  /** `VG/SNAP`: with `snapshot`, the older user-managed snapshot the incremental starts from. */
  base?: string;
  /** With `snapshot`: the archive (or store directory: its newest) the new archive follows. */
  parent?: string;
  to: SendDestination;
  /** Options for remote stores (ssh options, S3 endpoint, ...). */
  storeOptions?: StoreOptions;
  /** Managed: a full archive even when the chain has a base. */
  full?: boolean;
  /** Managed: the chain name; default "default". */
  chain?: string;
  /** A classic (thick) LV: the size of the classic snapshot each send leaves as the change tracker; default 20% of the origin. */
  trackerSize?: TrackerSize;
  /** Refuse (POOL_CRITICAL) when the pool's data usage is above this (percent); default: the pool's critical data threshold (`poolThresholds`), 90. */
  maxDataPercent?: number;
  /** Refuse (POOL_CRITICAL) when the pool's metadata usage is above this (percent); default: the pool's critical metadata threshold, 80. */
  maxMetadataPercent?: number;
  /** Thresholds per pool ("VG/POOL") and "default" (the daemon configuration's `pools`): their `crit` levels guard the send. */
  poolThresholds?: Readonly<Record<string, PoolThresholdSettings>>;
  /** Release a metadata snapshot held by someone else (withMetadataSnapshot's `force`). */
  forceRelease?: boolean;
  dryRun?: boolean;
  level?: number;
  /** Locks and reservation records; default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive. */
  stateDir?: string;
  /** Parent of the temporary directory for thin_delta / thin_dump output; default os.tmpdir(). */
  tmpDir?: string;
  exec?: LvmExec;
  log?: Logger;
  signal?: AbortSignal;
  onProgress?: (p: WriteProgress) => void;
  /** Wait this long for the metadata snapshot's pool lock; default 120 s. */
  poolLockTimeoutMs?: number;
}

export interface SnapshotRef {
  vg: string;
  name: string;
  uuid: string;
  /** null: a classic snapshot */
  thinId: number | null;
  createdAt?: string;
}

export interface SendLvResult extends SendResult {
  volume: { vg: string; lv: string | null; lvUuid: string | null };
  /** `VG/POOL`; null for a classic LV */
  pool: string | null;
  /** the pool's chunk size; for a classic LV, its snapshots' chunk size */
  poolChunkSize: number;
  managed: boolean;
  /** The chain name (managed snapshots), null for user-managed ones. */
  chain: string | null;
  /** The snapshot archived: after a managed send the chain's base (after a dry run: removed). */
  snapshot: SnapshotRef;
  /** The snapshot the delta started from (managed: removed after the send), null for a full archive. */
  base: SnapshotRef | null;
  /** LVs removed: the old base, pending snapshots of interrupted runs, a dry run's snapshot. */
  removed: string[];
  /** Pending snapshots whose archive was found committed, made the base. */
  recovered: string[];
  /** Things that went wrong after the archive was committed (the archive is good). */
  warnings: string[];
}

interface Ctx {
  exec: LvmExec;
  logger: Logger;
  signal?: AbortSignal;
  /** Tool options with the abort signal (for the work). */
  tools: ToolOptions;
  /** Tool options without it: clean-up must still run after an abort. */
  cleanup: ToolOptions;
}

function parseRef(ref: string, what: string): { vg: string; lv: string } {
  const parts = ref.split('/');
  const [vg, lv] = ref.startsWith('/dev/') && parts.length === 4 ? [parts[2], parts[3]] : parts;
  if (parts.length !== 2 && !(ref.startsWith('/dev/') && parts.length === 4)) {
    let hint = '';
    try {
      const st = statSync(ref);
      if (st.isFile() || st.isBlockDevice()) hint = `; ${ref} is ${st.isFile() ? 'a file' : 'a block device'}: to send it, use --image ${ref}`;
    } catch {
      // not a path: no hint
    }
    throw new UsageError(`${what} must be VG/LV, got ${JSON.stringify(ref)}${hint}`);
  }
  assertLvmName(vg!, 'VG');
  assertLvmName(lv!, what);
  return { vg: vg!, lv: lv! };
}

function percentOption(v: number | undefined, def: number, flag: string): number {
  if (v === undefined) return def;
  if (!Number.isFinite(v) || v < 0 || v > 100) throw new UsageError(`${flag} must be a number from 0 to 100`);
  return v;
}

function findLv(lvs: readonly LvInfo[], vg: string, name: string): LvInfo {
  const lv = lvs.find((l) => l.name === name && !l.hidden);
  if (!lv) throw new ThinarchiveError('LV_NOT_FOUND', `logical volume ${vg}/${name} not found`);
  return lv;
}

function requireThin(lv: LvInfo, what: string): { pool: string; thinId: number } {
  if (!lv.isThinVolume || lv.pool === null || lv.thinId === null) {
    throw new UsageError(`${lv.vg}/${lv.name} is not a thin volume (attr ${lv.attr}); ${what} must be a thin LV`, 'NOT_THIN_VOLUME');
  }
  return { pool: lv.pool, thinId: lv.thinId };
}

function refOf(lv: LvInfo, createdAt?: string): SnapshotRef {
  return { vg: lv.vg, name: lv.name, uuid: lv.uuid, thinId: lv.thinId, ...(createdAt ? { createdAt } : {}) };
}

function identity(r: SnapshotRef): SnapshotIdentity {
  return { name: `${r.vg}/${r.name}`, uuid: r.uuid, ...(r.thinId !== null ? { thinId: r.thinId } : {}), ...(r.createdAt ? { createdAt: r.createdAt } : {}) };
}

/** The work both kinds of LV send share: the map from pool metadata, then a dry-run count or the archive. */
interface Transfer {
  vg: string;
  pool: string;
  chunk: number;
  header: NewArchive;
  snap: SnapshotRef;
  base: SnapshotRef | null;
  /** The base snapshot's size in bytes (incrementals). */
  baseSize?: number;
  /** Activate the snapshot for reading; returns its device and how to put it back. */
  activate: () => Promise<{ dev: string; restore: () => Promise<void> }>;
}

/** Map, then count (dry run) or read the snapshot and write + commit the archive. */
async function transfer(t: Transfer, o: SendLvOptions, ctx: Ctx, started: number, given?: ThinMap): Promise<SendResult> {
  const map = given ?? await readThinMap({
    vg: t.vg, pool: t.pool, chunk: t.chunk, blockSize: t.header.blockSize, volumeSize: t.header.volumeSize, snapThinId: t.snap.thinId!,
    base: t.base ? { thinId: t.base.thinId!, sizeBytes: t.baseSize! } : null,
  }, {
    exec: ctx.exec, logger: ctx.logger, ...(ctx.signal ? { signal: ctx.signal } : {}), ...(o.stateDir !== undefined ? { stateDir: o.stateDir } : {}),
    forceRelease: !!o.forceRelease, ...(o.poolLockTimeoutMs !== undefined ? { lockTimeoutMs: o.poolLockTimeoutMs } : {}), ...(o.tmpDir !== undefined ? { tmpDir: o.tmpDir } : {}),
  });
  try {
    if (o.dryRun) return await dryRunResult(t.header, map.extents(), started);
    ctx.signal?.throwIfAborted();
    const dest = await openDestination(o.to, t.header, o.storeOptions, leaseUseOf(o, ctx.logger));
    let restore: (() => Promise<void>) | undefined;
    try {
      const act = await t.activate();
      restore = act.restore;
      const source = await FileVolume.open(act.dev);
      try {
        if (source.size !== t.header.volumeSize) {
          throw new ThinarchiveError('SNAPSHOT_SIZE', `${act.dev} is ${source.size} bytes, lvs says ${t.header.volumeSize}`);
        }
        return await writeAndCommit(dest, {
          header: t.header, extents: map.extents(), source, level: o.level, signal: ctx.signal, onProgress: o.onProgress, started,
        });
      } finally {
        await source.close();
      }
    } finally {
      await dest.abort();
      if (restore) {
        await restore().catch((e: Error) => ctx.logger.warn({ snapshot: `${t.vg}/${t.snap.name}`, err: e.message }, 'could not deactivate the snapshot'));
      }
    }
  } finally {
    await map.remove();
  }
}

function poolHeader(o: {
  full: boolean; blockSize: number; chunk: number; archiveId: string; parentId: string | null; chainId: string; sequence: number;
  volumeUuid: string; volumeSize: number; volume: SendLvResult['volume']; snap: SnapshotRef; base: SnapshotRef | null;
}): NewArchive {
  return {
    full: o.full,
    blockSize: o.blockSize,
    archiveId: o.archiveId,
    parentId: o.parentId,
    chainId: o.chainId,
    sequence: o.sequence,
    volumeUuid: o.volumeUuid,
    volumeSize: o.volumeSize,
    sourceChunkSize: o.chunk,
    meta: {
      volume: {
        name: `${o.volume.vg}/${o.volume.lv ?? o.snap.name}`, vg: o.volume.vg,
        ...(o.volume.lv !== null ? { lv: o.volume.lv } : {}), ...(o.volume.lvUuid !== null ? { lvUuid: o.volume.lvUuid } : {}),
      },
      ...(o.base ? { base: identity(o.base) } : {}),
      snapshot: identity(o.snap),
      source: { kind: 'lv', path: `/dev/${o.snap.vg}/${o.snap.name}`, host: hostname() },
      tool: `thinarchive ${TOOL_VERSION}`,
    },
  };
}

async function poolChecks(vg: string, lv: LvInfo, lvs: readonly LvInfo[], o: SendLvOptions, ctx: Ctx): Promise<{ pool: string; chunk: number }> {
  const { pool } = requireThin(lv, 'the volume');
  const poolLv = findLv(lvs, vg, pool);
  if (!poolLv.isThinPool || !(poolLv.chunkSizeBytes > 0)) {
    throw new ThinarchiveError('POOL_REPORT', `${vg}/${pool} (the pool of ${lv.name}) is not reported as a thin pool with a chunk size (attr ${poolLv.attr})`);
  }
  // The critical thresholds of this pool (options, then the configuration's pools), the warning ones ignored.
  const crit = resolveThresholds(`${vg}/${pool}`, o.poolThresholds, { warn: { data: 0, metadata: 0 } }).crit;
  const limits = {
    maxDataPercent: percentOption(o.maxDataPercent, crit.data, '--max-data-percent'),
    maxMetadataPercent: percentOption(o.maxMetadataPercent, crit.metadata, '--max-metadata-percent'),
  };
  checkPoolForSend(`${vg}/${pool}`, await poolStatus(vg, pool, ctx.tools), limits);
  return { pool, chunk: poolLv.chunkSizeBytes };
}

async function storeHolds(to: SendDestination, chainId: string, archiveId: string, storeOptions?: StoreOptions): Promise<boolean> {
  if (typeof to !== 'string' || !UUID.test(chainId)) return false;
  return (await (await storeFor(to, storeOptions)).chainArchives(chainId)).some((a) => a.archiveId === archiveId);
}

/** The LVM context of a send: commands logged (debug) through the caller's logger, aborted by its signal. */
function sendContext(o: { exec?: LvmExec; log?: Logger; signal?: AbortSignal; stateDir?: string }): Ctx {
  const exec = o.exec ?? (o.log ? createLvmExec({ logger: o.log }) : runLvmCommand);
  return {
    exec, logger: o.log ?? silentLogger, ...(o.signal ? { signal: o.signal } : {}),
    tools: { exec, ...(o.signal ? { signal: o.signal } : {}), stateDir: o.stateDir ?? defaultStateDir() }, cleanup: { exec },
  };
}

export async function sendLv(o: SendLvOptions): Promise<SendLvResult> {
  const started = performance.now();
  checkLevel(o.level);
  const ctx = sendContext(o);
  const exec = ctx.exec;
  percentOption(o.maxDataPercent, DEFAULT_MAX_DATA_PERCENT, '--max-data-percent');
  percentOption(o.maxMetadataPercent, DEFAULT_MAX_METADATA_PERCENT, '--max-metadata-percent');
  if (o.snapshot !== undefined) {
    if (o.chain !== undefined) throw new UsageError('--chain names a chain of managed snapshots; it does not go with --snapshot');
    if (o.full && o.base !== undefined) throw new UsageError('--full and --base contradict each other');
    if (o.base !== undefined && o.parent === undefined) throw new UsageError('an incremental send from --base needs --parent (the archive of the base snapshot)');
    return sendUserSnapshot(o, ctx, started);
  }
  if (o.base !== undefined) throw new UsageError('--base goes with --snapshot (user-managed snapshots)');
  if (o.parent !== undefined) throw new UsageError('--parent goes with --snapshot or --image; a managed send finds its parent from the base snapshot');
  if (o.volume === undefined) throw new UsageError('name the volume to send (VG/LV)');
  return sendManaged(o, ctx, started);
}

/** A managed send up to its snapshot: the chain locked, interrupted runs settled, the pool checked, the next archive named. */
interface PreparedManaged {
  vg: string;
  lvName: string;
  lv: LvInfo;
  chain: string;
  lock: { release(): Promise<void> };
  removed: string[];
  recovered: string[];
  baseInfo: { lv: LvInfo; tags: { archiveId: string; chainId: string; sequence: number; createdAt?: string } } | null;
  full: boolean;
  /** a classic (thick) LV: classic snapshots, the base's exception table as the map */
  classic: boolean;
  /** the thin pool ('' for a classic LV) */
  pool: string;
  chunk: number;
  blockSize: number;
  archiveId: string;
  chainId: string;
  sequence: number;
  parentId: string | null;
  name: string;
  tags: string[];
  createdAt: string;
}

async function prepareManaged(volume: string, o: SendLvOptions, ctx: Ctx, allowClassic = true): Promise<PreparedManaged> {
  const { vg, lv: lvName } = parseRef(volume, 'LV');
  const chain = o.chain ?? DEFAULT_CHAIN;
  checkChainName(chain);
  const log = ctx.logger;
  const stateDir = o.stateDir ?? defaultStateDir();
  const lock = await lockSnapshotChain(join(stateDir, 'locks'), vg, lvName, chain, log);
  try {
    const removed: string[] = [];
    const recovered: string[] = [];
    let lvs = await listLvs(vg, ctx.tools);
    const lv = findLv(lvs, vg, lvName);
    const classic = allowClassic && lv.isClassicVolume;
    if (!classic) {
      if (allowClassic && !lv.isThinVolume) {
        throw new UsageError(`${vg}/${lvName} is neither a thin nor a classic LV (attr ${lv.attr}); send VG/LV takes a thin LV or a classic (linear, striped, raid, mirror) one`, 'NOT_THIN_VOLUME');
      }
      requireThin(lv, allowClassic ? 'the volume' : 'a group member');
    }
    if (lv.tags.includes(TAG_OURS)) throw new UsageError(`${vg}/${lvName} is a snapshot thinarchive manages; send its origin`);

    // Interrupted runs: promote a pending snapshot whose archive is committed, remove the others.
    const settled = await settleInterrupted(vg, lv, lvs, chain, (t) => storeHolds(o.to, t.chainId, t.archiveId, o.storeOptions), { tools: ctx.tools, log });
    removed.push(...settled.removed);
    recovered.push(...settled.recovered);
    lvs = settled.lvs;
    const snaps = settled.snaps;
    const baseInfo = snaps.base;
    if (baseInfo && classic) {
      if (!baseInfo.lv.isClassicSnapshot || baseInfo.lv.origin !== lvName) {
        throw new UnsafeError('BASE_MISMATCH', `the base snapshot ${vg}/${baseInfo.lv.name} of chain "${chain}" is not a classic snapshot of ${vg}/${lvName} (attr ${baseInfo.lv.attr}, origin ${baseInfo.lv.origin ?? 'none'})`);
      }
      // An overflowed tracker is refused before anything is made (send --full replaces it).
      if (!o.full) checkTracker(baseInfo.lv, `${vg}/${lvName}`);
    }
    if (baseInfo && !classic) {
      const bt = requireThin(baseInfo.lv, 'the base snapshot');
      if (bt.pool !== lv.pool) {
        throw new UnsafeError('BASE_OTHER_POOL', `the base snapshot ${vg}/${baseInfo.lv.name} is in pool ${bt.pool}, the volume in ${lv.pool}`);
      }
      // Bases are made read-only when they are read; a writable one may no longer hold what its archive holds.
      if (!baseInfo.lv.readOnly && !o.full) {
        throw new UnsafeError('BASE_WRITABLE', `the base snapshot ${vg}/${baseInfo.lv.name} of chain "${chain}" is writable (attr ${baseInfo.lv.attr}): `
          + `it may no longer match archive ${baseInfo.tags.archiveId}; send --full to start over from a new snapshot`);
      }
    }

    const full = !!o.full || !baseInfo;
    let pool = '';
    let chunk = CLASSIC_CHUNK;
    if (!classic) {
      await thinToolsVersion(full ? 'thin_dump' : 'thin_delta', ctx.tools);
      ({ pool, chunk } = await poolChecks(vg, lv, lvs, o, ctx));
    }
    const blockSize = archiveBlockSizeFor(chunk);
    const archiveId = randomUUID();
    const chainId = baseInfo?.tags.chainId ?? randomUUID();
    const sequence = baseInfo ? baseInfo.tags.sequence + 1 : 0;
    const parentId = baseInfo?.tags.archiveId ?? null;

    if (typeof o.to === 'string') {
      // A store must hold the base's archive for an incremental to be of any use there.
      if (!full && !(await storeHolds(o.to, chainId, parentId!, o.storeOptions))) {
        throw new UnsafeError('PARENT_NOT_IN_STORE', `${o.to} does not hold archive ${parentId} (sequence ${sequence - 1} of chain ${chainId}), which the base snapshot `
          + `${vg}/${baseInfo!.lv.name} of chain "${chain}" corresponds to; send to the store that holds that chain, use another --chain for this store, or --full`);
      }
      await checkNoFork(o.to, { chainId, sequence, parentId }, o.storeOptions);
      // Another writer's lease: refused before a snapshot is made.
      await checkChainLease(o.to, chainId, o.storeOptions, leaseUseOf(o));
    }

    const createdAt = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const name = snapshotName(lvName, chain, sequence, archiveId);
    const tags = snapshotTags({ originUuid: lv.uuid, chain, chainId, archiveId, sequence, createdAt }, true);
    return {
      vg, lvName, lv, chain, lock, removed, recovered, baseInfo: baseInfo ?? null, full, classic, pool, chunk, blockSize, archiveId, chainId, sequence, parentId, name, tags, createdAt,
    };
  } catch (e) {
    await lock.release();
    throw e;
  }
}

function managedHeader(p: PreparedManaged, snapLv: LvInfo, group?: GroupMeta): NewArchive {
  const snap = refOf(snapLv, p.createdAt);
  const base = p.full ? null : refOf(p.baseInfo!.lv, p.baseInfo!.tags.createdAt);
  const h = poolHeader({
    full: p.full, blockSize: p.blockSize, chunk: p.chunk, archiveId: p.archiveId, parentId: p.parentId, chainId: p.chainId, sequence: p.sequence,
    // (a classic snapshot's lv_size is its copy-on-write store's: the volume is the origin's size)
    volumeUuid: volumeUuidForLv(p.lv.uuid), volumeSize: p.classic ? p.lv.sizeBytes : snapLv.sizeBytes, volume: { vg: p.vg, lv: p.lvName, lvUuid: p.lv.uuid }, snap, base,
  });
  if (group) h.meta.group = group;
  return h;
}

/** Archive the prepared member's snapshot (its map read already, or read now), then make it the base. */
async function finishManaged(p: PreparedManaged, snapLv: LvInfo, header: NewArchive, o: SendLvOptions, ctx: Ctx, started: number, map?: ThinMap): Promise<SendLvResult> {
  const { vg, name } = p;
  const log = ctx.logger;
  const warnings: string[] = [];
  const removed = [...p.removed];
  let committed = false;
  let result: SendResult;
  const snap = refOf(snapLv, p.createdAt);
  const base = p.full ? null : refOf(p.baseInfo!.lv, p.baseInfo!.tags.createdAt);
  try {
    // A classic LV: the base's exception table, read now that the new snapshot exists (every write
    // before it is in the table); its snapshot is active with the origin.
    const given = map ?? (p.classic ? await classicMap(vg, p.full ? null : p.baseInfo!.lv, `${vg}/${p.lvName}`, header.blockSize, header.volumeSize, ctx.tools) : undefined);
    result = await transfer({
      vg, pool: p.pool, chunk: p.chunk, header, snap, base, ...(base ? { baseSize: p.baseInfo!.lv.sizeBytes } : {}),
      activate: async () => (p.classic ? { dev: lvDevicePath(vg, name), restore: async () => {} } : {
        dev: await activateReadOnly(vg, name, ctx.tools, snapLv),
        restore: () => deactivate(vg, name, ctx.cleanup),
      }),
    }, o, ctx, started, given);
    committed = !o.dryRun;
  } finally {
    // Nothing committed: the new snapshot goes (only if it is ours), the old base stays.
    if (!committed && await discardPendingSnapshot(vg, name, snapLv, { tools: ctx.cleanup, log })) removed.push(name);
  }
  if (committed) {
    // The archive is durable: the new snapshot becomes the base, the old one goes.
    const r = await promoteSnapshot(vg, name, p.baseInfo?.lv ?? null, { tools: ctx.cleanup, log });
    removed.push(...r.removed);
    warnings.push(...r.warnings);
    for (const w of warnings) log.warn({ volume: `${vg}/${p.lvName}` }, w);
  }
  return {
    ...result!, volume: { vg, lv: p.lvName, lvUuid: p.lv.uuid }, pool: p.classic ? null : `${vg}/${p.pool}`, poolChunkSize: p.chunk, managed: true, chain: p.chain,
    snapshot: snap, base, removed, recovered: p.recovered, warnings,
  };
}

async function sendManaged(o: SendLvOptions, ctx: Ctx, started: number): Promise<SendLvResult> {
  const p = await prepareManaged(o.volume!, o, ctx);
  try {
    ctx.signal?.throwIfAborted();
    let snapLv: LvInfo | undefined;
    try {
      snapLv = p.classic
        ? await createClassicPending(p.vg, p.lv, p.name, p.tags, o.trackerSize ?? DEFAULT_TRACKER_SIZE, { tools: ctx.tools, log: ctx.logger })
        : await createPendingSnapshot(p.vg, p.lvName, p.name, p.tags, { tools: ctx.tools, log: ctx.logger });
    } catch (e) {
      await discardPendingSnapshot(p.vg, p.name, undefined, { tools: ctx.cleanup, log: ctx.logger }).catch(() => false);
      throw e;
    }
    return await finishManaged(p, snapLv, managedHeader(p, snapLv), o, ctx, started);
  } finally {
    await p.lock.release();
  }
}

async function sendUserSnapshot(o: SendLvOptions, ctx: Ctx, started: number): Promise<SendLvResult> {
  const s = parseRef(o.snapshot!, 'snapshot');
  const b = o.base !== undefined ? parseRef(o.base, 'base snapshot') : null;
  if (b && b.vg !== s.vg) throw new UsageError('--base and --snapshot must be in the same volume group (the same thin pool)');
  const vol = o.volume !== undefined ? parseRef(o.volume, 'LV') : null;
  if (vol && vol.vg !== s.vg) throw new UsageError(`--snapshot ${o.snapshot} is not in the volume group of ${o.volume}`);
  const vg = s.vg;
  await thinToolsVersion(b ? 'thin_delta' : 'thin_dump', ctx.tools);
  const lvs = await listLvs(vg, ctx.tools);
  const snapLv = findLv(lvs, vg, s.lv);
  requireThin(snapLv, '--snapshot');
  const originName = vol?.lv ?? snapLv.origin;
  if (vol && snapLv.origin !== vol.lv) {
    throw new UsageError(`${vg}/${s.lv} is not a snapshot of ${vg}/${vol.lv} (its origin is ${snapLv.origin ?? 'none'})`);
  }
  const origin = originName ? lvs.find((l) => l.name === originName && !l.hidden) ?? null : null;
  const baseLv = b ? findLv(lvs, vg, b.lv) : null;
  if (baseLv && requireThin(baseLv, '--base').pool !== snapLv.pool) {
    throw new UsageError(`--base ${o.base} is in pool ${baseLv.pool}, --snapshot ${o.snapshot} in ${snapLv.pool}: a delta needs one pool`);
  }

  let parent: ArchiveHeader | undefined;
  if (o.parent !== undefined) {
    const pf = await openArchiveRef(o.parent, o.storeOptions);
    parent = pf.header;
    await pf.close();
  }
  if (parent && baseLv && parent.meta.snapshot?.uuid !== undefined && parent.meta.snapshot.uuid !== baseLv.uuid) {
    throw new UnsafeError('BASE_MISMATCH', `the parent archive ${parent.archiveId} holds snapshot ${parent.meta.snapshot.name ?? ''} (uuid ${parent.meta.snapshot.uuid}), `
      + `not --base ${o.base} (uuid ${baseLv.uuid}): the delta would not apply on top of it`);
  }
  const { pool, chunk } = await poolChecks(vg, snapLv, lvs, o, ctx);
  const blockSize = parent?.blockSize ?? archiveBlockSizeFor(chunk);
  if (chunk % blockSize !== 0) {
    throw new UsageError(`the pool's chunk size (${chunk} bytes) is not a multiple of the parent chain's block size (${blockSize})`);
  }
  // Read-only before its map is read (a dry run reads only the map): the map and the bytes read after
  // it are of one state, and the report above serves the activation (no lvs of its own).
  if (!o.dryRun) await makeReadOnly(vg, s.lv, ctx.tools, snapLv);
  const full = baseLv === null;
  const snap = refOf(snapLv);
  const base = baseLv ? refOf(baseLv) : null;
  const volume = { vg, lv: origin?.name ?? null, lvUuid: origin?.uuid ?? null };
  const header = poolHeader({
    full, blockSize, chunk, archiveId: randomUUID(), parentId: parent?.archiveId ?? null, chainId: parent?.chainId ?? randomUUID(),
    sequence: parent ? parent.sequence + 1 : 0, volumeUuid: parent?.volumeUuid ?? volumeUuidForLv(origin?.uuid ?? snapLv.uuid), volumeSize: snapLv.sizeBytes,
    volume, snap, base,
  });
  const result = await transfer({
    vg, pool, chunk, header, snap, base, ...(baseLv ? { baseSize: baseLv.sizeBytes } : {}),
    activate: async () => {
      const wasActive = snapLv.active;
      const dev = await activateReadOnly(vg, s.lv, ctx.tools, { active: wasActive, readOnly: true });
      return { dev, restore: async () => (wasActive ? undefined : deactivate(vg, s.lv, ctx.cleanup)) };
    },
  }, o, ctx, started);
  return {
    ...result, volume, pool: `${vg}/${pool}`, poolChunkSize: chunk, managed: false, chain: null, snapshot: snap, base, removed: [], recovered: [], warnings: [],
  };
}

// ------------------------------------------------------------------------------------------ groups

export interface SendGroupOptions extends Omit<SendLvOptions, 'volume' | 'snapshot' | 'base' | 'parent' | 'dryRun'> {
  /** the members, `VG/LV` each (thin LVs of one or more pools) */
  volumes: string[];
  /** the group's name, recorded in every member's archive */
  group: string;
  /**
   * How to quiesce: fsfreeze of mountpoints, a freeze/thaw command pair, virsh domfsfreeze/domfsthaw.
   * Without one, the device-mapper devices stacked on the members are suspended (write-order
   * consistency; docs/LVM.md section 9).
   */
  quiesce?: Exclude<QuiesceSpec, { method: 'dm-suspend' }>;
  /** the whole quiesce window must end within this (the watchdog thaws then); default 10 s */
  freezeTimeoutMs?: number;
  /** tests: runs the freeze and thaw steps */
  quiesceRunner?: StepRunner;
}

export interface SendGroupResult {
  group: GroupMeta;
  quiesce: QuiesceReport | null;
  /** every member's result, in the order of group.members */
  members: SendLvResult[];
  seconds: number;
}

/** Without a freeze method: the dm devices at the top of every stack over the members (GROUP_NOT_QUIESCABLE when there is none). */
async function holdersToSuspend(preps: readonly PreparedManaged[], ctx: Ctx): Promise<string[]> {
  const devices = new Set<string>();
  for (const p of preps) {
    const tops = await topHolders(await lvKernelName(p.vg, p.lvName, ctx.tools), ctx.tools);
    const what = `${p.vg}/${p.lvName}`;
    if (!tops.length) {
      throw new UsageError(`${what} has no device-mapper device stacked on it (it is used directly: mounted, or by a VM), so a group send cannot hold its writes `
        + 'without a freeze method: give --freeze MOUNTPOINT, --freeze-cmd/--thaw-cmd or --virsh-domain (docs/LVM.md section 9)', 'GROUP_NOT_QUIESCABLE');
    }
    const other = tops.find((t) => t.dmName === null);
    if (other) {
      throw new UsageError(`${what} is under ${other.kernelName}, which is not a device-mapper device and cannot be suspended: give a freeze method `
        + '(--freeze MOUNTPOINT, --freeze-cmd/--thaw-cmd or --virsh-domain)', 'GROUP_NOT_QUIESCABLE');
    }
    for (const t of tops) devices.add(t.dmName!);
  }
  return [...devices].sort();
}

/**
 * send VG/LV VG/LV... --group NAME: every member's snapshot inside one quiesce window, one metadata
 * snapshot per pool for all their maps, then each member's archive (recording the group) in turn.
 * A member that fails stops the send: members committed before it stay (the group point is
 * incomplete: `list` says so, `restore --group` refuses it).
 */
export async function sendLvGroup(o: SendGroupOptions): Promise<SendGroupResult> {
  const started = performance.now();
  checkLevel(o.level);
  const ctx = sendContext(o);
  const exec = ctx.exec;
  if (!GROUP_NAME_RE.test(o.group)) throw new UsageError(`--group ${JSON.stringify(o.group)}: a group name is 1 to 64 letters, digits and _ . + - (starting with a letter or digit)`);
  if (typeof o.to !== 'string') throw new UsageError('a group send goes to a store (--to STORE): each member is an archive of its own chain');
  if (o.volumes.length < 1 || o.volumes.length > MAX_GROUP_MEMBERS) throw new UsageError(`a group has 1 to ${MAX_GROUP_MEMBERS} volumes`);
  const refs = o.volumes.map((v) => parseRef(v, 'LV')).sort((a, b) => `${a.vg}/${a.lv}`.localeCompare(`${b.vg}/${b.lv}`));
  for (let i = 1; i < refs.length; i++) {
    if (refs[i]!.vg === refs[i - 1]!.vg && refs[i]!.lv === refs[i - 1]!.lv) throw new UsageError(`${refs[i]!.vg}/${refs[i]!.lv} is named twice`);
  }
  if (o.freezeTimeoutMs !== undefined && !(Number.isFinite(o.freezeTimeoutMs) && o.freezeTimeoutMs >= 100 && o.freezeTimeoutMs <= 3_600_000)) {
    throw new UsageError('--freeze-timeout must be from 100 ms to 1 hour');
  }
  percentOption(o.maxDataPercent, DEFAULT_MAX_DATA_PERCENT, '--max-data-percent');
  percentOption(o.maxMetadataPercent, DEFAULT_MAX_METADATA_PERCENT, '--max-metadata-percent');
  const lo: SendLvOptions = { ...o, dryRun: false };
  const preps: PreparedManaged[] = [];
  // Per member: the snapshot once created (undefined: lvcreate may have run, the pending tag finds it).
  const snaps = new Map<PreparedManaged, LvInfo | undefined>();
  const done = new Set<PreparedManaged>();
  try {
    // Chain locks in one order (sorted): two group sends sharing a member cannot deadlock.
    for (const r of refs) preps.push(await prepareManaged(`${r.vg}/${r.lv}`, lo, ctx, false));
    const spec: QuiesceSpec | null = o.quiesce ?? (preps.length > 1 ? { method: 'dm-suspend', devices: await holdersToSuspend(preps, ctx) } : null);
    ctx.signal?.throwIfAborted();
    const snapshotAll = async (window?: AbortSignal): Promise<void> => {
      const signal = window ? (ctx.signal ? AbortSignal.any([ctx.signal, window]) : window) : ctx.signal;
      const tools = { exec, ...(signal ? { signal } : {}) };
      for (const p of preps) {
        snaps.set(p, undefined);
        snaps.set(p, await createPendingSnapshot(p.vg, p.lvName, p.name, p.tags, { tools, log: ctx.logger }));
      }
    };
    let report: QuiesceReport | null = null;
    const frozenAt = new Date().toISOString();
    const t0 = performance.now();
    if (spec) {
      report = (await withQuiesce(spec, {
        log: ctx.logger, ...(o.freezeTimeoutMs !== undefined ? { timeoutMs: o.freezeTimeoutMs } : {}), ...(o.quiesceRunner ? { run: o.quiesceRunner } : {}),
      }, snapshotAll)).report;
      ctx.logger.info({ group: o.group, method: report.method, targets: report.targets, freezeMs: report.freezeMs }, 'group snapshots taken inside the quiesce window');
    } else {
      await snapshotAll();
    }
    const group: GroupMeta = {
      id: randomUUID(),
      name: o.group,
      members: preps.map((p) => ({ volume: `${p.vg}/${p.lvName}`, lvUuid: p.lv.uuid, chainId: p.chainId, archiveId: p.archiveId, sequence: p.sequence })),
      quiesce: report
        ? { method: report.method, targets: report.targets, frozenAt: report.frozenAt, freezeMs: report.freezeMs }
        : { method: 'lvm', targets: preps.map((p) => `${p.vg}/${p.lvName}`), frozenAt, freezeMs: Math.round(performance.now() - t0) },
    };
    // One metadata-snapshot reservation per pool for every member's map.
    const headers = preps.map((p) => managedHeader(p, snaps.get(p)!, group));
    const requests: ThinMapRequest[] = preps.map((p, i) => ({
      vg: p.vg, pool: p.pool, chunk: p.chunk, blockSize: headers[i]!.blockSize, volumeSize: headers[i]!.volumeSize, snapThinId: snaps.get(p)!.thinId!,
      base: p.full ? null : { thinId: p.baseInfo!.lv.thinId!, sizeBytes: p.baseInfo!.lv.sizeBytes },
    }));
    const maps = await readThinMaps(requests, {
      exec, logger: ctx.logger, ...(ctx.signal ? { signal: ctx.signal } : {}), ...(o.stateDir !== undefined ? { stateDir: o.stateDir } : {}),
      forceRelease: !!o.forceRelease, ...(o.poolLockTimeoutMs !== undefined ? { lockTimeoutMs: o.poolLockTimeoutMs } : {}), ...(o.tmpDir !== undefined ? { tmpDir: o.tmpDir } : {}),
    });
    const members: SendLvResult[] = [];
    try {
      for (const [i, p] of preps.entries()) {
        done.add(p); // finishManaged discards or promotes its snapshot itself
        members.push(await finishManaged(p, snaps.get(p)!, headers[i]!, lo, ctx, performance.now(), maps[i]));
      }
    } finally {
      for (const m of maps) await m.remove().catch(() => undefined);
    }
    return { group, quiesce: report, members, seconds: (performance.now() - started) / 1000 };
  } finally {
    for (const [p, snapLv] of snaps) {
      if (done.has(p)) continue;
      await discardPendingSnapshot(p.vg, p.name, snapLv, { tools: ctx.cleanup, log: ctx.logger }).catch((e: Error) => ctx.logger.warn({ snapshot: `${p.vg}/${p.name}`, err: e.message }, 'could not remove the pending snapshot'));
    }
    for (const p of [...preps].reverse()) await p.lock.release();
  }
}
