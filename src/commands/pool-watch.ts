/**
 * The pool watch (README "check", docs/LVM.md section 8): for each thin pool, its data and metadata
 * usage against warning and critical thresholds, the fill rate over the last hour and the predicted
 * time to full (samples in the state directory), its state (failed, needs_check, read-only, out of
 * data space), its when-full policy, whether autoextend is really armed, the space thinarchive's
 * base snapshots pin, and a metadata snapshot another program holds too long. `poolCondition` (pure)
 * turns a report into one condition: OK / WARNING / CRITICAL / UNKNOWN, values and a one-line message.
 */
import { ThinarchiveError, UsageError } from '../errors.js';
import { defaultStateDir } from '../fsutil.js';
import { silentLogger, type Logger } from '../log.js';
import { formatBytes, formatDuration } from '../units.js';
import { createLvmExec, runLvmCommand, type LvmExec } from '../lvm/exec.js';
import { readReservationRecord } from '../lvm/metadata-snap.js';
import { assertLvmName } from '../lvm/names.js';
import { isAlive } from '../lvm/pool-lock.js';
import { addSample, fillRate, readPoolSamples, updatePoolSamples, type FillRate, type PoolSample, type PoolSamplesFile } from '../lvm/pool-samples.js';
import { formatPercent, resolveThresholds, type PoolThresholdSettings, type PoolThresholds } from '../lvm/pool-status.js';
import { evaluateAutoextend, readPoolFacts, type AutoextendVerdict, type PoolFacts } from '../lvm/pool-watch.js';
import type { LvInfo } from '../lvm/report.js';
import { listLvs } from '../lvm/tools.js';
import { baseSnapshotsIn, pinnedSpace, type PinnedSnapshot } from '../source/pinned.js';

/** What a configuration says about one pool (`pools.default`, `pools."VG/POOL"`). */
export interface PoolWatchSettings extends PoolThresholdSettings {
  /** warn when autoextend is not armed; default true */
  requireAutoextend?: boolean;
  /** warn when a metadata snapshot thinarchive did not reserve is held longer than this (ms); default 15 min */
  heldMetadataSnapshotMs?: number;
}

export const DEFAULT_HELD_METADATA_SNAPSHOT_MS = 15 * 60_000;

export type CheckState = 'OK' | 'WARNING' | 'CRITICAL' | 'UNKNOWN';

/** The order of states when several are combined: CRITICAL, then UNKNOWN, then WARNING, then OK. */
export const STATE_RANK: Readonly<Record<CheckState, number>> = { OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3 };

export function worstState(states: Iterable<CheckState>): CheckState {
  let w: CheckState = 'OK';
  for (const s of states) if (STATE_RANK[s] > STATE_RANK[w]) w = s;
  return w;
}

export interface SpaceUsage {
  percent: number;
  usedBytes: number;
  totalBytes: number;
  fill: FillRate;
}

export interface HeldMetadataSnapshotInfo {
  root: number;
  /** thinarchive: a running thinarchive process reserved it; thinarchive-gone: one that is gone; other: not thinarchive */
  holder: 'thinarchive' | 'thinarchive-gone' | 'other';
  /** when the watch first saw it held (ISO 8601) */
  since: string;
  seconds: number;
  maxSeconds: number;
}

export interface PoolReport {
  /** VG/POOL */
  pool: string;
  /** the pool could not be read (its other fields are then null / empty) */
  error: { code: string; message: string } | null;
  thresholds: PoolThresholds;
  data: SpaceUsage | null;
  metadata: SpaceUsage | null;
  /** the sooner of the data and metadata predictions; null when neither fills predictably */
  secondsToFull: number | null;
  /** rw | ro | out_of_data_space | failed (Fail or Error status); null when not printed */
  mode: 'rw' | 'ro' | 'out_of_data_space' | 'failed' | null;
  needsCheck: boolean;
  whenFull: 'queue' | 'error' | null;
  autoextend: (AutoextendVerdict & { required: boolean }) | null;
  /** bytes null: not measured (`error` says why) */
  pinned: { bytes: number | null; snapshots: PinnedSnapshot[]; error: string | null };
  heldMetadataSnapshot: HeldMetadataSnapshotInfo | null;
  condition: PoolCondition;
}

/** One pool's condition: what an alert or a check line says about it. */
export interface PoolProblem {
  state: CheckState;
  message: string;
  heldMetadataSnapshot?: true;
}

export interface PoolCondition {
  pool: string;
  state: CheckState;
  values: { dataPercent: number | null; metadataPercent: number | null; pinnedBytes: number | null; secondsToFull: number | null };
  /** every problem with its own state, worst first; empty when OK */
  /** `heldMetadataSnapshot`: the problem is a metadata snapshot held too long (its own alert condition) */
  problems: PoolProblem[];
  /** one line: the pool, its state, and its problems or its usage */
  message: string;
}

export interface WatchPoolsOptions {
  /** VG/POOL of each pool to watch */
  pools: readonly string[];
  /** per pool ("VG/POOL") and "default" */
  settings?: Readonly<Record<string, PoolWatchSettings>>;
  /** thresholds that win over `settings` (the command line) */
  override?: PoolThresholdSettings;
  /** where the samples file, locks and reservation records are; default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive */
  stateDir?: string;
  /** measure the pinned space (reserves each pool's metadata snapshot when it has base snapshots); default true */
  pinned?: boolean;
  /** add a sample of each pool to the samples file; default true */
  record?: boolean;
  /** how long to wait for another thinarchive process's pool lock before giving up on the pinned space; default 60 s */
  lockTimeoutMs?: number;
  exec?: LvmExec;
  log?: Logger;
  signal?: AbortSignal;
  /** the clock (tests) */
  now?: () => number;
}

function parsePoolRef(ref: string): { vg: string; pool: string } {
  const parts = ref.split('/');
  if (parts.length !== 2) throw new UsageError(`a pool is VG/POOL, got ${JSON.stringify(ref)}`);
  assertLvmName(parts[0]!, 'VG');
  assertLvmName(parts[1]!, 'pool');
  return { vg: parts[0]!, pool: parts[1]! };
}

function settingOf<K extends 'requireAutoextend' | 'heldMetadataSnapshotMs'>(settings: WatchPoolsOptions['settings'], pool: string, key: K): PoolWatchSettings[K] {
  return settings?.[pool]?.[key] ?? settings?.['default']?.[key];
}

/** The condition of a pool from its report (pure): each problem with its state, the worst, one line. */
export function poolCondition(r: Omit<PoolReport, 'condition'>): PoolCondition {
  const problems: PoolProblem[] = [];
  const add = (state: CheckState, message: string, held?: true): void => {
    problems.push(held ? { state, message, heldMetadataSnapshot: held } : { state, message });
  };
  if (r.error) add('UNKNOWN', `cannot read the pool: ${r.error.message}`);
  if (r.mode === 'failed') add('CRITICAL', 'the pool is in failure mode (repair it: lvconvert --repair)');
  if (r.needsCheck) add('CRITICAL', 'the pool is flagged needs_check (thin_check / lvconvert --repair)');
  if (r.mode === 'ro') add('CRITICAL', 'the pool is read-only (metadata error or full metadata)');
  if (r.mode === 'out_of_data_space') add('CRITICAL', `the pool is out of data space (writes ${r.whenFull === 'error' ? 'fail' : 'queue, then fail'})`);
  for (const space of ['data', 'metadata'] as const) {
    const u = r[space];
    if (!u) continue;
    const { warn, crit } = { warn: r.thresholds.warn[space], crit: r.thresholds.crit[space] };
    if (u.percent > crit) add('CRITICAL', `${space} ${formatPercent(u.percent)} > ${crit}% (critical)`);
    else if (u.percent > warn) add('WARNING', `${space} ${formatPercent(u.percent)} > ${warn}% (warning)`);
  }
  if (r.autoextend && r.autoextend.required && !r.autoextend.armed) add('WARNING', `autoextend is not armed: ${r.autoextend.reasons.join(', ')}`);
  const h = r.heldMetadataSnapshot;
  if (h && h.holder !== 'thinarchive' && h.seconds > h.maxSeconds) {
    add('WARNING', `a metadata snapshot (root ${h.root}) has been held by ${h.holder === 'other' ? 'another program' : 'a thinarchive process that is gone'} for ${formatDuration(h.seconds)} `
      + `(more than ${formatDuration(h.maxSeconds)}): it costs metadata space and thinarchive sends on this pool are refused until it is released`
      + (h.holder === 'thinarchive-gone' ? ' (the next send on the pool releases it)' : ''), true);
  }
  problems.sort((a, b) => STATE_RANK[b.state] - STATE_RANK[a.state]);
  const state = worstState(problems.map((p) => p.state));
  const usage = r.data && r.metadata ? `data ${formatPercent(r.data.percent)}, metadata ${formatPercent(r.metadata.percent)}` : '';
  const extra = [
    r.pinned.bytes ? `pinned by base snapshots ${formatBytes(r.pinned.bytes)}` : '',
    r.secondsToFull !== null ? `full in ${formatDuration(r.secondsToFull)} at the last hour's rate` : '',
  ].filter(Boolean);
  const message = problems.length
    ? `${r.pool} ${state}: ${problems.map((p) => p.message).join('; ')}`
    : `${r.pool} OK: ${[usage, ...extra].filter(Boolean).join(', ')}`;
  return {
    pool: r.pool, state, problems, message,
    values: { dataPercent: r.data?.percent ?? null, metadataPercent: r.metadata?.percent ?? null, pinnedBytes: r.pinned.bytes, secondsToFull: r.secondsToFull },
  };
}

/** The thin pools ("VG/POOL") the given thin volumes ("VG/LV") are in, and the volumes that could not be found. */
export async function poolsOfVolumes(volumes: readonly string[], opts: { exec?: LvmExec; signal?: AbortSignal } = {}): Promise<{ pools: string[]; missing: { volume: string; reason: string }[] }> {
  const byVg = new Map<string, string[]>();
  for (const v of volumes) {
    const [vg, lv] = v.split('/');
    if (!vg || !lv) continue;
    byVg.set(vg, [...(byVg.get(vg) ?? []), lv]);
  }
  const pools = new Set<string>();
  const missing: { volume: string; reason: string }[] = [];
  for (const [vg, lvs] of byVg) {
    let all: LvInfo[];
    try {
      all = await listLvs(vg, { exec: opts.exec ?? runLvmCommand, ...(opts.signal ? { signal: opts.signal } : {}) });
    } catch (e) {
      for (const lv of lvs) missing.push({ volume: `${vg}/${lv}`, reason: (e as Error).message.split('\n')[0]! });
      continue;
    }
    for (const lv of lvs) {
      const info = all.find((l) => l.name === lv && !l.hidden);
      if (!info) missing.push({ volume: `${vg}/${lv}`, reason: `logical volume ${vg}/${lv} not found` });
      else if (info.pool === null) missing.push({ volume: `${vg}/${lv}`, reason: `${vg}/${lv} is not a thin volume` });
      else pools.add(`${vg}/${info.pool}`);
    }
  }
  return { pools: [...pools].sort(), missing };
}

async function heldInfo(stateDir: string, vg: string, pool: string, root: number, since: string, now: number, maxMs: number): Promise<HeldMetadataSnapshotInfo> {
  const rec = await readReservationRecord(stateDir, { vg, pool }).catch(() => null);
  let holder: HeldMetadataSnapshotInfo['holder'] = 'other';
  if (rec && (rec.state === 'reserving' || rec.heldRoot === root)) holder = (await isAlive(rec)) ? 'thinarchive' : 'thinarchive-gone';
  return { root, holder, since, seconds: Math.max(0, Math.round((now - Date.parse(since)) / 1000)), maxSeconds: Math.round(maxMs / 1000) };
}

interface Measured {
  ref: string;
  vg: string;
  pool: string;
  facts?: PoolFacts;
  error?: { code: string; message: string };
  thresholds: PoolThresholds;
  pinned: PoolReport['pinned'];
  sample?: PoolSample;
}

/**
 * Watch `o.pools`: read each pool, measure what its base snapshots pin, record a sample, and report.
 * A pool that cannot be read gives a report with `error` (condition UNKNOWN); bad thresholds or a
 * malformed pool name throw (UsageError).
 */
export async function watchPools(o: WatchPoolsOptions): Promise<PoolReport[]> {
  const now = (o.now ?? Date.now)();
  const log = o.log ?? silentLogger;
  const exec = o.exec ?? (o.log ? createLvmExec({ logger: o.log }) : runLvmCommand);
  const stateDir = o.stateDir ?? defaultStateDir();
  const tools = { exec, ...(o.signal ? { signal: o.signal } : {}) };
  const refs = [...new Set(o.pools)];
  const parsed = refs.map((ref) => ({ ref, ...parsePoolRef(ref), thresholds: resolveThresholds(ref, o.settings, o.override) }));
  const before = await readPoolSamples(stateDir);
  const vgLvs = new Map<string, Promise<LvInfo[]>>();
  const measured: Measured[] = [];
  for (const p of parsed) {
    o.signal?.throwIfAborted();
    const m: Measured = { ...p, pinned: { bytes: null, snapshots: [], error: null } };
    measured.push(m);
    try {
      m.facts = await readPoolFacts(p.vg, p.pool, tools);
    } catch (e) {
      if (!(e instanceof ThinarchiveError) || o.signal?.aborted) throw e;
      m.error = { code: e.code, message: e.message.split('\n')[0]! };
      m.pinned.error = 'the pool could not be read';
      continue;
    }
    const st = m.facts.status;
    if (st.state === 'ok') {
      const chunk = m.facts.lvs.chunkBytes;
      m.sample = { t: now, dataUsed: st.dataUsedBlocks * chunk, dataTotal: st.dataTotalBlocks * chunk, metadataUsed: st.metadataUsedBlocks * 4096, metadataTotal: st.metadataTotalBlocks * 4096 };
    }
    if (o.pinned === false) {
      m.pinned.error = 'not measured this time';
      continue;
    }
    try {
      if (!vgLvs.has(p.vg)) vgLvs.set(p.vg, listLvs(p.vg, tools));
      const bases = baseSnapshotsIn(await vgLvs.get(p.vg)!, p.pool);
      m.pinned = { ...(await pinnedSpace(p.vg, p.pool, bases, { exec, logger: log, stateDir, lockTimeoutMs: o.lockTimeoutMs ?? 60_000, ...(o.signal ? { signal: o.signal } : {}) })), error: null };
    } catch (e) {
      if (o.signal?.aborted) throw e;
      m.pinned.error = (e as Error).message.split('\n')[0]!;
      log.warn({ pool: p.ref, err: m.pinned.error }, 'cannot measure the space pinned by base snapshots');
    }
  }

  // The samples file: this round's samples and the held metadata snapshots, then the fill rates.
  const update = (f: PoolSamplesFile): void => {
    for (const m of measured) {
      if (!m.sample || m.facts?.status.state !== 'ok') continue;
      const prev = f.pools[m.ref] ?? { samples: [], held: null };
      const root = m.facts.status.heldRoot;
      const held = root === null ? null : prev.held?.root === root ? prev.held : { root, since: new Date(now).toISOString() };
      f.pools[m.ref] = { samples: addSample(prev.samples, m.sample), held };
    }
  };
  let after: PoolSamplesFile;
  if (o.record ?? true) {
    try {
      after = await updatePoolSamples(stateDir, now, update);
    } catch (e) {
      log.warn({ stateDir, err: (e as Error).message }, 'cannot write the pool samples file');
      after = structuredClone(before);
      update(after);
    }
  } else {
    after = structuredClone(before);
    update(after);
  }

  const reports: PoolReport[] = [];
  for (const m of measured) {
    const base: Omit<PoolReport, 'condition'> = {
      pool: m.ref, error: m.error ?? null, thresholds: m.thresholds, data: null, metadata: null, secondsToFull: null, mode: null, needsCheck: false,
      whenFull: null, autoextend: null, pinned: m.pinned, heldMetadataSnapshot: null,
    };
    const f = m.facts;
    if (f) {
      base.whenFull = f.lvs.whenFull;
      base.autoextend = {
        ...evaluateAutoextend({ autoextend: f.autoextend, monitor: f.lvs.monitor, dataBytes: f.lvs.dataBytes, vgFreeBytes: f.lvs.vgFreeBytes, vgExtentBytes: f.lvs.vgExtentBytes }),
        required: settingOf(o.settings, m.ref, 'requireAutoextend') ?? true,
      };
      const st = f.status;
      if (st.state !== 'ok') base.mode = 'failed';
      else {
        base.mode = st.mode;
        base.needsCheck = st.needsCheck;
        base.whenFull = st.whenFull ?? base.whenFull;
        const samples = after.pools[m.ref]?.samples ?? [];
        const s = m.sample!;
        const space = (percent: number, used: number, total: number, pick: (x: PoolSample) => number): SpaceUsage => ({
          percent, usedBytes: used, totalBytes: total, fill: fillRate(samples.map((x) => ({ t: x.t, used: pick(x) })), used, total, now),
        });
        base.data = space(st.dataPercent, s.dataUsed, s.dataTotal, (x) => x.dataUsed);
        base.metadata = space(st.metadataPercent, s.metadataUsed, s.metadataTotal, (x) => x.metadataUsed);
        const soon = [base.data.fill.secondsToFull, base.metadata.fill.secondsToFull].filter((x): x is number => x !== null);
        base.secondsToFull = soon.length ? Math.min(...soon) : null;
        const held = after.pools[m.ref]?.held;
        if (st.heldRoot !== null && held) {
          base.heldMetadataSnapshot = await heldInfo(stateDir, m.vg, m.pool, st.heldRoot, held.since, now,
            settingOf(o.settings, m.ref, 'heldMetadataSnapshotMs') ?? DEFAULT_HELD_METADATA_SNAPSHOT_MS);
        }
      }
    }
    reports.push({ ...base, condition: poolCondition(base) });
  }
  return reports;
}
