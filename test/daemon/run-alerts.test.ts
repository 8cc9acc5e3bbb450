// `thinarchive run JOB` (cron, systemd timers) sends the daemon's run alerts and pings, through real
// receivers (an HTTP receiver for the webhook and the ping URLs, an exec hook), with the same
// alerts-state.json rate limiting: two failing runs give one run_failed (and a start and a fail ping
// each); with the webhook and ping receiver down, the run that recovers still exits 0, the exec hook
// gets run_recovered, the rest stays in alerts-state.json; the next run, with the receiver back,
// delivers it and leaves nothing pending.
import { randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { AlertEvent } from '../../src/daemon/alert-event.js';
import { run, show, tempDir, type TempDir } from '../helpers/cli.js';
import { makeExecHook, startHttpReceiver, type HttpReceiver } from '../servers/alert-receivers.js';

describe('thinarchive run: alerts and pings', () => {
  let t: TempDir | undefined;
  let http: HttpReceiver | undefined;
  afterAll(async () => {
    await http?.stop();
    await t?.remove();
  });

  it('one run_failed per outage over several runs, run_recovered, pings; a dead channel neither fails nor hangs run, and its alerts wait for the next run', async () => {
    t = await tempDir('run-alerts');
    http = await startHttpReceiver();
    const hook = await makeExecHook(t.path);
    const image = t.join('a.img');
    await writeFile(image, randomBytes(1 << 20));
    const store = t.join('store');
    // The store is a regular file: every send fails (the chain directory cannot be created).
    await writeFile(store, 'not a directory');
    const cfg = t.join('thinarchive.yml');
    await writeFile(cfg, `state_dir: ${t.join('state')}
alerts:
  webhook: { url: "${http.url('/hook')}", timeout: 5s }
  exec: ${hook.path}
  ping: { start: "${http.url('/ping/start')}", success: "${http.url('/ping/success')}", fail: "${http.url('/ping/fail')}" }
  repeat_after: 1h
jobs:
  - name: timer
    volumes: [{image: ${image}}]
    every: 1h
    to: ${store}
    retry: { attempts: 1 }
`);
    const hooks = (): AlertEvent[] => http!.json<AlertEvent>('/hook');
    const pings = (kind: string): string[] => http!.requests.filter((q) => q.path === `/ping/${kind}`).map((q) => q.body);
    const hookEvents = async (): Promise<string[]> => (await hook.calls()).map((c) => c.env.THINARCHIVE_EVENT).sort();
    const alertState = async (): Promise<{ conditions: { event: string }[]; pending: { channel: string; event?: AlertEvent; ping?: { kind: string } }[] }> =>
      JSON.parse(await readFile(join(t!.join('state'), 'alerts-state.json'), 'utf8'));

    // Two failing runs: one run_failed (webhook and exec hook), a start and a fail ping each.
    for (let i = 1; i <= 2; i++) {
      const r = await run(['run', 'timer', '--config', cfg]);
      expect(r.code, show(r)).toBe(1);
      expect(pings('start')).toEqual(Array.from({ length: i }, () => `timer ${image}`));
      expect(pings('fail')).toHaveLength(i);
      expect(pings('fail')[i - 1]).toMatch(new RegExp(`^1 of 1 failing: timer ${image.replace(/[.]/g, '\\.')}: IO_`));
    }
    expect(hooks()).toHaveLength(1);
    expect(hooks()[0]).toMatchObject({ event: 'run_failed', severity: 'warning', status: 'firing', job: 'timer', volume: image, values: { attempts: 1, consecutiveFailures: 1 } });
    expect(hooks()[0].values.code).toMatch(/^IO_/);
    expect(await hookEvents()).toEqual(['run_failed']);
    expect((await alertState()).conditions.map((c) => c.event)).toEqual(['run_failed']);
    expect(pings('success')).toEqual([]);

    // The webhook and ping receiver down, the store fixed: run succeeds (exit 0) after its bounded
    // wait; the exec hook has run_recovered; the webhook's alert and the success ping are kept.
    await http.stop();
    await rm(store);
    const started = Date.now();
    const ok = await run(['run', 'timer', '--config', cfg]);
    const tookMs = Date.now() - started;
    expect(ok.code, show(ok)).toBe(0);
    console.log(`run with a dead webhook and ping receiver took ${tookMs} ms (bounded wait 10 s)`);
    expect(await hookEvents()).toEqual(['run_failed', 'run_recovered']);
    const kept = await alertState();
    expect(kept.conditions).toEqual([]);
    expect(kept.pending.map((p) => `${p.channel} ${p.event?.event ?? p.ping?.kind}`).sort()).toEqual(['ping success', 'webhook run_recovered']);
    expect(kept.pending.find((p) => p.event)!.event).toMatchObject({ status: 'resolved', job: 'timer', volume: image, values: { failedRuns: 2 } });

    // Back: the next run delivers what was kept, and its own success ping; nothing is alerted again.
    await http.start();
    const again = await run(['run', 'timer', '--config', cfg]);
    expect(again.code, show(again)).toBe(0);
    expect(hooks().map((e) => e.event)).toEqual(['run_failed', 'run_recovered']);
    expect(hooks()[1]).toMatchObject({ status: 'resolved', job: 'timer', volume: image });
    expect(pings('success')).toEqual(['1 volume ok', '1 volume ok']);
    expect(pings('start')).toHaveLength(3); // the one sent while the receiver was down is not kept
    expect(await hookEvents()).toEqual(['run_failed', 'run_recovered']);
    expect(await alertState()).toMatchObject({ conditions: [], pending: [] });
  });
});
