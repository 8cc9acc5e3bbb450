/**
 * LV targets (`apply --to VG/LV`, thin or thick): opening (create, activate, exclusive open, size),
 * state in LV tags (lv-tags.ts; docs/LVM-METADATA.md), zeroing without allocating pool space, target
 * and rollback snapshots, and recovery of an interrupted apply. Zeroing: docs/LVM.md; recovery: docs/JOURNAL.md.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import { defaultStateDir, sysBlockDir } from '../fsutil.js';
import { silentLogger, type Logger } from '../log.js';
import { createLvmExec, type LvmExec } from '../lvm/exec.js';
import { assertLvmName, isLvmName, lvDevicePath } from '../lvm/names.js';
import type { LvInfo } from '../lvm/report.js';
import { checkPoolHealth } from '../lvm/pool-status.js';
import { changeTags, deactivate, lvByName, openCount, poolSettings, poolStatus, removeLv, requireLv, vgLvs } from '../lvm/tools.js';
import { thinio, type ThinIO } from '../native.js';
import { FileTarget, type ZeroMethod, type ZeroStats } from './file-target.js';
import { type TargetState, type TargetStateStore } from './state.js';
import { ourSnapshots, rollbackOfTag, snapOfTag, stateTags, stateToTags, tag, tagsToState, TAG_CREATED, TAG_ROLLBACK, TAG_SNAP, type TargetSnapshot } from './lv-tags.js';
import { journalExists, readJournal, removeJournal, replayJournal } from './undo-journal.js';


/** The undo journal of a thick LV target: STATE_DIR/lv/VG/LV.undo (thin LVs use a rollback snapshot). */
export function lvUndoFile(vg: string, lv: string, stateDir = defaultStateDir()): string {
  return join(stateDir, 'lv', vg, `${lv}.undo`);
}

// ---------------------------------------------------------------------------------------------
// Target spec

export interface LvRef {
  vg: string;
  lv: string;
}

/** A path's kind (`dir` or `other`), null when nothing is there. */
export async function pathKind(p: string): Promise<'dir' | 'other' | null> {
  try {
    return (await stat(p)).isDirectory() ? 'dir' : 'other';
  } catch {
    return null;
  }
}

/**
 * `VG/LV` as an apply target: two valid LVM names, and not an existing path (an existing file or
 * device, or a new image inside an existing directory `VG`, is a path). null: not an LV target.
 */
export async function lvTargetSpec(to: string): Promise<LvRef | null> {
  const m = /^([^/]+)\/([^/]+)$/.exec(to);
  if (!m || !isLvmName(m[1]!) || !isLvmName(m[2]!)) return null;
  if ((await pathKind(to)) !== null) return null;
  if ((await pathKind(m[1]!)) === 'dir') return null;
  return { vg: m[1]!, lv: m[2]! };
}

/** `--pool VG/POOL` or `--pool POOL` (in the target's VG). */
export function parsePoolSpec(spec: string, targetVg: string): string {
  const m = /^(?:([^/]+)\/)?([^/]+)$/.exec(spec);
  if (!m) throw new UsageError(`--pool ${JSON.stringify(spec)}: want VG/POOL`);
  const vg = m[1] ?? targetVg;
  assertLvmName(vg, 'VG');
  assertLvmName(m[2]!, 'pool');
  if (vg !== targetVg) throw new UsageError(`--pool ${spec} is in VG ${vg}, the target LV is in VG ${targetVg}: a thin LV lives in its pool's VG`);
  return m[2]!;
}


/** The block queue's discard limits of a device node, from sysfs. null when unreadable. */
async function discardLimits(devicePath: string): Promise<{ granularity: number; maxBytes: number } | null> {
  try {
    const q = `${await sysBlockDir(devicePath)}/queue`;
    const read = async (f: string): Promise<number> => Number((await readFile(`${q}/${f}`, 'utf8')).trim());
    const granularity = await read('discard_granularity');
    const maxBytes = await read('discard_max_bytes');
    if (!Number.isSafeInteger(granularity) || !Number.isSafeInteger(maxBytes)) return null;
    return { granularity, maxBytes };
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// State store

/** TargetState in the tags of an LV (see the module comment for the scheme). */
export class LvTagStateStore implements TargetStateStore {
  readonly where: string;
  /** The LV's tags as last read (the next write's starting point; every write reads them back). */
  private known: string[] | undefined;
  private primed: string[] | undefined;

  constructor(
    private readonly exec: LvmExec,
    readonly vg: string,
    readonly lv: string,
    readonly uuid: string,
  ) {
    this.where = `the tags of logical volume ${vg}/${lv}`;
  }

  /** Tags just listed by the caller: the next read() uses them instead of listing again. */
  prime(tags: readonly string[]): void {
    this.primed = [...tags];
  }

  async read(): Promise<TargetState | null> {
    const tags = this.primed ?? (await requireLv(this.exec, this.vg, this.lv, this.uuid)).tags;
    this.primed = undefined;
    this.known = tags;
    return tagsToState(tags, `${this.vg}/${this.lv}`);
  }

  async write(s: TargetState | null): Promise<void> {
    const want = s ? stateToTags(s) : [];
    this.primed = undefined;
    const cur = this.known ?? (await requireLv(this.exec, this.vg, this.lv, this.uuid)).tags;
    const del = stateTags(cur).filter((t) => !want.includes(t));
    const add = want.filter((t) => !cur.includes(t));
    this.known = undefined;
    await changeTags(this.exec, this.vg, this.lv, del, add);
    const now = (await requireLv(this.exec, this.vg, this.lv, this.uuid)).tags;
    this.known = now;
    const back = stateTags(now).sort();
    const sorted = [...want].sort();
    if (back.length !== sorted.length || back.some((t, i) => t !== sorted[i])) {
      throw new ThinarchiveError('TARGET_STATE_WRITE', `writing the state of ${this.vg}/${this.lv} did not stick: wanted tags ${sorted.join(',')}, read back ${back.join(',')}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Zeroing on a thin LV

/**
 * The zero methods of a thin LV whose pool accepts discards: whole chunks are discarded, the
 * unaligned head and tail zeroed out; then plain BLKZEROOUT as the fallback. `stats()` returns the
 * target's ZeroStats (FileTarget credits the whole range to the method's stat: the zeroed-out head
 * and tail are moved from "punched" to "zeroedOut" here).
 */
export function thinZeroMethods(
  unit: number, stats: () => ZeroStats | undefined, io: Pick<ThinIO, 'blkDiscard' | 'blkZeroOut'> = thinio(),
): ZeroMethod[] {
  const discard: ZeroMethod = {
    stat: 'punched',
    broken: false,
    run: (fd, offset, length) => {
      const end = offset + length;
      const a = Math.ceil(offset / unit) * unit;
      const b = Math.floor(end / unit) * unit;
      let zeroed = 0;
      if (b <= a) {
        io.blkZeroOut(fd, offset, length);
        zeroed = length;
      } else {
        io.blkDiscard(fd, a, b - a); // unsupported: FileTarget falls back to the next method (logged)
        if (a > offset) io.blkZeroOut(fd, offset, a - offset);
        if (end > b) io.blkZeroOut(fd, b, end - b);
        zeroed = a - offset + (end - b);
      }
      const z = stats();
      if (z && zeroed > 0) {
        z.zeroedOut += zeroed;
        z.punched -= zeroed;
      }
    },
  };
  return [discard, { stat: 'zeroedOut', broken: false, run: io.blkZeroOut }];
}

// ---------------------------------------------------------------------------------------------
// Opening

export interface TargetSnapshots {
  created: TargetSnapshot[];
  removed: string[];
  /** our snapshots of the target after this run, newest first */
  kept: TargetSnapshot[];
}

export interface LvTargetReport {
  vg: string;
  lv: string;
  uuid: string;
  thin: boolean;
  pool: string | null;
  created: boolean;
  activated: boolean;
  /** how ranges are zeroed: 'discard' (whole chunks; head/tail zeroed out), 'zeroout', or 'default' (thick) */
  zeroing: 'discard' | 'zeroout' | 'default';
  /** the unit discards are aligned to (bytes), 0 when not discarding */
  discardUnit: number;
  /** why discards are not used, when they are not (thin LVs) */
  noDiscardReason?: string;
}

export interface OpenLvTargetOptions extends LvRef {
  /** create a thin LV in this pool (same VG) of `createSize` bytes */
  createPool?: string;
  createSize?: number;
  /** the largest volume size of the archives to apply */
  neededSize: number;
  /** archive block size (for the skip-zeroing check) */
  blockSize: number;
  snapshot?: { keep?: number };
  exec?: LvmExec;
  log?: Logger;
  /** where a thick LV's undo journal is kept (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive) */
  stateDir?: string;
}

export class LvTarget {
  readonly snapshots: TargetSnapshots = { created: [], removed: [], kept: [] };
  private closed = false;
  private rollbackName: string | undefined;

  private constructor(
    readonly target: FileTarget,
    readonly report: LvTargetReport,
    private readonly exec: LvmExec,
    private readonly log: Logger,
    private readonly snapshotOpts: { keep?: number } | undefined,
  ) {}

  static async open(o: OpenLvTargetOptions): Promise<LvTarget> {
    const { vg, lv } = o;
    assertLvmName(vg, 'VG');
    assertLvmName(lv, 'LV');
    const log = o.log ?? silentLogger;
    const exec = o.exec ?? createLvmExec({ logger: log });
    const where = `${vg}/${lv}`;
    if (o.snapshot?.keep !== undefined && (!Number.isInteger(o.snapshot.keep) || o.snapshot.keep < 1)) {
      throw new UsageError('--keep must be an integer of at least 1');
    }

    let all = await vgLvs(exec, vg);
    let info = lvByName(all, lv);
    let created = false;
    if (o.createPool !== undefined) {
      if (info) throw new UnsafeError('TARGET_EXISTS', `logical volume ${where} exists already; --create makes a new thin LV (drop --create to apply to it)`);
      const pool = lvByName(all, o.createPool);
      if (!pool || !pool.isThinPool) throw new UsageError(`--pool ${vg}/${o.createPool}: ${pool ? 'not a thin pool' : 'no such LV'}`);
      const size = o.createSize ?? o.neededSize;
      if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) throw new UsageError(`cannot create an LV of ${size} bytes (not a positive multiple of 512)`);
      await exec(['lvcreate', '-V', `${size}b`, '-T', `${vg}/${o.createPool}`, '-n', lv, '--addtag', TAG_CREATED]);
      all = await vgLvs(exec, vg);
      info = lvByName(all, lv);
      if (!info) throw new UnsafeError('LV_GONE', `logical volume ${where} was created but is not listed`);
      created = true;
      log.info({ target: where, pool: `${vg}/${o.createPool}`, size: info.sizeBytes }, 'created the target thin LV');
    }
    if (!info) throw new ThinarchiveError('LV_NOT_FOUND', `logical volume ${where} not found (use --create --pool ${vg}/POOL to make a new thin LV)`);

    let activated = false;
    let target: FileTarget | undefined;
    const undo = async (): Promise<void> => {
      await target?.close().catch(() => {});
      if (created) await removeLv(vg, lv, { exec, requireTag: TAG_CREATED }).catch((e) => log.warn({ target: where, err: String(e) }, 'could not remove the LV created for this run'));
      else if (activated) await deactivate(vg, lv, { exec }).catch(() => {});
    };
    try {
      if (info.isThinPool || info.hidden || !'-VomMrRCv'.includes(info.attr[0]!)) {
        throw new UsageError(`${where} (lv_attr ${info.attr}) is not a volume apply can write to`);
      }
      if (info.tags.includes(TAG_SNAP)) throw new UnsafeError('TARGET_IS_SNAPSHOT', `${where} is a target snapshot kept by --snapshot-target; apply to its origin, or to a new LV`);
      if (info.tags.includes(TAG_ROLLBACK)) throw new UnsafeError('TARGET_IS_SNAPSHOT', `${where} is the rollback snapshot of an apply to ${info.origin ?? 'another LV'}; run thinarchive recover on that LV`);
      if (info.readOnly) throw new UnsafeError('TARGET_READONLY', `${where} is read-only (lv_attr ${info.attr})`);
      const thin = info.isThinVolume;
      if (o.snapshot && !thin) throw new UsageError(`--snapshot-target needs a thin LV; ${where} is not one (lv_attr ${info.attr})`);

      if (!info.active) {
        await exec(['lvchange', '-ay', ...(info.activationSkip ? ['-K'] : []), where]);
        activated = true;
      }
      const devicePath = lvDevicePath(vg, lv);

      const report: LvTargetReport = {
        vg, lv, uuid: info.uuid, thin, pool: info.pool, created, activated, zeroing: 'default', discardUnit: 0,
      };
      let zeroMethods: ZeroMethod[] | undefined;
      let statsRef: ZeroStats | undefined;
      if (thin) {
        const plan = await planThinZeroing(exec, all, vg, info, devicePath, o.blockSize);
        report.zeroing = plan.unit > 0 ? 'discard' : 'zeroout';
        report.discardUnit = plan.unit;
        if (plan.reason) report.noDiscardReason = plan.reason;
        if (plan.unit > 0) {
          zeroMethods = thinZeroMethods(plan.unit, () => statsRef);
          log.info({ target: where, unit: plan.unit }, 'zeroing on the thin LV: whole chunks discarded (unmapped), unaligned head/tail zeroed out');
        } else {
          zeroMethods = [{ stat: 'zeroedOut', broken: false, run: thinio().blkZeroOut }];
          log.warn({ target: where, reason: plan.reason }, 'zeroing on the thin LV falls back to BLKZEROOUT: zeroed ranges will allocate pool space');
        }
      }

      const store = new LvTagStateStore(exec, vg, lv, info.uuid);
      store.prime(info.tags); // listed a moment ago: apply's first readState() need not list again
      target = await FileTarget.openWith(devicePath, {
        kind: 'lv', stateStore: store, ...(zeroMethods ? { zeroMethods } : {}),
        // thick LVs: an undo journal like a block device's (thin LVs: the rollback snapshot)
        ...(thin ? {} : { undoPath: lvUndoFile(vg, lv, o.stateDir) }),
      });
      statsRef = target.zeroStats;
      target.log = log;
      const opens = await openCount(exec, vg, lv);
      if (opens !== target.descriptors) {
        throw new UnsafeError('TARGET_BUSY', `target ${where} is open elsewhere (device-mapper open count ${opens}, ${target.descriptors} of them this process's); refusing to write`);
      }
      if (target.size < o.neededSize) {
        throw new UnsafeError('TARGET_TOO_SMALL', `target ${where} has ${target.size} bytes, the volume needs ${o.neededSize}: grow it (lvextend -L ${o.neededSize}b ${where}) or apply to a new LV with --create --pool`);
      }
      return new LvTarget(target, report, exec, log, o.snapshot);
    } catch (e) {
      await undo();
      throw e;
    }
  }

  /** After an archive is applied and the state is clean: keep a read-only snapshot (with --snapshot-target). */
  async afterClean(s: { archiveId: string; sequence: number; chainId: string; volumeUuid: string }): Promise<void> {
    if (!this.snapshotOpts) return;
    const { vg, lv, uuid } = this.report;
    let all = await vgLvs(this.exec, vg);
    let ours = ourSnapshots(all, uuid);
    if (!ours.some((x) => x.archiveId === s.archiveId)) {
      const taken = Date.now();
      let name = `${lv}_ta_${s.sequence}`;
      if (lvByName(all, name)) name = `${lv}_ta_${s.sequence}_${s.archiveId.slice(0, 8)}`;
      if (lvByName(all, name)) throw new UnsafeError('SNAPSHOT_NAME_TAKEN', `cannot name the target snapshot: ${vg}/${name} exists`);
      assertLvmName(name, 'snapshot LV');
      const tags = [TAG_SNAP, snapOfTag(uuid), tag('archive', s.archiveId), tag('seq', s.sequence), tag('chainid', s.chainId), tag('volume', s.volumeUuid), tag('taken', taken)];
      const argv = ['lvcreate', '-s', '-pr', '-n', name];
      for (const t of tags) argv.push('--addtag', t);
      argv.push(`${vg}/${lv}`);
      await this.exec(argv);
      all = await vgLvs(this.exec, vg);
      const snap = lvByName(all, name);
      if (!snap || !snap.isThinVolume || snap.origin !== lv || !snap.readOnly) {
        throw new ThinarchiveError('NOT_THIN_SNAPSHOT', `${vg}/${name} was created but is not a read-only thin snapshot of ${lv} (attr ${snap?.attr ?? 'none'})`);
      }
      this.snapshots.created.push({ name, uuid: snap.uuid, archiveId: s.archiveId, sequence: s.sequence, chainId: s.chainId, takenAt: new Date(taken).toISOString() });
      this.log.info({ target: `${vg}/${lv}`, snapshot: name, sequence: s.sequence }, 'target snapshot taken');
      ours = ourSnapshots(all, uuid);
    }
    const keep = this.snapshotOpts.keep;
    if (keep !== undefined && ours.length > keep) {
      for (const old of ours.slice(keep)) {
        // removeLv checks the tag again on a fresh listing: only our snapshots of this LV go.
        await removeLv(vg, old.name, { exec: this.exec, requireTag: snapOfTag(uuid) });
        this.snapshots.removed.push(old.name);
        this.log.info({ target: `${vg}/${lv}`, snapshot: old.name }, 'old target snapshot removed (--keep)');
      }
      ours = ours.slice(0, keep);
    }
    this.snapshots.kept = ours;
  }

  /**
   * Before an archive is written to a thin LV: take its rollback snapshot (a thin snapshot of the LV
   * as it is, carrying a copy of the LV's state tags). Made before the state says "applying".
   */
  async takeRollbackSnapshot(archiveId: string): Promise<void> {
    const { vg, lv, uuid } = this.report;
    const all = await vgLvs(this.exec, vg);
    for (const old of all.filter((l) => l.tags.includes(TAG_ROLLBACK) && l.tags.includes(rollbackOfTag(uuid)))) {
      await removeLv(vg, old.name, { exec: this.exec, requireTag: rollbackOfTag(uuid) });
    }
    const info = lvByName(all, lv);
    if (!info || info.uuid !== uuid) throw new UnsafeError('LV_REPLACED', `logical volume ${vg}/${lv} changed underneath`);
    let name = `${lv}_ta_rollback`;
    if (lvByName(all, name)) name = `${lv}_ta_rollback_${uuid.replace(/-/g, '').slice(0, 8)}`;
    if (lvByName(all, name)) throw new UnsafeError('SNAPSHOT_NAME_TAKEN', `cannot name the rollback snapshot: ${vg}/${name} exists`);
    assertLvmName(name, 'snapshot LV');
    const argv = ['lvcreate', '-s', '--setactivationskip', 'n', '-n', name, '--addtag', TAG_ROLLBACK, '--addtag', rollbackOfTag(uuid), '--addtag', tag('rbfor', archiveId)];
    for (const t of stateTags(info.tags)) argv.push('--addtag', t);
    argv.push(`${vg}/${lv}`);
    await this.exec(argv);
    const snap = lvByName(await vgLvs(this.exec, vg), name);
    if (!snap || !snap.isThinVolume || snap.origin !== lv) {
      throw new ThinarchiveError('NOT_THIN_SNAPSHOT', `${vg}/${name} was created but is not a thin snapshot of ${lv} (attr ${snap?.attr ?? 'none'})`);
    }
    this.rollbackName = name;
    this.log.info({ target: `${vg}/${lv}`, snapshot: name, archiveId }, 'rollback snapshot taken');
  }

  /** After the new state is durable: the rollback snapshot is not needed any more. */
  async dropRollbackSnapshot(): Promise<void> {
    if (!this.rollbackName) return;
    const { vg, uuid } = this.report;
    await removeLv(vg, this.rollbackName, { exec: this.exec, requireTag: rollbackOfTag(uuid) });
    this.rollbackName = undefined;
  }

  /** Close the device; deactivate the LV again if this run activated it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.target.close();
    if (this.report.activated) {
      await deactivate(this.report.vg, this.report.lv, { exec: this.exec }).catch((e) =>
        this.log.warn({ target: `${this.report.vg}/${this.report.lv}`, err: String(e) }, 'could not deactivate the target LV again'));
    }
  }
}

/** Our snapshots of the target LV with this uuid (ta_snap and ta_snapof_<uuid>), newest first. */
/** Decide how to zero on a thin LV: the discard unit (0: BLKZEROOUT only) and why not, when not. */
async function planThinZeroing(exec: LvmExec, all: readonly LvInfo[], vg: string, info: LvInfo, devicePath: string, blockSize: number): Promise<{ unit: number; reason?: string }> {
  const where = `${vg}/${info.name}`;
  if (!info.pool) return { unit: 0, reason: 'the thin LV reports no pool' };
  const pool = lvByName(all, info.pool);
  if (!pool) return { unit: 0, reason: `pool ${vg}/${info.pool} is not listed` };
  const chunk = pool.chunkSizeBytes;
  if (!(chunk > 0)) return { unit: 0, reason: `pool ${vg}/${info.pool} reports no chunk size` };
  const settings = await poolSettings(exec, vg, info.pool);
  if (!settings.zero && blockSize % chunk !== 0) {
    throw new UnsafeError('POOL_SKIPS_ZEROING', `pool ${vg}/${info.pool} does not zero newly provisioned chunks and its chunk size ${chunk} is larger than the archive block size ${blockSize}: `
      + `a partial write to a new chunk would leave stale pool data readable in ${where}. Turn zeroing on (lvchange -Zy ${vg}/${info.pool}) or use a pool with chunks of at most ${blockSize} bytes`);
  }
  if (settings.discards === 'ignore') return { unit: 0, reason: `pool ${vg}/${info.pool} has discards=ignore` };
  const st = await poolStatus(vg, info.pool, { exec });
  checkPoolHealth(`${vg}/${info.pool}`, st, `writing to ${where}`);
  if (st.discard === 'ignore') return { unit: 0, reason: `the active pool target ${vg}/${info.pool} ignores discards` };
  if (info.origin) {
    const origin = lvByName(all, info.origin);
    if (!origin || !origin.isThinVolume || origin.pool !== info.pool) {
      return { unit: 0, reason: `${where} has the external origin ${info.origin}: its unmapped chunks read from there, not as zeroes` };
    }
  }
  const q = await discardLimits(devicePath);
  if (!q) return { unit: 0, reason: `cannot read the discard limits of ${devicePath} from sysfs` };
  if (q.maxBytes <= 0) return { unit: 0, reason: `${devicePath} does not accept discards (discard_max_bytes 0)` };
  if (q.granularity <= 0 || chunk % q.granularity !== 0) {
    return { unit: 0, reason: `${devicePath}'s discard granularity ${q.granularity} does not divide the pool chunk ${chunk}` };
  }
  return { unit: chunk };
}

// ---------------------------------------------------------------------------------------------
// Recovery

export interface LvRecovery {
  action: 'none' | 'restored-snapshot' | 'stale-snapshot-removed' | 'removed-created' | 'rolled-back' | 'stale-journal-removed';
  interrupted?: { archiveId: string; sequence: number };
  state: { archiveId: string; sequence: number; status: TargetState['status'] } | null;
  snapshot?: string;
}

/**
 * Roll a thin LV target back after an interrupted apply: `lvconvert --merge` of the rollback snapshot
 * (tried in the lab, LVM 2.03.16: with the origin not open, the snapshot replaces the origin at once;
 * the LV keeps its name, uuid and tags), then the state tags copied on the snapshot are written back.
 * An LV created by the interrupted apply (`--create`, no previous state) is removed instead.
 * A rollback snapshot next to an LV that is not applying is stale and removed.
 * Without a rollback snapshot (--no-undo, thick LVs) an interrupted apply is completed by applying the
 * same archive again: UnsafeError NO_UNDO (from apply: reported, not an error).
 */
export async function recoverLv(o: LvRef & { exec?: LvmExec; log?: Logger; fromApply: boolean; stateDir?: string; accept?: (s: TargetState | null) => boolean }): Promise<LvRecovery> {
  const { vg, lv } = o;
  const log = o.log ?? silentLogger;
  const exec = o.exec ?? createLvmExec({ logger: log });
  const where = `${vg}/${lv}`;
  const all = await vgLvs(exec, vg);
  const info = lvByName(all, lv);
  if (!info || info.tags.includes(TAG_SNAP) || info.tags.includes(TAG_ROLLBACK)) return { action: 'none', state: null };
  const state = tagsToState(info.tags, where);
  const short = (s: TargetState | null): LvRecovery['state'] => (s ? { archiveId: s.archiveId, sequence: s.sequence, status: s.status } : null);
  const snaps = all.filter((l) => l.tags.includes(TAG_ROLLBACK) && l.tags.includes(rollbackOfTag(info.uuid)));
  if (state?.status === 'applying') {
    const a = state.applying!;
    const interrupted = { archiveId: a.archiveId, sequence: a.sequence };
    const snap = snaps.find((l) => l.tags.includes(tag('rbfor', a.archiveId)));
    const journal = lvUndoFile(vg, lv, o.stateDir);
    // apply: roll back when it goes ahead on the interrupted target (the same archive again) or on the
    // state before the interrupted apply (its sender gave that archive up: one that continues the
    // state before it has come instead, e.g. a replication whose sender was stopped mid-archive);
    // otherwise apply refuses, the target untouched
    if (o.accept && !o.accept(state)) {
      const before = snap ? tagsToState(snap.tags, `${vg}/${snap.name}`)
        : await journalExists(journal) ? (await readJournal(journal)).header.prevState : undefined;
      if (before === undefined || !o.accept(before)) return { action: 'none', state: short(state), interrupted };
    }
    if (!snap && await journalExists(journal)) {
      // A thick LV: replay its undo journal.
      const j = await readJournal(journal);
      if (j.header.archiveId !== a.archiveId || j.header.target !== lvDevicePath(vg, lv)) {
        throw new UnsafeError('JOURNAL_MISMATCH', `undo journal ${journal} is of archive ${j.header.archiveId} on ${j.header.target}, but ${where} is applying archive ${a.archiveId}; refusing to roll back`);
      }
      let activated = false;
      if (!info.active) {
        await exec(['lvchange', '-ay', ...(info.activationSkip ? ['-K'] : []), where]);
        activated = true;
      }
      const store = new LvTagStateStore(exec, vg, lv, info.uuid);
      try {
        const t = await FileTarget.openWith(lvDevicePath(vg, lv), { kind: 'lv', stateStore: store });
        let r: { entries: number; bytes: number };
        try {
          r = await replayJournal(journal, j, t);
        } finally {
          await t.close();
        }
        store.prime((await requireLv(exec, vg, lv, info.uuid)).tags);
        await store.write(j.header.prevState ? { ...j.header.prevState, updatedAt: new Date().toISOString() } : null);
        await removeJournal(journal);
        log.info({ target: where, entries: r.entries, bytes: r.bytes }, 'recovery: rolled back with the undo journal');
      } finally {
        if (activated) await deactivate(vg, lv, { exec }).catch(() => {});
      }
      return { action: 'rolled-back', state: short(j.header.prevState), interrupted };
    }
    if (!snap) {
      if (o.fromApply) return { action: 'none', state: short(state), interrupted };
      throw new UnsafeError('NO_UNDO', `${where} was interrupted while applying archive ${a.archiveId} (sequence ${a.sequence}) and has no rollback snapshot (--no-undo, or a thick LV): apply that archive again to complete it`);
    }
    if (!snap.isThinVolume || snap.origin !== lv) {
      throw new UnsafeError('ROLLBACK_SNAPSHOT', `${vg}/${snap.name} is tagged as the rollback snapshot of ${where} but is not a thin snapshot of it (origin ${snap.origin ?? 'none'}); refusing to roll back`);
    }
    if (info.active) {
      const opens = await openCount(exec, vg, lv);
      if (opens > 0) throw new UnsafeError('TARGET_BUSY', `${where} is open (device-mapper open count ${opens}); close it before it is rolled back`);
    }
    const prev = tagsToState(snap.tags, `${vg}/${snap.name}`);
    if (prev === null && info.tags.includes(TAG_CREATED)) {
      // The LV was created by the interrupted apply: going back means removing it.
      await removeLv(vg, lv, { exec, requireTag: TAG_CREATED });
      await removeLv(vg, snap.name, { exec, requireTag: rollbackOfTag(info.uuid) });
      log.info({ target: where }, 'recovery: removed the LV created by the interrupted apply');
      return { action: 'removed-created', state: null, interrupted, snapshot: snap.name };
    }
    await exec(['lvm', 'lvconvert', '--merge', `${vg}/${snap.name}`]);
    const after = await vgLvs(exec, vg);
    const now = lvByName(after, lv);
    if (!now || now.uuid !== info.uuid || lvByName(after, snap.name)) {
      throw new ThinarchiveError('ROLLBACK_MERGE', `lvconvert --merge ${vg}/${snap.name} did not put the snapshot in place of ${where} (the merge may be deferred until ${where} is deactivated)`);
    }
    const store = new LvTagStateStore(exec, vg, lv, info.uuid);
    store.prime(now.tags);
    await store.write(prev === null ? null : { ...prev, updatedAt: new Date().toISOString() });
    for (const other of snaps.filter((l) => l.name !== snap.name)) await removeLv(vg, other.name, { exec, requireTag: rollbackOfTag(info.uuid) });
    log.info({ target: where, snapshot: snap.name }, 'recovery: rolled back from the rollback snapshot');
    return { action: 'restored-snapshot', state: short(prev), interrupted, snapshot: snap.name };
  }
  const stale = lvUndoFile(vg, lv, o.stateDir);
  if (await journalExists(stale)) {
    await removeJournal(stale);
    return { action: 'stale-journal-removed', state: short(state) };
  }
  if (snaps.length > 0) {
    for (const l of snaps) await removeLv(vg, l.name, { exec, requireTag: rollbackOfTag(info.uuid) });
    return { action: 'stale-snapshot-removed', state: short(state), snapshot: snaps.map((l) => l.name).join(', ') };
  }
  return { action: 'none', state: short(state) };
}
