// The alert engine against a real HTTP receiver (webhook channel) with an injected clock: rate
// limiting per condition and subject, reminders, resolved events, level changes, one-off limits, the
// state kept across a restart (no second alert, undelivered alerts delivered by the next engine),
// retries with backoff, and the bounded queue.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../log.js';
import { freePort } from '../../test/helpers/host.js';
import { startHttpReceiver, type HttpReceiver } from '../../test/servers/alert-receivers.js';
import { ALERTS_STATE_FILE, AlertEngine, type AlertEngineOptions } from './alerts.js';
import type { AlertEvent } from './alert-event.js';
import type { AlertsConfig } from './config.js';

const HOUR = 3_600_000;
let http: HttpReceiver;
let dir: string;

beforeAll(async () => {
  http = await startHttpReceiver();
  dir = await mkdtemp(join(tmpdir(), 'ta-alerts-'));
});
afterAll(async () => {
  await http.stop();
  await rm(dir, { recursive: true, force: true });
});

function config(path: string, extra: Partial<AlertsConfig> = {}): AlertsConfig {
  return { webhook: { url: http.url(path), timeoutMs: 2000 }, repeatAfterMs: HOUR, ...extra };
}

function clock(start = Date.parse('2026-05-01T12:00:00Z')): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => { t += ms; } };
}

async function engine(path: string, c: ReturnType<typeof clock>, opts: Partial<AlertEngineOptions> = {}, extra: Partial<AlertsConfig> = {}): Promise<AlertEngine> {
  return AlertEngine.open(config(path, extra), { log: silentLogger, now: c.now, host: 'backup1', delivery: { initialMs: 20, maxMs: 100 }, ...opts });
}

const lagWarning = (lagSeconds: number) => ({
  event: 'lag_warning' as const, active: true, subject: { job: 'vms', volume: 'vg0/vm1' }, values: { lagSeconds, warningSeconds: 900 }, message: `vms vg0/vm1: newest point is ${lagSeconds}s old`,
});

describe('alert engine', () => {
  it('ten repeats of one condition give one alert, a reminder only after repeat_after, and one resolved event', async () => {
    const c = clock();
    const e = await engine('/rate', c);
    const made: (AlertEvent | undefined)[] = [];
    for (let i = 0; i < 10; i++) {
      made.push(e.observe(lagWarning(1000 + i * 60)));
      c.advance(5 * 60_000); // observed at 0, 5, ..., 45 minutes
    }
    expect(made.filter((x) => x).length).toBe(1);
    // Another subject is its own condition.
    expect(e.observe({ ...lagWarning(950), subject: { job: 'vms', volume: 'vg0/vm2' } })).toBeDefined();
    c.advance(10 * 60_000 - 1); // repeat_after after the first, less 1 ms
    expect(e.observe(lagWarning(5000))).toBeUndefined();
    c.advance(1);
    const reminder = e.observe(lagWarning(5001));
    expect(reminder).toMatchObject({ event: 'lag_warning', reminder: true, status: 'firing', since: '2026-05-01T12:00:00.000Z' });
    const resolved = e.observe({ event: 'lag_ok', active: false, subject: { job: 'vms', volume: 'vg0/vm1' }, values: { lagSeconds: 3 }, message: 'vms vg0/vm1: caught up' });
    expect(resolved).toMatchObject({ event: 'lag_ok', severity: 'ok', status: 'resolved', since: '2026-05-01T12:00:00.000Z', job: 'vms', volume: 'vg0/vm1' });
    expect(e.observe({ event: 'lag_ok', active: false, subject: { job: 'vms', volume: 'vg0/vm1' }, message: 'still fine' })).toBeUndefined();
    expect(await e.flush(5000)).toBe(true);
    const got = http.json<AlertEvent>('/rate').filter((x) => x.volume === 'vg0/vm1');
    expect(got.map((x) => [x.event, x.reminder])).toEqual([['lag_warning', false], ['lag_warning', true], ['lag_ok', false]]);
    expect(got[0]).toMatchObject({
      version: 1, severity: 'warning', status: 'firing', host: 'backup1', job: 'vms', volume: 'vg0/vm1', pool: null,
      values: { lagSeconds: 1000, warningSeconds: 900 }, message: 'vms vg0/vm1: newest point is 1000s old', time: '2026-05-01T12:00:00.000Z', suppressed: 0,
    });
    expect(http.requests.find((q) => q.path === '/rate')!.headers['content-type']).toBe('application/json');
    await e.close();
  });

  it('a change of level alerts at once; a new failure kind of a run is a new alert, recovery resolves it', async () => {
    const c = clock();
    const e = await engine('/levels', c);
    const s = { job: 'vms', volume: 'vg0/vm1' };
    expect(e.observe({ event: 'lag_warning', active: true, subject: s, message: 'w' })?.event).toBe('lag_warning');
    c.advance(60_000);
    expect(e.observe({ event: 'lag_critical', active: true, subject: s, message: 'c' })).toMatchObject({ event: 'lag_critical', severity: 'critical', reminder: false, since: '2026-05-01T12:00:00.000Z' });
    expect(e.observe({ event: 'lag_critical', active: true, subject: s, message: 'c' })).toBeUndefined();
    expect(e.observe({ event: 'run_failed', active: true, subject: s, values: { code: 'SSH_CONNECT' }, message: 'f' })?.event).toBe('run_failed');
    expect(e.observe({ event: 'run_failed', active: true, subject: s, values: { code: 'SSH_CONNECT' }, message: 'f' })).toBeUndefined();
    expect(e.observe({ event: 'chain_broken', active: true, subject: s, values: { code: 'MISSING_ARCHIVE' }, message: 'b' })?.severity).toBe('critical');
    expect(e.active().map((x) => x.event).sort()).toEqual(['chain_broken', 'lag_critical']);
    expect(e.observe({ event: 'run_failed', active: false, subject: s, message: 'ok again' })).toMatchObject({ event: 'run_recovered', status: 'resolved' });
    // Pool conditions with a key: data and metadata are two conditions of one pool.
    expect(e.observe({ event: 'pool_warning', key: 'data', active: true, subject: { pool: 'vg0/pool0' }, message: 'd' })).toBeDefined();
    expect(e.observe({ event: 'pool_critical', key: 'metadata', active: true, subject: { pool: 'vg0/pool0' }, message: 'm' })).toBeDefined();
    expect(e.observe({ event: 'pool_ok', key: 'data', active: false, subject: { pool: 'vg0/pool0' }, message: 'd ok' })).toMatchObject({ event: 'pool_ok', pool: 'vg0/pool0' });
    expect(e.active().map((x) => `${x.event}/${x.key}`).sort()).toEqual(['lag_critical/', 'pool_critical/metadata']);
    expect(() => e.observe({ event: 'lag_ok', active: true, subject: s, message: 'x' })).toThrow(/resolves/);
    await e.flush(5000);
    await e.close();
  });

  it('one-off events: at most one per repeat_after per event and subject, counting those held back; lifecycle events always', async () => {
    const c = clock();
    const e = await engine('/oneoff', c);
    const s = { job: 'vms', volume: 'vg0/vm1' };
    expect(e.emit({ event: 'verify_mismatch', subject: s, message: 'm1' })).toBeDefined();
    expect(e.emit({ event: 'verify_mismatch', subject: s, message: 'm2' })).toBeUndefined();
    expect(e.emit({ event: 'verify_mismatch', subject: { ...s, volume: 'vg0/vm2' }, message: 'other volume' })).toBeDefined();
    c.advance(HOUR);
    expect(e.emit({ event: 'verify_mismatch', subject: s, message: 'm3' })).toMatchObject({ suppressed: 1, status: 'event' });
    expect(e.emit({ event: 'daemon_started', message: 'a' })).toBeDefined();
    expect(e.emit({ event: 'daemon_started', message: 'b' })).toBeDefined();
    await e.flush(5000);
    await e.close();
  });

  it('keeps its conditions across a restart: no second alert, and the end is still resolved', async () => {
    const state = join(dir, 'restart');
    const c = clock();
    const s = { job: 'remote', volume: '/srv/a.img' };
    const fail = { event: 'run_failed' as const, active: true, subject: s, values: { code: 'SSH_CONNECT' }, message: 'remote /srv/a.img: run failed' };
    const a = await engine('/restart', c, { stateDir: state });
    expect(a.observe(fail)).toBeDefined();
    await a.flush(5000);
    await a.close();
    const file = JSON.parse(await readFile(join(state, ALERTS_STATE_FILE), 'utf8'));
    expect(file).toMatchObject({ version: 1, conditions: [{ family: 'run', key: '', subject: s, event: 'run_failed', severity: 'warning', since: '2026-05-01T12:00:00.000Z', reminders: 0 }], pending: [] });
    c.advance(10 * 60_000);
    const b = await engine('/restart', c, { stateDir: state });
    for (let i = 0; i < 10; i++) expect(b.observe(fail)).toBeUndefined();
    expect(b.observe({ ...fail, event: 'run_failed', active: false, message: 'back' })).toMatchObject({ event: 'run_recovered', since: '2026-05-01T12:00:00.000Z' });
    await b.flush(5000);
    await b.close();
    expect(http.json<AlertEvent>('/restart').map((x) => x.event)).toEqual(['run_failed', 'run_recovered']);
  });

  it('retries a failing channel with backoff until it answers, and a restart delivers what was not', async () => {
    const c = clock();
    let flakyCalls = 0;
    http.respond = (q) => (q.path === '/flaky' && flakyCalls++ < 3 ? 503 : 200);
    const failures: string[] = [];
    const e = await engine('/flaky', c, { onDeliveryFailure: (ch) => failures.push(ch) });
    const t0 = Date.now();
    e.emit({ event: 'test', message: 'through a flaky receiver' });
    expect(await e.flush(10_000)).toBe(true);
    expect(failures).toEqual(['webhook', 'webhook', 'webhook']);
    // Backoff 20, 40, 80 ms before the fourth attempt.
    expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
    expect(http.json('/flaky')).toHaveLength(1);
    await e.close();
    http.respond = () => 200;

    // Undelivered at close: kept in the state file, delivered by the next engine.
    const state = join(dir, 'pending');
    const dead = await AlertEngine.open({ webhook: { url: `http://127.0.0.1:${await freePort()}/hook`, timeoutMs: 1000 }, repeatAfterMs: HOUR }, { log: silentLogger, stateDir: state, delivery: { initialMs: 60_000 } });
    dead.emit({ event: 'verify_mismatch', subject: { job: 'vms', volume: 'vg0/vm1' }, message: 'replica differs' });
    expect(await dead.flush(300)).toBe(false);
    await dead.close();
    const file = JSON.parse(await readFile(join(state, ALERTS_STATE_FILE), 'utf8'));
    expect(file.pending).toMatchObject([{ channel: 'webhook', attempts: 1, event: { event: 'verify_mismatch', message: 'replica differs' } }]);
    expect(file.pending[0].lastError).toMatch(/ECONNREFUSED/);
    const again = await AlertEngine.open({ webhook: { url: http.url('/later'), timeoutMs: 1000 }, repeatAfterMs: HOUR }, { log: silentLogger, stateDir: state });
    expect(await again.flush(5000)).toBe(true);
    await again.close();
    expect(http.json<AlertEvent>('/later')).toMatchObject([{ event: 'verify_mismatch', job: 'vms', message: 'replica differs' }]);
  });

  it('a dead channel keeps a bounded queue (the oldest dropped), and observe and emit never wait for it', async () => {
    http.respond = (q) => (q.path === '/hang' ? 0 : 200);
    const e = await AlertEngine.open({ webhook: { url: http.url('/hang'), timeoutMs: 60_000 }, repeatAfterMs: HOUR }, { log: silentLogger, delivery: { queueLimit: 3 } });
    // emit returns at once (it is synchronous): the receiver that never answers holds only its queue.
    for (let i = 0; i < 6; i++) expect(e.emit({ event: 'test', message: `t${i}` })?.message).toBe(`t${i}`);
    // The head is being delivered (it hangs); of the rest, the newest stay.
    expect(e.pending().map((p) => p.event!.message)).toEqual(['t0', 't4', 't5']);
    await e.close();
    http.respond = () => 200;
  });
});
