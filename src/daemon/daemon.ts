/**
 * `thinarchive daemon` (docs/DAEMON.md): one process runs every job on schedule. Each job and volume
 * (a "unit") has its own loop, so a failing or slow volume never delays another; a unit's runs never
 * overlap, and slots that pass while a run is still going are skipped and counted. State is written
 * atomically after every run; the status socket and /metrics read the live state.
 */
import { chmod, mkdir, rm } from 'node:fs/promises';
import { createConnection, createServer, type Server } from 'node:net';
import type { Server as HttpServer } from 'node:http';
import { join } from 'node:path';
import { thinVolumes, ThinarchiveError, type Logger, type PoolCondition } from '../api/index.js';
import { checkConfig, loadConfig, type DaemonConfig, type JobConfig } from './config.js';
import { DaemonMetrics } from './metrics.js';
import { PoolSampler } from './pool-sampler.js';
import { abortableSleep, runUnit, type RunOutcome } from './runner.js';
import { emptyUnit, readState, removeStaleTemps, SOCKET_FILE, stateDirOf, unitKey, writeState, type UnitState } from './state.js';

export const STATUS_VERSION = 1;

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
  lastVerify: { at: string; ok: boolean; mode: string } | null;
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

export function unitStatus(u: UnitState, now: number, live?: { running: boolean; next: number; skipped: number; runs: number }): UnitStatus {
  const failing = u.lastError !== null && (u.lastSuccess === null || u.lastError.at > u.lastSuccess);
  return {
    job: u.job, volume: u.volume,
    state: live?.running ? 'running' : failing ? 'failing' : u.lastSuccess ? 'ok' : 'never-run',
    lastAttempt: u.lastAttempt, lastSuccess: u.lastSuccess, lastError: u.lastError,
    lagSeconds: u.newestPoint ? Math.max(0, Math.round((now - Date.parse(u.newestPoint)) / 1000)) : null,
    bytes: u.bytes, durationSeconds: u.durationSeconds, nextRun: live ? new Date(live.next).toISOString() : null,
    chainLength: u.chainLength, chainId: u.chainId, lastVerify: u.lastVerify, consecutiveFailures: u.consecutiveFailures,
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
  loop?: Promise<void>;
}

/**
 * After a run of the slot at `slot`: the next slot (slot + k * every, the first not yet passed) and
 * how many slots passed while the run went on (skipped, not queued).
 */
export function nextSlot(slot: number, every: number, now: number): { next: number; missed: number } {
  let next = slot + every;
  let missed = 0;
  if (now > next) {
    missed = Math.ceil((now - next) / every);
    next += missed * every;
  }
  return { next, missed };
}

function globRegex(pattern: string): RegExp {
  const re = pattern.replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]');
  return new RegExp(`^${re}$`);
}

/** The volumes of a job: images as they are, VG/LV names as they are, patterns matched against the thin LVs. */
export async function expandSources(job: JobConfig, signal?: AbortSignal): Promise<string[]> {
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
export function askDaemon(stateDir: string, timeoutMs = 3000): Promise<StatusReport | undefined> {
  return new Promise((resolve) => {
    const sock = createConnection(join(stateDir, SOCKET_FILE));
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(undefined);
    }, timeoutMs);
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
  private state = new Map<string, UnitState>();
  private socket?: Server;
  private http?: HttpServer;
  private writing: Promise<void> = Promise.resolve();
  private readonly startedAt = new Date();
  private stopping = false;
  private pools?: PoolSampler;

  constructor(private readonly configPath: string, private readonly log: Logger, stateDirOverride?: string, config?: DaemonConfig) {
    if (config) this.config = config;
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
    await rm(sockPath, { force: true });
    await removeStaleTemps(this.stateDir);
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
    if (this.config.metrics) this.http = await this.metrics.serve(this.config.metrics.listen);
    await this.applyJobs(this.config);
    this.pools = new PoolSampler({
      volumes: () => [...new Set([...this.units.values()].map((u) => u.volume))], config: () => this.config, stateDir: this.stateDir, log: this.log, metrics: this.metrics,
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
    for (const [key, u] of this.units) {
      if (wanted.has(key)) continue;
      u.stop.abort(new Error('removed from the configuration'));
      this.units.delete(key);
      this.metrics.forget(u.job.name, u.volume);
    }
    const now = Date.now();
    for (const [key, w] of wanted) {
      const existing = this.units.get(key);
      if (existing) {
        if (existing.job.every !== w.job.every) existing.next = Math.min(existing.next, now + w.job.every);
        existing.job = w.job;
        continue;
      }
      const prev = this.state.get(key);
      if (!prev) this.state.set(key, emptyUnit(w.job.name, w.volume));
      const last = prev?.lastAttempt ? Date.parse(prev.lastAttempt) : undefined;
      const unit: Unit = { job: w.job, volume: w.volume, running: false, next: last !== undefined ? Math.max(now, last + w.job.every) : now, skipped: 0, runs: 0, stop: new AbortController() };
      if (prev) this.initMetrics(prev);
      this.units.set(key, unit);
      unit.loop = this.loop(unit);
    }
    this.config = config;
  }

  private initMetrics(s: UnitState): void {
    const l = { job: s.job, volume: s.volume };
    if (s.lastSuccess) this.metrics.lastSuccess.set(l, Date.parse(s.lastSuccess) / 1000);
    if (s.chainLength !== null) this.metrics.chainLength.set(l, s.chainLength);
    if (s.lastVerify?.ok) this.metrics.verifySuccess.set(l, Date.parse(s.lastVerify.at) / 1000);
  }

  private async loop(unit: Unit): Promise<void> {
    const signal = unit.stop.signal;
    while (!signal.aborted) {
      try {
        await abortableSleep(Math.max(0, unit.next - Date.now()), signal);
      } catch {
        break;
      }
      unit.running = true;
      const key = unitKey(unit.job.name, unit.volume);
      const prev = this.state.get(key) ?? emptyUnit(unit.job.name, unit.volume);
      const attemptAt = new Date();
      let out: RunOutcome;
      try {
        out = await runUnit(unit.job, unit.volume, prev, { config: this.config, stateDir: this.stateDir, log: this.log, signal });
      } finally {
        unit.running = false;
      }
      unit.runs++;
      this.record(unit, prev, attemptAt, out);
      // The next slot after now; the slots a long run passed over are skipped and counted.
      const { next, missed } = nextSlot(unit.next, unit.job.every, Date.now());
      unit.next = next;
      if (missed) {
        unit.skipped += missed;
        this.metrics.skipped.inc({ job: unit.job.name, volume: unit.volume }, missed);
      }
    }
  }

  private record(unit: Unit, prev: UnitState, attemptAt: Date, out: RunOutcome): void {
    const l = { job: unit.job.name, volume: unit.volume };
    const s: UnitState = { ...prev, lastAttempt: attemptAt.toISOString() };
    this.metrics.duration.observe(l, out.seconds);
    this.metrics.lastAttempt.set(l, Date.now() / 1000);
    if (out.ok) {
      Object.assign(s, {
        lastSuccess: new Date().toISOString(), bytes: out.bytes, durationSeconds: Math.round(out.seconds * 1000) / 1000, chainId: out.chainId ?? s.chainId,
        chainDir: out.chainDir ?? s.chainDir, chainLength: out.chainLength ?? s.chainLength, lastArchiveId: out.archiveId ?? s.lastArchiveId,
        newestPoint: out.newestPoint ?? s.newestPoint, consecutiveFailures: 0, lastVerify: out.verify ?? s.lastVerify,
      });
      this.metrics.lastSuccess.set(l, Date.now() / 1000);
      this.metrics.bytes.inc(l, out.bytes);
      if (s.chainLength !== null) this.metrics.chainLength.set(l, s.chainLength);
      if (out.verify?.ok) this.metrics.verifySuccess.set(l, Date.parse(out.verify.at) / 1000);
    } else if (out.error!.code !== 'ABORTED') {
      s.lastError = { code: out.error!.code, message: out.error!.message, at: new Date().toISOString() };
      s.consecutiveFailures++;
      this.metrics.failures.inc({ ...l, code: out.error!.code });
    } else {
      s.lastAttempt = prev.lastAttempt;
    }
    this.state.set(unitKey(unit.job.name, unit.volume), s);
    this.saveState();
  }

  private saveState(): void {
    const units = [...this.state.values()];
    this.writing = this.writing.then(() => writeState(this.stateDir, units)).catch((e) => {
      this.log.warn({ code: (e as ThinarchiveError).code }, `cannot write the state file: ${(e as Error).message}`);
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

  /** SIGHUP: read the config again; a bad one is logged and the running one kept. */
  async reload(): Promise<boolean> {
    const r = await checkConfig(this.configPath);
    if (!r.config) {
      this.log.warn({ config: this.configPath, problems: r.problems }, `configuration not reloaded: ${r.problems.map((p) => `line ${p.line}: ${p.message}`).join('; ')}`);
      return false;
    }
    if (stateDirOf(r.config.stateDir) !== this.stateDir) this.log.warn({}, 'state_dir changed: takes effect at the next start');
    const metricsChanged = r.config.metrics?.listen !== this.config.metrics?.listen;
    await this.applyJobs(r.config);
    if (metricsChanged) {
      await new Promise((res) => (this.http ? this.http.close(res) : res(undefined)));
      this.http = r.config.metrics ? await this.metrics.serve(r.config.metrics.listen) : undefined;
    }
    this.log.info({ config: this.configPath, units: this.units.size }, 'configuration reloaded');
    return true;
  }

  /** SIGTERM: abort every run (cleanly, through its AbortSignal), wait for them (at most `graceMs`), save state, close. */
  async stop(graceMs = 8000): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const u of this.units.values()) u.stop.abort(new Error('daemon stopping'));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...[...this.units.values()].map((u) => u.loop), this.pools?.close()]),
      new Promise((res) => { timer = setTimeout(res, graceMs); }),
    ]);
    clearTimeout(timer);
    this.saveState();
    await this.writing;
    this.http?.closeAllConnections();
    await Promise.all([
      new Promise((res) => (this.http ? this.http.close(res) : res(undefined))),
      new Promise((res) => (this.socket ? this.socket.close(res) : res(undefined))),
    ]);
    await rm(join(this.stateDir, SOCKET_FILE), { force: true });
    this.log.info({}, 'daemon stopped');
  }
}

/** `thinarchive run JOB [--volume V]`: one run of each (matching) volume of the job now, state recorded. */
export async function runJobOnce(configPath: string, jobName: string, volume: string | undefined, log: Logger, signal: AbortSignal): Promise<{ job: string; volume: string; outcome: RunOutcome }[]> {
  const config = await loadConfig(configPath);
  const job = config.jobs.find((j) => j.name === jobName);
  if (!job) throw new ThinarchiveError('JOB_NOT_FOUND', `no job "${jobName}" in ${configPath} (jobs: ${config.jobs.map((j) => j.name).join(', ')})`, 'usage');
  let volumes = await expandSources(job, signal);
  if (volume !== undefined) {
    volumes = volumes.filter((v) => v === volume);
    if (!volumes.length) throw new ThinarchiveError('JOB_NOT_FOUND', `job "${jobName}" has no volume ${volume}`, 'usage');
  }
  const stateDir = stateDirOf(config.stateDir);
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const results = await Promise.all(volumes.map(async (v) => {
    const prev = (await readState(stateDir)).get(unitKey(job.name, v)) ?? emptyUnit(job.name, v);
    const attemptAt = new Date();
    const outcome = await runUnit(job, v, prev, { config, stateDir, log, signal });
    return { job: job.name, volume: v, outcome, prev, attemptAt };
  }));
  // Merge into the state file once (read again: a daemon or another run may have written meanwhile).
  const state = await readState(stateDir);
  for (const r of results) {
    const s: UnitState = { ...(state.get(unitKey(r.job, r.volume)) ?? r.prev), lastAttempt: r.attemptAt.toISOString() };
    const o = r.outcome;
    if (o.ok) {
      Object.assign(s, {
        lastSuccess: new Date().toISOString(), bytes: o.bytes, durationSeconds: Math.round(o.seconds * 1000) / 1000, chainId: o.chainId ?? s.chainId,
        chainDir: o.chainDir ?? s.chainDir, chainLength: o.chainLength ?? s.chainLength, lastArchiveId: o.archiveId ?? s.lastArchiveId,
        newestPoint: o.newestPoint ?? s.newestPoint, consecutiveFailures: 0, lastVerify: o.verify ?? s.lastVerify,
      });
    } else {
      s.lastError = { code: o.error!.code, message: o.error!.message, at: new Date().toISOString() };
      s.consecutiveFailures++;
    }
    state.set(unitKey(r.job, r.volume), s);
  }
  await writeState(stateDir, state.values());
  return results.map(({ job: j, volume: v, outcome }) => ({ job: j, volume: v, outcome }));
}

/** `status`: from the running daemon, or from the state file (units of the config, and any others recorded). */
export async function readStatus(configPath: string): Promise<StatusReport> {
  const config = await loadConfig(configPath);
  const stateDir = stateDirOf(config.stateDir);
  const live = await askDaemon(stateDir);
  if (live) return live;
  const now = Date.now();
  const state = await readState(stateDir);
  return { version: STATUS_VERSION, source: 'state-file', generated: new Date(now).toISOString(), daemon: null, units: [...state.values()].map((u) => unitStatus(u, now)) };
}
