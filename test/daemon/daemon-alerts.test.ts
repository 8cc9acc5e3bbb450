// The real daemon's alerts, end to end: an image job every second into an ssh:// store (a private
// sshd, reached through a TCP relay in this test that can be cut and restored), alerts to a real SMTP
// server and a webhook receiver, pings to the same receiver.
// - The SMTP server down at start: backups go on, and daemon_started arrives by e-mail once it is back.
// - The destination cut: one run_failed (job and volume, the error code) over many failed runs,
//   e-mailed too; lag_warning; fail pings. A restart of the daemon meanwhile alerts nothing again.
// - The destination back: run_recovered, lag_ok, a success ping; metrics count the alerts; SIGTERM
//   sends daemon_stopped before the process exits.
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { AlertEvent } from '../../src/daemon/alert-event.js';
import { collect, runOk, show, sleep, spawnCli, tempDir, waitFor, type RunResult, type TempDir } from '../helpers/cli.js';
import { freePort } from '../helpers/host.js';
import { startHttpReceiver, startSmtpReceiver, type HttpReceiver, type SmtpReceiver } from '../servers/alert-receivers.js';
import { ciSet, sshdAvailable, startSshd, type Sshd } from '../servers/sshd.js';
import type { StatusReport as Status, UnitStatus as Unit } from '../../src/daemon/daemon.js';

const avail = sshdAvailable();
if (!avail.ok && ciSet()) throw new Error(`sshd is not available under CI: ${avail.reason}`);

/** A TCP relay on 127.0.0.1:port to `target`; `cut()` closes it and every connection through it (refused), `restore()` listens again. */
async function relay(port: number, target: number): Promise<{ cut: () => Promise<void>; restore: () => Promise<void> }> {
  let server: Server | undefined;
  const conns = new Set<Socket>();
  const restore = async (): Promise<void> => {
    server = createServer((c) => {
      const up = connect(target, '127.0.0.1');
      for (const s of [c, up]) {
        conns.add(s);
        s.on('close', () => conns.delete(s));
        s.on('error', () => { c.destroy(); up.destroy(); });
      }
      c.pipe(up).pipe(c);
    });
    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen(port, '127.0.0.1', () => resolve());
    });
  };
  const cut = async (): Promise<void> => {
    const s = server;
    server = undefined;
    for (const c of conns) c.destroy();
    await new Promise<void>((resolve) => (s ? s.close(() => resolve()) : resolve()));
  };
  await restore();
  return { cut, restore };
}


describe.skipIf(!avail.ok)('daemon alerts', () => {
  let t: TempDir;
  let sshd: Sshd | undefined;
  let smtp: SmtpReceiver | undefined;
  let http: HttpReceiver | undefined;
  let daemon: ReturnType<typeof spawnCli> | undefined;
  afterAll(async () => {
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
    await sleep(200);
    await smtp?.stop();
    await http?.stop();
    await sshd?.stop();
    await t?.remove();
  });

  it('run_failed once for an unreachable destination, run_recovered when it is back; a dead SMTP server delays only its own e-mail', async () => {
    t = await tempDir('daemon-alerts');
    sshd = await startSshd();
    smtp = await startSmtpReceiver();
    http = await startHttpReceiver();
    const relayPort = await freePort();
    const link = await relay(relayPort, sshd.port);
    const image = t.join('a.img');
    await writeFile(image, randomBytes(1 << 20));
    const metricsPort = await freePort();
    const cfg = t.join('thinarchive.yml');
    const store = `ssh://${sshd.user}@127.0.0.1:${relayPort}${t.join('remote-store')}`;
    await writeFile(cfg, `state_dir: ${t.join('state')}
metrics: { listen: "127.0.0.1:${metricsPort}" }
ssh_options: [IdentityFile=${sshd.key}, IdentitiesOnly=yes, BatchMode=yes, UserKnownHostsFile=/dev/null, StrictHostKeyChecking=no, LogLevel=ERROR, ConnectTimeout=5]
alerts:
  email: { to: ops@example.com, from: thinarchive@backup1, smtp: "smtp://127.0.0.1:${smtp.port}" }
  webhook: { url: "${http.url('/hook')}", timeout: 5s }
  ping: { start: "${http.url('/ping/start')}", success: "${http.url('/ping/success')}", fail: "${http.url('/ping/fail')}" }
  repeat_after: 1h
jobs:
  - name: remote
    volumes: [{image: ${image}}]
    every: 1s
    to: ${store}
    retry: { attempts: 1 }
    lag_warning: 12s
    lag_critical: 1h
`);
    await runOk(['config', 'check', '--config', cfg]);
    const hooks = (): AlertEvent[] => http!.json<AlertEvent>('/hook');
    const of = (event: string): AlertEvent[] => hooks().filter((e) => e.event === event);
    const unit = async (): Promise<Unit | undefined> => {
      const r = await runOk(['status', '--config', cfg, '--json']).catch(() => undefined);
      const s = r && (JSON.parse(r.stdout) as Status);
      return s?.source === 'daemon' ? s.units[0] : undefined;
    };
    const start = (): Promise<RunResult> => {
      daemon = spawnCli(['daemon', '--config', cfg]);
      return collect(daemon, 300_000);
    };

    // 1. The SMTP server is down when the daemon starts: the backups run on schedule regardless.
    await smtp.stop();
    let done = start();
    await waitFor(() => of('daemon_started').length === 1, 30_000);
    const running = await waitFor(async () => { const u = await unit(); return u && (u.runs ?? 0) >= 3 && u.lastSuccess ? u : undefined; }, 60_000, 100);
    expect(running.consecutiveFailures).toBe(0);
    expect(smtp.messages).toEqual([]);
    expect(http.requests.filter((q) => q.path === '/ping/success').length).toBeGreaterThanOrEqual(3);
    expect(http.requests.find((q) => q.path === '/ping/start')!.body).toBe(`remote ${image}`);
    expect(http.requests.find((q) => q.path === '/ping/success')!.body).toBe('1 volume ok');
    // Back: the queued e-mail is delivered (retries every 2, 4, 8 ... s).
    await smtp.start();
    // (The retry interval doubled while the server was down: on a loaded machine the phase above takes
    // a minute and more, so the next attempt may come that long after the server is back.)
    const startedMail = await waitFor(() => smtp!.messages.find((m) => m.mail.headers.get('x-thinarchive-event') === 'daemon_started'), 150_000, 100);
    expect(startedMail.mail.subject).toMatch(/^\[thinarchive\] INFO daemon_started: /);

    // 2. The destination becomes unreachable: one run_failed however many runs fail.
    // (The lag threshold must exceed a healthy run: on the loaded 2-core CI machine a run over ssh took
    // more than 4 s, so lag_ok never came after the outage. On a loaded machine lag_warning and
    // lag_ok can come before the cut. What is asserted from here on is what comes after it.)
    const lagEvents = (): AlertEvent[] => hooks().filter((e) => e.event.startsWith('lag_'));
    const lastLag = (): AlertEvent | undefined => lagEvents().at(-1);
    const atCut = hooks().length;
    const lagActiveAtCut = lastLag()?.status === 'firing';
    await link.cut();
    const [failed] = await waitFor(() => (of('run_failed').length ? of('run_failed') : undefined), 30_000, 100);
    expect(failed).toMatchObject({
      event: 'run_failed', severity: 'warning', status: 'firing', reminder: false, job: 'remote', volume: image, pool: null,
      values: { code: 'SSH_CONNECT', exitClass: 'runtime', attempts: 1, consecutiveFailures: 1 },
    });
    expect(failed.message).toMatch(new RegExp(`^remote ${image.replace(/[.]/g, '\\.')}: run failed after 1 attempt: SSH_CONNECT: `));
    await waitFor(async () => ((await unit())?.consecutiveFailures ?? 0) >= 4, 60_000, 100);
    const lag = await waitFor(() => (lastLag()?.event === 'lag_warning' ? lastLag() : undefined), 30_000, 100);
    expect(lag).toMatchObject({ job: 'remote', volume: image, severity: 'warning', values: { warningSeconds: 12, criticalSeconds: 3600 } });
    expect(lag.values.lagSeconds).toBeGreaterThanOrEqual(12);
    const mail = await waitFor(() => smtp!.messages.find((m) => m.mail.headers.get('x-thinarchive-event') === 'run_failed'), 30_000, 100);
    expect(mail.mail.subject).toBe(`[thinarchive] WARNING run_failed: remote ${image} on ${failed.host}`);
    expect(mail.mail.text).toContain('code:');
    await waitFor(() => http!.requests.some((q) => q.path === '/ping/fail' && q.body.startsWith(`1 of 1 failing: remote ${image}: SSH_CONNECT`)), 10_000, 100);

    // 3. A restart during the outage: the conditions are remembered, nothing is alerted again.
    const lagsBefore = lagEvents().length;
    daemon!.kill('SIGTERM');
    expect((await done).code).toBe(0);
    expect(of('daemon_stopped')).toHaveLength(1);
    done = start();
    await waitFor(() => of('daemon_started').length === 2, 30_000);
    const before = (await waitFor(unit, 30_000, 100)).consecutiveFailures;
    await waitFor(async () => ((await unit())?.consecutiveFailures ?? 0) >= before + 3, 60_000, 100);
    expect(of('run_failed')).toHaveLength(1);
    expect(lagEvents()).toHaveLength(lagsBefore);

    // 4. The destination is back: one run_recovered and one lag_ok, then success pings.
    const failedRuns = (await unit())!.consecutiveFailures;
    await link.restore();
    const recovered = await waitFor(() => of('run_recovered')[0], 60_000, 100);
    expect(recovered).toMatchObject({ severity: 'ok', status: 'resolved', job: 'remote', volume: image, since: failed.since });
    expect(recovered.values.failedRuns).toBeGreaterThanOrEqual(failedRuns);
    const lagOk = await waitFor(() => lagEvents().slice(lagsBefore).find((e) => e.event === 'lag_ok'), 30_000, 100);
    expect(lagOk).toMatchObject({ job: 'remote', volume: image, since: lag.since });
    const pingsAfter = http.requests.length;
    await waitFor(() => http!.requests.slice(pingsAfter).some((q) => q.path === '/ping/success'), 30_000, 100);
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    // (A run slower than the lag threshold on a loaded machine makes lag_warning and lag_ok again after
    // the recovery: one lag_ok at least.)
    expect(metrics).toMatch(/^thinarchive_alerts_total\{event="run_recovered"\} 1$/m);
    expect(metrics).toMatch(/^thinarchive_alerts_total\{event="lag_ok"\} [1-9]\d*$/m);
    expect(metrics).toMatch(/^thinarchive_alerts_total\{event="daemon_started"\} 1$/m);
    expect(metrics).not.toMatch(/thinarchive_alerts_total\{event="run_failed"\}/);

    // 5. SIGTERM: daemon_stopped is delivered before the process ends; nothing is left to deliver.
    daemon!.kill('SIGTERM');
    const r = await done;
    expect(r.code, show(r)).toBe(0);
    expect(of('daemon_stopped')).toHaveLength(2);
    const afterCut = hooks().slice(atCut).map((e) => e.event).filter((e) => e !== 'daemon_started' && e !== 'daemon_stopped');
    expect(afterCut.filter((e) => !e.startsWith('lag_'))).toEqual(['run_failed', 'run_recovered']);
    // the outage's lag_warning (unless one was firing at the cut), its lag_ok after the recovery; then, if
    // a run was slower than the threshold, warning and ok alternate
    const lagAfterCut = afterCut.filter((e) => e.startsWith('lag_'));
    expect(lagAfterCut.slice(0, lagActiveAtCut ? 1 : 2)).toEqual(lagActiveAtCut ? ['lag_ok'] : ['lag_warning', 'lag_ok']);
    lagAfterCut.forEach((e, i) => expect(e, lagAfterCut.join(' ')).toBe(i % 2 === (lagActiveAtCut ? 0 : 1) ? 'lag_ok' : 'lag_warning'));
    expect(hooks().slice(0, atCut).every((e) => e.event !== 'run_failed')).toBe(true);
    // The state file holds what was alerted and not resolved: nothing, unless the last lag event was a
    // lag_warning (a slow run after the recovery, on a loaded machine), which then holds; nothing undelivered.
    const state = JSON.parse(await readFile(join(t.join('state'), 'alerts-state.json'), 'utf8')) as { conditions: { event: string; family: string; subject: unknown }[] };
    expect(state).toMatchObject({ version: 1, pending: [] });
    const lagHolds = lagAfterCut.at(-1) === 'lag_warning';
    expect(state.conditions.map((c) => c.event)).toEqual(lagHolds ? ['lag_warning'] : []);
    if (lagHolds) expect(state.conditions[0]).toMatchObject({ family: 'lag', subject: { job: 'remote', volume: image } });
  }, 600_000);
});
