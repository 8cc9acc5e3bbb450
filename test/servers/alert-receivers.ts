/**
 * Real receivers for alert tests, on 127.0.0.1 inside the test process: an SMTP server (npm
 * smtp-server, messages parsed with mailparser; plain, STARTTLS, implicit TLS, AUTH), an HTTP
 * receiver (node:http) for webhooks and ping URLs, and an exec hook script that records its
 * environment and standard input. Recipe: ../shared/SERVERS.md ("SMTP").
 */
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { chmod, readdir, readFile, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { simpleParser, type ParsedMail } from 'mailparser';
import { SMTPServer } from 'smtp-server';

export interface ReceivedMail {
  mail: ParsedMail;
  /** the SMTP session's: TLS in use (implicit or STARTTLS) and the authenticated user */
  secure: boolean;
  user?: string;
  from: string;
  to: string[];
}

export interface SmtpReceiver {
  port: number;
  messages: ReceivedMail[];
  /** stop listening (connections refused) */
  stop(): Promise<void>;
  /** listen again on the same port */
  start(): Promise<void>;
}

export interface SmtpOptions {
  port?: number;
  /** implicit TLS (smtps://) with smtp-server's built-in self-signed certificate */
  secure?: boolean;
  /** require AUTH with this user and password (only allowed once TLS is on: STARTTLS on a plain port) */
  auth?: { user: string; pass: string };
  /**
   * offer STARTTLS on a plain port (default: only with auth). smtp-server's built-in certificate is
   * self-signed (and past its end date): a client that verifies it cannot upgrade, so a plain relay
   * for tests does not offer it.
   */
  starttls?: boolean;
}

export async function startSmtpReceiver(opts: SmtpOptions = {}): Promise<SmtpReceiver> {
  const messages: ReceivedMail[] = [];
  let server: SMTPServer | undefined;
  let port = opts.port ?? 0;
  const make = (): SMTPServer => new SMTPServer({
    secure: opts.secure ?? false,
    hideSTARTTLS: !(opts.starttls ?? opts.auth !== undefined),
    logger: false,
    authOptional: !opts.auth,
    allowInsecureAuth: false,
    onAuth(auth, _session, cb) {
      if (opts.auth && auth.username === opts.auth.user && auth.password === opts.auth.pass) cb(null, { user: auth.username });
      else cb(new Error('invalid user or password'));
    },
    onData(stream, session, cb) {
      simpleParser(stream).then((mail) => {
        messages.push({
          mail, secure: session.secure, user: session.user as string | undefined, from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
        });
        cb();
      }, (e: Error) => cb(e));
    },
  });
  const r: SmtpReceiver = {
    get port() { return port; },
    messages,
    async start() {
      server = make();
      await new Promise<void>((resolve, reject) => {
        server!.once('error', reject);
        server!.listen(port, '127.0.0.1', () => resolve());
      });
      port = (server.server.address() as { port: number }).port;
    },
    async stop() {
      if (!server) return;
      const s = server;
      server = undefined;
      await new Promise<void>((resolve) => s.close(() => resolve()));
    },
  };
  await r.start();
  return r;
}

export interface HttpRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

export interface HttpReceiver {
  port: number;
  url(path: string): string;
  requests: HttpRequest[];
  /** JSON bodies of the requests to `path` */
  json<T = Record<string, unknown>>(path: string): T[];
  /** the status to answer with (default 200); 0: never answer */
  respond: (req: HttpRequest, n: number) => number;
  stop(): Promise<void>;
  start(): Promise<void>;
}

export async function startHttpReceiver(port = 0): Promise<HttpReceiver> {
  let server: HttpServer | undefined;
  const sockets = new Set<Socket>();
  const r: HttpReceiver = {
    port,
    url: (path) => `http://127.0.0.1:${r.port}${path}`,
    requests: [],
    json: <T>(path: string) => r.requests.filter((q) => q.path === path).map((q) => JSON.parse(q.body) as T),
    respond: () => 200,
    async start() {
      server = createHttpServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (b: Buffer) => chunks.push(b));
        req.on('end', () => {
          const q: HttpRequest = { method: req.method ?? '', path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
          const status = r.respond(q, r.requests.filter((x) => x.path === q.path).length);
          if (status === 0) return; // hang: the client's timeout decides
          if (status >= 200 && status < 300) r.requests.push(q);
          res.writeHead(status).end();
        });
      });
      server.on('connection', (s) => {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
      });
      await new Promise<void>((resolve, reject) => {
        server!.once('error', reject);
        server!.listen(r.port, '127.0.0.1', () => resolve());
      });
      r.port = (server.address() as { port: number }).port;
    },
    async stop() {
      if (!server) return;
      const s = server;
      server = undefined;
      for (const c of sockets) c.destroy();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    },
  };
  await r.start();
  return r;
}

export interface ExecHook {
  path: string;
  /** every call so far: its THINARCHIVE_* environment and the JSON it read on standard input */
  calls(): Promise<{ env: Record<string, string>; stdin: Record<string, unknown> }[]>;
}

/** A /bin/sh hook in `dir` that writes its THINARCHIVE_* environment and its input to files named after the event id. */
export async function makeExecHook(dir: string): Promise<ExecHook> {
  const path = join(dir, 'on-thinarchive-event');
  const out = join(dir, 'hook-calls');
  await writeFile(path, `#!/bin/sh
set -e
mkdir -p '${out}'
env | grep '^THINARCHIVE_' > '${out}'/"$THINARCHIVE_ID.env.tmp"
cat > '${out}'/"$THINARCHIVE_ID.json"
mv '${out}'/"$THINARCHIVE_ID.env.tmp" '${out}'/"$THINARCHIVE_ID.env"
`);
  await chmod(path, 0o755);
  return {
    path,
    async calls() {
      const names = (await readdir(out).catch(() => [] as string[])).filter((n) => n.endsWith('.env'));
      return Promise.all(names.map(async (n) => {
        const env: Record<string, string> = {};
        for (const line of (await readFile(join(out, n), 'utf8')).split('\n')) {
          const i = line.indexOf('=');
          if (i > 0) env[line.slice(0, i)] = line.slice(i + 1);
        }
        const stdin = JSON.parse(await readFile(join(out, n.replace(/\.env$/, '.json')), 'utf8')) as Record<string, unknown>;
        return { env, stdin };
      }));
    },
  };
}
