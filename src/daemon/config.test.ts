// Calendars (every: "30 2 * * *") are in the local time zone: pinned, so that their intervals are what they are in UTC.
process.env.TZ = 'UTC';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkConfig, checkConfigText, ConfigError, loadConfig, targetOf } from './config.js';

const GOOD = `metrics:
  listen: 127.0.0.1:9811
jobs:
  - name: vms
    volumes: [vg0/vm1, vg0/vm-*, {image: /srv/a.img}]
    every: 30s
    to: /srv/backup
    keep:
      within: 1h
      hourly: 24
      daily: 30
      monthly: 12
  - name: standby
    volumes: [vg0/vm1]
    every: 5m
    apply_to:
      host: ssh://root@standby
      target: vg1/vm1
      args: [--snapshot-target, --keep, "3"]
`;

describe('daemon config', () => {
  it('takes keys for encrypted archives by file (and recipients), and refuses relative paths and non-recipients by line', () => {
    const ok = checkConfigText(`encrypt_to: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]\nrecipients_files: [/etc/thinarchive/recipients.txt]\n`
      + `identity_files: [/root/backup.key]\n${GOOD}`);
    expect(ok.problems).toEqual([]);
    expect(ok.config!.keys).toEqual({
      encryptTo: ['age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p'], recipientsFiles: ['/etc/thinarchive/recipients.txt'], identityFiles: ['/root/backup.key'],
    });
    expect(checkConfigText(GOOD).config!.keys).toEqual({ encryptTo: [], recipientsFiles: [], identityFiles: [] });
    const bad = checkConfigText(`identity_files: [backup.key]\nencrypt_to: [AGE-SECRET-KEY-1X]\n${GOOD}`);
    expect(bad.problems.map((p) => p.line)).toEqual([1, 2]);
  });

  it('accepts the documented example and converts durations', () => {
    const r = checkConfigText(GOOD);
    expect(r.problems).toEqual([]);
    const [vms, standby] = r.config!.jobs;
    expect(vms.every).toBe(30_000);
    expect(vms.keep).toEqual({ within: 3_600_000, hourly: 24, daily: 30, monthly: 12, last: undefined, weekly: undefined, yearly: undefined });
    expect(vms.sources).toEqual([{ kind: 'volume', pattern: 'vg0/vm1' }, { kind: 'volume', pattern: 'vg0/vm-*' }, { kind: 'image', path: '/srv/a.img' }]);
    expect(standby.applyTo).toEqual({ host: 'ssh://root@standby', target: 'vg1/vm1', command: undefined, args: ['--snapshot-target', '--keep', '3'], verify: true });
    expect(r.config!.metrics).toEqual({ listen: '127.0.0.1:9811' });
    expect(r.config!.leaseTtlMs).toBe(300_000); // lease_ttl absent: 5 minutes
  });

  it('lease_ttl: a duration of at least 3 s, with its line otherwise', () => {
    expect(checkConfigText(`lease_ttl: 90s\n${GOOD}`).config!.leaseTtlMs).toBe(90_000);
    expect(checkConfigText(`lease_ttl: 2s\n${GOOD}`).problems).toEqual([{ line: 1, message: 'lease_ttl: must be at least 3s' }]);
    expect(checkConfigText(`${GOOD}lease_ttl: soon\n`).problems).toEqual([{ line: 20, message: 'lease_ttl: not a duration (examples: 30s, 5m, 1h, 1d)' }]);
  });

  it('pool_sample_every: a duration of at least 1 s (default 1 minute), with its line otherwise', () => {
    expect(checkConfigText(GOOD).config!.poolSampleMs).toBe(60_000);
    expect(checkConfigText(`pool_sample_every: 2s\n${GOOD}`).config!.poolSampleMs).toBe(2000);
    expect(checkConfigText(`pool_sample_every: 0s\n${GOOD}`).problems).toEqual([{ line: 1, message: 'pool_sample_every: must be at least 1s' }]);
    expect(checkConfigText(`pool_sample_every: often\n${GOOD}`).problems).toEqual([{ line: 1, message: 'pool_sample_every: not a duration (examples: 30s, 5m, 1h, 1d)' }]);
  });

  it('every: an interval or a calendar (cron fields or a macro); a wrong calendar is a problem on its line', () => {
    const job = (every: string): string => `jobs:\n  - name: j\n    volumes: [vg0/a]\n    every: "${every}"\n    to: /srv/b\n`;
    expect(checkConfigText(job('30s')).config!.jobs[0]).toMatchObject({ schedule: { kind: 'interval', ms: 30_000 }, every: 30_000 });
    const c = checkConfigText(job('30 2 * * *')).config!.jobs[0]!;
    expect(c).toMatchObject({ schedule: { kind: 'calendar', expr: '30 2 * * *' }, every: 86_400_000, lagWarningMs: 3 * 86_400_000 });
    expect(checkConfigText(job('@hourly')).config!.jobs[0]!.every).toBe(3_600_000);
    expect(checkConfigText(job('61 2 * * *')).problems).toEqual([{ line: 4, message: expect.stringMatching(/^jobs\[0\]\.every: "61 2 \* \* \*" is neither a duration \(30s, 5m, 1h\) nor a calendar .*: Constraint error, got value 61 expected range 0-59$/) }]);
    expect(checkConfigText(job('@often')).problems).toEqual([{ line: 4, message: expect.stringMatching(/unknown macro @often/) }]);
  });

  it('reports every problem with its line, unknown keys included', () => {
    const text = `metrics:
  listen: 127.0.0.1:9811
  port: 3
jobs:
  - name: vms
    volumes: [vg0/vm1]
    every: 30s
    to: /srv/backup
    bogus: 1
    keep:
      within: 1h
      daily: x
      montly: 12
  - name: other
    volumes: [foo, {img: /a}]
    every: 5 minutes
    to: /x
unknown_top: 1
`;
    const { problems } = checkConfigText(text);
    expect(problems).toEqual([
      { line: 3, message: 'unknown key "port" in metrics' },
      { line: 9, message: 'unknown key "bogus" in jobs[0]' },
      { line: 12, message: 'jobs[0].keep.daily: must be integer' },
      { line: 13, message: 'unknown key "montly" in jobs[0].keep' },
      { line: 15, message: 'jobs[1].volumes[0]: not VG/LV (patterns allowed: vg0/vm-*)' },
      { line: 15, message: 'jobs[1].volumes[1]: missing key "image"' },
      { line: 15, message: 'unknown key "img" in jobs[1].volumes[1]' },
      { line: 16, message: 'jobs[1].every: neither a duration (examples: 30s, 5m, 1h, 1d) nor a calendar (a cron expression such as "30 2 * * *", or @hourly, @daily, @weekly, @monthly)' },
      { line: 18, message: 'unknown key "unknown_top"' },
    ]);
  });

  it('reports semantic problems with their lines: duplicate names, no destination, zero interval, conflicting apply_to', () => {
    const text = `jobs:
  - name: a
    volumes: [vg0/a]
    every: 0s
  - name: a
    volumes: [{image: /x.img}]
    every: 1m
    to: /s
    apply_to:
      host: ssh://h
      target: /y
  - name: b
    volumes: [vg0/b]
    every: 1m
    keep: {last: 3}
    apply_to: {target: vg1/b}
`;
    const msgs = checkConfigText(text).problems.map((p) => `${p.line}: ${p.message}`);
    expect(msgs).toEqual([
      '2: jobs[0] (a): say where points go: "to" (a store) and/or "apply_to"',
      '4: jobs.0.every: must be more than 0',
      '5: job name "a" is used twice (also on line 2)',
      '6: jobs[1]: image sources need a store ("to"), not apply_to.host',
      '10: jobs[1].apply_to.host: a job sends either to a store or into a remote apply; make two jobs (each keeps its own snapshot chain)',
      '15: jobs[2].keep: retention applies to a store: add "to"',
      '16: jobs[2].apply_to: a local target (no host) is applied from the job\'s store: add "to"',
    ]);
  });

  it('alerts and lag thresholds: defaults, conversions, and their problems with lines', () => {
    const ok = checkConfigText(`alerts:
  email: { to: ops@example.com, from: thinarchive@backup1, smtp: "smtps://u:p%40ss@mail.example:465" }
  webhook: { url: "http://127.0.0.1:8080/hook" }
  exec: /usr/local/bin/on-thinarchive-event
  ping: { success: "https://hc.example/ping/x" }
${GOOD.replace('    to: /srv/backup\n', '    to: /srv/backup\n    lag_warning: 2m\n')}`);
    expect(ok.problems).toEqual([]);
    expect(ok.config!.alerts).toEqual({
      email: { to: ['ops@example.com'], from: 'thinarchive@backup1', smtp: 'smtps://u:p%40ss@mail.example:465' },
      webhook: { url: 'http://127.0.0.1:8080/hook', timeoutMs: 10_000 }, exec: '/usr/local/bin/on-thinarchive-event',
      ping: { start: undefined, success: 'https://hc.example/ping/x', fail: undefined }, repeatAfterMs: 3_600_000,
    });
    const [vms, standby] = ok.config!.jobs;
    expect([vms.lagWarningMs, vms.lagCriticalMs]).toEqual([120_000, 300_000]);
    expect([standby.lagWarningMs, standby.lagCriticalMs]).toEqual([900_000, 3_000_000]);
    expect(checkConfigText(GOOD).config!.alerts).toBeUndefined();

    // Schema problems stop there; the semantic ones (a valid URL, durations above 0, lag order) come once the schema holds.
    const problems = (alerts: string): string[] => checkConfigText(`alerts:
${alerts}jobs:
  - name: a
    volumes: [vg0/a]
    every: 1m
    to: /s
    lag_warning: 1h
`).problems.map((p) => `${p.line}: ${p.message}`);
    expect(problems(`  email: { to: [], from: a@b, smtp: "smtp://" }
  webhook: { url: "https://[bad/hook", timeout: 0s }
  ping: {}
  repeat_after: 1 hour
`)).toEqual([
      '2: alerts.email.to: an address, or a list of addresses',
      '2: alerts.email.smtp: not an smtp:// or smtps:// URL (smtp://[user:pass@]host[:port])',
      '4: alerts.ping: must NOT have fewer than 1 properties',
      '5: alerts.repeat_after: not a duration (examples: 30s, 5m, 1h, 1d)',
    ]);
    expect(problems(`  webhook: { url: "https://[bad/hook", timeout: 0s }
`)).toEqual([
      '2: alerts.webhook.timeout: must be more than 0',
      '2: alerts.webhook.url: not a valid URL',
      '8: jobs[0]: lag_warning (1h) must be less than lag_critical (10 x every)',
    ]);
  });

  it('reports YAML syntax errors and duplicate keys with their line', () => {
    const { problems } = checkConfigText('jobs:\n  - name: a\n    name: b\n    every: [\n');
    expect(problems.length).toBeGreaterThan(0);
    expect(problems[0].line).toBe(3);
  });

  it('a missing file is a problem; loadConfig throws CONFIG_INVALID (exit class usage)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ta-config-'));
    expect((await checkConfig(join(dir, 'none.yml'))).problems).toEqual([{ line: 0, message: 'no such file' }]);
    await writeFile(join(dir, 'bad.yml'), 'jobs: []\n');
    const e = await loadConfig(join(dir, 'bad.yml')).catch((x) => x);
    expect(e).toBeInstanceOf(ConfigError);
    expect(e.code).toBe('CONFIG_INVALID');
    expect(e.exitClass).toBe('usage');
    expect(e.message).toContain('line 1: jobs: must NOT have fewer than 1 items');
  });

  it('verify: every and sample (full or a percentage); needs a store or a remote replica; metrics.textfile is an absolute *.prom path', () => {
    const ok = checkConfigText(`metrics: {textfile: /var/lib/node_exporter/thinarchive.prom}
jobs:
  - {name: a, volumes: [vg0/a], every: 30s, to: /s, verify: {every: 1d, sample: 5%}}
  - {name: b, volumes: [vg0/b], every: 30s, to: /s, verify: {every: 12h}}
  - {name: c, volumes: [vg0/c], every: 30s, to: /s, verify: {every: 1w, sample: full}}
`);
    expect(ok.problems).toEqual([]);
    expect(ok.config!.metrics).toEqual({ textfile: '/var/lib/node_exporter/thinarchive.prom' });
    expect(ok.config!.jobs.map((j) => j.verify)).toEqual([{ every: 86_400_000, samplePercent: 5 }, { every: 43_200_000 }, { every: 604_800_000 }]);
    const bad = checkConfigText(`metrics: {textfile: thinarchive.txt}
jobs:
  - name: a
    volumes: [vg0/a]
    every: 30s
    apply_to: {host: ssh://h, target: vg1/a}
    verify: {every: 1d}
  - name: b
    volumes: [vg0/b]
    every: 30s
    to: /s
    verify: {every: 1d, sample: 0%, colour: red}
  - name: c
    volumes: [vg0/c]
    every: 30s
    to: /s
    verify: {sample: half}
`);
    expect(bad.problems).toEqual([
      { line: 1, message: 'metrics.textfile: an absolute path ending in .prom (node_exporter\'s textfile collector reads *.prom)' },
      { line: 12, message: 'unknown key "colour" in jobs[1].verify' },
      { line: 17, message: 'jobs[2].verify: missing key "every"' },
      { line: 17, message: 'jobs[2].verify.sample: "full" or a percentage (examples: full, 5%, 0.5%)' },
    ]);
    const semantic = checkConfigText(`jobs:
  - {name: a, volumes: [vg0/a], every: 30s, apply_to: {host: ssh://h, target: vg1/a}, verify: {every: 1d}}
  - {name: b, volumes: [vg0/b], every: 30s, to: /s, verify: {every: 1d, sample: 0%}}
`);
    expect(semantic.problems).toEqual([
      { line: 3, message: 'jobs[1].verify.sample: a percentage above 0 and at most 100' },
    ]);
    // A remote replica (apply_to.host, no store) is verified against the volume's base snapshot.
    const remote = checkConfigText('jobs:\n  - {name: a, volumes: [vg0/a], every: 30s, apply_to: {host: ssh://h, target: vg1/a}, verify: {every: 1d, sample: 2%}}\n');
    expect(remote.problems).toEqual([]);
    expect(remote.config!.jobs[0]!.verify).toEqual({ every: 86_400_000, samplePercent: 2 });
    expect(checkConfigText('metrics: {}\njobs: [{name: a, volumes: [vg0/a], every: 1s, to: /s}]\n').problems).toHaveLength(1);
  });
});

describe('apply_to.target placeholders', () => {
  const job = (volumes: string, target: string): string => `jobs:
  - name: standby
    volumes: ${volumes}
    every: 5s
    apply_to:
      host: ssh://root@standby
      target: "${target}"
`;
  it('fills {vg}, {lv} and {name} per volume', () => {
    expect(targetOf('vg2/{lv}', 'vg0/vm1')).toBe('vg2/vm1');
    expect(targetOf('{vg}-copy/{name}', 'vg0/vm-2')).toBe('vg0-copy/vm-2');
    expect(targetOf('/srv/replicas/{name}', '/srv/a.img')).toBe('/srv/replicas/a.img');
    expect(targetOf('vg1/fixed', 'vg0/vm1')).toBe('vg1/fixed');
    expect(checkConfigText(job('[vg0/vm-*]', 'vg2/{lv}')).problems).toEqual([]);
  });
  it('a job of several volumes must name each target; unknown placeholders are errors with their line', () => {
    expect(checkConfigText(job('[vg0/vm1, vg0/vm2]', 'vg2/replica')).problems).toEqual([
      { line: 7, message: 'jobs[0].apply_to.target: the job has several volumes: name each one\'s target with {lv} or {name}, e.g. vg2/{lv}' },
    ]);
    expect(checkConfigText(job('[vg0/vm-*]', 'vg2/replica')).problems.map((p) => p.line)).toEqual([7]);
    expect(checkConfigText(job('[vg0/vm1]', 'vg2/{volume}')).problems).toEqual([
      { line: 7, message: 'jobs[0].apply_to.target: unknown placeholder {volume} (there are {vg}, {lv}, {name})' },
    ]);
  });
});

describe('daemon config: pools', () => {
  const jobs = 'jobs:\n  - {name: a, volumes: [vg/x], every: 1h, to: /srv/b}\n';
  it('thresholds per pool and default, autoextend and the held metadata snapshot limit', () => {
    const r = checkConfigText(`pools:\n  default: {warn: {data: 75}, held_metadata_snapshot: 10m}\n  "vg0/pool": {crit: {data: 95, metadata: 85}, require_autoextend: false}\n${jobs}`);
    expect(r.problems).toEqual([]);
    expect(r.config!.pools).toEqual({ default: { warn: { data: 75 }, heldMetadataSnapshotMs: 600_000 }, 'vg0/pool': { crit: { data: 95, metadata: 85 }, requireAutoextend: false } });
    expect(checkConfigText(jobs).config!.pools).toEqual({});
  });
  it('reports bad pool keys, values and a warning above its critical level with their lines', () => {
    const r = checkConfigText(`${jobs}pools:\n  vg0: {}\n  "vg/p": {warn: {data: 101, disk: 3}, held_metadata_snapshot: soon}\n`);
    expect(r.problems).toEqual([
      { line: 4, message: 'pools: "vg0" is neither "default" nor VG/POOL' },
      { line: 5, message: 'unknown key "disk" in pools.vg/p.warn' },
      { line: 5, message: 'pools.vg/p.warn.data: must be <= 100' },
      { line: 5, message: 'pools.vg/p.held_metadata_snapshot: not a duration (examples: 30s, 5m, 1h, 1d)' },
    ]);
    expect(checkConfigText(`${jobs}pools:\n  default: {crit: {metadata: 50}}\n  "vg/p": {warn: {data: 95}}\n`).problems).toEqual([
      { line: 4, message: 'pools.default: the warning metadata threshold (70%) is above the critical one (50%)' },
      { line: 5, message: 'pools.vg/p: the warning data threshold (95%) is above the critical one (90%)' },
    ]);
  });
});

describe('daemon config: group jobs', () => {
  const job = (group: string, rest = '    to: /srv/backup\n'): string => `jobs:\n  - name: db\n    volumes: [vg0/sys, vg0/data]\n    every: 5m\n${rest}    group:\n${group}`;

  it('one group of the volumes: its name (default the job\'s), the freeze method and timeout; expandSources gives one unit', async () => {
    const c = checkConfigText(job('      freeze: [/srv/db]\n      freeze_timeout: 20s\n'));
    expect(c.problems).toEqual([]);
    expect(c.config!.jobs[0]!.group).toEqual({ name: 'db', volumes: ['vg0/sys', 'vg0/data'], quiesce: { method: 'fsfreeze', mountpoints: ['/srv/db'] }, freezeTimeoutMs: 20_000 });
    expect(checkConfigText(job('      name: vm7\n      virsh_domain: vm7\n')).config!.jobs[0]!.group).toEqual({ name: 'vm7', volumes: ['vg0/sys', 'vg0/data'], quiesce: { method: 'virsh', domain: 'vm7' } });
    expect(checkConfigText(job('      freeze_cmd: "a"\n      thaw_cmd: "b"\n')).config!.jobs[0]!.group!.quiesce).toEqual({ method: 'command', freeze: 'a', thaw: 'b' });
    // no freeze method: the stacked devices are suspended (the send decides)
    const plain = checkConfigText(job('      name: g\n')).config!.jobs[0]!;
    expect(plain.group).toEqual({ name: 'g', volumes: ['vg0/sys', 'vg0/data'] });
    const { expandSources } = await import('./daemon.js');
    expect(await expandSources(plain)).toEqual(['vg0/sys+vg0/data']);
  });

  it('refuses what a group send cannot do, each with its line', () => {
    const lines = (text: string): [number, string][] => checkConfigText(text).problems.map((p) => [p.line, p.message]);
    expect(lines(job('      freeze: [/a]\n      virsh_domain: x\n'))).toEqual([[7, 'jobs[0].group: one freeze method: freeze (mountpoints), freeze_cmd with thaw_cmd, or virsh_domain']]);
    expect(lines(job('      freeze_cmd: a\n'))).toEqual([[7, 'jobs[0].group: freeze_cmd and thaw_cmd go together']]);
    expect(lines(job('      name: bad/name\n'))).toEqual([[7, 'jobs[0].group.name: a group name is 1 to 64 letters, digits and _ . + - (starting with a letter or digit)']]);
    expect(lines(job('      freeze: [relative]\n'))[0]![1]).toMatch(/not an absolute path/);
    expect(lines(job('      freeze_timeout: 2h\n'))).toEqual([[7, 'jobs[0].group: freeze_timeout: at most 1h']]);
    expect(lines(job('      name: g\n', '    apply_to: {target: "vg1/{lv}"}\n'))).toEqual([
      [5, 'jobs[0].apply_to: a local target (no host) is applied from the job\'s store: add "to"'],
      [7, 'jobs[0].group: a group job sends to a store: add "to"'],
      [7, 'jobs[0].group: apply_to does not go with a group job (restore --group replicates a point)'],
    ]);
    const pattern = `jobs:\n  - name: db\n    volumes: [vg0/vm-*, {image: /a.img}, vg0/x, vg0/x]\n    every: 5m\n    to: /s\n    group: {name: g}\n`;
    expect(lines(pattern)).toEqual([[6, 'jobs[0].group: the members are thin LVs named one by one (VG/LV; no images, no patterns)'], [6, 'jobs[0].group: a volume is named twice']]);
  });
});

describe('the README', () => {
  it("its daemon configuration example is valid, group job included", async () => {
    const { readFile } = await import('node:fs/promises');
    const readme = await readFile(join(__dirname, '..', '..', 'README.md'), 'utf8');
    const start = readme.indexOf('# /etc/thinarchive/thinarchive.yml');
    expect(start).toBeGreaterThan(0);
    const r = checkConfigText(readme.slice(start, readme.indexOf('```', start)));
    expect(r.problems).toEqual([]);
    expect(r.config!.jobs.map((j) => [j.name, j.group?.name ?? null])).toEqual([['vms', null], ['standby', null], ['db', 'db']]);
  });
});
