/**
 * Parser for the status line of a thin-pool target (pure): `dmsetup status <dm vg>-<dm pool>-tpool`,
 * and the pool health checks built on it. The line's format and the fields used: docs/LVM.md
 * section 3.
 */
import { FormatError, UnsafeError, UsageError } from '../errors.js';

export type PoolMode = 'rw' | 'ro' | 'out_of_data_space';
export type DiscardMode = 'passdown' | 'no_passdown' | 'ignore';

export interface PoolStatusOk {
  state: 'ok';
  /** sectors: the target's start and length in the dm table */
  start: number;
  length: number;
  transactionId: number;
  metadataUsedBlocks: number;
  metadataTotalBlocks: number;
  dataUsedBlocks: number;
  dataTotalBlocks: number;
  /** metadata block of the held metadata snapshot, or null ('-') */
  heldRoot: number | null;
  /** null when the kernel does not print it */
  mode: PoolMode | null;
  discard: DiscardMode | null;
  /** what a write does when the data space is full; null when not printed */
  whenFull: 'error' | 'queue' | null;
  needsCheck: boolean;
  metadataLowWatermark: number | null;
  /** 100 * used / total, 0 when total is 0 */
  dataPercent: number;
  metadataPercent: number;
}

export interface PoolStatusBad {
  /** 'fail': the pool is in failure mode; 'error': the kernel could not read its metadata */
  state: 'fail' | 'error';
  start: number;
  length: number;
}

export type PoolStatus = PoolStatusOk | PoolStatusBad;

const UINT = /^[0-9]+$/;

function bad(line: string, detail: string): FormatError {
  return new FormatError('POOL_STATUS', `thin-pool status ${JSON.stringify(line.slice(0, 200))}: ${detail}`);
}

function uint(line: string, s: string | undefined, what: string): number {
  if (s === undefined || !UINT.test(s)) throw bad(line, `${what} is ${s === undefined ? 'missing' : JSON.stringify(s)}`);
  const n = Number(s);
  if (!Number.isSafeInteger(n)) throw bad(line, `${what} ${s} is too large`);
  return n;
}

function fraction(line: string, s: string | undefined, what: string): [number, number] {
  const m = s === undefined ? null : /^([0-9]+)\/([0-9]+)$/.exec(s);
  if (!m) throw bad(line, `${what} is ${s === undefined ? 'missing' : JSON.stringify(s)}, want USED/TOTAL`);
  const used = uint(line, m[1], what);
  const total = uint(line, m[2], what);
  if (used > total) throw bad(line, `${what} ${s}: used exceeds total`);
  return [used, total];
}

const pct = (used: number, total: number): number => (total === 0 ? 0 : (100 * used) / total);

/** Parse the output of `dmsetup status <pool>-tpool` (one line; surrounding whitespace ignored). */
export function parsePoolStatus(text: string): PoolStatus {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  if (lines.length !== 1) throw bad(text, lines.length === 0 ? 'empty' : `${lines.length} lines, want one thin-pool target`);
  const line = lines[0]!;
  const f = line.split(/\s+/);
  const start = uint(line, f[0], 'start');
  const length = uint(line, f[1], 'length');
  if (f[2] !== 'thin-pool') throw bad(line, `target type is ${JSON.stringify(f[2] ?? '')}, not thin-pool`);
  if (f[3] === 'Fail' || f[3] === 'Error') {
    if (f.length !== 4) throw bad(line, `unexpected fields after ${f[3]}`);
    return { state: f[3] === 'Fail' ? 'fail' : 'error', start, length };
  }
  if (f.length < 7) throw bad(line, 'too few fields');
  const transactionId = uint(line, f[3], 'transaction id');
  const [metadataUsedBlocks, metadataTotalBlocks] = fraction(line, f[4], 'metadata usage');
  const [dataUsedBlocks, dataTotalBlocks] = fraction(line, f[5], 'data usage');
  const heldRoot = f[6] === '-' ? null : uint(line, f[6], 'held metadata root');

  let mode: PoolMode | null = null;
  if (f[7] !== undefined) {
    if (f[7] !== 'rw' && f[7] !== 'ro' && f[7] !== 'out_of_data_space') throw bad(line, `unknown pool mode ${JSON.stringify(f[7])}`);
    mode = f[7];
  }
  let discard: DiscardMode | null = null;
  if (f[8] !== undefined) {
    const d = ({ discard_passdown: 'passdown', no_discard_passdown: 'no_passdown', ignore_discard: 'ignore' } as const)[f[8] as 'discard_passdown'];
    if (d === undefined) throw bad(line, `unknown discard mode ${JSON.stringify(f[8])}`);
    discard = d;
  }
  let whenFull: 'error' | 'queue' | null = null;
  if (f[9] !== undefined) {
    if (f[9] !== 'error_if_no_space' && f[9] !== 'queue_if_no_space') throw bad(line, `unknown no-space mode ${JSON.stringify(f[9])}`);
    whenFull = f[9] === 'error_if_no_space' ? 'error' : 'queue';
  }
  let needsCheck = false;
  if (f[10] !== undefined) {
    if (f[10] !== 'needs_check' && f[10] !== '-') throw bad(line, `unknown needs_check field ${JSON.stringify(f[10])}`);
    needsCheck = f[10] === 'needs_check';
  }
  const metadataLowWatermark = f[11] === undefined ? null : uint(line, f[11], 'metadata low watermark');
  if (f.length > 12) throw bad(line, `unexpected field ${JSON.stringify(f[12])}`);

  return {
    state: 'ok',
    start,
    length,
    transactionId,
    metadataUsedBlocks,
    metadataTotalBlocks,
    dataUsedBlocks,
    dataTotalBlocks,
    heldRoot,
    mode,
    discard,
    whenFull,
    needsCheck,
    metadataLowWatermark,
    dataPercent: pct(dataUsedBlocks, dataTotalBlocks),
    metadataPercent: pct(metadataUsedBlocks, metadataTotalBlocks),
  };
}

export { dmName, poolDmName, tmetaPath } from './names.js';

/**
 * Refuse (UnsafeError) to use a thin pool that is damaged: in failure mode, flagged needs_check,
 * read-only, or out of data space (`purpose` says for what, e.g. "sending"). `allow` lets through
 * what a caller can still do safely (releasing a metadata snapshot needs only a pool not in failure mode).
 */
export function checkPoolHealth(pool: string, st: PoolStatus, purpose: string, allow: { readOnly?: boolean; outOfSpace?: boolean; needsCheck?: boolean } = {}): asserts st is PoolStatusOk {
  if (st.state !== 'ok') {
    throw new UnsafeError('POOL_FAILED', `thin pool ${pool} reports "${st.state === 'fail' ? 'Fail' : 'Error'}" (failure mode): repair it (lvconvert --repair) before ${purpose}`);
  }
  if (st.needsCheck && !allow.needsCheck) throw new UnsafeError('POOL_NEEDS_CHECK', `thin pool ${pool} is flagged needs_check: run thin_check / lvconvert --repair before ${purpose}`);
  if (st.mode === 'ro' && !allow.readOnly) throw new UnsafeError('POOL_READ_ONLY', `thin pool ${pool} is read-only (metadata error or full metadata): refusing ${purpose}`);
  if (st.mode === 'out_of_data_space' && !allow.outOfSpace) throw new UnsafeError('POOL_OUT_OF_SPACE', `thin pool ${pool} is out of data space: extend it (lvextend) before ${purpose}`);
}

/** A pair of percentages: of the pool's data space and of its metadata space. */
export interface UsagePair {
  data: number;
  metadata: number;
}

/**
 * The levels of a pool's usage: above `warn` WARNING, above `crit` CRITICAL (strictly above, as a
 * Nagios threshold "80" means "alert when more than 80"). The critical levels are also where `send`
 * refuses to snapshot (checkPoolForSend).
 */
export interface PoolThresholds {
  warn: UsagePair;
  crit: UsagePair;
}

/** What a configuration or the command line may say about one pool (every key optional). */
export interface PoolThresholdSettings {
  warn?: Partial<UsagePair>;
  crit?: Partial<UsagePair>;
}

export const DEFAULT_POOL_THRESHOLDS: Readonly<PoolThresholds> = Object.freeze({
  warn: Object.freeze({ data: 80, metadata: 70 }),
  crit: Object.freeze({ data: 90, metadata: 80 }),
});

export const DEFAULT_MAX_DATA_PERCENT = DEFAULT_POOL_THRESHOLDS.crit.data;
export const DEFAULT_MAX_METADATA_PERCENT = DEFAULT_POOL_THRESHOLDS.crit.metadata;

function checkPercent(v: number, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 100) throw new UsageError(`${what} must be a number from 0 to 100, got ${v}`);
  return v;
}

/**
 * The thresholds of pool `pool` ("VG/POOL"): `override` (the command line), then `byPool[pool]`, then
 * `byPool.default`, then DEFAULT_POOL_THRESHOLDS, key by key. UsageError when a value is not a
 * percentage or a warning level is above its critical level.
 */
export function resolveThresholds(pool: string, byPool: Readonly<Record<string, PoolThresholdSettings>> | undefined, override: PoolThresholdSettings = {}): PoolThresholds {
  const layers = [override, byPool?.[pool] ?? {}, byPool?.['default'] ?? {}, DEFAULT_POOL_THRESHOLDS];
  const pick = (level: 'warn' | 'crit', space: 'data' | 'metadata'): number => {
    for (const l of layers) {
      const v = l[level]?.[space];
      if (v !== undefined) return checkPercent(v, `the ${level === 'warn' ? 'warning' : 'critical'} ${space} threshold of ${pool}`);
    }
    return DEFAULT_POOL_THRESHOLDS[level][space];
  };
  const t: PoolThresholds = {
    warn: { data: pick('warn', 'data'), metadata: pick('warn', 'metadata') },
    crit: { data: pick('crit', 'data'), metadata: pick('crit', 'metadata') },
  };
  for (const space of ['data', 'metadata'] as const) {
    if (t.warn[space] > t.crit[space]) {
      throw new UsageError(`${pool}: the warning ${space} threshold (${t.warn[space]}%) is above the critical one (${t.crit[space]}%)`);
    }
  }
  return t;
}

/** A percentage as thinarchive prints it: two decimals. */
export function formatPercent(v: number): string {
  return `${v.toFixed(2)}%`;
}

export interface PoolLimits {
  maxDataPercent: number;
  maxMetadataPercent: number;
}

/**
 * The pool guard: refuse (UnsafeError) to snapshot on a pool that is damaged (checkPoolHealth), or
 * POOL_CRITICAL when its data or metadata usage is above the critical threshold, saying by how much.
 * Runs before any snapshot is created.
 */
export function checkPoolForSend(pool: string, st: PoolStatus, limits: PoolLimits): void {
  checkPoolHealth(pool, st, 'sending');
  const over: string[] = [];
  if (st.dataPercent > limits.maxDataPercent) {
    over.push(`data usage is ${formatPercent(st.dataPercent)}, ${(st.dataPercent - limits.maxDataPercent).toFixed(2)} points above the critical threshold of ${limits.maxDataPercent}% (--max-data-percent)`);
  }
  if (st.metadataPercent > limits.maxMetadataPercent) {
    over.push(`metadata usage is ${formatPercent(st.metadataPercent)}, ${(st.metadataPercent - limits.maxMetadataPercent).toFixed(2)} points above the critical threshold of ${limits.maxMetadataPercent}% (--max-metadata-percent)`);
  }
  if (over.length) {
    throw new UnsafeError('POOL_CRITICAL', `thin pool ${pool} is critical: ${over.join('; ')}. No snapshot was created: a snapshot keeps the blocks the volume `
      + 'overwrites and could fill the pool. Free or add space (lvextend, fstrim, lvremove), or raise the threshold (pools.<VG/POOL>.crit in the daemon configuration)');
  }
}
