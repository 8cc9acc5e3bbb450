import { describe, expect, it } from 'vitest';
import { DEFAULT_POOL_THRESHOLDS, poolCondition, type PoolReport } from '../api/index.js';
import { CHECK_EXIT, checkLine, perfdataOf, summaryOf, unitCheck } from './check.js';
import { unitStatus } from './daemon.js';
import { emptyUnit } from './state.js';

const NOW = Date.parse('2026-05-01T12:00:00Z');
const ago = (s: number): string => new Date(NOW - s * 1000).toISOString();
const HOUR = 3_600_000;
const fill = { bytesPerSecond: null, secondsToFull: null, samples: 1, spanSeconds: 0 };

function pool(p: string, data: number, meta: number, extra: Partial<PoolReport> = {}): PoolReport {
  const r: Omit<PoolReport, 'condition'> = {
    pool: p, error: null, thresholds: DEFAULT_POOL_THRESHOLDS, data: { percent: data, usedBytes: 0, totalBytes: 1, fill }, metadata: { percent: meta, usedBytes: 0, totalBytes: 1, fill },
    secondsToFull: null, mode: 'rw', needsCheck: false, whenFull: 'queue', autoextend: null, pinned: { bytes: 1048576, snapshots: [], error: null }, heldMetadataSnapshot: null, ...extra,
  };
  return { ...r, condition: poolCondition(r) };
}

/** A unit of the state file whose newest point is `lag` seconds old. */
function unit(lag: number | null, o: Partial<ReturnType<typeof emptyUnit>> = {}) {
  return unitStatus({ ...emptyUnit('vms', 'vg0/vm1'), lastAttempt: ago(60), lastSuccess: lag === null ? null : ago(lag), newestPoint: lag === null ? null : ago(lag), ...o }, NOW);
}

describe('unitCheck: replication lag against 3x and 10x the interval, and the last verification', () => {
  const job = { every: HOUR, applyTo: undefined };
  it('lag thresholds', () => {
    expect(unitCheck(unit(600), job, NOW)).toMatchObject({ state: 'OK', lagSeconds: 600, warnSeconds: 10800, critSeconds: 36000, message: 'vms vg0/vm1 OK: lag 10m' });
    expect(unitCheck(unit(10800), job, NOW).state).toBe('OK');
    expect(unitCheck(unit(10801), job, NOW)).toMatchObject({ state: 'WARNING', message: 'vms vg0/vm1 WARNING: lag 3h > 3h' });
    expect(unitCheck(unit(40000), job, NOW)).toMatchObject({ state: 'CRITICAL', message: 'vms vg0/vm1 CRITICAL: lag 11h > 10h' });
  });
  it('a failing unit says why; one without a point is a warning', () => {
    const failing = unit(40000, { lastError: { code: 'POOL_CRITICAL', message: 'thin pool vg0/pool is critical', at: ago(60) } });
    expect(unitCheck(failing, job, NOW).message).toBe('vms vg0/vm1 CRITICAL: lag 11h > 10h (failing: POOL_CRITICAL: thin pool vg0/pool is critical)');
    expect(unitCheck(unit(null, { lastAttempt: null }), job, NOW)).toMatchObject({ state: 'WARNING', message: 'vms vg0/vm1 WARNING: no point yet (never run)' });
  });
  it('a local replica: verified recently, never, long ago, or different', () => {
    const local = { every: HOUR, applyTo: { target: '/srv/r.img', args: [], verify: true } };
    expect(unitCheck(unit(60, { lastVerify: { at: ago(60), ok: true, mode: 'changed-only' } }), local, NOW).state).toBe('OK');
    expect(unitCheck(unit(60), local, NOW).message).toBe('vms vg0/vm1 WARNING: the replica has not been verified');
    expect(unitCheck(unit(60, { lastVerify: { at: ago(40000), ok: true, mode: 'changed-only' } }), local, NOW).message).toBe('vms vg0/vm1 WARNING: last verification 11h ago > 10h');
    expect(unitCheck(unit(60, { lastVerify: { at: ago(60), ok: false, mode: 'changed-only' } }), local, NOW).state).toBe('CRITICAL');
    const mismatch = unit(60, { lastError: { code: 'REPLICA_MISMATCH', message: 'replica /srv/r.img differs', at: ago(10) } });
    expect(unitCheck(mismatch, local, NOW).message).toBe('vms vg0/vm1 CRITICAL: the replica differs from the chain: replica /srv/r.img differs');
    // a remote replica (host) or verify: false is not expected to be verified here
    expect(unitCheck(unit(60), { every: HOUR, applyTo: { host: 'ssh://x', target: 'vg/x', args: [], verify: true } }, NOW).state).toBe('OK');
  });
});

describe('the plugin output', () => {
  it('perfdata: percentages with two decimals and their thresholds, pinned bytes, time to full, lags', () => {
    const p = pool('vg0/pool', 85.126, 11.7, { secondsToFull: 5400, thresholds: { warn: { data: 80, metadata: 70 }, crit: { data: 92.5, metadata: 80 } } });
    const q = pool('vg0/other', 1, 2, { pinned: { bytes: null, snapshots: [], error: 'x' } });
    const u = unitCheck(unit(600), { every: HOUR, applyTo: undefined }, NOW);
    expect(perfdataOf([p, q], [u, unitCheck(unit(null), { every: HOUR, applyTo: undefined }, NOW)])).toBe(
      'vg0/pool:data=85.13%;80;92.5;0;100 vg0/pool:metadata=11.70%;70;80;0;100 vg0/pool:pinned=1048576B;;;0 vg0/pool:seconds_to_full=5400s;;;0 '
      + 'vg0/other:data=1.00%;80;90;0;100 vg0/other:metadata=2.00%;70;80;0;100 vms:vg0/vm1:lag=600s;10800;36000;0',
    );
    // image volumes may hold spaces and quotes: the label is quoted, '=' replaced
    const img = unitCheck(unitStatus({ ...emptyUnit('j', "/srv/my 'img=1"), newestPoint: ago(5) }, NOW), { every: HOUR, applyTo: undefined }, NOW);
    expect(perfdataOf([], [img])).toBe("'j:/srv/my ''img_1:lag'=5s;10800;36000;0");
  });
  it('the line: one line, no | in the summary, perfdata after " | " when there is some; exit codes', () => {
    expect(checkLine('OK', 'all fine', 'a=1%;2;3;0;100')).toBe('THINARCHIVE OK - all fine | a=1%;2;3;0;100');
    expect(checkLine('UNKNOWN', 'bad | thing\nhere', '')).toBe('THINARCHIVE UNKNOWN - bad / thing here');
    expect(CHECK_EXIT).toEqual({ OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3 });
  });
  it('the summary: problems worst first; when all is OK, what was checked', () => {
    const ok = pool('vg0/pool', 45, 10);
    const u = unitCheck(unit(600), { every: HOUR, applyTo: undefined }, NOW);
    expect(summaryOf([ok], [u], [])).toBe('vg0/pool data 45.00%, metadata 10.00%, pinned by base snapshots 1.00 MiB; 1 volume within their lag');
    const warn = pool('vg0/a', 85, 10);
    const crit = pool('vg0/b', 95, 10);
    const lagging = unitCheck(unit(20000), { every: HOUR, applyTo: undefined }, NOW);
    expect(summaryOf([ok, warn, crit], [lagging], [{ state: 'UNKNOWN', message: 'vg0/gone: logical volume vg0/gone not found' }])).toBe(
      'vg0/b CRITICAL: data 95.00% > 90% (critical); vg0/gone: logical volume vg0/gone not found; vg0/a WARNING: data 85.00% > 80% (warning); vms vg0/vm1 WARNING: lag 6h > 3h',
    );
    expect(summaryOf([], [], [])).toBe('nothing to check');
  });
});
