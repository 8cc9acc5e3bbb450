/**
 * Helpers for end-to-end tests: run `bin/thinarchive` as a child process, hash files and devices,
 * measure allocation, and make temporary directories.
 *
 * The CLI runs `dist/`: run `npm run build` before the tests.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, existsSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { constants as osc } from 'node:os';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = join(REPO, 'bin', 'thinarchive');

if (!existsSync(join(REPO, 'dist', 'cli', 'main.js'))) {
  throw new Error(`dist/ is missing: run "npm run build" in ${REPO} before the e2e tests`);
}

export interface RunResult {
  /** Exit code; for a child killed by a signal, 128 + the signal number. */
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
}

export interface RunOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** Bytes fed to standard input (then closed). Without it stdin is /dev/null. */
  input?: Buffer | string;
  timeoutMs?: number;
}

function childEnv(extra?: Record<string, string | undefined>): NodeJS.ProcessEnv {
  // The CLI must not pick up debugging, logging or state settings from the runner's environment.
  const env: NodeJS.ProcessEnv = { ...process.env, THINARCHIVE_DEBUG: undefined, THINARCHIVE_LOG: undefined, THINARCHIVE_STATE_DIR: undefined, ...extra };
  for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];
  return env;
}

/** Start the CLI; stdio pipes as given (default: all piped). */
export function spawnCli(args: string[], opts: { cwd?: string; env?: Record<string, string | undefined>; stdio?: SpawnOptions['stdio'] } = {}): ChildProcess {
  return spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd, env: childEnv(opts.env), stdio: opts.stdio ?? ['pipe', 'pipe', 'pipe'] });
}

/** Collect a started child's output and exit status. */
export function collect(child: ChildProcess, timeoutMs = 60_000): Promise<RunResult> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on('data', (b: Buffer) => out.push(b));
  child.stderr?.on('data', (b: Buffer) => err.push(b));
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`thinarchive ${child.spawnargs.slice(2).join(' ')} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stdoutBytes = Buffer.concat(out);
      resolvePromise({
        code: code ?? 128 + (signal ? osc.signals[signal] : 0),
        signal,
        stdout: stdoutBytes.toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        stdoutBytes,
      });
    });
  });
}

/** Run the CLI to completion. */
export function run(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const child = spawnCli(args, { cwd: opts.cwd, env: opts.env, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  if (opts.input !== undefined) {
    child.stdin!.on('error', () => {}); // the CLI may exit before reading everything
    child.stdin!.end(opts.input);
  }
  return collect(child, opts.timeoutMs);
}

/** Run and require exit 0; the error shows the command's stderr. */
export async function runOk(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(args, opts);
  if (r.code !== 0) throw new Error(`thinarchive ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** A description of a result for assertion messages. */
export function show(r: RunResult): string {
  return `exit ${r.code}\n--- stdout ---\n${r.stdout.slice(0, 4000)}\n--- stderr ---\n${r.stderr.slice(0, 4000)}`;
}

/** Stack-trace frames ("    at fn (file:line)") must never reach the user. */
export const STACK_FRAME = /^\s+at\s/m;

/**
 * The error contract of the CLI: the given exit code, exactly one line on stderr starting with
 * "thinarchive: " (unless `prefix` is false, for commander's own usage messages), no stack frames.
 * Returns the line.
 */
export function expectFailure(r: RunResult, code: number, opts: { prefix?: boolean } = {}): string {
  const msg = show(r);
  if (r.code !== code) throw new Error(`expected exit ${code}, got ${msg}`);
  if (STACK_FRAME.test(r.stderr) || STACK_FRAME.test(r.stdout)) throw new Error(`stack trace in output: ${msg}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  if (lines.length !== 1) throw new Error(`expected exactly one line on stderr, got ${lines.length}: ${msg}`);
  if (opts.prefix !== false && !lines[0].startsWith('thinarchive: ')) throw new Error(`stderr does not start with "thinarchive: ": ${msg}`);
  if (/internal error/i.test(lines[0]) && code !== 70) throw new Error(`internal error reported: ${msg}`);
  return lines[0];
}

/** sha256 of a file or device, optionally of its first `length` bytes only. */
export function sha256(path: string, length?: number): Promise<string> {
  return new Promise((res, rej) => {
    const h = createHash('sha256');
    const s = createReadStream(path, { highWaterMark: 1 << 20, ...(length !== undefined ? { start: 0, end: length - 1 } : {}) });
    let n = 0;
    s.on('data', (b) => {
      n += (b as Buffer).length;
      h.update(b as Buffer);
    });
    s.on('error', rej);
    s.on('end', () => {
      if (length !== undefined && n !== length) rej(new Error(`${path}: read ${n} bytes, wanted ${length}`));
      else res(h.digest('hex'));
    });
  });
}

/** Bytes actually allocated to a file (st_blocks * 512). */
export function allocatedBytes(path: string): number {
  return statSync(path).blocks * 512;
}

/**
 * Bytes in the `blockSize` blocks of a file that hold anything but zeroes: what a restored sparse
 * image should have allocated (apply writes only non-zero blocks and leaves the rest holes).
 */
export function nonZeroBlockBytes(path: string, blockSize = 65536): number {
  const fd = openSync(path, 'r');
  const buf = Buffer.alloc(blockSize);
  let total = 0;
  try {
    for (let pos = 0; ; pos += blockSize) {
      const n = readSync(fd, buf, 0, blockSize, pos);
      if (n === 0) break;
      for (let i = 0; i < n; i++) {
        if (buf[i] !== 0) {
          total += n;
          break;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return total;
}

export interface TempDir {
  path: string;
  join(...parts: string[]): string;
  remove(): Promise<void>;
}

/** A temporary directory (under $THINARCHIVE_E2E_TMP or the OS temp dir). */
export async function tempDir(prefix: string): Promise<TempDir> {
  const path = await mkdtemp(join(process.env.THINARCHIVE_E2E_TMP ?? tmpdir(), `thinarchive-e2e-${prefix}-`));
  return { path, join: (...p) => join(path, ...p), remove: () => rm(path, { recursive: true, force: true }) };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Poll `fn` every `everyMs` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor<T>(fn: () => T | Promise<T>, timeoutMs: number, everyMs = 20): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(everyMs);
  }
}

/** A store's per-sequence claim file (`.<10-digit sequence>.seq`, docs/FORMAT.md 3.2). */
export const CLAIM_NAME = /^\.\d{10}\.seq$/;
/** A generation of a chain's lease (`.lease.<10-digit generation>`, docs/FORMAT.md 3.3). */
export const LEASE_NAME = /^\.lease\.\d{10}$/;

/** The entries of a chain directory other than its markers, sequence claims and lease (archives, and anything left behind). */
export function chainEntries(dir: string): string[] {
  return readdirSync(dir).filter((n) => !CLAIM_NAME.test(n) && !LEASE_NAME.test(n)).sort();
}
