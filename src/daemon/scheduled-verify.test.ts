import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkConfigText, type JobConfig } from './config.js';
import { isVerifyDue, verifyDueAt, VERIFY_RETRY_MS } from './scheduled-verify.js';
import { afterRun, afterVerify, emptyUnit, lockStateDir, type ScheduledVerify, type UnitState } from './state.js';

function job(verify: string): JobConfig {
  const r = checkConfigText(`jobs: [{name: j, volumes: [vg0/a], every: 30s, to: /s${verify}}]\n`);
  expect(r.problems).toEqual([]);
  return r.config!.jobs[0];
}

const T0 = Date.parse('2026-01-01T00:00:00Z');
const iso = (ms: number): string => new Date(ms).toISOString();

function verified(at: number, ok: boolean, error?: string): ScheduledVerify {
  return {
    at: iso(at), ok, mode: 'full', samplePercent: null, error: error ? { code: error, message: 'x' } : null,
    store: error ? null : { ok, archives: 3, findings: ok ? 0 : 1, bytesRead: 1, recordsChecked: null, dataRecords: null, firstFinding: ok ? null : 'PAYLOAD_CORRUPT: x' },
    replica: null,
  };
}

/**
 * The daemon's loop with an injected clock: a run every 30 s (taking `runMs`), a scheduled
 * verification after a successful run when due (taking `verifyMs`, with the outcome `outcome(n)`).
 * Returns when each verification ended.
 */
function simulate(j: JobConfig, days: number, opts: { runMs?: number; verifyMs?: number; fails?: (t: number) => boolean; outcome?: (n: number) => 'ok' | 'findings' | 'error' } = {}): number[] {
  let s: UnitState = emptyUnit('j', 'vg0/a');
  const done: number[] = [];
  for (let slot = T0; slot < T0 + days * 86_400_000; slot += j.every) {
    const end = slot + (opts.runMs ?? 1000);
    const ok = !opts.fails?.(slot);
    s = afterRun(s, new Date(slot), ok ? { ok, bytes: 1, seconds: 1, chainDir: '/s/c' } : { ok, bytes: 0, seconds: 1, error: { code: 'SSH_CONNECT', message: 'x' } }, new Date(end));
    if (ok && isVerifyDue(j, s, end)) {
      const at = end + (opts.verifyMs ?? 60_000);
      const o = opts.outcome?.(done.length) ?? 'ok';
      s = afterVerify(s, verified(at, o === 'ok', o === 'error' ? 'S3_NETWORK' : undefined));
      done.push(at);
    }
  }
  return done;
}

describe('scheduled verification: when it is due', () => {
  it('a job without verify: never', () => {
    const j = job('');
    expect(verifyDueAt(j, emptyUnit('j', 'vg0/a'))).toBeUndefined();
    expect(simulate(j, 2)).toEqual([]);
  });

  it('never done: after the first successful run; then every interval from the end of the last one', () => {
    const j = job(', verify: {every: 1d}');
    const v = simulate(j, 3);
    // The first after the first run (ends T0+1 s, verification 60 s); each next one after the first
    // run that ends a day or more after the last verification ended.
    expect(v).toEqual([T0 + 61_000, T0 + 86_521_000, T0 + 172_981_000]);
    expect(v).toHaveLength(3);
    for (let i = 1; i < v.length; i++) {
      // due `every` after the last one ended: verified after the first run that ends at or after that
      expect(v[i] - v[i - 1]).toBeGreaterThanOrEqual(86_400_000 + 60_000);
      expect(v[i] - v[i - 1]).toBeLessThanOrEqual(86_400_000 + 60_000 + 30_000);
    }
  });

  it('is not due before a successful run has made a chain, and not after a failed run', () => {
    const j = job(', verify: {every: 1h}');
    const fresh = emptyUnit('j', 'vg0/a');
    expect(isVerifyDue(j, fresh, T0)).toBe(false); // no chain yet
    // failing for the first 2 hours: the first verification follows the first success
    const v = simulate(j, 1, { fails: (t) => t < T0 + 2 * 3_600_000 });
    expect(v[0]).toBe(T0 + 2 * 3_600_000 + 61_000);
  });

  it('a group job (no single chain directory: chainDir stays null) is due after its first successful run', () => {
    const g = job(', verify: {every: 1h}, group: {name: g}');
    expect(g.group).toBeDefined();
    const s = afterRun(emptyUnit('j', 'vg0/a'), new Date(T0), { ok: true, bytes: 1, seconds: 1, chainDir: null, chainId: 'c' }, new Date(T0 + 1000));
    expect(s.chainDir).toBeNull();
    expect(isVerifyDue(g, s, T0 + 1000)).toBe(true);
    expect(isVerifyDue(job(', verify: {every: 1h}'), s, T0 + 1000)).toBe(false);
  });

  it('findings wait a whole interval; a check that could not be done is retried after min(every, 15 min)', () => {
    const daily = job(', verify: {every: 1d, sample: 10%}');
    const s = afterVerify(emptyUnit('j', 'vg0/a'), verified(T0, false));
    expect(verifyDueAt(daily, s)).toBe(T0 + 86_400_000);
    expect(s.lastVerify).toEqual({ at: iso(T0), ok: false, mode: 'full' });
    const e = afterVerify({ ...emptyUnit('j', 'vg0/a'), lastVerify: { at: iso(T0 - 5), ok: true, mode: 'changed-only' } }, verified(T0, false, 'S3_NETWORK'));
    expect(verifyDueAt(daily, e)).toBe(T0 + VERIFY_RETRY_MS);
    expect(e.lastVerify).toEqual({ at: iso(T0 - 5), ok: true, mode: 'changed-only' }); // not a verification
    const fast = job(', verify: {every: 5m}');
    expect(verifyDueAt(fast, e)).toBe(T0 + 300_000);
    // Simulated: error, error, ok, ... over a day of 30 s runs
    const v = simulate(daily, 2, { outcome: (n) => (n < 2 ? 'error' : 'ok') });
    expect(v[1] - v[0]).toBeGreaterThanOrEqual(VERIFY_RETRY_MS + 60_000);
    expect(v[1] - v[0]).toBeLessThanOrEqual(VERIFY_RETRY_MS + 60_000 + 30_000);
    expect(v[3] - v[2]).toBeGreaterThanOrEqual(86_400_000);
  });

  it('a remote replica (apply_to.host, no store, no chain directory): due after a successful run all the same', () => {
    const r = checkConfigText('jobs: [{name: j, volumes: [vg0/a], every: 30s, apply_to: {host: ssh://h, target: vg1/a}, verify: {every: 1h}}]\n');
    expect(r.problems).toEqual([]);
    const remote = r.config!.jobs[0];
    const s = afterRun(emptyUnit('j', 'vg0/a'), new Date(T0), { ok: true, bytes: 1, seconds: 1, chainDir: null }, new Date(T0 + 1000));
    expect(s.chainDir).toBeNull();
    expect(isVerifyDue(remote, s, T0 + 1000)).toBe(true);
    // A job with a store still waits for its chain.
    expect(isVerifyDue(job(', verify: {every: 1h}'), s, T0 + 1000)).toBe(false);
  });
});

describe('the state of a unit after a run (one merge for the daemon and `run`)', () => {
  const prev: UnitState = { ...emptyUnit('j', 'vg0/a'), lastAttempt: iso(T0 - 30_000), lastSuccess: iso(T0 - 29_000), chainId: 'c1', chainLength: 4, consecutiveFailures: 0 };
  it('success: times, bytes, chain fields; the error stays (older than the success)', () => {
    const withErr = { ...prev, lastError: { code: 'X', message: 'y', at: iso(T0 - 60_000) } };
    const s = afterRun(withErr, new Date(T0), { ok: true, bytes: 10, seconds: 1.23456, chainLength: 5, archiveId: 'a9', newestPoint: iso(T0 + 1000) }, new Date(T0 + 1500));
    expect(s).toMatchObject({ lastAttempt: iso(T0), lastSuccess: iso(T0 + 1500), bytes: 10, durationSeconds: 1.235, chainId: 'c1', chainLength: 5, lastArchiveId: 'a9', lastError: withErr.lastError });
  });
  it('failure: the error with its code, one more consecutive failure, the last success kept', () => {
    const s = afterRun(prev, new Date(T0), { ok: false, bytes: 0, seconds: 2, error: { code: 'SSH_CONNECT', message: 'refused' } }, new Date(T0 + 2000));
    expect(s).toMatchObject({ lastAttempt: iso(T0), lastSuccess: prev.lastSuccess, lastError: { code: 'SSH_CONNECT', message: 'refused', at: iso(T0 + 2000) }, consecutiveFailures: 1 });
  });
  it('an aborted run changes nothing', () => {
    expect(afterRun(prev, new Date(T0), { ok: false, bytes: 0, seconds: 2, error: { code: 'ABORTED', message: 'x' } })).toBe(prev);
  });
});
