import { describe, expect, it } from 'vitest';
import { AbortedError, ThinarchiveError, UnsafeError, UsageError } from '../api/index.js';
import { backoffMs, isPermanent } from './runner.js';
import { unitStatus } from './daemon.js';
import { emptyUnit } from './state.js';

describe('daemon runs: retries and status', () => {
  it('usage, verify and unsafe errors (and aborts) are permanent; runtime errors and unknown ones are retried', () => {
    expect(isPermanent(new UsageError('x'))).toBe(true);
    expect(isPermanent(new UnsafeError('CHAIN_FORK', 'x'))).toBe(true);
    expect(isPermanent(new ThinarchiveError('BROKEN_LINK', 'x', 'verify'))).toBe(true);
    expect(isPermanent(new AbortedError())).toBe(true);
    expect(isPermanent(new ThinarchiveError('SSH_CONNECT', 'x'))).toBe(false);
    expect(isPermanent(new ThinarchiveError('SEND_IN_PROGRESS', 'x'))).toBe(false);
    // a removed volume: retrying within the run cannot help (the next scheduled run tries again)
    expect(isPermanent(new ThinarchiveError('LV_NOT_FOUND', 'x'))).toBe(true);
    expect(isPermanent(new Error('socket hang up'))).toBe(false);
  });

  it('backoff is exponential, capped, with jitter in [half, full] of the step', () => {
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => backoffMs(n, 1000, 30_000, () => 1))).toEqual([1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]);
    expect([1, 2, 3].map((n) => backoffMs(n, 1000, 30_000, () => 0))).toEqual([500, 1000, 2000]);
    for (let i = 0; i < 100; i++) {
      const v = backoffMs(4, 1000, 30_000);
      expect(v).toBeGreaterThanOrEqual(4000);
      expect(v).toBeLessThanOrEqual(8000);
    }
  });

  it('status of a unit: failing when the last error is newer than the last success; lag from the newest point (injected clock)', () => {
    const now = Date.parse('2026-05-01T12:00:00Z');
    const u = { ...emptyUnit('j', 'vg0/a'), lastSuccess: '2026-05-01T11:00:00.000Z', newestPoint: '2026-05-01T10:59:30.000Z', lastError: { code: 'SSH_CONNECT', message: 'x', at: '2026-05-01T11:30:00.000Z' } };
    const s = unitStatus(u, now, { running: false, next: now + 5000, skipped: 2, runs: 9 });
    expect(s).toMatchObject({ state: 'failing', lagSeconds: 3630, nextRun: '2026-05-01T12:00:05.000Z', skippedRuns: 2, runs: 9 });
    expect(unitStatus({ ...u, lastError: { ...u.lastError, at: '2026-05-01T10:00:00.000Z' } }, now).state).toBe('ok');
    expect(unitStatus(emptyUnit('j', 'vg0/a'), now).state).toBe('never-run');
  });

});
