/**
 * A per-pool lock file between thinarchive processes (also used for the send lock), and the identity
 * of a process across crashes and reboots (pid, boot id, start time). Lock file content, dead owners
 * and takeover: docs/LVM-METADATA.md section 9.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rm, stat } from 'node:fs/promises';
import { makeDirs } from '../fsutil.js';
import { dirname } from 'node:path';
import { ThinarchiveError, ioError } from '../errors.js';
import { type Logger, silentLogger } from '../log.js';
import { pidExists } from '../process.js';

/** Who holds something: enough to tell, later, whether that process is still running. */
export interface ProcessIdentity {
  pid: number;
  /** /proc/sys/kernel/random/boot_id, '' where unavailable */
  bootId: string;
  /** start time of the pid in clock ticks after boot (/proc/PID/stat field 22); null where unavailable */
  startTime: number | null;
}

let bootIdCache: Promise<string> | undefined;

/** This boot's id ('' when /proc/sys/kernel/random/boot_id cannot be read). */
export function currentBootId(): Promise<string> {
  bootIdCache ??= readFile('/proc/sys/kernel/random/boot_id', 'utf8').then((s) => s.trim(), () => '');
  return bootIdCache;
}

/** Start time of a process (clock ticks after boot), or null when it cannot be read. */
export async function processStartTime(pid: number): Promise<number | null> {
  try {
    const st = await readFile(`/proc/${pid}/stat`, 'utf8');
    // pid (comm) state ppid ... : comm may hold spaces and ')'; fields after the last ')' start at 3.
    const rest = st.slice(st.lastIndexOf(')') + 2).split(' ');
    const v = Number(rest[22 - 3]);
    return Number.isSafeInteger(v) ? v : null;
  } catch {
    return null;
  }
}

export async function selfIdentity(): Promise<ProcessIdentity> {
  return { pid: process.pid, bootId: await currentBootId(), startTime: await processStartTime(process.pid) };
}

/**
 * Is the process that `who` describes still running? False when the boot id differs, the pid is
 * gone, or the pid's start time differs (the pid was reused).
 */
export async function isAlive(who: ProcessIdentity): Promise<boolean> {
  const boot = await currentBootId();
  if (who.bootId && boot && who.bootId !== boot) return false;
  if (!Number.isSafeInteger(who.pid) || who.pid <= 0) return false;
  if (!pidExists(who.pid)) return false;
  if (who.startTime !== null && who.startTime !== undefined) {
    const now = await processStartTime(who.pid);
    if (now !== null && now !== who.startTime) return false;
  }
  return true;
}

/** Parse a ProcessIdentity out of a JSON object (lock files, reservation records); null if malformed. */
export function identityFrom(v: unknown): ProcessIdentity | null {
  const o = v as Partial<ProcessIdentity> | null;
  if (!o || typeof o !== 'object') return null;
  if (typeof o.pid !== 'number' || !Number.isSafeInteger(o.pid)) return null;
  if (typeof o.bootId !== 'string') return null;
  const startTime = typeof o.startTime === 'number' ? o.startTime : null;
  return { pid: o.pid, bootId: o.bootId, startTime };
}

interface LockContent extends ProcessIdentity {
  token: string;
  time: string;
  what: string;
}

export interface PoolLock {
  readonly path: string;
  /** Remove the lock file if it is still ours. Idempotent; never throws. */
  release(): Promise<void>;
}

export interface LockOptions {
  /** Give up after this long; default 120 s. */
  timeoutMs?: number;
  logger?: Logger;
  /** Shown in errors and in the lock file (e.g. "vg/pool"). */
  what?: string;
  /** Abort waiting. */
  signal?: AbortSignal;
}

/** A broken-lock helper file older than this, whose owner cannot be read, is itself stale. */
const BREAKER_STALE_MS = 10_000;
/** A lock file that cannot be parsed (cut short by a crash) is stale after this long. */
const UNREADABLE_STALE_MS = 10_000;

const inProcess = new Map<string, Promise<void>>();

/** Take the lock file `path` (its directory is created), waiting up to the timeout. */
export async function acquirePoolLock(path: string, opts: LockOptions = {}): Promise<PoolLock> {
  // In-process queue: a second call in this process waits for the first without polling.
  const before = inProcess.get(path) ?? Promise.resolve();
  let done!: () => void;
  const mine = new Promise<void>((r) => (done = r));
  const chained = before.then(() => mine);
  inProcess.set(path, chained);
  const cleanupQueue = (): void => {
    done();
    if (inProcess.get(path) === chained) inProcess.delete(path);
  };
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const deadline = performance.now() + timeoutMs;
  try {
    await waitFor(before, deadline, opts, path);
    const lock = await acquireFile(path, deadline, opts);
    let released = false;
    return {
      path,
      release: async () => {
        if (released) return;
        released = true;
        try {
          await lock.release();
        } finally {
          cleanupQueue();
        }
      },
    };
  } catch (e) {
    cleanupQueue();
    throw e;
  }
}

async function waitFor(p: Promise<void>, deadline: number, opts: LockOptions, path: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const left = deadline - performance.now();
  try {
    await Promise.race([
      p,
      new Promise<never>((_, rej) => {
        timer = setTimeout(() => rej(lockedError(path, opts, null, 'another call in this process')), Math.max(0, left));
      }),
      abortPromise(opts.signal),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function abortPromise(signal: AbortSignal | undefined): Promise<never> {
  return new Promise<never>((_, rej) => {
    if (!signal) return;
    const fire = (): void => rej(new ThinarchiveError('INTERRUPTED', 'interrupted while waiting for the pool lock'));
    if (signal.aborted) fire();
    else signal.addEventListener('abort', fire, { once: true });
  });
}

function lockedError(path: string, opts: LockOptions, holder: LockContent | null, desc?: string): ThinarchiveError {
  const who = desc ?? (holder ? `thinarchive pid ${holder.pid} (since ${holder.time})` : 'another process');
  return new ThinarchiveError(
    'POOL_LOCKED',
    `${opts.what ? `pool ${opts.what}` : path} is locked by ${who}; gave up after ${Math.round((opts.timeoutMs ?? 120_000) / 1000)} s (lock file ${path})`,
  );
}

async function readLock(path: string): Promise<{ content: LockContent | null; raw: string; mtimeMs: number } | null> {
  try {
    const [raw, st] = await Promise.all([readFile(path, 'utf8'), stat(path)]);
    let content: LockContent | null = null;
    try {
      const v = JSON.parse(raw) as LockContent;
      const id = identityFrom(v);
      if (id && typeof v.token === 'string') content = { ...v, ...id };
    } catch {
      content = null;
    }
    return { content, raw, mtimeMs: st.mtimeMs };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw ioError(e, `reading lock file ${path}`);
  }
}

async function isStale(l: { content: LockContent | null; mtimeMs: number }, staleUnreadableMs: number): Promise<boolean> {
  if (l.content) return !(await isAlive(l.content));
  return Date.now() - l.mtimeMs > staleUnreadableMs;
}

/** Create `path` exclusively with our identity; false if it exists. */
async function tryCreate(path: string, content: LockContent): Promise<boolean> {
  let fh;
  try {
    fh = await open(path, 'wx', 0o644);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw ioError(e, `creating lock file ${path}`);
  }
  try {
    await fh.writeFile(`${JSON.stringify(content)}\n`);
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => {});
    await rm(path, { force: true });
    throw ioError(e, `writing lock file ${path}`);
  }
  await fh.close();
  return true;
}

async function acquireFile(path: string, deadline: number, opts: LockOptions): Promise<{ release(): Promise<void> }> {
  const logger = opts.logger ?? silentLogger;
  try {
    await makeDirs(dirname(path), 0o700);
  } catch (e) {
    throw ioError(e, `creating lock directory ${dirname(path)}`);
  }
  const me: LockContent = {
    ...(await selfIdentity()),
    token: randomBytes(8).toString('hex'),
    time: new Date().toISOString(),
    what: opts.what ?? '',
  };
  let delay = 20;
  let logged = false;
  for (;;) {
    if (opts.signal?.aborted) throw new ThinarchiveError('INTERRUPTED', 'interrupted while waiting for the pool lock');
    if (await tryCreate(path, me)) {
      return {
        release: async () => {
          // Only remove the file if it still holds our token (never someone else's lock).
          const cur = await readLock(path).catch(() => null);
          if (cur?.content?.token === me.token) await rm(path, { force: true }).catch(() => {});
        },
      };
    }
    const cur = await readLock(path);
    if (cur === null) continue; // released meanwhile: try again at once
    if (await isStale(cur, UNREADABLE_STALE_MS)) {
      logger.warn({ lock: path, holder: cur.content ?? cur.raw.slice(0, 200) }, 'removing a stale thinarchive pool lock (its process is gone)');
      await breakStale(path, cur.raw, me);
      continue;
    }
    if (performance.now() >= deadline) throw lockedError(path, opts, cur.content);
    if (!logged) {
      logged = true;
      logger.info({ lock: path, holder: cur.content }, 'waiting for another thinarchive process on this pool');
    }
    await sleep(Math.min(delay, Math.max(0, deadline - performance.now())), opts.signal);
    delay = Math.min(delay * 2, 500);
  }
}

/** Remove the stale lock whose content was `staleRaw`, if it still is that, under `<path>.break`. */
async function breakStale(path: string, staleRaw: string, me: LockContent): Promise<void> {
  const breaker = `${path}.break`;
  if (!(await tryCreate(breaker, me))) {
    const b = await readLock(breaker);
    if (b && (await isStale(b, BREAKER_STALE_MS))) {
      // The breaker's owner died in the few milliseconds it holds it.
      if (b.content === null || !(await isAlive(b.content))) await rm(breaker, { force: true });
    }
    await sleep(20);
    return; // the caller loops and looks again
  }
  try {
    const cur = await readLock(path);
    if (cur && cur.raw === staleRaw) await rm(path, { force: true });
  } finally {
    await rm(breaker, { force: true });
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((res) => {
    const t = setTimeout(res, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      res();
    }, { once: true });
  });
}
