/**
 * send VG/LV: archive a thin LV that stays in use, from pool metadata and a thin snapshot.
 *
 * Managed snapshots (`send VG/LV`): per volume and chain name, one *base* snapshot records what the
 * newest archive of the chain holds. A send
 *   1. checks the thin tools' version, takes the send lock of (LV, chain), reads `lvs VG`;
 *   2. cleans up after interrupted runs: a *pending* snapshot whose archive is committed in the
 *      destination store is made the base (the run died between commit and rotation); any other
 *      pending snapshot is removed; of several bases (a rotation cut short) the newest stays;
 *   3. checks the pool (before any snapshot): data / metadata usage under the thresholds, not
 *      read-only, out of data space, needs_check or failed;
 *   4. creates the new thin snapshot (tagged ours + `ta_pending` + the ids of the archive it is for),
 *      then reserves the metadata snapshot, runs thin_delta base -> new (incremental) or thin_dump of
 *      the new snapshot (full: mapped blocks only) into a temporary file, and releases it;
 *   5. activates the new snapshot read-only, writes the archive from it and commits it (a store file
 *      is durable; a pipe is flushed);
 *   6. only then makes the new snapshot the base (`ta_pending` removed), removes the old base and
 *      deactivates the new one.
 * A base that is not read-only any more (someone ran lvchange -prw) is refused: it may have changed.
 * A failure before the commit removes the new snapshot (only if it carries our tag) and keeps the old
 * base, so the next run simply retries. A run killed outright leaves a pending snapshot, which the
 * next run removes (or promotes, see 2). `--dry-run` does 1-4, counts the map (no data is read) and
 * removes the snapshot: it leaves nothing behind.
 *
 * `--full` on a chain that has a base: a full archive whose parent is the base's archive, in the same
 * chain and sequence order (apply accepts it on a target at the parent, or on a new target).
 *
 * Resized volumes: an archive has the snapshot's size. After a shrink the delta's ranges past the end
 * are clamped. After a growth the area past the base's end is taken from thin_dump of the new snapshot
 * (mapped: DATA, the rest: UNMAP), not from the delta: see grownExtents.
 *
 * User-managed snapshots (`--snapshot VG/SNAP [--base VG/SNAP] [--parent ARCHIVE|DIR]`): nothing is
 * created, tagged or removed. Without --base a full archive (continuing --parent's chain when given);
 * with --base an incremental base -> snapshot on top of --parent, whose header must name the base
 * snapshot's UUID when it records one. A snapshot that is inactive is activated read-only for the
 * read and deactivated afterwards (its permission stays read-only); an active writable one is refused.
 *
 * Tags of managed snapshots (LVM tags: [A-Za-z0-9_+.-]; all values short):
 *   thinarchive                 created by thinarchive: the only LVs it ever removes
 *   ta_origin_<lv uuid>         the volume (lv_uuid survives renames; thin ids are reused)
 *   ta_chain_<name>             the chain name (--chain, default "default")
 *   ta_chainid_<uuid>           the archive chain id
 *   ta_archive_<uuid>           the archive this snapshot's contents are in
 *   ta_seq_<n>                  that archive's sequence in the chain
 *   ta_time_<YYYYMMDDTHHMMSSZ>  when the snapshot was taken (UTC)
 *   ta_pending                  the archive is not committed yet (a base has no ta_pending)
 * Snapshot names: `<lv>_ta_<chain>_<seq>` (or `ta_<archive id prefix>_<seq>` when that is too long).
 */
import { createHash, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import type { NewArchive, WriteProgress } from '../archive/writer.js';
import { ExtentKind } from '../format/constants.js';
import type { ArchiveHeader, MapExtent, SnapshotIdentity } from '../format/types.js';
import { volumeBlocks } from '../format/types.js';
import { silentLogger, type Logger } from '../log.js';
import { createLvmExec, runLvmCommand, type LvmExec } from '../lvm/exec.js';
import { defaultStateDir, withMetadataSnapshot } from '../lvm/metadata-snap.js';
import { assertLvmName, dmName } from '../lvm/names.js';
import { acquirePoolLock, type PoolLock } from '../lvm/pool-lock.js';
import type { PoolStatus } from '../lvm/pool-status.js';
import type { LvInfo } from '../lvm/report.js';
import { openThinDelta } from '../lvm/thin-delta.js';
import { openThinDump } from '../lvm/thin-dump.js';
import {
  activateReadOnly, createThinSnapshot, deactivate, delTag, listLvs, poolStatus, removeLv, thinDelta, thinDump, thinToolsVersion,
  type ToolOptions, type ToolOutput,
} from '../lvm/tools.js';
import { FileVolume } from '../source/volume.js';
import type { StoreOptions } from '../store/open.js';
import { TOOL_VERSION } from '../version.js';
import { openArchiveRef, storeFor } from './inputs.js';
import {
  archiveBlockSizeFor, checkLevel, checkNoFork, dryRunResult, openDestination, poolFileExtents, writeAndCommit, type PoolRange, type SendDestination,
  type SendResult,
} from './send.js';

export const DEFAULT_CHAIN = 'default';
export const DEFAULT_MAX_DATA_PERCENT = 90;
export const DEFAULT_MAX_METADATA_PERCENT = 80;

export const TAG_OURS = 'thinarchive';
export const TAG_PENDING = 'ta_pending';
const P = {
  origin: 'ta_origin_',
  chain: 'ta_chain_',
  chainId: 'ta_chainid_',
  archive: 'ta_archive_',
  seq: 'ta_seq_',
  time: 'ta_time_',
} as const;

const CHAIN_NAME = /^[A-Za-z0-9_+.-]{1,64}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface SendLvOptions {
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
  /** Refuse when the pool's data usage is above this (percent); default 90. */
  maxDataPercent?: number;
  /** Refuse when the pool's metadata usage is above this (percent); default 80. */
  maxMetadataPercent?: number;
  /** Release a metadata snapshot held by someone else (withMetadataSnapshot's `force`). */
  forceRelease?: boolean;
  dryRun?: boolean;
  level?: number;
  /** Locks and reservation records; default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive. */
  stateDir?: string;
  /** Parent of the temporary directory for thin_delta / thin_dump output; default os.tmpdir(). */
  tmpDir?: string;
  exec?: LvmExec;
  logger?: Logger;
  signal?: AbortSignal;
  onProgress?: (p: WriteProgress) => void;
  /** Wait this long for the metadata snapshot's pool lock; default 120 s. */
  poolLockTimeoutMs?: number;
}

export interface SnapshotRef {
  vg: string;
  name: string;
  uuid: string;
  thinId: number;
  createdAt?: string;
}

export interface SendLvResult extends SendResult {
  volume: { vg: string; lv: string | null; lvUuid: string | null };
  /** `VG/POOL` */
  pool: string;
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

// ---------------------------------------------------------------------------------------------
// Tags, names and the pool check (pure)

export interface ChainTags {
  originUuid: string;
  chain: string;
  chainId: string;
  archiveId: string;
  sequence: number;
  createdAt?: string;
}

/** The tags of a managed snapshot (the pending ones include `ta_pending`). */
export function snapshotTags(t: ChainTags & { createdAt: string }, pending: boolean): string[] {
  const time = t.createdAt.replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  const tags = [
    TAG_OURS, `${P.origin}${t.originUuid}`, `${P.chain}${t.chain}`, `${P.chainId}${t.chainId}`, `${P.archive}${t.archiveId}`,
    `${P.seq}${t.sequence}`, `${P.time}${time}`,
  ];
  if (pending) tags.push(TAG_PENDING);
  return tags;
}

/** Read the chain tags of a snapshot; null when a required one is missing or malformed. */
export function parseSnapshotTags(tags: readonly string[]): (ChainTags & { pending: boolean }) | null {
  const one = (prefix: string): string | undefined => {
    const found = tags.filter((t) => t.startsWith(prefix)).map((t) => t.slice(prefix.length));
    return found.length === 1 ? found[0] : undefined;
  };
  const originUuid = one(P.origin);
  const chain = one(P.chain);
  const chainId = one(P.chainId);
  const archiveId = one(P.archive);
  const seq = one(P.seq);
  if (!tags.includes(TAG_OURS) || !originUuid || !chain || !chainId || !archiveId || seq === undefined) return null;
  if (!UUID.test(chainId) || !UUID.test(archiveId) || !/^(0|[1-9][0-9]{0,15})$/.test(seq)) return null;
  const time = one(P.time);
  const m = time === undefined ? null : /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/.exec(time);
  return {
    originUuid, chain, chainId, archiveId, sequence: Number(seq), pending: tags.includes(TAG_PENDING),
    ...(m ? { createdAt: `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}Z` } : {}),
  };
}

/** The name of a managed snapshot. */
export function snapshotName(lv: string, chain: string, sequence: number, archiveId: string): string {
  const name = `${lv}_ta_${chain}_${sequence}`;
  return name.length <= 127 ? name : `ta_${archiveId.slice(0, 8)}_${sequence}`;
}

/** RFC 4122 namespace of the name-based volume UUIDs derived from LVM lv_uuids. */
const LV_UUID_NAMESPACE = '6ee59e3a-e697-47c6-bcae-5db023b20d7a';

/**
 * The archive's volume UUID for an LV. An lv_uuid (32 characters of a 64-letter alphabet) does not fit
 * the header's 16 bytes, so the header gets the name-based (version 5, SHA-1) UUID of the lv_uuid:
 * stable for the LV's life, whatever it is renamed to. The lv_uuid itself is in meta.volume.lvUuid.
 */
export function volumeUuidForLv(lvUuid: string): string {
  const h = createHash('sha1').update(Buffer.from(LV_UUID_NAMESPACE.replace(/-/g, ''), 'hex')).update(lvUuid, 'utf8').digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

export function checkChainName(chain: string): void {
  if (!CHAIN_NAME.test(chain)) throw new UsageError(`bad chain name ${JSON.stringify(chain)}: 1 to 64 of A-Z a-z 0-9 _ + . -`);
}

export interface PoolLimits {
  maxDataPercent: number;
  maxMetadataPercent: number;
}

/** Refuse (UnsafeError) to snapshot on a pool that is full, nearly full, read-only or damaged. */
export function checkPoolForSend(pool: string, st: PoolStatus, limits: PoolLimits): void {
  if (st.state !== 'ok') {
    throw new UnsafeError('POOL_FAILED', `thin pool ${pool} reports "${st.state === 'fail' ? 'Fail' : 'Error'}" (failure mode): repair it (lvconvert --repair) before sending`);
  }
  if (st.needsCheck) throw new UnsafeError('POOL_NEEDS_CHECK', `thin pool ${pool} is flagged needs_check: run thin_check / lvconvert --repair before sending`);
  if (st.mode === 'ro') throw new UnsafeError('POOL_READ_ONLY', `thin pool ${pool} is read-only (metadata error or full metadata): not snapshotting it`);
  if (st.mode === 'out_of_data_space') {
    throw new UnsafeError('POOL_OUT_OF_SPACE', `thin pool ${pool} is out of data space: extend it (lvextend) before sending`);
  }
  const pct = (v: number): string => `${v.toFixed(1)}%`;
  if (st.dataPercent > limits.maxDataPercent) {
    throw new UnsafeError('POOL_DATA_FULL', `thin pool ${pool} data usage is ${pct(st.dataPercent)}, above the limit of ${limits.maxDataPercent}% `
      + '(--max-data-percent): a snapshot keeps blocks the volume overwrites, so it could fill the pool; free or add space, or raise --max-data-percent');
  }
  if (st.metadataPercent > limits.maxMetadataPercent) {
    throw new UnsafeError('POOL_METADATA_FULL', `thin pool ${pool} metadata usage is ${pct(st.metadataPercent)}, above the limit of ${limits.maxMetadataPercent}% `
      + '(--max-metadata-percent): extend the pool metadata (lvextend --poolmetadatasize) or raise --max-metadata-percent');
  }
}

/** What a chain's managed snapshots say: the base, pending snapshots of dead runs, older bases. */
export interface ChainSnapshots {
  base: { lv: LvInfo; tags: ChainTags } | null;
  pending: { lv: LvInfo; tags: ChainTags }[];
  olderBases: LvInfo[];
}

/** Sort a chain's managed snapshots (those tagged ours, with this origin and chain name). */
export function classifyChainSnapshots(lvs: readonly LvInfo[], originUuid: string, chain: string): ChainSnapshots {
  const out: ChainSnapshots = { base: null, pending: [], olderBases: [] };
  const bases: { lv: LvInfo; tags: ChainTags }[] = [];
  for (const lv of lvs) {
    if (!lv.tags.includes(TAG_OURS) || !lv.tags.includes(`${P.origin}${originUuid}`) || !lv.tags.includes(`${P.chain}${chain}`)) continue;
    // This scheme has no version tag; a later one adds ta_fmt_<n> (docs/LVM-METADATA.md): never use or remove such a snapshot.
    const fmt = lv.tags.find((t) => t.startsWith('ta_fmt_'));
    if (fmt) throw new UnsafeError('BAD_CHAIN_TAGS', `${lv.vg}/${lv.name} is a thinarchive snapshot of chain ${chain} in tag scheme ${fmt}, which this version does not know; use a newer thinarchive`);
    const tags = parseSnapshotTags(lv.tags);
    if (!tags) {
      if (lv.tags.includes(TAG_PENDING)) {
        // Created by a run that died before its tags were all readable: still ours and pending.
        out.pending.push({ lv, tags: { originUuid, chain, chainId: '', archiveId: '', sequence: -1 } });
        continue;
      }
      throw new UnsafeError('BAD_CHAIN_TAGS', `${lv.vg}/${lv.name} is tagged as a thinarchive snapshot of chain ${chain} but its tags (${lv.tags.join(',')}) are incomplete; `
        + 'fix or remove it (lvremove) before sending this chain');
    }
    if (tags.pending) out.pending.push({ lv, tags });
    else bases.push({ lv, tags });
  }
  bases.sort((a, b) => b.tags.sequence - a.tags.sequence);
  if (bases.length > 0) {
    const ids = new Set(bases.map((b) => b.tags.chainId));
    if (ids.size > 1) {
      throw new UnsafeError('CHAIN_CONFUSED', `chain ${chain} has base snapshots of different archive chains: `
        + `${bases.map((b) => `${b.lv.name} (chain ${b.tags.chainId}, sequence ${b.tags.sequence})`).join(', ')}; remove the wrong ones (lvremove)`);
    }
    out.base = bases[0];
    out.olderBases = bases.slice(1).map((b) => b.lv);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

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
    throw new UsageError(`${what} must be VG/LV, got ${JSON.stringify(ref)}`);
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
  return { vg: lv.vg, name: lv.name, uuid: lv.uuid, thinId: lv.thinId!, ...(createdAt ? { createdAt } : {}) };
}

function identity(r: SnapshotRef): SnapshotIdentity {
  return { name: `${r.vg}/${r.name}`, uuid: r.uuid, thinId: r.thinId, ...(r.createdAt ? { createdAt: r.createdAt } : {}) };
}

async function* asData(ranges: AsyncIterable<{ begin: number; length: number }>): AsyncGenerator<PoolRange> {
  for await (const r of ranges) yield { begin: r.begin, length: r.length, kind: 'data' };
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

/** The map files of a transfer: the delta (incremental) or dump (full), and a dump of a grown volume. */
interface MapFiles {
  main: ToolOutput;
  /** Incremental of a volume grown since the base: thin_dump of the new snapshot, for the new area. */
  grown: ToolOutput | null;
}

/** The first archive block of the area an incremental takes from thin_dump (past the base's end), or null. */
function grownFrom(t: Transfer): number | null {
  if (!t.base || t.baseSize === undefined || t.baseSize >= t.header.volumeSize) return null;
  return Math.floor(t.baseSize / t.header.blockSize);
}

async function mapFromMetadata(t: Transfer, o: SendLvOptions, ctx: Ctx): Promise<MapFiles> {
  const pool = { vg: t.vg, pool: t.pool };
  return withMetadataSnapshot(pool, {
    ...(o.stateDir !== undefined ? { stateDir: o.stateDir } : {}),
    force: !!o.forceRelease, logger: ctx.logger, exec: ctx.exec,
    ...(o.poolLockTimeoutMs !== undefined ? { lockTimeoutMs: o.poolLockTimeoutMs } : {}),
    ...(ctx.signal ? { signal: ctx.signal } : {}),
  }, async (tmeta, held) => {
    const signal = ctx.signal ? AbortSignal.any([ctx.signal, held.signal]) : held.signal;
    const run = { exec: ctx.exec, signal, ...(o.tmpDir !== undefined ? { dir: o.tmpDir } : {}) };
    if (!t.base) return { main: await thinDump(tmeta, t.snap.thinId, run), grown: null };
    const main = await thinDelta(tmeta, t.base.thinId, t.snap.thinId, run);
    try {
      return { main, grown: grownFrom(t) === null ? null : await thinDump(tmeta, t.snap.thinId, run) };
    } catch (e) {
      await main.remove();
      throw e;
    }
  });
}

/**
 * An incremental of a volume grown since its base: the delta's extents before block `from`, then the
 * new snapshot's whole map from there (mapped: DATA, the rest: UNMAP). The delta alone is not enough
 * there: the area past the base's end held whatever the target holds there (an image reads zeroes, an
 * LV target older data), and lvreduce keeps the pool's mappings past the new end, so a volume grown
 * again reads old data there that thin_delta calls `same`.
 */
async function* grownExtents(delta: AsyncIterable<MapExtent>, dump: AsyncIterable<MapExtent>, from: number, blocks: number): AsyncGenerator<MapExtent> {
  for await (const e of delta) {
    if (e.firstBlock >= from) continue;
    yield { ...e, blockCount: Math.min(e.blockCount, from - e.firstBlock) };
  }
  let at = from;
  for await (const e of dump) {
    const end = e.firstBlock + e.blockCount;
    if (end <= from) continue;
    const first = Math.max(e.firstBlock, from);
    if (first > at) yield { firstBlock: at, blockCount: first - at, kind: ExtentKind.UNMAP };
    yield { firstBlock: first, blockCount: end - first, kind: ExtentKind.DATA };
    at = end;
  }
  if (at < blocks) yield { firstBlock: at, blockCount: blocks - at, kind: ExtentKind.UNMAP };
}

/** The archive extents of the map files: checks they are about the right devices and pool block size. */
function mapExtents(t: Transfer, files: MapFiles): AsyncGenerator<MapExtent> {
  const from = grownFrom(t);
  if (files.grown && from !== null) {
    const { blockSize, volumeSize } = t.header;
    return grownExtents(mapFile(t, files.main.path, t.base), mapFile(t, files.grown.path, null), from, volumeBlocks(volumeSize, blockSize));
  }
  return mapFile(t, files.main.path, t.base);
}

/** The extents of one map file: a thin_delta from `base` to the snapshot, or (base null) its thin_dump. */
function mapFile(t: Transfer, file: string, base: SnapshotRef | null): AsyncGenerator<MapExtent> {
  const { blockSize, volumeSize } = t.header;
  const checkChunk = (bytes: number): void => {
    if (bytes !== t.chunk) {
      throw new ThinarchiveError('POOL_CHUNK_MISMATCH', `${file}: the pool metadata says blocks of ${bytes} bytes, lvs says the pool's chunk size is ${t.chunk}`);
    }
  };
  if (base) {
    return poolFileExtents(file, async (stream) => {
      const d = await openThinDelta(stream, { file });
      checkChunk(d.header.blockSizeBytes);
      if ((d.header.snap1 !== undefined && d.header.snap1 !== base.thinId) || (d.header.snap2 !== undefined && d.header.snap2 !== t.snap.thinId)) {
        throw new ThinarchiveError('DELTA_DEVICES', `${file}: thin_delta compared devices ${d.header.snap1} and ${d.header.snap2}, not ${base.thinId} and ${t.snap.thinId}`);
      }
      return { poolBytes: d.header.blockSizeBytes, ranges: d.ranges };
    }, blockSize, volumeSize);
  }
  return poolFileExtents(file, async (stream) => {
    const d = await openThinDump(stream, { devId: t.snap.thinId, file });
    checkChunk(d.header.blockSizeBytes);
    return { poolBytes: d.header.blockSizeBytes, ranges: asData(d.ranges) };
  }, blockSize, volumeSize);
}

/** Map, then count (dry run) or read the snapshot and write + commit the archive. */
async function transfer(t: Transfer, o: SendLvOptions, ctx: Ctx, started: number): Promise<SendResult> {
  const map = await mapFromMetadata(t, o, ctx);
  try {
    if (o.dryRun) return await dryRunResult(t.header, mapExtents(t, map), started);
    ctx.signal?.throwIfAborted();
    const dest = await openDestination(o.to, t.header, o.storeOptions);
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
          header: t.header, extents: mapExtents(t, map), source, level: o.level, signal: ctx.signal, onProgress: o.onProgress, started,
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
    await map.main.remove();
    await map.grown?.remove();
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
      source: { kind: 'lv', path: `/dev/${o.snap.vg}/${o.snap.name}` },
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
  const limits = {
    maxDataPercent: percentOption(o.maxDataPercent, DEFAULT_MAX_DATA_PERCENT, '--max-data-percent'),
    maxMetadataPercent: percentOption(o.maxMetadataPercent, DEFAULT_MAX_METADATA_PERCENT, '--max-metadata-percent'),
  };
  checkPoolForSend(`${vg}/${pool}`, await poolStatus(vg, pool, ctx.tools), limits);
  return { pool, chunk: poolLv.chunkSizeBytes };
}

async function storeHolds(to: SendDestination, chainId: string, archiveId: string, storeOptions?: StoreOptions): Promise<boolean> {
  if (typeof to !== 'string' || !UUID.test(chainId)) return false;
  return (await (await storeFor(to, storeOptions)).chainArchives(chainId)).some((a) => a.archiveId === archiveId);
}

export async function sendLv(o: SendLvOptions): Promise<SendLvResult> {
  const started = performance.now();
  checkLevel(o.level);
  // Commands are logged (debug) through the caller's logger.
  const exec = o.exec ?? (o.logger ? createLvmExec({ logger: o.logger }) : runLvmCommand);
  const ctx: Ctx = {
    exec, logger: o.logger ?? silentLogger, ...(o.signal ? { signal: o.signal } : {}),
    tools: { exec, ...(o.signal ? { signal: o.signal } : {}) }, cleanup: { exec },
  };
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

async function sendManaged(o: SendLvOptions, ctx: Ctx, started: number): Promise<SendLvResult> {
  const { vg, lv: lvName } = parseRef(o.volume!, 'LV');
  const chain = o.chain ?? DEFAULT_CHAIN;
  checkChainName(chain);
  const log = ctx.logger;
  const stateDir = o.stateDir ?? defaultStateDir();
  // One send per volume and chain at a time: a second one would take the first's new snapshot for
  // the pending snapshot of a dead run. (Keyed by name: the uuid is not known before lvs.)
  let lock: PoolLock;
  try {
    lock = await acquirePoolLock(join(stateDir, 'locks', `send-${dmName(vg, lvName)}-${chain}.lock`), {
      timeoutMs: 0, logger: log, what: `${vg}/${lvName} chain ${chain}`,
    });
  } catch (e) {
    if (e instanceof ThinarchiveError && e.code === 'POOL_LOCKED') {
      throw new ThinarchiveError('SEND_IN_PROGRESS', `another send of ${vg}/${lvName} chain ${chain} is running: ${e.message}`);
    }
    throw e;
  }
  try {
    const removed: string[] = [];
    const recovered: string[] = [];
    const warnings: string[] = [];
    let lvs = await listLvs(vg, ctx.tools);
    const lv = findLv(lvs, vg, lvName);
    requireThin(lv, 'the volume');
    if (lv.tags.includes(TAG_OURS)) throw new UsageError(`${vg}/${lvName} is a snapshot thinarchive manages; send its origin`);

    // Interrupted runs: promote a pending snapshot whose archive is committed, remove the others.
    let snaps = classifyChainSnapshots(lvs, lv.uuid, chain);
    let changed = false;
    for (const p of snaps.pending) {
      if (p.tags.archiveId && (await storeHolds(o.to, p.tags.chainId, p.tags.archiveId, o.storeOptions))
        && (!snaps.base || (p.tags.chainId === snaps.base.tags.chainId && p.tags.sequence > snaps.base.tags.sequence))) {
        log.warn({ snapshot: `${vg}/${p.lv.name}`, archiveId: p.tags.archiveId }, 'a run died after committing its archive: making its snapshot the base');
        await delTag(vg, p.lv.name, TAG_PENDING, ctx.tools);
        recovered.push(p.lv.name);
      } else {
        log.warn({ snapshot: `${vg}/${p.lv.name}` }, 'removing the pending snapshot of an interrupted send');
        await removeLv(vg, p.lv.name, { ...ctx.tools, requireTag: TAG_OURS });
        removed.push(p.lv.name);
      }
      changed = true;
    }
    if (changed) {
      lvs = await listLvs(vg, ctx.tools);
      snaps = classifyChainSnapshots(lvs, lv.uuid, chain);
    }
    for (const old of snaps.olderBases) {
      log.warn({ snapshot: `${vg}/${old.name}` }, 'removing an older base snapshot left by an interrupted send');
      await removeLv(vg, old.name, { ...ctx.tools, requireTag: TAG_OURS });
      removed.push(old.name);
    }
    const baseInfo = snaps.base;
    if (baseInfo) {
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
    await thinToolsVersion(full ? 'thin_dump' : 'thin_delta', ctx.tools);
    const { pool, chunk } = await poolChecks(vg, lv, lvs, o, ctx);
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
    }

    const createdAt = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const name = snapshotName(lvName, chain, sequence, archiveId);
    const tags = snapshotTags({ originUuid: lv.uuid, chain, chainId, archiveId, sequence, createdAt }, true);
    ctx.signal?.throwIfAborted();
    let snapLv: LvInfo | undefined;
    let committed = false;
    let result: SendResult;
    try {
      snapLv = await createThinSnapshot(vg, lvName, name, tags, ctx.tools);
      log.info({ snapshot: `${vg}/${name}`, thinId: snapLv.thinId }, 'created the snapshot');
      const snap = refOf(snapLv, createdAt);
      const base = full ? null : refOf(baseInfo!.lv, baseInfo!.tags.createdAt);
      const header = poolHeader({
        full, blockSize, chunk, archiveId, parentId, chainId, sequence, volumeUuid: volumeUuidForLv(lv.uuid), volumeSize: snapLv.sizeBytes,
        volume: { vg, lv: lvName, lvUuid: lv.uuid }, snap, base: full ? null : base,
      });
      result = await transfer({
        vg, pool, chunk, header, snap, base, ...(base ? { baseSize: baseInfo!.lv.sizeBytes } : {}),
        activate: async () => ({
          dev: await activateReadOnly(vg, name, ctx.tools),
          restore: () => deactivate(vg, name, ctx.cleanup),
        }),
      }, o, ctx, started);
      committed = !o.dryRun;
    } finally {
      if (!committed) {
        // Nothing committed: the new snapshot goes (only if it is ours), the old base stays.
        try {
          const exists = snapLv ?? (await listLvs(vg, ctx.cleanup)).find((l) => l.name === name && l.tags.includes(TAG_PENDING));
          if (exists) {
            await removeLv(vg, name, { ...ctx.cleanup, requireTag: TAG_OURS });
            removed.push(name);
          }
        } catch (e) {
          log.warn({ snapshot: `${vg}/${name}`, err: (e as Error).message }, 'could not remove the new snapshot; the next send removes it');
        }
      }
    }

    const snap = refOf(snapLv!, createdAt);
    const base = baseInfo ? refOf(baseInfo.lv, baseInfo.tags.createdAt) : null;
    if (committed) {
      // The archive is durable: the new snapshot becomes the base, the old one goes.
      try {
        await delTag(vg, name, TAG_PENDING, ctx.cleanup);
      } catch (e) {
        warnings.push(`the archive is committed but ${vg}/${name} could not be made the base (${(e as Error).message}); the next send to this store completes that`);
      }
      if (baseInfo && warnings.length === 0) {
        try {
          await removeLv(vg, baseInfo.lv.name, { ...ctx.cleanup, requireTag: TAG_OURS });
          removed.push(baseInfo.lv.name);
        } catch (e) {
          warnings.push(`could not remove the old base ${vg}/${baseInfo.lv.name} (${(e as Error).message}); the next send removes it`);
        }
      }
      for (const w of warnings) log.warn({ volume: `${vg}/${lvName}` }, w);
    }
    return {
      ...result!, volume: { vg, lv: lvName, lvUuid: lv.uuid }, pool: `${vg}/${pool}`, poolChunkSize: chunk, managed: true, chain,
      snapshot: snap, base: full ? null : base, removed, recovered, warnings,
    };
  } finally {
    await lock.release();
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
      const dev = await activateReadOnly(vg, s.lv, ctx.tools);
      return { dev, restore: async () => (wasActive ? undefined : deactivate(vg, s.lv, ctx.cleanup)) };
    },
  }, o, ctx, started);
  return {
    ...result, volume, pool: `${vg}/${pool}`, poolChunkSize: chunk, managed: false, chain: null, snapshot: snap, base, removed: [], recovered: [], warnings: [],
  };
}
