/**
 * The target lock: one writer per target at a time (apply, restore, repair, recover, and the reads of
 * verify --against), whatever the target is. docs/JOURNAL.md ("The target lock") and
 * docs/LVM-METADATA.md (the lock file) specify it.
 *
 * The lock is flock(2) LOCK_EX on a lock file (native/thinio.c): the kernel releases it when its
 * holder exits or is killed, so it can never go stale and no liveness check is needed. The file is
 * - image: `IMAGE.thinarchive.lock`, beside the state file;
 * - block device: `STATE_DIR/blockdev/<device>.lock`, beside its state file (the device's O_EXCL
 *   open is held too while writing);
 * - LV (thin or thick): `STATE_DIR/lv/VG/LV.lock`.
 * The holder writes who it is (pid, command, since) into the file, for the message of a refused
 * second writer, and empties it when it releases. The file is never removed: removing a flock'ed file
 * would let a process that opened the old file and one that creates a new one both "hold" the lock.
 *
 * A second writer is refused at once (UnsafeError TARGET_LOCKED) or, with `wait`, polls until the
 * lock is free (cancellable by its signal). It takes the lock before it reads the state, recovers or
 * reads a journal.
 */
import { constants as fsc } from 'node:fs';
import { mkdir, open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { AbortedError, ioError, UnsafeError } from '../errors.js';
import { defaultStateDir } from '../fsutil.js';
import { silentLogger, type Logger } from '../log.js';
import { thinio } from '../native.js';
import { lvTargetSpec } from './lv-target.js';
import { stateFileFor } from './state.js';

/** What the holder writes into the lock file (one JSON line). */
export interface TargetLockHolder {
  version: 1;
  pid: number;
  /** the command holding the target: apply, restore, repair, recover, verify --against */
  command: string;
  /** when the lock was taken (ISO 8601) */
  since: string;
  /** the target as the holder named it */
  target: string;
}

export interface TargetLockOptions {
  stateDir?: string;
  /** names the holder in the lock file (apply, restore, repair, recover, verify --against) */
  command: string;
  /** wait for the holder to finish instead of refusing at once */
  wait?: boolean;
  signal?: AbortSignal;
  log?: Logger;
  /**
   * A reader (verify --against): when the lock file cannot be created (a read-only directory) and
   * does not exist, go on without it: no writer could have taken it either.
   */
  reader?: boolean;
}

export interface TargetLock {
  /** the lock file ('' when a reader could not make one) */
  readonly path: string;
  /** Release the lock (empty the file, close it). Idempotent. */
  release(): Promise<void>;
}

/** The lock file of a target: beside its state file (image, block device), or in the state directory keyed by VG/LV. */
export async function targetLockFile(spec: string, stateDir = defaultStateDir()): Promise<string> {
  return (await lockFileOf(spec, stateDir)).path;
}

async function lockFileOf(spec: string, stateDir = defaultStateDir()): Promise<{ path: string; inStateDir: boolean }> {
  const lv = await lvTargetSpec(spec);
  if (lv) return { path: join(stateDir, 'lv', lv.vg, `${lv.lv}.lock`), inStateDir: true };
  let block = false;
  try {
    block = (await stat(spec)).isBlockDevice();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, `cannot inspect target ${spec}`);
  }
  return { path: stateFileFor(block ? 'blockdev' : 'image', spec, stateDir).replace(/\.json$/, '.lock'), inStateDir: block };
}

function parseHolder(text: string): TargetLockHolder | null {
  try {
    const h = JSON.parse(text) as TargetLockHolder;
    if (h && typeof h.pid === 'number' && typeof h.command === 'string') return h;
  } catch {
    // empty (released, or taken a moment ago) or cut short
  }
  return null;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((res) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      res();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** Who holds the lock file, as the holder wrote it (a few tries: it writes just after taking the lock). */
async function readHolder(path: string): Promise<TargetLockHolder | null> {
  for (let i = 0; i < 5; i++) {
    const h = parseHolder(await readFile(path, 'utf8').catch(() => ''));
    if (h) return h;
    await sleep(10);
  }
  return null;
}

export function describeHolder(h: TargetLockHolder | null): string {
  return h ? `thinarchive ${h.command} (pid ${h.pid}, since ${h.since})` : 'another thinarchive process';
}

/**
 * Open (creating) the lock file. Where it cannot be opened for writing (a read-only filesystem or
 * directory), an existing one is opened read-only: flock works on it all the same, only the holder
 * cannot name itself. Where it does not exist and cannot be made, a writer is refused as for a
 * read-only target (it could not write the state beside it either) and a reader goes on without it.
 * An image whose directory does not exist has no lock (nothing can hold it): opening the image then
 * fails as it did before.
 */
async function openLockFile(spec: string, path: string, inStateDir: boolean, reader: boolean): Promise<{ fh: FileHandle; writable: boolean } | null> {
  let code: string | undefined;
  try {
    // (an image's directory is the user's: never made here)
    if (inStateDir) await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    return { fh: await open(path, fsc.O_RDWR | fsc.O_CREAT, 0o644), writable: true };
  } catch (e) {
    code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EROFS' && code !== 'EPERM' && code !== 'ENOENT') throw ioError(e, `cannot open the target lock ${path}`);
  }
  try {
    return { fh: await open(path, 'r'), writable: false };
  } catch (e) {
    const c = (e as NodeJS.ErrnoException).code;
    if (c !== 'ENOENT' && c !== 'EACCES') throw ioError(e, `cannot open the target lock ${path}`);
  }
  // No directory: no target and no state can be there either (opening it says so), nor a holder.
  if (reader || code === 'ENOENT') return null;
  throw new UnsafeError('TARGET_READONLY', `target ${spec} cannot be opened for writing (${code}): its lock file ${path} cannot be created`);
}

/**
 * Take the target lock of `spec`. Throws UnsafeError TARGET_LOCKED (naming the holder) when another
 * process (or another call in this process) holds it, unless `wait`; AbortedError when the signal
 * fires while waiting.
 */
export async function lockTarget(spec: string, o: TargetLockOptions): Promise<TargetLock> {
  const { path, inStateDir } = await lockFileOf(spec, o.stateDir);
  const opened = await openLockFile(spec, path, inStateDir, !!o.reader);
  if (!opened) return { path: '', release: async () => {} };
  const { fh, writable } = opened;
  const io = thinio();
  const log = o.log ?? silentLogger;
  let delay = 10;
  let told = false;
  try {
    for (;;) {
      if (io.flockExclusive(fh.fd)) break;
      if (!o.wait) {
        const h = await readHolder(path);
        throw new UnsafeError('TARGET_LOCKED', `target ${spec} is in use by ${describeHolder(h)}; refusing to touch it while it runs (lock ${path}; --wait waits for it)`);
      }
      if (!told) {
        told = true;
        log.info({ target: spec, lock: path, holder: await readHolder(path) }, 'waiting for the target lock');
      }
      await sleep(delay, o.signal);
      if (o.signal?.aborted) throw new AbortedError(`cancelled while waiting for the target lock of ${spec}`, o.signal.reason);
      delay = Math.min(delay * 2, 200);
    }
  } catch (e) {
    await fh.close().catch(() => {});
    throw e;
  }
  const me: TargetLockHolder = { version: 1, pid: process.pid, command: o.command, since: new Date().toISOString(), target: spec };
  if (writable) {
    try {
      await fh.truncate(0);
      await fh.write(`${JSON.stringify(me)}\n`, 0);
    } catch (e) {
      await fh.close().catch(() => {});
      throw ioError(e, `cannot write the target lock ${path}`);
    }
  }
  lockHooks.afterLock?.();
  let released = false;
  return {
    path,
    release: async () => {
      if (released) return;
      released = true;
      if (writable) await fh.truncate(0).catch(() => {});
      await fh.close().catch(() => {});
    },
  };
}

/** Test-only hooks (concurrency tests; the CLI sets them from THINARCHIVE_TEST_SIGNAL_AFTER_LOCK). */
export const lockHooks: { afterLock?: () => void } = {};

/** For messages and tests: the holder recorded in a lock file, or null. */
export async function lockHolder(spec: string, stateDir?: string): Promise<TargetLockHolder | null> {
  return parseHolder(await readFile(await targetLockFile(spec, stateDir), 'utf8').catch(() => ''));
}
