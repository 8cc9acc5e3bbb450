/**
 * Replication over SSH: the archive a send produces streams straight into `thinarchive apply -` on
 * another host, run there over the system `ssh` (the same as
 * `thinarchive send … --to - | ssh HOST thinarchive apply - --to TARGET`, with the remote outcome
 * reported at the sender).
 *
 * The remote exit status becomes the sender's: a remote usage error (2), verification failure (3) or
 * refusal to write an unsafe target (4) keep their class; anything else (1, ssh failing: 255, the
 * remote command missing: 127, killed) is a runtime error (1). The message carries the remote's own
 * one-line error.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { ThinarchiveError, UsageError, type ExitClass, type ThinarchiveErrorArgs } from '../errors.js';
import type { StoreOptions } from './types.js';
import { parseSshUrl, shq, SshConnection, within } from './ssh.js';
import { writableSink } from './stream.js';
import type { ArchivePipe } from './types.js';

export interface RemoteApplyOptions {
  /** `ssh://[user@]host[:port]` (a path, if any, is ignored). */
  host: string;
  /** The remote apply's `--to`: an image path, a block device or VG/LV. */
  target: string;
  /** The remote thinarchive command (default `thinarchive`); a path or a command line. */
  remoteCommand?: string;
  /** More arguments for the remote apply (e.g. `--create`, `--force`, `--pool VG/POOL`), one per element. */
  remoteArgs?: string[];
  storeOptions?: StoreOptions;
}

/** What the remote apply reported (its --json result), when it succeeded. */
export interface RemoteApplyResult {
  host: string;
  target: string;
  result: unknown;
}

/** A remote apply failed: its exit status and last error line. */
export class RemoteApplyError extends ThinarchiveError {
  readonly remoteStatus: number | null;
  readonly remoteStderr: string;
  /** The remote apply's own error code (from its --json error), when it reported one. */
  readonly remoteCode: string | undefined;
  constructor(message: string, exitClass: Exclude<ExitClass, 'interrupted'>, status: number | null, stderr: string, remoteCode?: string) {
    super(...([REMOTE_APPLY_CODE[exitClass], message] as ThinarchiveErrorArgs));
    this.name = 'RemoteApplyError';
    this.remoteStatus = status;
    this.remoteStderr = stderr;
    this.remoteCode = remoteCode;
  }
}

const CLASS_OF_STATUS: Record<number, Exclude<ExitClass, 'interrupted'>> = { 2: 'usage', 3: 'verify', 4: 'unsafe' };
/** The code of a failed remote apply, by the exit class of its exit status. */
const REMOTE_APPLY_CODE = { runtime: 'REMOTE_APPLY_FAILED', usage: 'REMOTE_APPLY_USAGE', verify: 'REMOTE_APPLY_VERIFY', unsafe: 'REMOTE_APPLY_UNSAFE' } as const;

/** The sender's error for a remote apply that exited with `status`. */
export function remoteApplyError(host: string, status: number | null, stderr: string, remoteCommand: string, stdout = ''): RemoteApplyError {
  const lines = stderr.split('\n').map((l) => l.trim()).filter(Boolean);
  const errLine = [...lines].reverse().find((l) => /^thinarchive: /.test(l)) ?? lines[lines.length - 1] ?? '';
  // The remote apply runs with --json: its error (code and message) is on its standard output.
  const reported = jsonError(stdout);
  const detail = reported ? `${reported.code}: ${reported.message}` : errLine.replace(/^thinarchive: /, '');
  let msg: string;
  if (status === 255) msg = `remote apply on ${host}: ssh failed: ${detail || 'connection lost'}`;
  else if (status === 127) msg = `remote apply on ${host}: command not found: ${remoteCommand} (set --remote-command)${detail ? `: ${detail}` : ''}`;
  else if (status === null) msg = `remote apply on ${host} was killed${detail ? `: ${detail}` : ''}`;
  else msg = `remote apply on ${host} failed (remote exit ${status}): ${detail || 'no message'}`;
  return new RemoteApplyError(msg, (status !== null && CLASS_OF_STATUS[status]) || 'runtime', status, stderr, reported?.code);
}

function jsonError(stdout: string): { code: string; message: string } | undefined {
  try {
    const e = (JSON.parse(stdout) as { error?: { code?: unknown; message?: unknown } }).error;
    if (e && typeof e.code === 'string' && /^[A-Z][A-Z0-9_]*$/.test(e.code) && typeof e.message === 'string') return { code: e.code, message: e.message.split('\n')[0]!.slice(0, 1000) };
  } catch {
    // not JSON: the message is on standard error
  }
  return undefined;
}

/**
 * A send destination that runs `REMOTE-COMMAND apply - --to TARGET --json [ARGS]` over ssh and feeds
 * it the archive. `end` (on commit) waits for the remote apply and throws RemoteApplyError when it
 * failed; `result()` then holds what it reported. Aborting kills the ssh session: the remote apply
 * sees a truncated archive and fails without completing.
 */
export function remoteApplyDestination(o: RemoteApplyOptions): { dest: ArchivePipe; result: () => RemoteApplyResult | undefined } {
  const t = parseSshUrl(o.host.includes('/', 'ssh://'.length) ? o.host : `${o.host}/`);
  if (!o.target) throw new UsageError('--apply-remote needs --remote-to TARGET (an image path, block device or VG/LV on the remote host)');
  const conn = new SshConnection(t, { ...o.storeOptions, sshMultiplex: false });
  const remoteCommand = o.remoteCommand ?? 'thinarchive';
  // The remote command is a command line the user gives (it may have its own arguments); the
  // arguments we add are quoted one by one.
  const script = `exec ${remoteCommand} apply - --to ${shq(o.target)} --json ${(o.remoteArgs ?? []).map(shq).join(' ')}`;
  const argv = conn.argv(script, { mux: false });
  const label = `remote apply on ${conn.label}`;
  let child: ChildProcess | undefined;
  let stdout = '';
  let stderr = '';
  let status: Promise<number | null> | undefined;
  let result: RemoteApplyResult | undefined;
  const start = async (): Promise<ChildProcess> => {
    if (child) return child;
    const c = spawn(conn.sshBinary, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    child = c;
    c.stdout!.on('data', (b: Buffer) => { if (stdout.length < 1 << 20) stdout += b.toString(); });
    c.stderr!.on('data', (b: Buffer) => { if (stderr.length < 1 << 16) stderr += b.toString(); });
    status = new Promise((r) => {
      c.once('error', (e) => { stderr += `\ncannot run ssh: ${e.message}`; r(255); });
      c.once('close', (code) => r(code));
    });
    return c;
  };
  let sink: ReturnType<typeof writableSink> | undefined;
  const dest: ArchivePipe = {
    label,
    sink: {
      async write(chunk: Uint8Array): Promise<void> {
        const c = await start();
        sink ??= writableSink(c.stdin!, label);
        try {
          await sink.write(chunk);
        } catch (e) {
          // The remote end went away: its exit status and message say why.
          const s = await within(status!, 10_000);
          if (s !== undefined && s !== 0) throw remoteApplyError(conn.label, s, stderr, remoteCommand, stdout);
          throw e;
        }
      },
    },
    async end(): Promise<void> {
      const c = await start();
      await new Promise<void>((r) => c.stdin!.end(() => r()));
      c.stdin!.on('error', () => {});
      const s = await status!;
      if (s !== 0) throw remoteApplyError(conn.label, s, stderr, remoteCommand, stdout);
      let parsed: unknown = stdout.trim();
      try {
        parsed = JSON.parse(stdout);
      } catch {
        // not JSON (an older remote): keep the text
      }
      result = { host: conn.label, target: o.target, result: parsed };
    },
    async abort(): Promise<void> {
      if (child && child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await status;
      }
    },
  };
  return { dest, result: () => result };
}

/** A bidirectional session with a remote command (sync's target side): bytes both ways, then its exit. */
export interface RemoteSession {
  label: string;
  /** What the remote command writes on its standard output. */
  output: AsyncIterable<Uint8Array>;
  /** Its standard input. */
  input: ArchivePipe['sink'];
  /** Close its standard input. */
  endInput(): Promise<void>;
  /** Wait for it to exit; throws RemoteApplyError unless it exited 0. */
  wait(): Promise<void>;
  /** Kill it (after a failure on this side). */
  abort(): Promise<void>;
  /** Bytes written to its standard input and read from its standard output. */
  bytes(): { sent: number; received: number };
}

/**
 * Run `REMOTE-COMMAND SUBCOMMAND ARGS` on `host` over ssh (no multiplexing: one session), its
 * standard input and output connected to the returned session (sync's target side, docs/SYNC.md).
 */
export function remoteSession(o: { host: string; args: string[]; remoteCommand?: string; storeOptions?: StoreOptions }): RemoteSession {
  const t = parseSshUrl(o.host.includes('/', 'ssh://'.length) ? o.host : `${o.host}/`);
  const conn = new SshConnection(t, { ...o.storeOptions, sshMultiplex: false });
  const remoteCommand = o.remoteCommand ?? 'thinarchive';
  const script = `exec ${remoteCommand} ${o.args.map(shq).join(' ')}`;
  const c = spawn(conn.sshBinary, conn.argv(script, { mux: false }), { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  let sent = 0;
  let received = 0;
  c.stderr!.on('data', (b: Buffer) => { if (stderr.length < 1 << 16) stderr += b.toString(); });
  const status: Promise<number | null> = new Promise((r) => {
    c.once('error', (e) => { stderr += `\ncannot run ssh: ${e.message}`; r(255); });
    c.once('close', (code) => r(code));
  });
  c.stdin!.on('error', () => {});
  const sink = writableSink(c.stdin!, `thinarchive on ${conn.label}`);
  const failed = async (): Promise<never> => {
    const s = await status;
    throw remoteApplyError(conn.label, s, stderr, remoteCommand);
  };
  return {
    label: conn.label,
    output: (async function* () {
      for await (const b of c.stdout! as AsyncIterable<Buffer>) {
        received += b.length;
        yield new Uint8Array(b.buffer, b.byteOffset, b.length);
      }
      // Output ended: a remote that failed says why.
      const s = await status;
      if (s !== 0) await failed();
    })(),
    input: {
      async write(chunk: Uint8Array): Promise<void> {
        try {
          await sink.write(chunk);
          sent += chunk.length;
        } catch (e) {
          const s = await within(status, 10_000);
          if (s !== undefined && s !== 0) await failed();
          throw e;
        }
      },
    },
    endInput: () => new Promise<void>((r) => c.stdin!.end(() => r())),
    async wait(): Promise<void> {
      const s = await status;
      if (s !== 0) await failed();
    },
    async abort(): Promise<void> {
      if (c.exitCode === null && c.signalCode === null) {
        c.kill('SIGTERM');
        await status;
      }
    },
    bytes: () => ({ sent, received }),
  };
}
