/**
 * Prometheus metrics of the daemon (docs/DAEMON.md, "Metrics"), on a registry of its own: served at
 * /metrics (`metrics.listen`) and/or written to a node_exporter textfile (`metrics.textfile`).
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { PoolReport } from '../api/index.js';
import { writeFileAtomic } from '../fsutil.js';

export class DaemonMetrics {
  readonly registry = new Registry();
  readonly lastSuccess = new Gauge({ name: 'thinarchive_last_success_timestamp_seconds', help: 'Unix time of the last successful run', labelNames: ['job', 'volume'], registers: [this.registry] });
  readonly lastAttempt = new Gauge({ name: 'thinarchive_last_attempt_timestamp_seconds', help: 'Unix time the last run ended', labelNames: ['job', 'volume'], registers: [this.registry] });
  /** Called at each scrape: the newest point's time (ms) per unit, for the lag gauge. */
  newestPoints: () => { job: string; volume: string; newestMs: number }[] = () => [];
  readonly lag: Gauge = (() => {
    const self = this;
    return new Gauge({
      name: 'thinarchive_lag_seconds', help: 'now minus the creation time of the newest point at the destination', labelNames: ['job', 'volume'], registers: [this.registry],
      collect() {
        const now = Date.now();
        for (const u of self.newestPoints()) this.set({ job: u.job, volume: u.volume }, Math.max(0, (now - u.newestMs) / 1000));
      },
    });
  })();
  readonly duration = new Histogram({
    name: 'thinarchive_run_duration_seconds', help: 'duration of runs (successful or not)', labelNames: ['job', 'volume'],
    buckets: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600], registers: [this.registry],
  });
  readonly bytes = new Counter({ name: 'thinarchive_bytes_sent_total', help: 'archive bytes written by successful runs', labelNames: ['job', 'volume'], registers: [this.registry] });
  readonly failures = new Counter({ name: 'thinarchive_failures_total', help: 'failed runs by error code', labelNames: ['job', 'volume', 'code'], registers: [this.registry] });
  readonly skipped = new Counter({ name: 'thinarchive_skipped_runs_total', help: 'scheduled runs skipped because the previous run of the volume was still going', labelNames: ['job', 'volume'], registers: [this.registry] });
  readonly groupFreeze = new Gauge({ name: 'thinarchive_group_freeze_seconds', help: 'group jobs: the quiesce window (freeze to thaw) of the last point sent', labelNames: ['job', 'volume'], registers: [this.registry] });
  readonly chainLength = new Gauge({ name: 'thinarchive_chain_length', help: 'points in the chain at the destination', labelNames: ['job', 'volume'], registers: [this.registry] });
  readonly verifySuccess = new Gauge({ name: 'thinarchive_verify_last_success_timestamp_seconds', help: 'Unix time of the last successful verification of any kind (after an apply, or scheduled)', labelNames: ['job', 'volume'], registers: [this.registry] });
  readonly scheduledVerifySuccess = new Gauge({ name: 'thinarchive_scheduled_verify_last_success_timestamp_seconds', help: 'Unix time of the last successful scheduled verification (job verify: store and local replica, or remote replica)', labelNames: ['job', 'volume'], registers: [this.registry] });
  readonly alerts = new Counter({ name: 'thinarchive_alerts_total', help: 'alerts made (before delivery), by event (docs/ALERTS.md)', labelNames: ['event'], registers: [this.registry] });
  readonly alertDeliveryFailures = new Counter({ name: 'thinarchive_alert_delivery_failures_total', help: 'failed delivery attempts of alerts and pings, by channel (each is retried)', labelNames: ['channel'], registers: [this.registry] });
  readonly up = new Gauge({ name: 'thinarchive_daemon_start_timestamp_seconds', help: 'Unix time the daemon started', registers: [this.registry] });

  /** the failure codes seen per unit (to drop their series in forget) */
  private readonly codes = new Map<string, Set<string>>();

  /** Count a failure of the unit with `code`. */
  fail(job: string, volume: string, code: string): void {
    this.failures.inc({ job, volume, code });
    const k = `${job}\0${volume}`;
    if (!this.codes.has(k)) this.codes.set(k, new Set());
    this.codes.get(k)!.add(code);
  }

  readonly poolData = new Gauge({ name: 'thinarchive_pool_data_percent', help: 'data space of the thin pool in use, percent', labelNames: ['pool'], registers: [this.registry] });
  readonly poolMetadata = new Gauge({ name: 'thinarchive_pool_metadata_percent', help: 'metadata space of the thin pool in use, percent', labelNames: ['pool'], registers: [this.registry] });
  readonly poolPinned = new Gauge({ name: 'thinarchive_pool_pinned_bytes', help: "pool space only thinarchive's base snapshots hold (blocks their origins rewrote or discarded)", labelNames: ['pool'], registers: [this.registry] });
  readonly poolSecondsToFull = new Gauge({ name: 'thinarchive_pool_seconds_to_full', help: 'predicted seconds until the data or metadata space is full at the last hour\'s rate (absent when not filling or not predictable)', labelNames: ['pool'], registers: [this.registry] });

  /** The pool gauges from a pool watch report: a value that cannot be told removes its series. */
  setPool(r: PoolReport): void {
    const l = { pool: r.pool };
    const set = (g: Gauge, v: number | null | undefined): void => {
      if (v === null || v === undefined) g.remove(l);
      else g.set(l, v);
    };
    set(this.poolData, r.data?.percent);
    set(this.poolMetadata, r.metadata?.percent);
    // A pinned space not measured this time keeps its last value (it is measured less often).
    if (r.pinned.bytes !== null) this.poolPinned.set(l, r.pinned.bytes);
    else if (r.error) this.poolPinned.remove(l);
    set(this.poolSecondsToFull, r.secondsToFull);
  }

  /** Drop the series of a pool no longer watched. */
  forgetPool(pool: string): void {
    for (const g of [this.poolData, this.poolMetadata, this.poolPinned, this.poolSecondsToFull]) g.remove({ pool });
  }

  /** Drop the series of units no longer configured (after a reload), so label sets stay bounded. */
  forget(job: string, volume: string): void {
    for (const m of [this.lastSuccess, this.lastAttempt, this.lag, this.bytes, this.skipped, this.chainLength, this.groupFreeze, this.verifySuccess, this.scheduledVerifySuccess, this.duration]) m.remove({ job, volume });
    const k = `${job}\0${volume}`;
    for (const code of this.codes.get(k) ?? []) this.failures.remove({ job, volume, code });
    this.codes.delete(k);
  }

  /** Write the registry in the text format to `path`, atomically (temporary file beside it, fsync, rename). */
  async writeTextfile(path: string): Promise<void> {
    await writeFileAtomic(path, await this.registry.metrics());
  }

  /** Serve /metrics on `listen` (HOST:PORT). */
  async serve(listen: string): Promise<Server> {
    const i = listen.lastIndexOf(':');
    const host = listen.slice(0, i).replace(/^\[|\]$/g, '');
    const port = Number(listen.slice(i + 1));
    const server = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end('not found: try /metrics\n');
        return;
      }
      this.registry.metrics().then((text) => {
        res.writeHead(200, { 'content-type': this.registry.contentType }).end(text);
      }, (e: Error) => res.writeHead(500).end(`${e.message}\n`));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    return server;
  }
}
