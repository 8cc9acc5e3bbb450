/**
 * The pool samples file, `<stateDir>/pool-samples.json` (a persisted format: docs/LVM-METADATA.md
 * section 10): per pool a bounded list of usage samples, for the fill rate over the last hour and the
 * predicted time to full (`fillRate`, pure), and since when a metadata snapshot has been held.
 * Written by the pool watch (`check`, the daemon's pool sampling); replaced atomically.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeDirs, writeFileAtomic } from '../fsutil.js';

export const POOL_SAMPLES_FILE = 'pool-samples.json';
export const POOL_SAMPLES_VERSION = 1;
/** The fill rate is the slope over the samples of this last window. */
export const FILL_WINDOW_MS = 3_600_000;
/** No prediction from samples spanning less than this. */
export const MIN_FILL_SPAN_MS = 300_000;
/** A sample taken less than this after the previous one replaces it. */
export const MIN_SAMPLE_GAP_MS = 10_000;
/** At most this many samples per pool (the oldest go first). */
export const MAX_SAMPLES = 240;
/** A pool not sampled for this long is dropped from the file. */
export const FORGET_POOL_MS = 86_400_000;

/** One measurement of a pool, in bytes; `t` in milliseconds since the epoch. */
export interface PoolSample {
  t: number;
  dataUsed: number;
  dataTotal: number;
  metadataUsed: number;
  metadataTotal: number;
}

export interface PoolSamplesEntry {
  samples: PoolSample[];
  /** the metadata snapshot seen held: its root block and when it was first seen held (ISO 8601) */
  held: { root: number; since: string } | null;
}

export interface PoolSamplesFile {
  version: number;
  pools: Record<string, PoolSamplesEntry>;
}

/** How fast one space of a pool fills, from samples: null values when it cannot be told. */
export interface FillRate {
  /** least-squares slope of the used bytes over the window; null with fewer than 2 samples or too short a span */
  bytesPerSecond: number | null;
  /** (total - used) / slope when the slope is positive; 0 when full; null otherwise */
  secondsToFull: number | null;
  samples: number;
  spanSeconds: number;
}

/** Add `s` to an entry's samples: keep the window (and one sample before it), the gap, the cap. Pure. */
export function addSample(samples: readonly PoolSample[], s: PoolSample): PoolSample[] {
  const out = samples.filter((x) => x.t < s.t);
  const last = out[out.length - 1];
  if (last && s.t - last.t < MIN_SAMPLE_GAP_MS) out.pop();
  out.push(s);
  const from = s.t - FILL_WINDOW_MS;
  const firstInWindow = out.findIndex((x) => x.t >= from);
  const kept = out.slice(Math.max(0, firstInWindow - 1));
  return kept.slice(-MAX_SAMPLES);
}

/**
 * The fill rate of one space (data or metadata) over the last FILL_WINDOW_MS before `now`, from
 * (time, used) pairs; `usedNow` and `totalNow` give the time to full.
 */
export function fillRate(points: readonly { t: number; used: number }[], usedNow: number, totalNow: number, now: number): FillRate {
  const w = points.filter((p) => p.t >= now - FILL_WINDOW_MS && p.t <= now);
  const span = w.length ? (w[w.length - 1]!.t - w[0]!.t) : 0;
  const base = { samples: w.length, spanSeconds: Math.round(span / 1000) };
  if (w.length < 2 || span < MIN_FILL_SPAN_MS) return { ...base, bytesPerSecond: null, secondsToFull: null };
  const mt = w.reduce((a, p) => a + p.t, 0) / w.length;
  const mu = w.reduce((a, p) => a + p.used, 0) / w.length;
  let num = 0;
  let den = 0;
  for (const p of w) {
    num += ((p.t - mt) / 1000) * (p.used - mu);
    den += ((p.t - mt) / 1000) ** 2;
  }
  const slope = num / den;
  const left = totalNow - usedNow;
  const secondsToFull = left <= 0 ? 0 : slope > 0 ? Math.round(left / slope) : null;
  return { ...base, bytesPerSecond: slope, secondsToFull };
}

function emptyFile(): PoolSamplesFile {
  return { version: POOL_SAMPLES_VERSION, pools: {} };
}

function validSample(s: unknown): s is PoolSample {
  const o = s as Record<string, unknown> | null;
  return !!o && ['t', 'dataUsed', 'dataTotal', 'metadataUsed', 'metadataTotal'].every((k) => typeof o[k] === 'number' && Number.isFinite(o[k]));
}

/** The samples file of `stateDir`; empty when missing, unreadable or of another version (it is then started over). */
export async function readPoolSamples(stateDir: string): Promise<PoolSamplesFile> {
  let text: string;
  try {
    text = await readFile(join(stateDir, POOL_SAMPLES_FILE), 'utf8');
  } catch {
    return emptyFile();
  }
  try {
    const f = JSON.parse(text) as PoolSamplesFile;
    if (f.version !== POOL_SAMPLES_VERSION || typeof f.pools !== 'object' || f.pools === null) return emptyFile();
    const pools: Record<string, PoolSamplesEntry> = {};
    for (const [k, v] of Object.entries(f.pools)) {
      const held = v?.held && Number.isSafeInteger(v.held.root) && typeof v.held.since === 'string' ? { root: v.held.root, since: v.held.since } : null;
      pools[k] = { samples: Array.isArray(v?.samples) ? v.samples.filter(validSample) : [], held };
    }
    return { version: POOL_SAMPLES_VERSION, pools };
  } catch {
    return emptyFile();
  }
}

/**
 * Read the file, let `update` change it, drop pools not sampled for FORGET_POOL_MS, write it back
 * atomically. Two writers at once: the last one wins (a sample may be lost, the file is never torn).
 */
export async function updatePoolSamples(stateDir: string, now: number, update: (f: PoolSamplesFile) => void): Promise<PoolSamplesFile> {
  const f = await readPoolSamples(stateDir);
  update(f);
  for (const [k, v] of Object.entries(f.pools)) {
    const last = v.samples[v.samples.length - 1];
    if (!last || now - last.t > FORGET_POOL_MS) delete f.pools[k];
  }
  await makeDirs(stateDir, 0o700);
  await writeFileAtomic(join(stateDir, POOL_SAMPLES_FILE), `${JSON.stringify(f)}\n`);
  return f;
}
