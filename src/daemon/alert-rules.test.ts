// What the daemon alerts on, from run outcomes and unit states: the failure's code picks run_failed,
// verify_mismatch or chain_broken; success resolves it; an aborted run is silent; lag against the
// job's thresholds; and the pings (a real HTTP receiver for the ping URLs).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../log.js';
import { startHttpReceiver, type HttpReceiver } from '../../test/servers/alert-receivers.js';
import type { AlertEvent } from './alert-event.js';
import { CHAIN_BROKEN_CODES, DaemonAlerts, failureEvent } from './alert-rules.js';
import { AlertEngine } from './alerts.js';
import type { JobConfig } from './config.js';
import type { RunOutcome } from './runner.js';
import type { PoolCondition } from '../api/index.js';
import { emptyUnit, type ScheduledVerify, type UnitState } from './state.js';

let http: HttpReceiver;
beforeAll(async () => { http = await startHttpReceiver(); });
afterAll(async () => { await http.stop(); });

const T0 = Date.parse('2026-05-01T12:00:00Z');
const job = { name: 'vms', every: 60_000, lagWarningMs: 180_000, lagCriticalMs: 600_000 } as JobConfig;

function failed(code: string, exitClass = 'runtime'): RunOutcome {
  return { ok: false, error: { code, message: `${code} happened`, exitClass }, bytes: 0, seconds: 1, attempts: 3 };
}
const succeeded: RunOutcome = { ok: true, bytes: 4096, seconds: 2.5, attempts: 1 };

describe('daemon alert rules', () => {
  it('maps error codes to events', () => {
    expect(failureEvent('REPLICA_MISMATCH')).toBe('verify_mismatch');
    for (const c of ['MISSING_ARCHIVE', 'BROKEN_LINK', 'CHAIN_BROKEN', 'CHAIN_FORK', 'PARENT_NOT_IN_STORE']) expect(failureEvent(c)).toBe('chain_broken');
    for (const c of ['SSH_CONNECT', 'IO_ENOENT', 'S3_ECONNREFUSED', 'POOL_DATA_FULL', 'INTERNAL']) expect(failureEvent(c)).toBe('run_failed');
    expect(CHAIN_BROKEN_CODES.has('REPLICA_MISMATCH')).toBe(false);
  });

  it('scheduled verification: its own condition beside the runs; store findings are chain_broken, a replica mismatch verify_mismatch; a check not done changes nothing', async () => {
    const made: AlertEvent[] = [];
    const engine = await AlertEngine.open(undefined, { log: silentLogger, host: 'backup1', onAlert: (e) => made.push(e) });
    const rules = new DaemonAlerts(engine);
    const base: ScheduledVerify = { at: '2026-05-01T12:00:00.000Z', ok: true, mode: 'full', samplePercent: null, store: { ok: true, archives: 3, findings: 0, bytesRead: 1, recordsChecked: null, dataRecords: null, firstFinding: null }, replica: { ok: true, target: '/r.img', blocksChecked: 64, mismatchedBlocks: 0, stateOk: true }, error: null };
    const prev = emptyUnit('vms', 'vg0/vm1');
    rules.verifyOutcome('vms', 'vg0/vm1', { ...base, ok: false, replica: { ...base.replica!, ok: false, mismatchedBlocks: 2 } });
    rules.runOutcome('vms', 'vg0/vm1', prev, { ...prev, consecutiveFailures: 1 }, failed('SSH_CONNECT'));
    rules.runOutcome('vms', 'vg0/vm1', { ...prev, consecutiveFailures: 1 }, prev, succeeded);
    rules.verifyOutcome('vms', 'vg0/vm1', { ...base, ok: false, store: null, replica: null, error: { code: 'SSH_CONNECT', message: 'x' } });
    rules.verifyOutcome('vms', 'vg0/vm1', { ...base, ok: false, store: { ...base.store!, ok: false, findings: 1, firstFinding: 'MISSING_ARCHIVE: sequence 1 is missing' } });
    rules.verifyOutcome('vms', 'vg0/vm1', base);
    expect(made.map((e) => e.event)).toEqual(['verify_mismatch', 'run_failed', 'run_recovered', 'chain_broken', 'run_recovered']);
    expect(made[0]).toMatchObject({ values: { replica: '/r.img', mismatchedBlocks: 2 }, message: 'vms vg0/vm1: scheduled verification (full): replica /r.img differs from the chain (2 blocks)' });
    expect(made[3].since).toBe(made[0].since);
    expect(made[3].message).toBe('vms vg0/vm1: scheduled verification (full) found 1 problem in the chain in the store: MISSING_ARCHIVE: sequence 1 is missing');
    expect(made[4]).toMatchObject({ status: 'resolved', since: made[0].since, message: 'vms vg0/vm1: scheduled verification (full) passes again' });
    await engine.close();
  });

  it('run outcomes, lag and pings', async () => {
    let now = T0;
    const made: AlertEvent[] = [];
    const engine = await AlertEngine.open({ ping: { start: http.url('/start'), success: http.url('/ok'), fail: http.url('/fail') }, repeatAfterMs: 3_600_000 }, {
      log: silentLogger, now: () => now, host: 'backup1', onAlert: (e) => made.push(e),
    });
    const rules = new DaemonAlerts(engine, () => now);
    const prev = emptyUnit('vms', 'vg0/vm1');
    const other: UnitState = { ...emptyUnit('vms', 'vg0/vm2'), lastSuccess: '2026-05-01T11:59:00.000Z' };
    const failing = (code: string, n: number): UnitState => ({ ...prev, lastError: { code, message: 'x', at: new Date(now).toISOString() }, consecutiveFailures: n });

    rules.runStarted('vms', 'vg0/vm1');
    rules.afterRun('vms', 'vg0/vm1', prev, failing('REPLICA_MISMATCH', 1), failed('REPLICA_MISMATCH', 'verify'), [failing('REPLICA_MISMATCH', 1), other]);
    rules.afterRun('vms', 'vg0/vm1', prev, failing('REPLICA_MISMATCH', 2), failed('REPLICA_MISMATCH', 'verify'), [failing('REPLICA_MISMATCH', 2), other]);
    rules.afterRun('vms', 'vg0/vm1', prev, failing('MISSING_ARCHIVE', 3), failed('MISSING_ARCHIVE', 'verify'), [failing('MISSING_ARCHIVE', 3), other]);
    rules.afterRun('vms', 'vg0/vm1', prev, prev, failed('ABORTED', 'interrupted'), [prev, other]);
    const ok: UnitState = { ...failing('MISSING_ARCHIVE', 0), lastSuccess: new Date(now + 1).toISOString() };
    rules.afterRun('vms', 'vg0/vm1', failing('MISSING_ARCHIVE', 3), ok, succeeded, [ok, other]);
    expect(made.map((e) => [e.event, e.severity, e.job, e.volume])).toEqual([
      ['verify_mismatch', 'critical', 'vms', 'vg0/vm1'], ['chain_broken', 'critical', 'vms', 'vg0/vm1'], ['run_recovered', 'ok', 'vms', 'vg0/vm1'],
    ]);
    expect(made[0].values).toEqual({ code: 'REPLICA_MISMATCH', exitClass: 'verify', attempts: 3, consecutiveFailures: 1 });
    expect(made[0].message).toBe('vms vg0/vm1: the replica differs from the chain: REPLICA_MISMATCH: REPLICA_MISMATCH happened');
    expect(made[1].message).toBe('vms vg0/vm1: the chain does not continue: MISSING_ARCHIVE: MISSING_ARCHIVE happened');
    expect(made[2]).toMatchObject({ values: { failedRuns: 3, bytes: 4096, seconds: 2.5 }, message: 'vms vg0/vm1: runs succeed again after 3 failed runs' });

    // Lag: a point 2 min old is fine, 3 min a warning, 10 min critical; a unit without a point counts from its start.
    made.length = 0;
    const at = (minutesOld: number): UnitState => ({ ...prev, newestPoint: new Date(now - minutesOld * 60_000).toISOString() });
    rules.lag([{ job, volume: 'vg0/vm1', state: at(2), since: T0 }]);
    rules.lag([{ job, volume: 'vg0/vm1', state: at(3), since: T0 }]);
    rules.lag([{ job, volume: 'vg0/vm1', state: at(4), since: T0 }]);
    rules.lag([{ job, volume: 'vg0/vm1', state: at(10), since: T0 }]);
    rules.lag([{ job, volume: 'vg0/vm1', state: at(0.5), since: T0 }]);
    now = T0 + 200_000;
    rules.lag([{ job, volume: 'vg0/vm3', state: undefined, since: T0 }]);
    expect(made.map((e) => [e.event, e.volume, e.values.lagSeconds])).toEqual([
      ['lag_warning', 'vg0/vm1', 180], ['lag_critical', 'vg0/vm1', 600], ['lag_ok', 'vg0/vm1', 30], ['lag_warning', 'vg0/vm3', 200],
    ]);
    expect(made[0].message).toBe('vms vg0/vm1: newest point is 3m old (warning at 3m)');
    expect(made[1]).toMatchObject({ severity: 'critical', message: 'vms vg0/vm1: newest point is 10m old (critical at 10m)', values: { warningSeconds: 180, criticalSeconds: 600 } });
    expect(made[3].message).toBe('vms vg0/vm3: no point yet after 3m (warning at 3m)');

    expect(await engine.flush(10_000)).toBe(true);
    await engine.close();
    expect(http.requests.map((q) => [q.path, q.body])).toEqual([
      ['/start', 'vms vg0/vm1'],
      ['/fail', '1 of 2 failing: vms vg0/vm1: REPLICA_MISMATCH'],
      ['/fail', '1 of 2 failing: vms vg0/vm1: REPLICA_MISMATCH'],
      ['/fail', '1 of 2 failing: vms vg0/vm1: MISSING_ARCHIVE'],
      ['/ok', '2 volumes ok'],
    ]);
    expect(http.requests[0].headers['content-type']).toBe('text/plain; charset=utf-8');
  });

  it('pool conditions: one warning, escalation to critical, one pool_ok; a stuck metadata snapshot is its own condition; UNKNOWN changes nothing', async () => {
    let now = T0;
    const made: AlertEvent[] = [];
    const engine = await AlertEngine.open({ repeatAfterMs: 3_600_000 }, { log: silentLogger, now: () => now, host: 'backup1', onAlert: (e) => made.push(e) });
    const rules = new DaemonAlerts(engine, () => now);
    const values = { dataPercent: 85, metadataPercent: 10, pinnedBytes: 0, secondsToFull: null };
    const cond = (state: 'OK' | 'WARNING' | 'CRITICAL' | 'UNKNOWN', problems: PoolCondition['problems'], data = 85): PoolCondition => ({
      pool: 'vg0/pool', state, values: { ...values, dataPercent: data }, problems, message: `vg0/pool ${state}`,
    });
    const warn = { state: 'WARNING' as const, message: 'data 85.00% > 80% (warning)' };
    for (let i = 0; i < 10; i++) {
      rules.pools([cond('WARNING', [warn])]);
      now += 60_000;
    }
    rules.pools([cond('UNKNOWN', [], 0)]);
    rules.pools([cond('CRITICAL', [{ state: 'CRITICAL', message: 'data 93.00% > 90% (critical)' }], 93)]);
    rules.pools([cond('WARNING', [{ state: 'WARNING', message: 'a metadata snapshot (root 12) has been held by another program for 20m', heldMetadataSnapshot: true }], 50)]);
    rules.pools([cond('OK', [], 50)]);
    expect(made.map((e) => [e.event, e.pool])).toEqual([
      ['pool_warning', 'vg0/pool'], ['pool_critical', 'vg0/pool'], ['pool_ok', 'vg0/pool'], ['metadata_snapshot_stuck', 'vg0/pool'], ['metadata_snapshot_released', 'vg0/pool'],
    ]);
    expect(made[0]).toMatchObject({ severity: 'warning', message: 'pool vg0/pool: data 85.00% > 80% (warning)', values: { dataPercent: 85 } });
    expect(made[1]).toMatchObject({ severity: 'critical', values: { dataPercent: 93 } });
  });
});
