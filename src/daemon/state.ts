/**
 * The daemon's state file (docs/DAEMON.md, "State file"): per job and volume the last attempt, last
 * success, last error, bytes, duration, chain and newest point, and the verifications. Written
 * atomically (temporary file, fsync, rename) after every run, so a restart after SIGKILL continues
 * from it. One writer at a time: the state directory's lock (`daemon.lock`, flock) is held by a
 * daemon for its whole life and by `thinarchive run` while it merges its outcome.
 */
import { constants as fsc } from 'node:fs';
import { mkdir, open, readdir, readFile, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { defaultStateDir, writeFileAtomic } from '../fsutil.js';
import { thinio } from '../native.js';

export const STATE_VERSION = 1;
export const STATE_FILE = 'daemon-state.json';
export const SOCKET_FILE = 'daemon.sock';
export const LOCK_FILE = 'daemon.lock';

/** A verification: after each apply (changed-only), or a scheduled one (full or sample). */
export interface VerifyMark {
  at: string;
  ok: boolean;
  /** changed-only | full | sample */
  mode: string;
}

/** The last scheduled verification of a unit (job `verify:`, docs/DAEMON.md). */
export interface ScheduledVerify {
  /** ISO 8601, when it ended */
  at: string;
  /** the store check (and the replica check, when there is one) ran and found nothing */
  ok: boolean;
  mode: 'full' | 'sample';
  samplePercent: number | null;
  /** the chain in the store; null when the check could not be done or the job has no store (a remote replica) */
  store: { ok: boolean; archives: number; findings: number; bytesRead: number; recordsChecked: number | null; dataRecords: number | null; firstFinding: string | null } | null;
  /**
   * The apply_to replica: a local one against the store's chain (verify --against), a remote one
   * (apply_to.host) against the volume's base snapshot by the hash exchange (verify VG/LV --against
   * TARGET --host); null when the job has none or it could not be done. `host` is null for a local one.
   */
  replica: { ok: boolean; target: string; host?: string | null; blocksChecked: number; mismatchedBlocks: number; stateOk: boolean } | null;
  /** why the check could not be done (not a finding): retried sooner than `every` */
  error: { code: string; message: string } | null;
}

export interface UnitState {
  job: string;
  volume: string;
  /** ISO 8601 */
  lastAttempt: string | null;
  lastSuccess: string | null;
  lastError: { code: string; message: string; at: string } | null;
  /** the last successful run */
  bytes: number | null;
  durationSeconds: number | null;
  /** where the points are: the chain in the store (directory or URL), or the remote target */
  chainId: string | null;
  chainDir: string | null;
  chainLength: number | null;
  /** the archive id of the newest point this daemon sent */
  lastArchiveId: string | null;
  /** ISO 8601 creation time of the newest point at the destination */
  newestPoint: string | null;
  /** the last verification of any kind */
  lastVerify: VerifyMark | null;
  /** the last scheduled verification (never replaced by the checks after each apply) */
  scheduledVerify: ScheduledVerify | null;
  consecutiveFailures: number;
}

/** What a run's outcome says about the unit (runner.ts RunOutcome has these fields). */
export interface RecordedOutcome {
  ok: boolean;
  error?: { code: string; message: string };
  bytes: number;
  seconds: number;
  chainId?: string;
  chainDir?: string | null;
  chainLength?: number | null;
  archiveId?: string;
  newestPoint?: string | null;
  verify?: VerifyMark;
}

export interface StateFile {
  version: number;
  updated: string;
  units: UnitState[];
}

export function stateDirOf(configured?: string): string {
  return configured ?? defaultStateDir();
}

export function unitKey(job: string, volume: string): string {
  return `${job}\u0000${volume}`;
}

export function emptyUnit(job: string, volume: string): UnitState {
  return {
    job, volume, lastAttempt: null, lastSuccess: null, lastError: null, bytes: null, durationSeconds: null, chainId: null, chainDir: null,
    chainLength: null, lastArchiveId: null, newestPoint: null, lastVerify: null, scheduledVerify: null, consecutiveFailures: 0,
  };
}

/**
 * The unit's state after a run that started at `attemptAt` and ended at `now`: the one place a run
 * is merged into the state (the daemon and `thinarchive run`). An aborted run changes nothing.
 */
export function afterRun(prev: UnitState, attemptAt: Date, out: RecordedOutcome, now = new Date()): UnitState {
  if (!out.ok && out.error?.code === 'ABORTED') return prev;
  const s: UnitState = { ...prev, lastAttempt: attemptAt.toISOString() };
  if (out.ok) {
    Object.assign(s, {
      lastSuccess: now.toISOString(), bytes: out.bytes, durationSeconds: Math.round(out.seconds * 1000) / 1000, chainId: out.chainId ?? s.chainId,
      chainDir: out.chainDir ?? s.chainDir, chainLength: out.chainLength ?? s.chainLength, lastArchiveId: out.archiveId ?? s.lastArchiveId,
      newestPoint: out.newestPoint ?? s.newestPoint, consecutiveFailures: 0, lastVerify: out.verify ?? s.lastVerify,
    });
  } else {
    s.lastError = { code: out.error!.code, message: out.error!.message, at: now.toISOString() };
    s.consecutiveFailures++;
  }
  return s;
}

/** The unit's state after a scheduled verification. */
export function afterVerify(prev: UnitState, v: ScheduledVerify): UnitState {
  return { ...prev, scheduledVerify: v, lastVerify: v.error ? prev.lastVerify : { at: v.at, ok: v.ok, mode: v.mode } };
}

export interface StateLock {
  release(): Promise<void>;
}

/**
 * Take the state directory's lock (flock on `daemon.lock`; the kernel drops it when the holder dies,
 * so it never goes stale), polling until `waitMs` has passed. Undefined when another process still
 * holds it.
 */
export async function lockStateDir(dir: string, waitMs: number): Promise<StateLock | undefined> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const fh = await open(join(dir, LOCK_FILE), fsc.O_RDWR | fsc.O_CREAT, 0o600);
  const deadline = Date.now() + waitMs;
  for (;;) {
    if (thinio().flockExclusive(fh.fd)) {
      let released = false;
      return {
        release: async () => {
          if (released) return;
          released = true;
          thinio().flockUnlock(fh.fd);
          await fh.close();
        },
      };
    }
    if (Date.now() >= deadline) {
      await fh.close();
      return undefined;
    }
    await new Promise((res) => setTimeout(res, 25));
  }
}

/** The state in `dir` (empty when there is none; an unreadable or newer-version file is ignored and replaced). */
export async function readState(dir: string): Promise<Map<string, UnitState>> {
  const out = new Map<string, UnitState>();
  let text: string;
  try {
    text = await readFile(join(dir, STATE_FILE), 'utf8');
  } catch {
    return out;
  }
  try {
    const s = JSON.parse(text) as StateFile;
    if (s.version !== STATE_VERSION || !Array.isArray(s.units)) return out;
    for (const u of s.units) if (typeof u?.job === 'string' && typeof u?.volume === 'string') out.set(unitKey(u.job, u.volume), { ...emptyUnit(u.job, u.volume), ...u });
  } catch {
    // a torn file cannot happen (atomic rename); anything else unreadable is started over
  }
  return out;
}

export async function writeState(dir: string, units: Iterable<UnitState>): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file: StateFile = { version: STATE_VERSION, updated: new Date().toISOString(), units: [...units] };
  await writeFileAtomic(join(dir, STATE_FILE), `${JSON.stringify(file, null, 2)}\n`);
}

/** Remove the temporary files (`.NAME.tmp-PID-…`) other processes left beside `path` (the metrics textfile). */
export async function removeStaleTempsOf(path: string): Promise<void> {
  const prefix = `.${basename(path)}.tmp-`;
  const names = await readdir(dirname(path)).catch(() => [] as string[]);
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const pid = Number(/^(\d+)-/.exec(n.slice(prefix.length))?.[1]);
    if (pid !== process.pid) await rm(join(dirname(path), n), { force: true });
  }
}

/** Remove temporary files a killed writer left in `dir` (`.NAME.tmp-PID-…` of fsutil.writeFileAtomic). */
export async function removeStaleTemps(dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const n of names) {
    const m = /^\.(?:daemon-state\.json|alerts-state\.json|image-.*)\.tmp-(\d+)-/.exec(n) ?? /^\.\.?image-delta-(\d+)-/.exec(n);
    if (m && Number(m[1]) !== process.pid) await rm(join(dir, n), { force: true });
  }
}
