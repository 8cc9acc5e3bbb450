// Alert channels against real receivers on 127.0.0.1: an SMTP server (smtp-server; plain, STARTTLS
// with AUTH, implicit TLS), an HTTP receiver for the webhook and the ping URLs, and an exec hook
// script. Every event type arrives through e-mail, webhook and exec with its fields; `notify test`
// reports each channel and exits 0, 1 (a channel failed) or 2 (none configured).
import { writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { EVENTS, emailSubject, type AlertEvent, type ConditionEvent, type EventName, type OneOffEvent } from '../../src/daemon/alert-event.js';
import { EmailChannel } from '../../src/daemon/alert-channels.js';
import { AlertEngine } from '../../src/daemon/alerts.js';
import { run, show, tempDir, type TempDir } from '../helpers/cli.js';
import { makeExecHook, startHttpReceiver, startSmtpReceiver, type ExecHook, type HttpReceiver, type SmtpReceiver } from '../servers/alert-receivers.js';

let t: TempDir;
let smtp: SmtpReceiver;
let http: HttpReceiver;
let hook: ExecHook;

beforeAll(async () => {
  t = await tempDir('alert-channels');
  smtp = await startSmtpReceiver();
  http = await startHttpReceiver();
  hook = await makeExecHook(t.path);
});
afterAll(async () => {
  await smtp?.stop();
  await http?.stop();
  await t?.remove();
});

const UNIT = { job: 'vms', volume: 'vg0/vm1' };
const POOL = { pool: 'vg0/pool0' };

/** What each event is sent with: its subject and measured values. */
function caseOf(event: EventName): { subject: { job?: string; volume?: string; pool?: string }; values: Record<string, number | string | null> } {
  const fam = (EVENTS[event] as { family?: string }).family;
  if (fam === 'run') return { subject: UNIT, values: { code: event === 'chain_broken' ? 'MISSING_ARCHIVE' : event === 'verify_mismatch' ? 'REPLICA_MISMATCH' : 'SSH_CONNECT', attempts: 5 } };
  if (fam === 'lag') return { subject: UNIT, values: { lagSeconds: 2701, warningSeconds: 900, criticalSeconds: 3000, newestPoint: null } };
  if (fam === 'pool') return { subject: POOL, values: { dataPercent: 91.5, metadataPercent: 40.25 } };
  if (fam === 'metadata_snapshot') return { subject: POOL, values: { heldSeconds: 7200 } };
  return { subject: {}, values: { pid: 1234 } };
}

describe('alert channels', () => {
  it('delivers every event type through e-mail, webhook and exec with its severity, host, subject, values and message', async () => {
    const engine = await AlertEngine.open({
      email: { to: ['ops@example.com', 'oncall@example.com'], from: 'thinarchive@backup1', smtp: `smtp://127.0.0.1:${smtp.port}` },
      webhook: { url: http.url('/hook'), timeoutMs: 5000 }, exec: hook.path, repeatAfterMs: 3_600_000,
    }, { log: silentLogger, host: 'backup1' });
    const sent: AlertEvent[] = [];
    for (const event of Object.keys(EVENTS) as EventName[]) {
      const def = EVENTS[event] as { family?: string; resolves?: true };
      const { subject, values } = caseOf(event);
      const message = `${event}: one line about ${JSON.stringify(subject)}`;
      let e: AlertEvent | undefined;
      // EVENTS lists each family's events before its resolved event: that one ends the condition the others started.
      if (def.resolves) e = engine.observe({ event: event as ConditionEvent, active: false, subject, values, message });
      else if (def.family) e = engine.observe({ event: event as ConditionEvent, active: true, subject, values, message });
      else e = engine.emit({ event: event as OneOffEvent, subject, values, message });
      expect(e, event).toBeDefined();
      expect(e!.event).toBe(event);
      sent.push(e!);
    }
    expect(await engine.flush(30_000)).toBe(true);
    await engine.close();

    const hooks = await hook.calls();
    const posted = http.json<AlertEvent>('/hook');
    for (const e of sent) {
      const expectSubject = { job: e.job, volume: e.volume, pool: e.pool };
      // Webhook: the event as JSON.
      const w = posted.find((x) => x.id === e.id);
      expect(w, e.event).toEqual(e);
      expect(w).toMatchObject({ version: 1, severity: EVENTS[e.event].severity, host: 'backup1', message: e.message, ...expectSubject });
      expect(Object.keys(w!.values).length).toBeGreaterThan(0);
      // Exec: the environment, and the same JSON on standard input.
      const h = hooks.find((x) => x.env.THINARCHIVE_ID === e.id);
      expect(h, e.event).toBeDefined();
      expect(h!.stdin).toEqual(e);
      expect(h!.env).toMatchObject({
        THINARCHIVE_EVENT: e.event, THINARCHIVE_SEVERITY: e.severity, THINARCHIVE_MESSAGE: e.message, THINARCHIVE_HOST: 'backup1',
        THINARCHIVE_STATUS: e.status, THINARCHIVE_JOB: e.job ?? '', THINARCHIVE_VOLUME: e.volume ?? '', THINARCHIVE_POOL: e.pool ?? '', THINARCHIVE_TIME: e.time,
      });
      expect(JSON.parse(h!.env.THINARCHIVE_VALUES)).toEqual(e.values);
      // E-mail: subject, headers, and the message and values in the text.
      const m = smtp.messages.find((x) => x.mail.headers.get('x-thinarchive-id') === e.id);
      expect(m, e.event).toBeDefined();
      expect(m!.to).toEqual(['ops@example.com', 'oncall@example.com']);
      expect(m!.from).toBe('thinarchive@backup1');
      expect(m!.mail.subject).toBe(emailSubject(e));
      expect(m!.mail.headers.get('x-thinarchive-event')).toBe(e.event);
      expect(m!.mail.headers.get('x-thinarchive-severity')).toBe(e.severity);
      const text = m!.mail.text!;
      expect(text.split('\n')[0]).toBe(e.message);
      for (const [k, v] of Object.entries(e.values)) expect(text).toMatch(new RegExp(`^${k}: +${String(v).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
    }
    // The subjects and values of some events, spelled out.
    const lag = posted.find((x) => x.event === 'lag_warning')!;
    expect(lag).toMatchObject({ job: 'vms', volume: 'vg0/vm1', pool: null, severity: 'warning', status: 'firing', values: { lagSeconds: 2701, warningSeconds: 900 } });
    expect(hooks.find((x) => x.env.THINARCHIVE_EVENT === 'lag_warning')!.env).toMatchObject({ THINARCHIVE_VALUE_LAG_SECONDS: '2701', THINARCHIVE_VALUE_NEWEST_POINT: '' });
    expect(posted.find((x) => x.event === 'pool_critical')).toMatchObject({ pool: 'vg0/pool0', job: null, severity: 'critical', values: { dataPercent: 91.5 } });
    expect(posted.find((x) => x.event === 'pool_ok')).toMatchObject({ severity: 'ok', status: 'resolved' });
    expect(posted.find((x) => x.event === 'daemon_started')).toMatchObject({ severity: 'info', status: 'event', job: null, volume: null, pool: null });
    expect(smtp.messages.find((x) => x.mail.headers.get('x-thinarchive-event') === 'lag_critical')!.mail.subject).toBe('[thinarchive] CRITICAL lag_critical: vms vg0/vm1 on backup1');
  });

  it('e-mail: STARTTLS with AUTH, implicit TLS (smtps://), and a refused password as a one-line failure', async () => {
    const auth = await startSmtpReceiver({ auth: { user: 'alice', pass: 's3cret' } });
    const tls = await startSmtpReceiver({ secure: true });
    try {
      const e: AlertEvent = {
        version: 1, id: 'a6c2b0a4-8d0e-4a8f-9c57-6d4a1f1e0b11', event: 'test', severity: 'info', status: 'event', reminder: false, since: null,
        time: new Date().toISOString(), host: 'backup1', job: null, volume: null, pool: null, values: {}, message: 'hello', suppressed: 0,
      };
      // The self-signed certificate of the test server: trusted through the URL's tls.* query.
      await new EmailChannel({ to: ['ops@example.com'], from: 'a@b.c', smtp: `smtp://alice:s3cret@127.0.0.1:${auth.port}/?requireTLS=true&tls.rejectUnauthorized=false` }).deliver(e);
      expect(auth.messages).toHaveLength(1);
      expect(auth.messages[0]).toMatchObject({ secure: true, user: 'alice' });
      await new EmailChannel({ to: ['ops@example.com'], from: 'a@b.c', smtp: `smtps://127.0.0.1:${tls.port}/?tls.rejectUnauthorized=false` }).deliver(e);
      expect(tls.messages).toHaveLength(1);
      expect(tls.messages[0].secure).toBe(true);
      // Unverified certificate (no tls.rejectUnauthorized=false): refused.
      await expect(new EmailChannel({ to: ['ops@example.com'], from: 'a@b.c', smtp: `smtps://127.0.0.1:${tls.port}` }).deliver(e)).rejects.toThrow(/certificate/i);
      const bad = new EmailChannel({ to: ['ops@example.com'], from: 'a@b.c', smtp: `smtp://alice:wrong@127.0.0.1:${auth.port}/?requireTLS=true&tls.rejectUnauthorized=false` });
      expect(bad.label).toBe(`email to ops@example.com via smtp://alice:***@127.0.0.1:${auth.port}/?requireTLS=true&tls.rejectUnauthorized=false`);
      const err = await bad.deliver(e).then(() => undefined, (x: Error) => x);
      expect(err?.message).toMatch(/^EAUTH: .*535/);
      expect(err?.message).not.toContain('\n');
      expect(auth.messages).toHaveLength(1);
    } finally {
      await auth.stop();
      await tls.stop();
    }
  });

  it('notify test: every channel once (pings: start and success), exit 0; a channel down: exit 1 naming it; none configured: exit 2', async () => {
    const cfg = t.join('thinarchive.yml');
    const body = (alerts: string) => `state_dir: ${t.join('state')}
${alerts}jobs:
  - name: vms
    volumes: [{image: /srv/a.img}]
    every: 1h
    to: ${t.join('store')}
`;
    await writeFile(cfg, body(`alerts:
  email: { to: ops@example.com, from: thinarchive@backup1, smtp: "smtp://127.0.0.1:${smtp.port}" }
  webhook: { url: "${http.url('/notify')}", timeout: 5s }
  exec: ${hook.path}
  ping: { start: "${http.url('/ping/start')}", success: "${http.url('/ping/success')}", fail: "${http.url('/ping/fail')}" }
  repeat_after: 1h
`));
    const mails = smtp.messages.length;
    const calls = (await hook.calls()).length;
    const ok = await run(['notify', 'test', '--config', cfg]);
    expect(ok.code, show(ok)).toBe(0);
    expect(ok.stdout.trim().split('\n')).toEqual([
      `email to ops@example.com via smtp://127.0.0.1:${smtp.port}: ok`,
      `webhook ${http.url('/notify')}: ok`,
      `exec ${hook.path}: ok`,
      `ping start ${http.url('/ping/start')}, success ${http.url('/ping/success')}, fail ${http.url('/ping/fail')}: ok (pinged start, success)`,
    ]);
    const [test] = http.json<AlertEvent>('/notify');
    expect(test).toMatchObject({ event: 'test', severity: 'info', status: 'event' });
    expect(test.message).toMatch(/^test alert from thinarchive on \S+ \(thinarchive notify test\)$/);
    expect(smtp.messages.length).toBe(mails + 1);
    expect(smtp.messages.at(-1)!.mail.headers.get('x-thinarchive-event')).toBe('test');
    expect((await hook.calls()).length).toBe(calls + 1);
    expect(http.requests.filter((q) => q.path.startsWith('/ping/')).map((q) => [q.path, q.body])).toEqual([
      ['/ping/start', test.message], ['/ping/success', test.message],
    ]);

    // The SMTP server down: exit 1, the e-mail line says why, the others still went.
    await smtp.stop();
    try {
      const down = await run(['notify', 'test', '--config', cfg, '--json']);
      expect(down.code, show(down)).toBe(1);
      const r = JSON.parse(down.stdout) as { ok: boolean; channels: { channel: string; ok: boolean; error?: string }[] };
      expect(r.ok).toBe(false);
      expect(r.channels.map((c) => [c.channel, c.ok])).toEqual([['email', false], ['webhook', true], ['exec', true], ['ping', true]]);
      expect(r.channels[0].error).toMatch(/ECONNREFUSED/);
      const human = await run(['notify', 'test', '--config', cfg]);
      expect(human.code).toBe(1);
      expect(human.stdout).toMatch(new RegExp(`^email to ops@example.com via smtp://127.0.0.1:${smtp.port}: FAILED: .*ECONNREFUSED`, 'm'));
    } finally {
      await smtp.start();
    }

    // No channel: exit 2, one line.
    await writeFile(cfg, body(''));
    const none = await run(['notify', 'test', '--config', cfg]);
    expect(none.code, show(none)).toBe(2);
    expect(none.stderr).toBe(`thinarchive: ${cfg}: no alert channel configured (alerts.email, alerts.webhook, alerts.exec or alerts.ping)\n`);

    // A bad alerts section: the config's own errors, with lines.
    await writeFile(cfg, body(`alerts:
  email: { to: ops@example.com, from: a@b, smtp: "http://mail:25" }
  webhook: { url: "ftp://x", timeout: soon }
  exec: relative/hook
  pager: yes
`));
    const bad = await run(['config', 'check', '--config', cfg]);
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim().split('\n')).toEqual([
      `${cfg}:3: alerts.email.smtp: not an smtp:// or smtps:// URL (smtp://[user:pass@]host[:port])`,
      `${cfg}:4: alerts.webhook.url: not an http:// or https:// URL`,
      `${cfg}:4: alerts.webhook.timeout: not a duration (examples: 30s, 5m, 1h, 1d)`,
      `${cfg}:5: alerts.exec: not an absolute path`,
      `${cfg}:6: unknown key "pager" in alerts`,
    ]);
    const notify = await run(['notify', 'test', '--config', cfg]);
    expect(notify.code).toBe(2);
    expect(notify.stderr).toMatch(/^thinarchive: .*line 3: alerts\.email\.smtp: not an smtp:\/\//);
  });
});
