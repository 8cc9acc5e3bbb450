/**
 * What the daemon alerts on (docs/ALERTS.md, "What the daemon sends"): the outcome of each run
 * (run_failed, verify_mismatch, chain_broken, run_recovered), each unit's lag against its job's
 * thresholds (lag_warning, lag_critical, lag_ok), its own start and stop, and the ping URLs.
 */
import type { PoolCondition } from '../api/index.js';
import type { AlertEngine } from './alerts.js';
import type { JobConfig } from './config.js';
import type { RunOutcome } from './runner.js';
import type { ScheduledVerify, UnitState } from './state.js';

/** Error codes that mean the replica differs from its chain. */
export const VERIFY_MISMATCH_CODES: ReadonlySet<string> = new Set(['REPLICA_MISMATCH']);

/**
 * Error codes that mean the chain does not continue: an archive it needs is missing, archives do not
 * follow each other, the store or the target is on another chain (or would fork), or the base snapshot
 * no longer matches the chain's newest archive. None of them heals by retrying.
 */
export const CHAIN_BROKEN_CODES: ReadonlySet<string> = new Set([
  'CHAIN_BROKEN', 'MISSING_ARCHIVE', 'BROKEN_LINK', 'CHAIN_FORK', 'CHAIN_MISMATCH', 'CHAIN_CONFUSED', 'PARENT_NOT_IN_STORE', 'BASE_MISMATCH', 'TARGET_STATE',
]);

/** The event of a failed run, by its error code. */
export function failureEvent(code: string): 'run_failed' | 'verify_mismatch' | 'chain_broken' {
  if (VERIFY_MISMATCH_CODES.has(code)) return 'verify_mismatch';
  if (CHAIN_BROKEN_CODES.has(code)) return 'chain_broken';
  return 'run_failed';
}

/** 45s, 12m, 3.5h, 2d */
export function humanSeconds(s: number): string {
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172_800) return `${Math.round(s / 360) / 10}h`;
  return `${Math.round(s / 8640) / 10}d`;
}

function failing(u: UnitState): boolean {
  return u.lastError !== null && (u.lastSuccess === null || u.lastError.at > u.lastSuccess);
}

export interface LagUnit {
  job: JobConfig;
  volume: string;
  state: UnitState | undefined;
  /** ms: since when this daemon has had the unit (the reference while it has no point yet) */
  since: number;
}

export class DaemonAlerts {
  constructor(readonly engine: AlertEngine, private readonly now: () => number = Date.now) {}

  started(units: number, jobs: number, version: string): void {
    this.engine.emit({
      event: 'daemon_started', values: { pid: process.pid, units, jobs, version },
      message: `thinarchive daemon ${version} started: ${units} volume${units === 1 ? '' : 's'} in ${jobs} job${jobs === 1 ? '' : 's'}`,
    });
  }

  stopped(): void {
    this.engine.emit({ event: 'daemon_stopped', values: { pid: process.pid }, message: 'thinarchive daemon stopping: runs are aborted, no backups until it starts again' });
  }

  runStarted(job: string, volume: string): void {
    this.engine.ping('start', `${job} ${volume}`);
  }

  /** After a run of one unit: its condition, and the ping for the daemon as a whole (`all`: every configured unit's state). */
  afterRun(job: string, volume: string, prev: UnitState, s: UnitState, out: RunOutcome, all: UnitState[]): void {
    if (!out.ok && out.error?.code === 'ABORTED') return;
    this.runOutcome(job, volume, prev, s, out);
    this.outcomePing(all);
  }

  /** The run condition of one unit after a run (run_failed, verify_mismatch, chain_broken; run_recovered). An aborted run changes nothing. */
  runOutcome(job: string, volume: string, prev: UnitState, s: UnitState, out: RunOutcome): void {
    if (!out.ok && out.error?.code === 'ABORTED') return;
    const subject = { job, volume };
    if (out.ok) {
      this.engine.observe({
        event: 'run_failed', active: false, subject, values: { failedRuns: prev.consecutiveFailures, bytes: out.bytes, seconds: Math.round(out.seconds * 1000) / 1000 },
        message: `${job} ${volume}: runs succeed again after ${prev.consecutiveFailures} failed run${prev.consecutiveFailures === 1 ? '' : 's'}`,
      });
    } else {
      const err = out.error!;
      const event = failureEvent(err.code);
      const what = event === 'verify_mismatch' ? 'the replica differs from the chain' : event === 'chain_broken' ? 'the chain does not continue' : `run failed after ${out.attempts} attempt${out.attempts === 1 ? '' : 's'}`;
      this.engine.observe({
        event, active: true, subject, values: { code: err.code, exitClass: err.exitClass, attempts: out.attempts, consecutiveFailures: s.consecutiveFailures },
        message: `${job} ${volume}: ${what}: ${err.code}: ${err.message}`,
      });
    }
  }

  /**
   * After a scheduled verification of one unit (docs/ALERTS.md): findings in the chain in the store
   * (an archive missing, damaged, or not following) are chain_broken, a local replica that differs
   * from the chain verify_mismatch, both of the run family with key `verify` (a condition apart from
   * the runs'), resolved by run_recovered when a later scheduled verification passes. A check that
   * could not be done (the store unreachable) changes nothing: the runs alert on that.
   */
  verifyOutcome(job: string, volume: string, v: ScheduledVerify): void {
    if (v.error) return;
    const subject = { job, volume };
    const values = {
      mode: v.mode, archives: v.store?.archives ?? null, findings: v.store?.findings ?? null, firstFinding: v.store?.firstFinding ?? null,
      replica: v.replica?.target ?? null, replicaHost: v.replica?.host ?? null, mismatchedBlocks: v.replica?.mismatchedBlocks ?? null, replicaStateOk: v.replica?.stateOk ?? null,
    };
    const name = `${job} ${volume}`;
    if (v.ok) {
      this.engine.observe({ event: 'run_recovered', active: false, key: 'verify', subject, values, message: `${name}: scheduled verification (${v.mode}) passes again` });
      return;
    }
    const broken = v.store !== null && !v.store.ok;
    this.engine.observe({
      event: broken ? 'chain_broken' : 'verify_mismatch', active: true, key: 'verify', subject, values,
      message: broken
        ? `${name}: scheduled verification (${v.mode}) found ${v.store!.findings} problem${v.store!.findings === 1 ? '' : 's'} in the chain in the store: ${v.store!.firstFinding ?? '?'}`
        : `${name}: scheduled verification (${v.mode}): replica ${v.replica!.target}${v.replica!.host ? ` on ${v.replica!.host} differs from the base snapshot` : ' differs from the chain'} (${v.replica!.mismatchedBlocks} block${v.replica!.mismatchedBlocks === 1 ? '' : 's'}${v.replica!.stateOk ? '' : ', state not at the newest point'})`,
    });
  }

  /** The ping after runs: `fail` naming the failing units of `all`, else `success`. */
  outcomePing(all: UnitState[]): void {
    const bad = all.filter(failing);
    if (bad.length) this.engine.ping('fail', `${bad.length} of ${all.length} failing: ${bad.map((u) => `${u.job} ${u.volume}: ${u.lastError!.code}`).join('; ')}`);
    else this.engine.ping('success', `${all.length} volume${all.length === 1 ? '' : 's'} ok`);
  }

  /** Each unit's lag (now minus its newest point, or minus `since` while it has none) against its job's thresholds. */
  lag(units: LagUnit[]): void {
    const now = this.now();
    for (const u of units) {
      const newest = u.state?.newestPoint ? Date.parse(u.state.newestPoint) : undefined;
      const lagSeconds = Math.max(0, Math.round((now - (newest ?? u.since)) / 1000));
      const warningSeconds = u.job.lagWarningMs / 1000;
      const criticalSeconds = u.job.lagCriticalMs / 1000;
      const level = lagSeconds >= criticalSeconds ? 'lag_critical' : lagSeconds >= warningSeconds ? 'lag_warning' : undefined;
      const values = { lagSeconds, warningSeconds, criticalSeconds, newestPoint: u.state?.newestPoint ?? null };
      const name = `${u.job.name} ${u.volume}`;
      this.engine.observe({
        event: level ?? 'lag_ok', active: level !== undefined, subject: { job: u.job.name, volume: u.volume }, values,
        message: level
          ? `${name}: ${newest === undefined ? `no point yet after ${humanSeconds(lagSeconds)}` : `newest point is ${humanSeconds(lagSeconds)} old`} (${level === 'lag_critical' ? 'critical' : 'warning'} at ${humanSeconds(level === 'lag_critical' ? criticalSeconds : warningSeconds)})`
          : `${name}: newest point is ${humanSeconds(lagSeconds)} old, within ${humanSeconds(warningSeconds)}`,
      });
    }
  }

  /**
   * The pool watch's conditions (PoolSampler, every minute): pool_warning / pool_critical while a pool
   * has problems, pool_ok when they end; a metadata snapshot held too long by another program is its
   * own condition (metadata_snapshot_stuck, resolved by metadata_snapshot_released). A pool that could
   * not be read (UNKNOWN) changes no condition.
   */
  pools(conditions: readonly PoolCondition[]): void {
    for (const c of conditions) {
      if (c.state === 'UNKNOWN') continue;
      const values = { ...c.values };
      const stuck = c.problems.filter((p) => p.heldMetadataSnapshot);
      const rest = c.problems.filter((p) => !p.heldMetadataSnapshot);
      const level = rest.some((p) => p.state === 'CRITICAL') ? 'pool_critical' : rest.length ? 'pool_warning' : undefined;
      this.engine.observe({
        event: level ?? 'pool_ok', active: level !== undefined, subject: { pool: c.pool }, values,
        message: level ? `pool ${c.pool}: ${rest.map((p) => p.message).join('; ')}` : `pool ${c.pool}: ok (${c.message})`,
      });
      this.engine.observe({
        event: stuck.length ? 'metadata_snapshot_stuck' : 'metadata_snapshot_released', active: stuck.length > 0, subject: { pool: c.pool }, values,
        message: stuck.length ? `pool ${c.pool}: ${stuck[0]!.message}` : `pool ${c.pool}: no metadata snapshot held too long`,
      });
    }
  }
}
