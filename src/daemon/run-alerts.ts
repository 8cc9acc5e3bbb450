/**
 * Alerts and pings of `thinarchive run` (one run from cron or a systemd timer; docs/ALERTS.md,
 * "thinarchive run"): the same conditions, rate limiting and alerts-state.json as the daemon, so a
 * timer-based setup gets one alert per outage and not one per run, delivered synchronously before
 * the command ends, within a bounded wait: a dead channel never makes `run` hang or fail. What is
 * not delivered by then stays in alerts-state.json and is delivered by the next `run` (or daemon).
 */
import type { Logger } from '../api/index.js';
import { buildChannels, pingOf } from './alert-channels.js';
import { DaemonAlerts } from './alert-rules.js';
import { AlertEngine } from './alerts.js';
import type { AlertsConfig } from './config.js';
import type { RunOutcome } from './runner.js';
import type { UnitState } from './state.js';

/** How long `run` waits for the start pings before it starts the runs. */
export const RUN_START_PING_WAIT_MS = 5_000;
/** How long `run` waits, after its runs, for its alerts and pings to be delivered (retrying meanwhile). */
export const RUN_ALERT_WAIT_MS = 10_000;

function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<undefined>((resolve) => { timer = setTimeout(() => resolve(undefined), ms); })]).finally(() => clearTimeout(timer));
}

/**
 * The `start` ping of each volume about to run (body `JOB VOLUME`), all at once, one attempt each,
 * waiting at most RUN_START_PING_WAIT_MS. A failure is logged and not kept: a late start ping means
 * nothing.
 */
export async function runStartPings(config: AlertsConfig | undefined, job: string, volumes: string[], log: Logger, waitMs = RUN_START_PING_WAIT_MS): Promise<void> {
  const ch = buildChannels(config).find((c) => c.name === 'ping');
  if (!ch || !pingOf(ch).has('start')) return;
  await within(Promise.all(volumes.map((v) => pingOf(ch).ping('start', `${job} ${v}`).catch((e: Error) => {
    log.warn({ channel: 'ping', job, volume: v }, `start ping by ${ch.label} failed: ${String(e?.message ?? e).split('\n')[0]}`);
  }))), waitMs);
}

export interface RunAlertUnit {
  job: string;
  volume: string;
  /** the unit's state before the run, and after it */
  prev: UnitState;
  state: UnitState;
  outcome: RunOutcome;
}

/**
 * After the runs, with the state directory's lock held: each unit's run condition (run_failed,
 * verify_mismatch, chain_broken, run_recovered; rate limited by alerts-state.json), then one `success`
 * or `fail` ping for the units run. Delivers what it made and what earlier runs left undelivered,
 * waiting at most `waitMs`; the rest stays in alerts-state.json. Never throws.
 */
export async function runAlerts(config: AlertsConfig | undefined, stateDir: string, units: RunAlertUnit[], log: Logger, waitMs = RUN_ALERT_WAIT_MS): Promise<{ delivered: boolean }> {
  let engine: AlertEngine | undefined;
  try {
    engine = await AlertEngine.open(config, { log, stateDir });
    const alerts = new DaemonAlerts(engine);
    const counted = units.filter((u) => u.outcome.ok || u.outcome.error?.code !== 'ABORTED');
    for (const u of counted) alerts.runOutcome(u.job, u.volume, u.prev, u.state, u.outcome);
    if (counted.length) alerts.outcomePing(counted.map((u) => u.state));
    const delivered = await engine.flush(waitMs);
    if (!delivered) log.warn({ pending: engine.pending().length, waitedMs: waitMs }, 'alerts not delivered in time: kept in alerts-state.json for the next run');
    return { delivered };
  } catch (e) {
    log.warn({ stateDir }, `cannot send the run's alerts: ${(e as Error).message}`);
    return { delivered: false };
  } finally {
    await engine?.close().catch(() => {});
  }
}
