/**
 * `thinarchive check` (README "check"): a monitoring plugin in the Nagios/Icinga convention. One line
 * `THINARCHIVE <STATE> - <summary> | <perfdata>` and exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
 * It watches the given pools, or every pool that holds a volume of the configuration plus the
 * replication lag and last verification of every job's volumes (from the running daemon, or the
 * state file). The pure parts (`unitCheck`, `perfdataOf`, `checkLine`) are tested on their own.
 */
import { access } from 'node:fs/promises';
import {
  formatDuration, poolsOfVolumes, STATE_RANK, UsageError, watchPools, worstState, type CheckState, type Logger, type PoolReport, type PoolThresholdSettings,
} from '../api/index.js';
import { DEFAULT_CONFIG, loadConfig, type DaemonConfig, type JobConfig } from './config.js';
import { expandSources, readStatus, type UnitStatus } from './daemon.js';
import { stateDirOf } from './state.js';

export const CHECK_VERSION = 1;

/** The plugin convention's exit codes (for this command only). */
export const CHECK_EXIT: Readonly<Record<CheckState, number>> = { OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3 };

/** Replication lag thresholds: these multiples of the job's interval. */
export const LAG_WARN_FACTOR = 3;
export const LAG_CRIT_FACTOR = 10;

export interface Problem {
  state: CheckState;
  message: string;
}

/** The check of one job and volume: its lag and last verification. */
export interface UnitCheck {
  job: string;
  volume: string;
  state: CheckState;
  lagSeconds: number | null;
  warnSeconds: number;
  critSeconds: number;
  lastSuccess: string | null;
  lastError: { code: string; message: string; at: string } | null;
  lastVerify: { at: string; ok: boolean; mode: string } | null;
  problems: Problem[];
  message: string;
}

export interface CheckReport {
  version: number;
  state: CheckState;
  exitCode: number;
  summary: string;
  perfdata: string;
  /** the line printed: `THINARCHIVE <STATE> - <summary>[ | <perfdata>]` */
  line: string;
  /** the configuration file read, null when none */
  config: string | null;
  pools: PoolReport[];
  units: UnitCheck[];
  /** what concerns neither one pool nor one volume: volumes not found, jobs without runs */
  problems: Problem[];
}

export interface CheckOptions {
  /** --config: read this file (errors if it cannot be read); without it, the default file if it exists */
  config?: string;
  /** --pool VG/POOL...: only these pools, no job lags */
  pools?: string[];
  /** --warn-data, --crit-data, --warn-metadata, --crit-metadata */
  override?: PoolThresholdSettings;
  log?: Logger;
  signal?: AbortSignal;
  now?: () => number;
}

function byState(a: Problem, b: Problem): number {
  return STATE_RANK[b.state] - STATE_RANK[a.state];
}

/** A job's volume: is its newest point recent enough, and its replica verified? (pure) */
export function unitCheck(u: UnitStatus, job: Pick<JobConfig, 'every' | 'applyTo'>, now: number): UnitCheck {
  const warnSeconds = Math.round((LAG_WARN_FACTOR * job.every) / 1000);
  const critSeconds = Math.round((LAG_CRIT_FACTOR * job.every) / 1000);
  const problems: Problem[] = [];
  const failing = u.lastError !== null && (u.lastSuccess === null || u.lastError.at > u.lastSuccess);
  const why = failing ? ` (failing: ${u.lastError!.code}: ${u.lastError!.message})` : '';
  if (u.lagSeconds === null) {
    problems.push({ state: 'WARNING', message: `no point yet${u.lastAttempt ? '' : ' (never run)'}${why}` });
  } else if (u.lagSeconds > critSeconds) {
    problems.push({ state: 'CRITICAL', message: `lag ${formatDuration(u.lagSeconds)} > ${formatDuration(critSeconds)}${why}` });
  } else if (u.lagSeconds > warnSeconds) {
    problems.push({ state: 'WARNING', message: `lag ${formatDuration(u.lagSeconds)} > ${formatDuration(warnSeconds)}${why}` });
  }
  const verifies = !!job.applyTo && !job.applyTo.host && job.applyTo.verify;
  if (u.lastVerify && !u.lastVerify.ok) {
    problems.push({ state: 'CRITICAL', message: `the replica differs from the chain (verification of ${u.lastVerify.at})` });
  } else if (failing && u.lastError!.code === 'REPLICA_MISMATCH') {
    problems.push({ state: 'CRITICAL', message: `the replica differs from the chain: ${u.lastError!.message}` });
  } else if (verifies && u.lastSuccess !== null) {
    if (!u.lastVerify) problems.push({ state: 'WARNING', message: 'the replica has not been verified' });
    else {
      const age = Math.max(0, Math.round((now - Date.parse(u.lastVerify.at)) / 1000));
      if (age > critSeconds) problems.push({ state: 'WARNING', message: `last verification ${formatDuration(age)} ago > ${formatDuration(critSeconds)}` });
    }
  }
  problems.sort(byState);
  const state = worstState(problems.map((p) => p.state));
  const name = `${u.job} ${u.volume}`;
  const message = problems.length
    ? `${name} ${state}: ${problems.map((p) => p.message).join('; ')}`
    : `${name} OK: lag ${formatDuration(u.lagSeconds ?? 0)}`;
  return {
    job: u.job, volume: u.volume, state, lagSeconds: u.lagSeconds, warnSeconds, critSeconds, lastSuccess: u.lastSuccess, lastError: u.lastError,
    lastVerify: u.lastVerify, problems, message,
  };
}

/** A perfdata label: quoted when it holds a space (a single quote doubled); '=' is not allowed. */
function label(s: string): string {
  const clean = s.replace(/=/g, '_');
  return /[\s']/.test(clean) ? `'${clean.replace(/'/g, "''")}'` : clean;
}

function num(v: number): string {
  return Number.isInteger(v) ? String(v) : String(Number(v.toFixed(2)));
}

/**
 * The perfdata (pure): per pool `POOL:data` and `POOL:metadata` (percent, two decimals; warn; crit;
 * 0; 100), `POOL:pinned` (bytes) when measured and `POOL:seconds_to_full` when predictable; per
 * volume `JOB:VOLUME:lag` (seconds; warn; crit; 0) when there is a point.
 */
export function perfdataOf(pools: readonly PoolReport[], units: readonly UnitCheck[]): string {
  const out: string[] = [];
  for (const p of pools) {
    if (p.data) out.push(`${label(`${p.pool}:data`)}=${p.data.percent.toFixed(2)}%;${num(p.thresholds.warn.data)};${num(p.thresholds.crit.data)};0;100`);
    if (p.metadata) out.push(`${label(`${p.pool}:metadata`)}=${p.metadata.percent.toFixed(2)}%;${num(p.thresholds.warn.metadata)};${num(p.thresholds.crit.metadata)};0;100`);
    if (p.pinned.bytes !== null) out.push(`${label(`${p.pool}:pinned`)}=${p.pinned.bytes}B;;;0`);
    if (p.secondsToFull !== null) out.push(`${label(`${p.pool}:seconds_to_full`)}=${p.secondsToFull}s;;;0`);
  }
  for (const u of units) {
    if (u.lagSeconds !== null) out.push(`${label(`${u.job}:${u.volume}:lag`)}=${u.lagSeconds}s;${u.warnSeconds};${u.critSeconds};0`);
  }
  return out.join(' ');
}

/** The plugin line (pure): `THINARCHIVE <STATE> - <summary>[ | <perfdata>]`, on one line without '|' in the summary. */
export function checkLine(state: CheckState, summary: string, perfdata: string): string {
  const s = summary.replace(/[\r\n]+/g, ' ').replace(/\|/g, '/');
  return `THINARCHIVE ${state} - ${s}${perfdata ? ` | ${perfdata}` : ''}`;
}

/** The summary (pure): the messages of every problem, worst first; or, when all is OK, what was checked. */
export function summaryOf(pools: readonly PoolReport[], units: readonly UnitCheck[], problems: readonly Problem[]): string {
  const bad: Problem[] = [
    ...problems,
    ...pools.filter((p) => p.condition.state !== 'OK').map((p) => ({ state: p.condition.state, message: p.condition.message })),
    ...units.filter((u) => u.state !== 'OK').map((u) => ({ state: u.state, message: u.message })),
  ].sort(byState);
  if (bad.length) return bad.map((p) => p.message).join('; ');
  const parts = pools.map((p) => p.condition.message.replace(/ OK: /, ' '));
  if (units.length) parts.push(`${units.length} volume${units.length > 1 ? 's' : ''} within their lag`);
  return parts.length ? parts.join('; ') : 'nothing to check';
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}

/** Run the check; a pool that cannot be read is UNKNOWN in the report. Throws on bad options or an invalid configuration. */
export async function runCheck(o: CheckOptions): Promise<CheckReport> {
  const now = (o.now ?? Date.now)();
  const wantPools = o.pools ?? [];
  let configPath: string | null = o.config ?? null;
  if (configPath === null && (await exists(DEFAULT_CONFIG))) configPath = DEFAULT_CONFIG;
  if (configPath === null && wantPools.length === 0) {
    throw new UsageError(`nothing to check: no configuration at ${DEFAULT_CONFIG}; give --config FILE or --pool VG/POOL`);
  }
  const config: DaemonConfig | null = configPath === null ? null : await loadConfig(configPath);
  const problems: Problem[] = [];
  let pools = wantPools;
  if (pools.length === 0 && config) {
    const volumes: string[] = [];
    for (const job of config.jobs) {
      try {
        volumes.push(...(await expandSources(job, o.signal)).filter((v) => !v.startsWith('/')));
      } catch (e) {
        problems.push({ state: 'UNKNOWN', message: `job ${job.name}: cannot list its volumes: ${(e as Error).message.split('\n')[0]}` });
      }
    }
    const found = await poolsOfVolumes([...new Set(volumes)], { ...(o.signal ? { signal: o.signal } : {}) });
    for (const m of found.missing) problems.push({ state: 'UNKNOWN', message: `${m.volume}: ${m.reason}` });
    pools = found.pools;
  }
  const reports = pools.length === 0 ? [] : await watchPools({
    pools, settings: config?.pools, override: o.override, stateDir: stateDirOf(config?.stateDir), ...(o.log ? { log: o.log } : {}),
    ...(o.signal ? { signal: o.signal } : {}), now: () => now,
  });
  const units: UnitCheck[] = [];
  if (wantPools.length === 0 && config && configPath) {
    const status = await readStatus(configPath);
    for (const job of config.jobs) {
      const mine = status.units.filter((u) => u.job === job.name);
      if (mine.length === 0) problems.push({ state: 'WARNING', message: `job ${job.name}: no run recorded yet` });
      for (const u of mine) units.push(unitCheck(u, job, now));
    }
  }
  const state = worstState([...problems.map((p) => p.state), ...reports.map((r) => r.condition.state), ...units.map((u) => u.state)]);
  const summary = summaryOf(reports, units, problems);
  const perfdata = perfdataOf(reports, units);
  return {
    version: CHECK_VERSION, state, exitCode: CHECK_EXIT[state], summary, perfdata, line: checkLine(state, summary, perfdata), config: configPath, pools: reports,
    units, problems: problems.sort(byState),
  };
}
