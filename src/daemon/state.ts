/**
 * The daemon's state file (docs/DAEMON.md, "State file"): per job and volume the last attempt, last
 * success, last error, bytes, duration, chain and newest point. Written atomically (temporary file,
 * fsync, rename) after every run, so a restart after SIGKILL continues from it.
 */
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { defaultStateDir, writeFileAtomic } from '../fsutil.js';

export const STATE_VERSION = 1;
export const STATE_FILE = 'daemon-state.json';
export const SOCKET_FILE = 'daemon.sock';

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
  lastVerify: { at: string; ok: boolean; mode: string } | null;
  consecutiveFailures: number;
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
    chainLength: null, lastArchiveId: null, newestPoint: null, lastVerify: null, consecutiveFailures: 0,
  };
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

/** Remove temporary files a killed writer left in `dir` (`.NAME.tmp-PID-…` of fsutil.writeFileAtomic). */
export async function removeStaleTemps(dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const n of names) {
    const m = /^\.(?:daemon-state\.json|alerts-state\.json|image-.*)\.tmp-(\d+)-/.exec(n) ?? /^\.image-delta-(\d+)-/.exec(n);
    if (m && Number(m[1]) !== process.pid) await rm(join(dir, n), { force: true });
  }
}
