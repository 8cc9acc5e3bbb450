/**
 * Where alerts go (docs/ALERTS.md, "Channels"): e-mail over SMTP (nodemailer), a webhook (JSON POST),
 * an exec hook (the event in environment variables and on standard input), and healthchecks-style
 * ping URLs. Each `deliver` makes one attempt within its timeout and throws on failure; the engine
 * (alerts.ts) queues and retries.
 */
import { spawn } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Transporter } from 'nodemailer';
import { TOOL_VERSION } from '../api/index.js';
import { emailSubject, emailText, eventEnv, type AlertEvent } from './alert-event.js';
import type { AlertsConfig } from './config.js';

export type ChannelName = 'email' | 'webhook' | 'exec' | 'ping';
export type PingKind = 'start' | 'success' | 'fail';

export interface AlertChannel {
  readonly name: ChannelName;
  /** what and where, for logs and `notify test` (passwords hidden) */
  readonly label: string;
  /** One attempt; throws with a one-line reason when the alert was not accepted. */
  deliver(e: AlertEvent): Promise<void>;
}

export const EXEC_TIMEOUT_MS = 30_000;
export const PING_TIMEOUT_MS = 10_000;

/** A URL with its password replaced by "***". */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString().replace(/\/$/, '');
  } catch {
    return url.replace(/:[^:@/]*@/, ':***@');
  }
}

/**
 * POST `body` to an http:// or https:// URL; resolves on a 2xx answer, throws one line otherwise
 * (the network error's code, "HTTP 503 ...", or the timeout). node:http, not fetch: fetch refuses the
 * "bad ports" of browsers (6000, 6667, ...), which a webhook receiver may well listen on.
 */
export function post(url: string, body: string, contentType: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const data = Buffer.from(body, 'utf8');
    const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(u, {
      method: 'POST',
      headers: { 'content-type': contentType, 'content-length': data.length, 'user-agent': `thinarchive/${TOOL_VERSION}` },
    }, (res) => {
      res.resume();
      res.on('end', () => {
        clearTimeout(timer);
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) resolve();
        else reject(new Error(`HTTP ${status}${res.statusMessage ? ` ${res.statusMessage}` : ''}`));
      });
      res.on('error', (e) => fail(e));
    });
    const timer = setTimeout(() => {
      req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    function fail(e: Error & { code?: string }): void {
      clearTimeout(timer);
      reject(new Error(e.code && !e.message.includes(e.code) ? `${e.code}: ${e.message}` : e.message));
    }
    req.on('error', fail);
    req.end(data);
  });
}

export class EmailChannel implements AlertChannel {
  readonly name = 'email';
  readonly label: string;
  private transport: Promise<Transporter> | undefined;

  constructor(private readonly cfg: NonNullable<AlertsConfig['email']>) {
    this.label = `email to ${cfg.to.join(', ')} via ${redactUrl(cfg.smtp)}`;
  }

  async deliver(e: AlertEvent): Promise<void> {
    // nodemailer is imported at the first e-mail (commands that send none skip it: docs/PERFORMANCE.md,
    // "Start-up"). The URL's own query (requireTLS, tls.rejectUnauthorized, timeouts) wins over these defaults.
    this.transport ??= import('nodemailer').then(({ createTransport }) => createTransport({
      url: this.cfg.smtp, connectionTimeout: 10_000, greetingTimeout: 10_000, socketTimeout: 30_000,
    }));
    const transport = await this.transport;
    try {
      await transport.sendMail({
        from: this.cfg.from, to: this.cfg.to, subject: emailSubject(e), text: emailText(e),
        headers: { 'X-Thinarchive-Event': e.event, 'X-Thinarchive-Severity': e.severity, 'X-Thinarchive-Id': e.id },
      });
    } catch (err) {
      const x = err as Error & { code?: string; response?: string };
      throw new Error([x.code, x.response ?? x.message].filter((s) => s).join(': ').split('\n')[0]);
    }
  }
}

export class WebhookChannel implements AlertChannel {
  readonly name = 'webhook';
  readonly label: string;
  constructor(private readonly cfg: NonNullable<AlertsConfig['webhook']>) {
    this.label = `webhook ${redactUrl(cfg.url)}`;
  }

  deliver(e: AlertEvent): Promise<void> {
    return post(this.cfg.url, JSON.stringify(e), 'application/json', this.cfg.timeoutMs);
  }
}

export class ExecChannel implements AlertChannel {
  readonly name = 'exec';
  readonly label: string;
  constructor(private readonly path: string, private readonly timeoutMs = EXEC_TIMEOUT_MS) {
    this.label = `exec ${path}`;
  }

  deliver(e: AlertEvent): Promise<void> {
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith('THINARCHIVE_VALUE_')) delete env[k];
    Object.assign(env, eventEnv(e));
    return new Promise((resolve, reject) => {
      const child = spawn(this.path, [], { env, stdio: ['pipe', 'ignore', 'pipe'] });
      let stderr = '';
      const timer = setTimeout(() => child.kill('SIGKILL'), this.timeoutMs);
      child.stderr.on('data', (b: Buffer) => { if (stderr.length < 2000) stderr += b.toString('utf8'); });
      child.stdin.on('error', () => {}); // a hook that does not read its input
      child.stdin.end(`${JSON.stringify(e)}\n`);
      child.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new Error(`cannot run ${this.path}: ${err.code ?? err.message}`));
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        if (code === 0) return resolve();
        const why = signal === 'SIGKILL' && code === null ? `killed after ${this.timeoutMs / 1000} s` : signal ? `killed by ${signal}` : `exit ${code}`;
        const line = stderr.trim().split('\n').pop();
        reject(new Error(`${this.path}: ${why}${line ? `: ${line}` : ''}`));
      });
    });
  }
}

/** Healthchecks-style dead-man switch: POST to the start, success or fail URL (body: one line of text). */
export class PingChannel implements AlertChannel {
  readonly name = 'ping';
  readonly label: string;
  constructor(private readonly urls: NonNullable<AlertsConfig['ping']>, private readonly timeoutMs = PING_TIMEOUT_MS) {
    this.label = `ping ${(['start', 'success', 'fail'] as const).filter((k) => urls[k]).map((k) => `${k} ${redactUrl(urls[k]!)}`).join(', ')}`;
  }

  has(kind: PingKind): boolean {
    return this.urls[kind] !== undefined;
  }

  /** Events are not pinged: the daemon pings at the start and end of runs. */
  async deliver(): Promise<void> {}

  async ping(kind: PingKind, body: string): Promise<void> {
    const url = this.urls[kind];
    if (url) await post(url, body, 'text/plain; charset=utf-8', this.timeoutMs);
  }
}

export function pingOf(ch: AlertChannel): PingChannel {
  if (!(ch instanceof PingChannel)) throw new Error(`${ch.label} is not a ping channel`);
  return ch;
}

/** The channels of `config`, in a fixed order: email, webhook, exec, ping. */
export function buildChannels(config: AlertsConfig | undefined): AlertChannel[] {
  const out: AlertChannel[] = [];
  if (config?.email) out.push(new EmailChannel(config.email));
  if (config?.webhook) out.push(new WebhookChannel(config.webhook));
  if (config?.exec) out.push(new ExecChannel(config.exec));
  if (config?.ping) out.push(new PingChannel(config.ping));
  return out;
}
