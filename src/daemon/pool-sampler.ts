/**
 * The daemon's pool sampling (docs/DAEMON.md, "Pool watch"): every `pool_sample_every` (default 1 minute) the pools
 * that hold the daemon's volumes are watched (src/api watchPools: a sample is recorded in the state
 * directory, the pinned space measured at most every PINNED_INTERVAL_MS), the pool gauges set, and the
 * latest condition of each pool kept for `conditions()` (and handed to `onConditions`).
 */
import { abortableSleep } from './runner.js';
import { poolCondition, poolsOfVolumes, watchPools, type Logger, type PoolCondition, type PoolReport } from '../api/index.js';
import type { DaemonConfig } from './config.js';
import type { DaemonMetrics } from './metrics.js';

/** Measuring the pinned space reserves the pool's metadata snapshot and runs thin_delta per base: less often. */
export const PINNED_INTERVAL_MS = 10 * 60_000;

export interface PoolSamplerOptions {
  /** the daemon's volumes now (VG/LV; image paths are ignored) */
  volumes: () => string[];
  config: () => DaemonConfig;
  stateDir: string;
  log: Logger;
  metrics: DaemonMetrics;
  /** default: the configuration's `pool_sample_every`, read again each round (a reload applies it) */
  intervalMs?: number;
  pinnedIntervalMs?: number;
  /** after each round, the condition of every watched pool */
  onConditions?: (conditions: PoolCondition[]) => void;
}

export class PoolSampler {
  private reports = new Map<string, PoolReport>();
  private lastPinned = -Infinity;
  private readonly stopper = new AbortController();
  private loop?: Promise<void>;

  constructor(private readonly o: PoolSamplerOptions) {}

  /** Sample now, then every interval, until close(). */
  start(): void {
    this.loop ??= (async () => {
      const signal = this.stopper.signal;
      while (!signal.aborted) {
        await this.sampleOnce().catch((e: Error) => {
          if (!signal.aborted) this.o.log.warn({ err: e.message }, 'pool sampling failed');
        });
        await abortableSleep(this.o.intervalMs ?? this.o.config().poolSampleMs, signal).catch(() => {});
      }
    })();
  }

  /** One round: watch the pools of the daemon's volumes, update the gauges and the conditions. */
  async sampleOnce(): Promise<PoolReport[]> {
    const signal = this.stopper.signal;
    const volumes = this.o.volumes().filter((v) => !v.startsWith('/'));
    const { pools, missing } = await poolsOfVolumes(volumes, { signal });
    for (const m of missing) this.o.log.debug({ volume: m.volume }, `pool sampling: ${m.reason}`);
    const now = Date.now();
    const pinned = now - this.lastPinned >= (this.o.pinnedIntervalMs ?? PINNED_INTERVAL_MS);
    const config = this.o.config();
    const reports = pools.length === 0 ? [] : await watchPools({ pools, settings: config.pools, stateDir: this.o.stateDir, pinned, log: this.o.log, signal });
    if (pinned) this.lastPinned = now;
    const next = new Map<string, PoolReport>();
    for (const r of reports) {
      const prev = this.reports.get(r.pool);
      // Between measurements the pinned space is the last one measured.
      let kept = r;
      if (r.pinned.bytes === null && !r.error && prev?.pinned.bytes != null) {
        kept = { ...r, pinned: prev.pinned };
        kept.condition = poolCondition(kept);
      }
      next.set(r.pool, kept);
      this.o.metrics.setPool(kept);
      if (kept.condition.state !== 'OK') this.o.log.warn({ pool: r.pool, state: kept.condition.state }, kept.condition.message);
    }
    for (const pool of this.reports.keys()) if (!next.has(pool)) this.o.metrics.forgetPool(pool);
    this.reports = next;
    this.o.onConditions?.(this.conditions());
    return [...next.values()];
  }

  /** The latest condition of each watched pool (empty before the first round). */
  conditions(): PoolCondition[] {
    return [...this.reports.values()].map((r) => r.condition);
  }

  /** The latest report of each watched pool. */
  latest(): PoolReport[] {
    return [...this.reports.values()];
  }

  async close(): Promise<void> {
    this.stopper.abort(new Error('daemon stopping'));
    await this.loop;
  }
}
