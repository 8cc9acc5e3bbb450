/**
 * `thinarchive daemon` (docs/DAEMON.md): one process runs every job on schedule. Each job and volume
 * (a "unit") has its own loop, so a failing or slow volume never delays another; a unit's runs never
 * overlap, and slots that pass while a run is still going are skipped and counted. A job's scheduled
 * verification runs in the unit's loop after a successful run, when due. State is written
 * atomically after every run; the status socket, /metrics and the metrics textfile show the live
 * state. The daemon holds the state directory's lock for its whole life: `thinarchive run` refuses
 * while a daemon runs.
 */
import { chmod, mkdir, rm } from 'node:fs/promises';
import { createConnection, createServer, type Server } from 'node:net';
import type { Server as HttpServer } from 'node:http';
import { join } from 'node:path';
import { ChainLeaseHolder, metadataSnapshotsInFlight, metadataSnapshotsReleased, shareWorkers, thinVolumes, ThinarchiveError, TOOL_VERSION, type Logger, type PoolCondition } from '../api/index.js';
import { DaemonAlerts } from './alert-rules.js';
import { AlertEngine } from './alerts.js';
import { runAlerts, runStartPings, RUN_ALERT_WAIT_MS, type RunAlertUnit } from './run-alerts.js';
import { checkConfig, ConfigError, DEFAULT_MAX_CONCURRENT_RUNS, groupUnitVolume, loadConfig, stateDirHint, type DaemonConfig, type JobConfig } from './config.js';
import { mapLargeAllocations } from '../gc.js';
import { IdleCollector } from './idle-gc.js';
import { DaemonMetrics } from './metrics.js';
import { PoolSampler } from './pool-sampler.js';
import { RunSlots } from './run-slots.js';
import { runUnit, type RunOutcome } from './runner.js';
import { nextSlot, rescheduled, scheduleKey } from './schedule.js';
import { isVerifyDue, verifyDueAt, verifyUnit } from './scheduled-verify.js';
import {
  afterRun, afterVerify, emptyUnit, lockStateDir, readState, removeStaleTemps, removeStaleTempsOf, SOCKET_FILE, stateDirOf, unitKey, writeState,
  type ScheduledVerify, type StateLock, type UnitState,
} from './state.js';

export const STATUS_VERSION = 1;
/** How often every unit's lag is checked against its thresholds (and after every run). */
export const LAG_CHECK_MS = 30_000;
/**
 * The daemon's runs share one pool of worker threads (shareWorkers), closed after this long without
 * a run using it: units due every minute or more often keep it; a daemon whose units run every few
 * minutes or less often holds no threads between runs.
 */
const WORKERS_IDLE_MS = 60_000;

/** One row of `status --json` (docs/DAEMON.md, "status --json"). */
export interface UnitStatus {
  job: string;
  volume: string;
  /** running | ok | failing | never-run */
  state: 'running' | 'ok' | 'failing' | 'never-run';
  lastAttempt: string | null;
  lastSuccess: string | null;
  lastError: { code: string; message: string; at: string } | null;
  lagSeconds: number | null;
  bytes: number | null;
  durationSeconds: number | null;
  nextRun: string | null;
  chainLength: number | null;
  chainId: string | null;
  /** the last verification of any kind (after an apply: changed-only; scheduled: full or sample) */
  lastVerify: { at: string; ok: boolean; mode: string } | null;
  /** the last scheduled verification (job `verify:`) */
  scheduledVerify: ScheduledVerify | null;
  /** when the next scheduled verification is due (after the first successful run from then); null without `verify:` or from the state file */
  nextVerify: string | null;
  consecutiveFailures: number;
  /** since the daemon started (null from the state file) */
  skippedRuns: number | null;
  runs: number | null;
}

export interface StatusReport {
  version: number;
  /** "daemon": asked the running daemon; "state-file": none answered, read from the state file */
  source: 'daemon' | 'state-file';
  generated: string;
  daemon: { pid: number; startedAt: string; config: string } | null;
  units: UnitStatus[];
}

/** The next scheduled verification: after the first run that starts once it is due. */
function nextVerifyOf(job: JobConfig | undefined, u: UnitState, nextRun: number | undefined): string | null {
  const due = job ? verifyDueAt(job, u) : undefined;
  return due === undefined || nextRun === undefined ? null : new Date(Math.max(due, nextRun)).toISOString();
}

export function unitStatus(u: UnitState, now: number, live?: { running: boolean; next: number; skipped: number; runs: number; job?: JobConfig }): UnitStatus {
  const failing = u.lastError !== null && (u.lastSuccess === null || u.lastError.at > u.lastSuccess);
  return {
    job: u.job, volume: u.volume,
    state: live?.running ? 'running' : failing ? 'failing' : u.lastSuccess ? 'ok' : 'never-run',
    lastAttempt: u.lastAttempt, lastSuccess: u.lastSuccess, lastError: u.lastError,
    lagSeconds: u.newestPoint ? Math.max(0, Math.round((now - Date.parse(u.newestPoint)) / 1000)) : null,
    bytes: u.bytes, durationSeconds: u.durationSeconds, nextRun: live ? new Date(live.next).toISOString() : null,
    chainLength: u.chainLength, chainId: u.chainId, lastVerify: u.lastVerify, scheduledVerify: u.scheduledVerify ?? null,
    nextVerify: nextVerifyOf(live?.job, u, live?.next), consecutiveFailures: u.consecutiveFailures,
    skippedRuns: live ? live.skipped : null, runs: live ? live.runs : null,
  };
}

interface Unit {
  job: JobConfig;
  volume: string;
  running: boolean;
  next: number;
  skipped: number;
  runs: number;
  stop: AbortController;
  /** The lease of the chain the unit writes: held from its first run to its end (stop, reload removal). */
  lease: ChainLeaseHolder;
  /** wakes the loop from its sleep (a reload changed `next`) */
  wake?: () => void;
  loop?: Promise<void>;
  /** ms: when this daemon started the unit (its lag reference until it has a point) */
  since: number;
}

function globRegex(pattern: string): RegExp {
  const re = pattern.replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]');
  return new RegExp(`^${re}$`);
}

/** The volumes of a job: images as they are, VG/LV names as they are, patterns matched against the thin LVs; a group job's one unit. */
export async function expandSources(job: JobConfig, signal?: AbortSignal): Promise<string[]> {
  // A group job is one unit: all its members in one group send.
  if (job.group) return [groupUnitVolume(job.group)];
  const out: string[] = [];
  for (const s of job.sources) {
    if (s.kind === 'image') out.push(s.path);
    else if (!/[*?[]/.test(s.pattern)) out.push(s.pattern);
    else {
      const vg = s.pattern.split('/')[0];
      const re = globRegex(s.pattern);
      const all = await thinVolumes(/[*?[]/.test(vg) ? undefined : vg, { signal });
      out.push(...all.filter((v) => re.test(v)));
    }
  }
  return [...new Set(out)];
}

/** Ask a running daemon for its status over the socket; undefined when none answers. */
export function askDaemon(stateDir: string, connectTimeoutMs = 3000, answerTimeoutMs = 30_000): Promise<StatusReport | undefined> {
  return new Promise((resolve) => {
    const sock = createConnection(join(stateDir, SOCKET_FILE));
    const chunks: Buffer[] = [];
    // Nobody listening fails at once (ENOENT, ECONNREFUSED); a daemon that accepted answers from its event
    // loop, which a busy host may hold for seconds: once connected it gets the longer wait.
    let timer = setTimeout(() => {
      sock.destroy();
      resolve(undefined);
    }, connectTimeoutMs);
    sock.on('connect', () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        sock.destroy();
        resolve(undefined);
      }, answerTimeoutMs);
    });
    sock.on('data', (b) => chunks.push(b));
    sock.on('error', () => {
      clearTimeout(timer);
      resolve(undefined);
    });
    sock.on('end', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as StatusReport);
      } catch {
        resolve(undefined);
      }
    });
  });
}

export class Daemon {
  config!: DaemonConfig;
  readonly stateDir: string;
  readonly metrics = new DaemonMetrics();
  private readonly units = new Map<string, Unit>();
  /** loops of units a reload removed, still ending: a unit added again for the same key waits for its old loop */
  private readonly ending = new Map<string, Promise<void>>();
  private state = new Map<string, UnitState>();
  private socket?: Server;
  private http?: HttpServer;
  private lock?: StateLock;
  private writing: Promise<void> = Promise.resolve();
  private reloading: Promise<boolean> = Promise.resolve(true);
  private textfile: { path?: string; busy?: Promise<void>; again: boolean } = { again: false };
  private readonly startedAt = new Date();
  private stopping = false;
  private alerts?: DaemonAlerts;
  private lagTimer?: NodeJS.Timeout;
  private pools?: PoolSampler;
  /** `max_concurrent_runs`: a due unit takes a slot before its run */
  private readonly slots = new RunSlots(DEFAULT_MAX_CONCURRENT_RUNS);
  private readonly idleGc = new IdleCollector(() => [...this.units.values()].some((u) => u.running));

  constructor(private readonly configPath: string, private readonly log: Logger, stateDirOverride?: string, config?: DaemonConfig) {
    if (config) {
      this.config = config;
      this.slots.limit = config.maxConcurrentRuns;
    }
    this.stateDir = stateDirOverride ?? '';
  }

  static async create(configPath: string, log: Logger): Promise<Daemon> {
    const config = await loadConfig(configPath);
    return new Daemon(configPath, log, stateDirOf(config.stateDir), config);
  }

  async start(): Promise<void> {
    await mkdir(this.stateDir, { recursive: true, mode: 0o700 });
    const sockPath = join(this.stateDir, SOCKET_FILE);
    if (await askDaemon(this.stateDir, 1000)) throw new ThinarchiveError('DAEMON_RUNNING', `a daemon already answers on ${sockPath}`);
    // The state directory's lock, for the daemon's life (a `thinarchive run` merging its outcome holds it for a moment).
    this.lock = await lockStateDir(this.stateDir, 5000);
    if (!this.lock) throw new ThinarchiveError('DAEMON_RUNNING', `another thinarchive daemon or run holds ${join(this.stateDir, 'daemon.lock')}`);
    await rm(sockPath, { force: true });
    await removeStaleTemps(this.stateDir);
    await shareWorkers(WORKERS_IDLE_MS);
    mapLargeAllocations();
    this.state = await readState(this.stateDir);
    this.socket = createServer((c) => {
      c.on('error', () => {});
      c.end(JSON.stringify(this.status()));
    });
    await new Promise<void>((resolve, reject) => {
      this.socket!.once('error', reject);
      // Created 0600 by the umask below and chmod after: only root (the owner) may ask.
      const old = process.umask(0o177);
      this.socket!.listen(sockPath, () => {
        process.umask(old);
        resolve();
      });
    });
    await chmod(sockPath, 0o600);
    this.metrics.up.set(this.startedAt.getTime() / 1000);
    this.metrics.newestPoints = () => [...this.units.values()].flatMap((u) => {
      const s = this.state.get(unitKey(u.job.name, u.volume));
      return s?.newestPoint ? [{ job: u.job.name, volume: u.volume, newestMs: Date.parse(s.newestPoint) }] : [];
    });
    if (this.config.metrics?.listen) this.http = await this.metrics.serve(this.config.metrics.listen);
    this.alerts = new DaemonAlerts(await AlertEngine.open(this.config.alerts, {
      log: this.log, stateDir: this.stateDir,
      onAlert: (e) => this.metrics.alerts.inc({ event: e.event }),
      onDeliveryFailure: (channel) => this.metrics.alertDeliveryFailures.inc({ channel }),
    }));
    await this.applyJobs(this.config);
    await this.setTextfile(this.config.metrics?.textfile);
    this.alerts.started(this.units.size, this.config.jobs.length, TOOL_VERSION);
    this.checkLag();
    this.lagTimer = setInterval(() => this.checkLag(), LAG_CHECK_MS).unref();
    this.pools = new PoolSampler({
      volumes: () => [...new Set([...this.units.values()].flatMap((u) => u.job.group?.volumes ?? [u.volume]))], config: () => this.config, stateDir: this.stateDir, log: this.log, metrics: this.metrics,
      onConditions: (c) => this.alerts?.pools(c),
    });
    this.pools.start();
    this.log.info({ config: this.configPath, stateDir: this.stateDir, units: this.units.size }, 'daemon started');
  }

  /** Start, keep or stop units to match `config`. */
  private async applyJobs(config: DaemonConfig): Promise<void> {
    const wanted = new Map<string, { job: JobConfig; volume: string }>();
    for (const job of config.jobs) {
      let volumes: string[];
      try {
        volumes = await expandSources(job);
      } catch (e) {
        this.log.warn({ job: job.name, code: (e as ThinarchiveError).code }, `cannot list volumes for the job's patterns: ${(e as Error).message}`);
        volumes = job.sources.flatMap((s) => (s.kind === 'image' ? [s.path] : !/[*?[]/.test(s.pattern) ? [s.pattern] : []));
      }
      for (const v of volumes) wanted.set(unitKey(job.name, v), { job, volume: v });
    }
    let removed = false;
    for (const [key, u] of this.units) {
      if (wanted.has(key)) continue;
      u.stop.abort(new Error('removed from the configuration'));
      this.units.delete(key);
      // Its state and metric series go too (label sets stay bounded; a volume added again starts afresh,
      // its chain is continued by the send as always).
      this.state.delete(key);
      this.metrics.forget(u.job.name, u.volume);
      const loop = u.loop ?? Promise.resolve();
      this.ending.set(key, loop);
      void loop.finally(() => { if (this.ending.get(key) === loop) this.ending.delete(key); });
      removed = true;
      this.log.info({ job: u.job.name, volume: u.volume }, 'removed from the configuration');
    }
    const now = Date.now();
    for (const [key, w] of wanted) {
      const existing = this.units.get(key);
      if (existing) {
        const old = scheduleKey(existing.job.schedule);
        existing.job = w.job;
        if (old !== scheduleKey(w.job.schedule) && !existing.running) {
          const last = this.state.get(key)?.lastAttempt;
          existing.next = rescheduled(last ? Date.parse(last) : undefined, w.job.schedule, now);
          existing.wake?.();
        }
        continue;
      }
      const prev = this.state.get(key);
      if (!prev) this.state.set(key, emptyUnit(w.job.name, w.volume));
      const last = prev?.lastAttempt ? Date.parse(prev.lastAttempt) : undefined;
      const unit: Unit = {
        job: w.job, volume: w.volume, running: false, next: rescheduled(last, w.job.schedule, now), skipped: 0, runs: 0, since: now,
        stop: new AbortController(), lease: new ChainLeaseHolder({ job: w.job.name, ttlMs: config.leaseTtlMs, log: this.log }),
      };
      if (prev) this.initMetrics(prev);
      this.units.set(key, unit);
      unit.loop = this.loop(unit, this.ending.get(key));
    }
    this.config = config;
    this.slots.limit = config.maxConcurrentRuns;
    if (removed) this.saveState();
    // Conditions of units no longer configured are forgotten (no resolved event for them).
    this.alerts?.engine.retain((family, s) => (family !== 'run' && family !== 'lag') || this.units.has(unitKey(s.job ?? '', s.volume ?? '')));
  }

  /** Every unit's lag against its job's thresholds (lag_warning, lag_critical, lag_ok). */
  private checkLag(): void {
    this.alerts?.lag([...this.units.values()].map((u) => ({ job: u.job, volume: u.volume, state: this.state.get(unitKey(u.job.name, u.volume)), since: u.since })));
  }

  private initMetrics(s: UnitState): void {
    const l = { job: s.job, volume: s.volume };
    if (s.lastSuccess) this.metrics.lastSuccess.set(l, Date.parse(s.lastSuccess) / 1000);
    if (s.chainLength !== null) this.metrics.chainLength.set(l, s.chainLength);
    if (s.lastVerify?.ok) this.metrics.verifySuccess.set(l, Date.parse(s.lastVerify.at) / 1000);
    const sv = s.scheduledVerify;
    if (sv?.ok) this.metrics.scheduledVerifySuccess.set(l, Date.parse(sv.at) / 1000);
  }

  /** Sleep until the unit's next slot; false when it was stopped. A reload may move `next` and wake it. */
  private async sleepUntilNext(unit: Unit): Promise<boolean> {
    const signal = unit.stop.signal;
    while (!signal.aborted) {
      const ms = unit.next - Date.now();
      if (ms <= 0) return true;
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(t);
          signal.removeEventListener('abort', done);
          unit.wake = undefined;
          resolve();
        };
        const t = setTimeout(done, ms);
        unit.wake = done;
        signal.addEventListener('abort', done, { once: true });
      });
    }
    return false;
  }

  private async loop(unit: Unit, previous?: Promise<void>): Promise<void> {
    await previous;
    const signal = unit.stop.signal;
    const key = unitKey(unit.job.name, unit.volume);
    while (await this.sleepUntilNext(unit)) {
      // At most max_concurrent_runs units run at once; a reload may move this unit's slot while it waits.
      if (!(await this.slots.acquire(signal))) break;
      if (unit.next > Date.now()) {
        this.slots.release();
        continue;
      }
      unit.running = true;
      let out: RunOutcome;
      const attemptAt = new Date();
      const ctx = { config: this.config, stateDir: this.stateDir, log: this.log, signal, lease: unit.lease };
      this.alerts?.runStarted(unit.job.name, unit.volume);
      try {
        const prev = this.state.get(key) ?? emptyUnit(unit.job.name, unit.volume);
        out = await runUnit(unit.job, unit.volume, prev, ctx);
        if (this.units.get(key) !== unit) break; // removed by a reload meanwhile: nothing to record
        unit.runs++;
        const s = this.record(unit, attemptAt, out);
        this.alerts?.afterRun(unit.job.name, unit.volume, prev, s, out, [...this.units.values()].map((u) => this.state.get(unitKey(u.job.name, u.volume)) ?? emptyUnit(u.job.name, u.volume)));
        this.checkLag();
        if (out.ok && isVerifyDue(unit.job, s, Date.now())) {
          let v: ScheduledVerify | undefined;
          try {
            v = await verifyUnit(unit.job, s, ctx);
          } catch {
            // aborted (stop or removal): nothing recorded, due again at the next run
          }
          if (v && this.units.get(key) === unit) {
            this.recordVerify(unit, v);
            this.alerts?.verifyOutcome(unit.job.name, unit.volume, v);
          }
        }
      } finally {
        unit.running = false;
        this.slots.release();
        this.idleGc.poke();
      }
      // The next slot after now; the slots a long run passed over are skipped and counted.
      const { next, missed } = nextSlot(unit.next, unit.job.schedule, Date.now());
      unit.next = next;
      if (missed) {
        unit.skipped += missed;
        this.metrics.skipped.inc({ job: unit.job.name, volume: unit.volume }, missed);
      }
    }
    // Stopped (SIGTERM, or removed by a reload): the next writer need not wait for the lease to expire.
    await unit.lease.release();
  }

  private record(unit: Unit, attemptAt: Date, out: RunOutcome): UnitState {
    const key = unitKey(unit.job.name, unit.volume);
    const l = { job: unit.job.name, volume: unit.volume };
    const s = afterRun(this.state.get(key) ?? emptyUnit(unit.job.name, unit.volume), attemptAt, out);
    this.metrics.duration.observe(l, out.seconds);
    this.metrics.lastAttempt.set(l, Date.now() / 1000);
    if (out.ok) {
      this.metrics.lastSuccess.set(l, Date.parse(s.lastSuccess!) / 1000);
      this.metrics.bytes.inc(l, out.bytes);
      if (s.chainLength !== null) this.metrics.chainLength.set(l, s.chainLength);
      if (out.freezeMs !== undefined) this.metrics.groupFreeze.set(l, out.freezeMs / 1000);
      if (out.verify?.ok) this.metrics.verifySuccess.set(l, Date.parse(out.verify.at) / 1000);
    } else if (out.error!.code !== 'ABORTED') {
      this.metrics.fail(unit.job.name, unit.volume, out.error!.code);
    }
    this.state.set(key, s);
    this.saveState();
    return s;
  }

  private recordVerify(unit: Unit, v: ScheduledVerify): void {
    const key = unitKey(unit.job.name, unit.volume);
    const l = { job: unit.job.name, volume: unit.volume };
    this.state.set(key, afterVerify(this.state.get(key)!, v));
    if (v.ok) {
      this.metrics.verifySuccess.set(l, Date.parse(v.at) / 1000);
      this.metrics.scheduledVerifySuccess.set(l, Date.parse(v.at) / 1000);
    } else this.metrics.fail(unit.job.name, unit.volume, v.error?.code ?? 'VERIFY_FAILED');
    this.saveState();
  }

  /** Write the state file (in order), then the metrics textfile. */
  private saveState(): void {
    const units = [...this.state.values()];
    this.writing = this.writing.then(() => writeState(this.stateDir, units)).catch((e) => {
      this.log.warn({ code: (e as ThinarchiveError).code }, `cannot write the state file: ${(e as Error).message}`);
    });
    this.writeTextfile();
  }

  /** Start (or stop) writing the metrics textfile at `path`; written at once. */
  private async setTextfile(path: string | undefined): Promise<void> {
    if (path === this.textfile.path) return;
    this.textfile.path = path;
    if (!path) return;
    await removeStaleTempsOf(path);
    this.writeTextfile();
    await this.textfile.busy;
  }

  /** Write the textfile (one write at a time; a request during a write makes one more after it). */
  private writeTextfile(): void {
    const tf = this.textfile;
    if (!tf.path) return;
    if (tf.busy) {
      tf.again = true;
      return;
    }
    const path = tf.path;
    tf.busy = this.metrics.writeTextfile(path).catch((e) => {
      this.log.warn({ code: (e as NodeJS.ErrnoException).code, path }, `cannot write the metrics textfile: ${(e as Error).message}`);
    }).finally(() => {
      tf.busy = undefined;
      if (tf.again) {
        tf.again = false;
        this.writeTextfile();
      }
    });
  }

  status(): StatusReport {
    const now = Date.now();
    return {
      version: STATUS_VERSION, source: 'daemon', generated: new Date(now).toISOString(),
      daemon: { pid: process.pid, startedAt: this.startedAt.toISOString(), config: this.configPath },
      units: [...this.units.values()].map((u) => unitStatus(this.state.get(unitKey(u.job.name, u.volume)) ?? emptyUnit(u.job.name, u.volume), now, u)),
    };
  }

  /** The latest condition of each pool holding a volume of the daemon (sampled every minute; empty before the first sample). */
  poolConditions(): PoolCondition[] {
    return this.pools?.conditions() ?? [];
  }

  /** SIGHUP: read the config again; a bad one is logged and the running one kept. Reloads run one at a time. */
  reload(): Promise<boolean> {
    this.reloading = this.reloading.then(() => this.reloadNow(), () => this.reloadNow());
    return this.reloading;
  }

  private async reloadNow(): Promise<boolean> {
    if (this.stopping) return false;
    const r = await checkConfig(this.configPath);
    if (!r.config) {
      this.log.warn({ config: this.configPath, problems: r.problems }, `configuration not reloaded: ${r.problems.map((p) => `line ${p.line}: ${p.message}`).join('; ')}`);
      return false;
    }
    if (stateDirOf(r.config.stateDir) !== this.stateDir) this.log.warn({}, 'state_dir changed: takes effect at the next start');
    const listenChanged = r.config.metrics?.listen !== this.config.metrics?.listen;
    this.alerts?.engine.configure(r.config.alerts);
    await this.applyJobs(r.config);
    if (listenChanged) {
      await new Promise((res) => (this.http ? this.http.close(res) : res(undefined)));
      this.http = r.config.metrics?.listen ? await this.metrics.serve(r.config.metrics.listen) : undefined;
    }
    await this.setTextfile(r.config.metrics?.textfile);
    this.writeTextfile();
    this.log.info({ config: this.configPath, units: this.units.size }, 'configuration reloaded');
    return true;
  }

  /**
   * Before the process exits: wait (at most `timeoutMs`) until no pool's metadata snapshot is held by
   * this process. An aborted run that was reserving one when the signal came releases it within
   * seconds; exiting first would leave it held until the next start. True when none is held.
   */
  async metadataSnapshotsReleased(timeoutMs: number): Promise<boolean> {
    const n = metadataSnapshotsInFlight();
    if (n === 0) return true;
    this.log.warn({ reservations: n }, 'waiting for the release of the metadata snapshot an aborted run holds');
    const ok = await metadataSnapshotsReleased(timeoutMs);
    if (!ok) this.log.warn({ reservations: metadataSnapshotsInFlight() }, 'a metadata snapshot is still held at exit: the next start releases it');
    return ok;
  }

  /** SIGTERM: abort every run (cleanly, through its AbortSignal), wait for them (at most `graceMs`), save state, close. */
  async stop(graceMs = 5500): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.lagTimer);
    this.idleGc.close();
    this.alerts?.stopped();
    for (const u of this.units.values()) u.stop.abort(new Error('daemon stopping'));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...[...this.units.values(), ...[...this.ending.values()].map((loop) => ({ loop }))].map((u) => u.loop), this.pools?.close()]),
      new Promise((res) => { timer = setTimeout(res, graceMs); }),
    ]);
    clearTimeout(timer);
    await shareWorkers(undefined);
    this.saveState();
    await this.writing;
    while (this.textfile.busy) await this.textfile.busy; // (a write asked for meanwhile follows the one in progress)
    this.http?.closeAllConnections();
    await Promise.all([
      new Promise((res) => (this.http ? this.http.close(res) : res(undefined))),
      new Promise((res) => (this.socket ? this.socket.close(res) : res(undefined))),
    ]);
    await rm(join(this.stateDir, SOCKET_FILE), { force: true });
    // daemon_stopped was queued at the start of the stop; what is not delivered now is at the next start.
    await this.alerts?.engine.flush(1000);
    await this.alerts?.engine.close();
    await this.lock?.release();
    this.log.info({}, 'daemon stopped');
  }
}

/**
 * `thinarchive run JOB [--volume V]`: one run of each (matching) volume of the job now, state
 * recorded. Refused (DAEMON_RUNNING) while a daemon runs on the same state directory: the daemon
 * owns the state and runs the job on its schedule. The outcome is merged into the state file under
 * the state directory's lock (several `run`s at once are fine); when a daemon started meanwhile, the
 * outcome is not recorded (logged).
 */
export async function runJobOnce(configPath: string, jobName: string, volume: string | undefined, log: Logger, signal: AbortSignal, takeLease = false): Promise<{ job: string; volume: string; outcome: RunOutcome; recorded: boolean }[]> {
  const config = await loadConfig(configPath);
  const job = config.jobs.find((j) => j.name === jobName);
  if (!job) throw new ThinarchiveError('JOB_NOT_FOUND', `no job "${jobName}" in ${configPath} (jobs: ${config.jobs.map((j) => j.name).join(', ')})`, 'usage');
  const stateDir = stateDirOf(config.stateDir);
  const live = await askDaemon(stateDir, 1000);
  if (live) {
    throw new ThinarchiveError('DAEMON_RUNNING', `a daemon (pid ${live.daemon?.pid ?? '?'}) runs the jobs of ${stateDir} and runs "${jobName}" on its schedule; stop it to run a job by hand`);
  }
  let volumes = await expandSources(job, signal);
  if (volume !== undefined) {
    volumes = volumes.filter((v) => v === volume);
    if (!volumes.length) throw new ThinarchiveError('JOB_NOT_FOUND', `job "${jobName}" has no volume ${volume}`, 'usage');
  }
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const before = await readState(stateDir);
  await runStartPings(config.alerts, job.name, volumes, log);
  const results = await Promise.all(volumes.map(async (v) => {
    const prev = before.get(unitKey(job.name, v)) ?? emptyUnit(job.name, v);
    const attemptAt = new Date();
    const lease = new ChainLeaseHolder({ job: job.name, ttlMs: config.leaseTtlMs, log });
    let outcome: RunOutcome;
    try {
      outcome = await runUnit(job, v, prev, { config, stateDir, log, signal, lease, takeLease });
    } finally {
      await lease.release();
    }
    return { job: job.name, volume: v, outcome, attemptAt, end: new Date() };
  }));
  // Merge into the state file once, under the lock (read again: another run may have written meanwhile).
  // A daemon that started meanwhile holds the lock for good: then the outcome is not recorded.
  // The alerts (docs/ALERTS.md, "thinarchive run") under the same lock: alerts-state.json is shared
  // with other runs and the daemon; another run waits for them (at most RUN_ALERT_WAIT_MS).
  let lock = await lockStateDir(stateDir, 0);
  if (!lock && !(await askDaemon(stateDir, 1000))) lock = await lockStateDir(stateDir, 10_000 + RUN_ALERT_WAIT_MS);
  let recorded = false;
  if (!lock) log.warn({ stateDir }, 'outcome not recorded in the state file and no alerts sent: a daemon started meanwhile (or another process holds daemon.lock)');
  else {
    try {
      const state = await readState(stateDir);
      const units: RunAlertUnit[] = [];
      for (const r of results) {
        const key = unitKey(r.job, r.volume);
        const prev = state.get(key) ?? emptyUnit(r.job, r.volume);
        const next = afterRun(prev, r.attemptAt, r.outcome, r.end);
        state.set(key, next);
        units.push({ job: r.job, volume: r.volume, prev, state: next, outcome: r.outcome });
      }
      await writeState(stateDir, state.values());
      recorded = true;
      await runAlerts(config.alerts, stateDir, units, log);
    } finally {
      await lock.release();
    }
  }
  return results.map(({ job: j, volume: v, outcome }) => ({ job: j, volume: v, outcome, recorded }));
}

/** `status`: from the running daemon, or from the state file (units of the config, and any others recorded). */
export async function readStatus(configPath: string): Promise<StatusReport> {
  let config: DaemonConfig;
  try {
    config = await loadConfig(configPath);
  } catch (e) {
    // A file broken after the daemon started (it keeps the configuration it has): still ask it.
    const dir = e instanceof ConfigError ? await stateDirHint(configPath) : undefined;
    const live = dir !== undefined ? await askDaemon(dir) : undefined;
    if (live) return live;
    throw e;
  }
  const stateDir = stateDirOf(config.stateDir);
  const live = await askDaemon(stateDir);
  if (live) return live;
  const now = Date.now();
  const state = await readState(stateDir);
  return { version: STATUS_VERSION, source: 'state-file', generated: new Date(now).toISOString(), daemon: null, units: [...state.values()].map((u) => unitStatus(u, now)) };
}
