/**
 * Alerts (docs/ALERTS.md): the events, rate limiting per condition and subject, and delivery through
 * the configured channels (alert-channels.ts) off the run path.
 *
 * Two ways in:
 * - `observe(...)` for a condition that holds for a while (a failing unit, lag, a full pool): one
 *   alert when it starts, one when its level changes, a reminder every `repeat_after` while it holds,
 *   and one resolved event when it ends.
 * - `emit(...)` for a one-off event (daemon_started, ...): sent at most once per `repeat_after` for
 *   the same event and subject (the lifecycle events and `test` always).
 * Both return at once: an alert is queued per channel and delivered in the background, each channel
 * retrying with backoff from a bounded queue, so a dead channel never fails or delays a backup. The
 * conditions, the last one-off sends and the undelivered queue are kept in STATE_DIR/alerts-state.json
 * (written atomically after each change), so a restart neither alerts again nor loses an alert.
 */
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '../api/index.js';
import { makeDirs, writeFileAtomic } from '../fsutil.js';
import { buildChannels, pingOf, type AlertChannel, type ChannelName, type PingKind } from './alert-channels.js';
import {
  EVENT_VERSION, EVENTS, RESOLVED, UNLIMITED, type AlertEvent, type AlertSubject, type AlertValues, type ConditionEvent, type EventName, type Family,
  type OneOffEvent, type Severity,
} from './alert-event.js';
import type { AlertsConfig } from './config.js';

export const ALERTS_STATE_FILE = 'alerts-state.json';
export const ALERTS_STATE_VERSION = 1;
/** A condition as the caller sees it now. */
export interface Observation {
  /** while active: the event of its present level (pool_warning or pool_critical); inactive: any event of the family */
  event: ConditionEvent;
  active: boolean;
  subject: AlertSubject;
  values?: AlertValues;
  /** one line; when inactive, the message of the resolved event */
  message: string;
  /** tells apart conditions of one family and subject (e.g. "data" and "metadata" of a pool) */
  key?: string;
  severity?: Severity;
}

export interface OneOff {
  event: OneOffEvent;
  subject?: AlertSubject;
  values?: AlertValues;
  message: string;
  severity?: Severity;
}

interface ConditionRecord {
  family: Family;
  key: string;
  subject: AlertSubject;
  event: ConditionEvent;
  severity: Severity;
  since: string;
  lastSent: string;
  reminders: number;
}

interface OneOffRecord {
  event: OneOffEvent;
  subject: AlertSubject;
  lastSent: string;
  suppressed: number;
}

/** One delivery waiting for its channel: an alert, or a ping. */
export interface Pending {
  channel: ChannelName;
  attempts: number;
  firstAt: string;
  /** not before (ms since the epoch) */
  nextAt: number;
  event?: AlertEvent;
  ping?: { kind: PingKind; body: string };
  lastError?: string;
}

interface StateFile {
  version: number;
  updated: string;
  conditions: ConditionRecord[];
  oneOffs: OneOffRecord[];
  pending: Pending[];
}

export interface DeliveryPolicy {
  /** first retry after this, doubling */
  initialMs: number;
  maxMs: number;
  /** an alert not delivered for this long is dropped (logged) */
  maxAgeMs: number;
  /** per channel; the oldest is dropped (logged) when a new one comes */
  queueLimit: number;
}

export const DEFAULT_DELIVERY: DeliveryPolicy = { initialMs: 2000, maxMs: 300_000, maxAgeMs: 86_400_000, queueLimit: 100 };

export interface AlertEngineOptions {
  log: Logger;
  /** where alerts-state.json lives; none: nothing is kept (tests, `notify test`) */
  stateDir?: string;
  host?: string;
  /** the clock of rate limiting and of event times (injected by tests); delivery retries use real time */
  now?: () => number;
  delivery?: Partial<DeliveryPolicy>;
  /** each alert made (metrics: thinarchive_alerts_total) */
  onAlert?: (e: AlertEvent) => void;
  /** each failed delivery attempt (metrics) */
  onDeliveryFailure?: (channel: ChannelName) => void;
  /** channels to use instead of those of the config (tests) */
  channels?: AlertChannel[];
}

function subjectKey(s: AlertSubject): string {
  return JSON.stringify([s.job ?? null, s.volume ?? null, s.pool ?? null]);
}

function cleanSubject(s: AlertSubject | undefined): AlertSubject {
  const out: AlertSubject = {};
  if (s?.job !== undefined) out.job = s.job;
  if (s?.volume !== undefined) out.volume = s.volume;
  if (s?.pool !== undefined) out.pool = s.pool;
  return out;
}

export class AlertEngine {
  private channels: AlertChannel[] = [];
  private repeatAfterMs = 3_600_000;
  private readonly conditions = new Map<string, ConditionRecord>();
  private readonly oneOffs = new Map<string, OneOffRecord>();
  private readonly queues = new Map<ChannelName, Pending[]>();
  private readonly busy = new Set<ChannelName>();
  private readonly timers = new Map<ChannelName, NodeJS.Timeout>();
  private readonly delivery: DeliveryPolicy;
  private readonly host: string;
  private readonly now: () => number;
  private writing: Promise<void> = Promise.resolve();
  private closed = false;
  private idle: (() => void)[] = [];

  private constructor(private readonly opts: AlertEngineOptions) {
    this.delivery = { ...DEFAULT_DELIVERY, ...opts.delivery };
    this.host = opts.host ?? hostname();
    this.now = opts.now ?? Date.now;
  }

  /** An engine for `config` (none: no channels, conditions still tracked), with the state kept in `opts.stateDir`. */
  static async open(config: AlertsConfig | undefined, opts: AlertEngineOptions): Promise<AlertEngine> {
    const engine = new AlertEngine(opts);
    if (opts.stateDir) {
      await makeDirs(opts.stateDir, 0o700);
      await engine.load(opts.stateDir);
    }
    engine.configure(config);
    return engine;
  }

  /** Use the channels and repeat interval of `config` (at start and reload); undelivered alerts of channels removed are dropped. */
  configure(config: AlertsConfig | undefined): void {
    this.channels = this.opts.channels ?? buildChannels(config);
    this.repeatAfterMs = config?.repeatAfterMs ?? 3_600_000;
    const names = new Set(this.channels.map((c) => c.name));
    for (const [name, q] of this.queues) {
      if (names.has(name)) continue;
      if (q.length) this.opts.log.warn({ channel: name, dropped: q.length }, 'alert channel removed from the configuration: its undelivered alerts are dropped');
      this.queues.delete(name);
      clearTimeout(this.timers.get(name));
      this.timers.delete(name);
    }
    for (const name of names) this.kick(name);
    this.save();
  }

  /** The configured channels' names and labels (no secrets). */
  channelLabels(): { name: ChannelName; label: string }[] {
    return this.channels.map((c) => ({ name: c.name, label: c.label }));
  }

  /**
   * A condition now. Returns the alert it made, if any: at its start, at a change of level, as a
   * reminder after repeat_after, and once (the family's resolved event) when it ends.
   */
  observe(o: Observation): AlertEvent | undefined {
    const def = EVENTS[o.event];
    const family = def.family;
    const subject = cleanSubject(o.subject);
    const id = `${family}\0${o.key ?? ''}\0${subjectKey(subject)}`;
    const rec = this.conditions.get(id);
    const now = this.now();
    if (!o.active) {
      if (!rec) return undefined;
      this.conditions.delete(id);
      const resolved = RESOLVED[family];
      const e = this.make(resolved, o.severity ?? EVENTS[resolved].severity, 'resolved', false, rec.since, subject, o.values, o.message, 0);
      this.send(e);
      return e;
    }
    if ('resolves' in def) throw new Error(`observe: ${o.event} resolves a condition; pass active: false`);
    const severity = o.severity ?? def.severity;
    if (rec && rec.event === o.event && rec.severity === severity && now - Date.parse(rec.lastSent) < this.repeatAfterMs) return undefined;
    const reminder = rec !== undefined && rec.event === o.event && rec.severity === severity;
    const since = rec?.since ?? new Date(now).toISOString();
    const e = this.make(o.event, severity, 'firing', reminder, since, subject, o.values, o.message, 0);
    this.conditions.set(id, {
      family, key: o.key ?? '', subject, event: o.event, severity, since, lastSent: e.time, reminders: reminder ? rec!.reminders + 1 : 0,
    });
    this.send(e);
    return e;
  }

  /** A one-off event; at most one per repeat_after for the same event and subject (except daemon_started, daemon_stopped, test). */
  emit(o: OneOff): AlertEvent | undefined {
    const def = EVENTS[o.event];
    if ('resolves' in def) throw new Error(`emit: ${o.event} resolves a condition; use observe`);
    const subject = cleanSubject(o.subject);
    const id = `${o.event}\0${subjectKey(subject)}`;
    const now = this.now();
    const rec = this.oneOffs.get(id);
    if (!UNLIMITED.has(o.event) && rec && now - Date.parse(rec.lastSent) < this.repeatAfterMs) {
      rec.suppressed++;
      this.save();
      return undefined;
    }
    const e = this.make(o.event, o.severity ?? def.severity, 'event', false, null, subject, o.values, o.message, rec?.suppressed ?? 0);
    if (!UNLIMITED.has(o.event)) this.oneOffs.set(id, { event: o.event, subject, lastSent: e.time, suppressed: 0 });
    this.send(e);
    return e;
  }

  /** A healthchecks-style ping (start, success, fail) to its URL, when configured. */
  ping(kind: PingKind, body: string): void {
    const ch = this.channels.find((c) => c.name === 'ping');
    if (!ch || !pingOf(ch).has(kind)) return;
    this.enqueue({ channel: 'ping', attempts: 0, firstAt: new Date().toISOString(), nextAt: 0, ping: { kind, body } });
  }

  /** The conditions that hold now (status, tests). */
  active(): { event: ConditionEvent; subject: AlertSubject; key: string; since: string; lastSent: string; reminders: number }[] {
    return [...this.conditions.values()].map((c) => ({ event: c.event, subject: c.subject, key: c.key, since: c.since, lastSent: c.lastSent, reminders: c.reminders }));
  }

  /** Forget (without a resolved event) the conditions for which `keep` is false, e.g. of units no longer configured. */
  retain(keep: (family: Family, subject: AlertSubject) => boolean): void {
    let changed = false;
    for (const [id, c] of this.conditions) {
      if (keep(c.family, c.subject)) continue;
      this.conditions.delete(id);
      changed = true;
    }
    if (changed) this.save();
  }

  /** Deliveries not yet made, per channel. */
  pending(): Pending[] {
    return [...this.queues.values()].flat();
  }

  /** Wait until every queue is empty, at most `timeoutMs`; true when all was delivered. */
  async flush(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.pending().length) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(left, 1000));
        function done(): void { clearTimeout(t); resolve(); }
        this.idle.push(done);
      });
    }
    return true;
  }

  /** Stop delivering (undelivered alerts stay in the state file for the next start) and write the state. */
  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.save();
    await this.writing;
  }

  private make(event: EventName, severity: Severity, status: AlertEvent['status'], reminder: boolean, since: string | null, s: AlertSubject,
    values: AlertValues | undefined, message: string, suppressed: number): AlertEvent {
    return {
      version: EVENT_VERSION, id: randomUUID(), event, severity, status, reminder, since, time: new Date(this.now()).toISOString(), host: this.host,
      job: s.job ?? null, volume: s.volume ?? null, pool: s.pool ?? null, values: values ?? {}, message: message.split('\n')[0], suppressed,
    };
  }

  private send(e: AlertEvent): void {
    this.opts.onAlert?.(e);
    this.opts.log.info({ event: e.event, severity: e.severity, status: e.status, reminder: e.reminder, job: e.job, volume: e.volume, pool: e.pool }, `alert: ${e.message}`);
    // firstAt is real time (the age limit of delivery), e.time the engine's clock.
    const firstAt = new Date().toISOString();
    for (const c of this.channels) if (c.name !== 'ping') this.enqueue({ channel: c.name, attempts: 0, firstAt, nextAt: 0, event: e });
    this.save();
  }

  private enqueue(p: Pending): void {
    let q = this.queues.get(p.channel);
    if (!q) this.queues.set(p.channel, (q = []));
    q.push(p);
    while (q.length > this.delivery.queueLimit) {
      // Never the head while it is being delivered: drop the oldest waiting one.
      const dropped = q.splice(this.busy.has(p.channel) ? 1 : 0, 1)[0];
      this.opts.log.warn({ channel: p.channel, event: dropped.event?.event ?? `ping ${dropped.ping?.kind}`, limit: this.delivery.queueLimit }, 'alert queue full: oldest undelivered alert dropped');
    }
    this.save();
    this.kick(p.channel);
  }

  /** Deliver the head of a channel's queue when it is due; one delivery at a time per channel. */
  private kick(name: ChannelName): void {
    if (this.closed || this.busy.has(name)) return;
    const q = this.queues.get(name);
    const head = q?.[0];
    const ch = this.channels.find((c) => c.name === name);
    if (!head || !ch) {
      this.wakeIdle();
      return;
    }
    const wait = head.nextAt - Date.now();
    clearTimeout(this.timers.get(name));
    if (wait > 0) {
      this.timers.set(name, setTimeout(() => this.kick(name), wait).unref());
      return;
    }
    this.busy.add(name);
    const attempt = head.ping ? pingOf(ch).ping(head.ping.kind, head.ping.body) : ch.deliver(head.event!);
    attempt.then(() => {
      q!.shift();
      if (head.attempts > 0) this.opts.log.info({ channel: name, attempts: head.attempts + 1 }, 'alert delivered after retries');
    }, (err: Error) => {
      head.attempts++;
      head.lastError = String(err?.message ?? err).split('\n')[0];
      this.opts.onDeliveryFailure?.(name);
      const age = Date.now() - Date.parse(head.firstAt);
      const what = head.event ? head.event.event : `ping ${head.ping!.kind}`;
      if (age >= this.delivery.maxAgeMs) {
        q!.shift();
        this.opts.log.warn({ channel: name, event: what, attempts: head.attempts, error: head.lastError }, `alert dropped: not delivered by ${ch.label} for ${Math.round(age / 1000)} s`);
        return;
      }
      const retryInMs = Math.min(this.delivery.maxMs, this.delivery.initialMs * 2 ** (head.attempts - 1));
      head.nextAt = Date.now() + retryInMs;
      this.opts.log.warn({ channel: name, event: what, attempts: head.attempts, retryInMs, error: head.lastError }, `alert delivery by ${ch.label} failed: ${head.lastError}`);
    }).finally(() => {
      this.busy.delete(name);
      this.save();
      this.kick(name);
    });
  }

  private wakeIdle(): void {
    if (this.pending().length) return;
    const waiting = this.idle;
    this.idle = [];
    for (const w of waiting) w();
  }

  private async load(dir: string): Promise<void> {
    let s: StateFile;
    try {
      s = JSON.parse(await readFile(join(dir, ALERTS_STATE_FILE), 'utf8')) as StateFile;
    } catch {
      return;
    }
    if (s?.version !== ALERTS_STATE_VERSION) return;
    for (const c of Array.isArray(s.conditions) ? s.conditions : []) {
      if (!c || !(c.event in EVENTS) || EVENTS[c.event].family !== c.family) continue;
      this.conditions.set(`${c.family}\0${c.key}\0${subjectKey(c.subject)}`, c);
    }
    for (const o of Array.isArray(s.oneOffs) ? s.oneOffs : []) {
      if (o && o.event in EVENTS) this.oneOffs.set(`${o.event}\0${subjectKey(o.subject)}`, o);
    }
    for (const p of Array.isArray(s.pending) ? s.pending : []) {
      if (!p || (!p.event && !p.ping)) continue;
      let q = this.queues.get(p.channel);
      if (!q) this.queues.set(p.channel, (q = []));
      q.push({ ...p, nextAt: 0 });
    }
  }

  /** Write the state (serialized; a failure is logged, the next change writes again). */
  private save(): void {
    const dir = this.opts.stateDir;
    if (!dir) return;
    const now = this.now();
    for (const [id, o] of this.oneOffs) if (now - Date.parse(o.lastSent) >= this.repeatAfterMs && o.suppressed === 0) this.oneOffs.delete(id);
    const file: StateFile = {
      version: ALERTS_STATE_VERSION, updated: new Date(now).toISOString(), conditions: [...this.conditions.values()], oneOffs: [...this.oneOffs.values()],
      pending: this.pending(),
    };
    const text = `${JSON.stringify(file, null, 2)}\n`;
    this.writing = this.writing.then(() => writeFileAtomic(join(dir, ALERTS_STATE_FILE), text)).catch((e) => {
      this.opts.log.warn({ file: join(dir, ALERTS_STATE_FILE) }, `cannot write the alert state: ${(e as Error).message}`);
    });
  }
}

export interface ChannelTestResult {
  channel: ChannelName;
  label: string;
  ok: boolean;
  /** one line, when not delivered */
  error?: string;
  /** ping: the URLs pinged (start, then success; fail is not pinged: it would mark the check down) */
  pinged?: PingKind[];
}

/**
 * `thinarchive notify test`: one `test` event through every configured channel, one attempt each (no
 * queue, no retry), all at once. Nothing is kept.
 */
export async function notifyTest(config: AlertsConfig | undefined, host = hostname(), channels = buildChannels(config)): Promise<ChannelTestResult[]> {
  const e: AlertEvent = {
    version: EVENT_VERSION, id: randomUUID(), event: 'test', severity: 'info', status: 'event', reminder: false, since: null, time: new Date().toISOString(), host,
    job: null, volume: null, pool: null, values: {}, message: `test alert from thinarchive on ${host} (thinarchive notify test)`, suppressed: 0,
  };
  return Promise.all(channels.map(async (ch): Promise<ChannelTestResult> => {
    const r: ChannelTestResult = { channel: ch.name, label: ch.label, ok: true };
    try {
      if (ch.name === 'ping') {
        r.pinged = [];
        for (const kind of ['start', 'success'] as const) {
          if (!pingOf(ch).has(kind)) continue;
          await pingOf(ch).ping(kind, e.message);
          r.pinged.push(kind);
        }
      } else await ch.deliver(e);
    } catch (err) {
      r.ok = false;
      r.error = String((err as Error)?.message ?? err).split('\n')[0];
    }
    return r;
  }));
}
