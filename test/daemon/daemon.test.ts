// The real daemon process on image sources, 1 s interval, into a directory store: ~10 cycles per
// volume while a writer changes one image; status --json and /metrics show each volume's last success;
// a missing image fails alone; restore of the newest point equals the image; SIGTERM exits within
// 10 s leaving no temporary file; after SIGKILL a restart continues the same chains with no manual step.
// SIGHUP reload (a job on a calendar and volumes added, an interval changed, a volume removed; a bad file kept out),
// the metrics textfile, and `run` refused while the daemon runs.
import { randomBytes } from 'node:crypto';
import { open, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { collect, run, runOk, sha256, show, sleep, spawnCli, tempDir, waitFor, type TempDir } from '../helpers/cli.js';
import type { StatusReport as Status, UnitStatus as Unit } from '../../src/daemon/daemon.js';


async function status(cfg: string): Promise<Status> {
  const r = await runOk(['status', '--config', cfg, '--json']);
  return JSON.parse(r.stdout) as Status;
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else out.push(p);
  }
  return out;
}

async function scribble(path: string, size: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(randomBytes(4096), 0, 4096, Math.floor(Math.random() * (size / 4096)) * 4096);
  } finally {
    await fh.close();
  }
}

describe('thinarchive daemon (image sources, directory store)', () => {
  let t: TempDir;
  let daemon: ReturnType<typeof spawnCli> | undefined;
  afterAll(async () => {
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
    await sleep(200);
    await t?.remove();
  });

  it('runs every volume on schedule, reports status and metrics, stops on SIGTERM, continues after SIGKILL', async () => {
    t = await tempDir('daemon');
    const a = t.join('a.img');
    const b = t.join('b.img');
    await writeFile(a, Buffer.concat([randomBytes(3 << 20), Buffer.alloc(5 << 20)]));
    await writeFile(b, randomBytes(1 << 20));
    const port = 20000 + Math.floor(Math.random() * 20000);
    const cfg = t.join('thinarchive.yml');
    await writeFile(cfg, `state_dir: ${t.join('state')}
metrics:
  listen: 127.0.0.1:${port}
jobs:
  - name: imgs
    volumes: [{image: ${a}}, {image: ${b}}]
    every: 1s
    to: ${t.join('store')}
    keep: {last: 4, within: 3s}
  - name: broken
    volumes: [{image: ${t.join('missing.img')}}]
    every: 1s
    to: ${t.join('store')}
    retry: {attempts: 2, initial: 1s, max: 1s}
`);
    expect((await run(['config', 'check', '--config', cfg])).code).toBe(0);

    daemon = spawnCli(['daemon', '--config', cfg]);
    let done = collect(daemon, 300_000);
    // A writer changes a.img between cycles.
    let writing = true;
    const writer = (async () => { while (writing) { await scribble(a, 8 << 20); await sleep(700); } })();
    const good = (s: Status): Unit[] => s.units.filter((u) => u.job === 'imgs');
    const s1 = await waitFor(async () => {
      const s = await status(cfg).catch(() => undefined);
      return s && s.source === 'daemon' && good(s).length === 2 && good(s).every((u) => (u.runs ?? 0) >= 10) ? s : undefined;
    }, 120_000, 250);
    writing = false;
    await writer;
    for (const u of good(s1)) {
      expect(u.lastSuccess, JSON.stringify(u)).not.toBeNull();
      expect(u.chainLength).toBeGreaterThanOrEqual(2);
      expect(u.chainLength).toBeLessThanOrEqual(8); // retention ran
      expect(u.lagSeconds).not.toBeNull();
      expect(u.nextRun).not.toBeNull();
      expect(u.bytes).toBeGreaterThan(0);
    }
    // The broken volume fails alone, with its code, and did not hold the others back.
    const broken = s1.units.find((u) => u.job === 'broken')!;
    expect(['failing', 'running']).toContain(broken.state); // running: retrying after its backoff
    expect(broken.lastError?.code).toBe('IO_ENOENT');
    expect(broken.lastSuccess).toBeNull();
    // A second daemon on the same state directory is refused.
    const second = await run(['daemon', '--config', cfg]);
    expect(second.code, show(second)).toBe(1);
    expect(second.stderr).toMatch(/thinarchive: a daemon already answers on .*daemon\.sock/);

    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    for (const v of [a, b]) expect(metrics).toMatch(new RegExp(`thinarchive_last_success_timestamp_seconds\\{job="imgs",volume="${v.replace(/[.]/g, '\\.')}"\\} \\d+`));
    expect(metrics).toMatch(/thinarchive_failures_total\{job="broken",volume="[^"]+",code="IO_ENOENT"\} [1-9]/);
    expect(metrics).toMatch(/thinarchive_chain_length\{job="imgs"/);
    expect(metrics).toMatch(/thinarchive_lag_seconds\{job="imgs"/);
    expect(metrics).toMatch(/thinarchive_run_duration_seconds_count\{job="imgs"/);

    // Two more successes after the writer stopped: the newest point is the image as it is now.
    const after = good(await status(cfg)).map((u) => u.runs ?? 0);
    await waitFor(async () => good(await status(cfg)).every((u, i) => (u.runs ?? 0) >= after[i] + 2 && u.state !== 'running'), 150_000, 100);

    // SIGTERM (mid-run or between runs) ends within 10 s, exit 0, nothing temporary left.
    const t0 = Date.now();
    daemon.kill('SIGTERM');
    const r = await done;
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(r.code, show(r)).toBe(0);
    const leftovers = (await filesUnder(t.path)).filter((f) => /\.tmp-|\.image-delta-|daemon\.sock/.test(f));
    expect(leftovers).toEqual([]);

    // status without a daemon reads the state file.
    const s2 = await status(cfg);
    expect(s2.source).toBe('state-file');
    const ua = good(s2).find((u) => u.volume === a)!;
    expect(ua.lastSuccess).not.toBeNull();
    const restored = t.join('restored.img');
    const chainDir = join(t.join('store'), ua.chainId!);
    await runOk(['restore', chainDir, '--to', restored, '--create']);
    expect(await sha256(restored)).toBe(await sha256(a));

    // SIGKILL at some moment, restart: it continues the same chains (incrementals), no manual step.
    daemon = spawnCli(['daemon', '--config', cfg]);
    done = collect(daemon, 300_000);
    await waitFor(async () => { const s = await status(cfg).catch(() => undefined); return s?.source === 'daemon' && good(s).every((u) => (u.runs ?? 0) >= 2); }, 150_000, 100);
    await sleep(300 + Math.random() * 700);
    daemon.kill('SIGKILL');
    await done;
    const beforeRestart = good(await status(cfg));
    await scribble(a, 8 << 20);
    daemon = spawnCli(['daemon', '--config', cfg]);
    done = collect(daemon, 300_000);
    const s3 = await waitFor(async () => {
      const s = await status(cfg).catch(() => undefined);
      return s?.source === 'daemon' && good(s).every((u) => (u.runs ?? 0) >= 3 && u.state === 'ok') ? s : undefined;
    }, 150_000, 100);
    for (const u of good(s3)) {
      const before = beforeRestart.find((x) => x.volume === u.volume)!;
      expect(u.chainId).toBe(before.chainId);
      expect(Date.parse(u.lastSuccess!)).toBeGreaterThan(Date.parse(before.lastSuccess!));
    }
    daemon.kill('SIGTERM');
    expect((await done).code).toBe(0);
    const final = good(await status(cfg)).find((u) => u.volume === a)!;
    await runOk(['restore', join(t.join('store'), final.chainId!), '--to', t.join('restored2.img'), '--create']);
    expect(await sha256(t.join('restored2.img'))).toBe(await sha256(a));
    expect((await filesUnder(t.path)).filter((f) => /\.tmp-|\.image-delta-|daemon\.sock/.test(f))).toEqual([]);
  }, 600_000); // safety nets under load (the suite runs this beside the leak check): the waits above are bounds, not speed

  it('max_concurrent_runs: 1 runs one unit at a time, every unit in its turn; 0 is refused', async () => {
    const d = await tempDir('daemon-slots');
    try {
      const imgs = ['p', 'q', 'r', 's'].map((n) => d.join(`${n}.img`));
      for (const img of imgs) await writeFile(img, randomBytes(2 << 20));
      const cfg = d.join('thinarchive.yml');
      const text = (max: number): string => `state_dir: ${d.join('state')}
max_concurrent_runs: ${max}
jobs:
  - name: four
    volumes: [${imgs.map((i) => `{image: ${i}}`).join(', ')}]
    every: 1s
    to: ${d.join('store')}
`;
      await writeFile(cfg, text(0));
      const bad = await run(['config', 'check', '--config', cfg]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/:2: .*max_concurrent_runs.*>= 1/);
      await writeFile(cfg, text(1));
      const dm = spawnCli(['daemon', '--config', cfg]);
      const done = collect(dm, 300_000);
      const seen: number[] = [];
      await waitFor(async () => {
        const s = await status(cfg).catch(() => undefined);
        if (s?.source !== 'daemon') return undefined;
        seen.push(s.units.filter((u) => u.state === 'running').length);
        return s.units.length === 4 && s.units.every((u) => (u.runs ?? 0) >= 3) ? s : undefined;
      }, 120_000, 50);
      dm.kill('SIGTERM');
      const r = await done;
      expect(r.code, show(r)).toBe(0);
      // never two at once in the status (a run of these images takes tens of milliseconds since the
      // runs share one worker pool, so a poll may never catch one running: the spans below are the proof)
      expect(Math.max(...seen)).toBeLessThanOrEqual(1);
      // each run's span (its end and duration, from the log) overlaps no other run's
      const spans = r.stderr.split('\n').filter((l) => l.includes('"msg":"run succeeded"')).map((l) => JSON.parse(l) as { time: number; seconds: number; volume: string })
        .map((l) => ({ volume: l.volume, start: l.time - l.seconds * 1000, end: l.time })).sort((x, y) => x.start - y.start);
      expect(spans.length).toBeGreaterThanOrEqual(12);
      for (let i = 1; i < spans.length; i++) expect(spans[i]!.start, `${JSON.stringify(spans[i - 1])} then ${JSON.stringify(spans[i])}`).toBeGreaterThanOrEqual(spans[i - 1]!.end - 5);
    } finally {
      await d.remove();
    }
  });

  it('refuses to start on a bad config (exit 2, the line named)', async () => {
    const d = await tempDir('daemon-bad');
    try {
      await writeFile(d.join('bad.yml'), `jobs:\n  - name: x\n    volumes: [vg0/a]\n    every: 1s\n    to: ${d.path}\n    colour: red\n`);
      const r = await run(['daemon', '--config', d.join('bad.yml')]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('line 6: unknown key "colour"');
      const c = await run(['config', 'check', '--config', d.join('bad.yml')]);
      expect(c.code).toBe(2);
      expect(c.stderr.trim()).toBe(`${d.join('bad.yml')}:6: unknown key "colour" in jobs[0]`);
    } finally {
      await d.remove();
    }
  });

  it('SIGHUP reloads: new units run, a changed interval applies at once, a removed volume and its series go; a bad file is logged and the old one kept; textfile; run refused', async () => {
    const d = await tempDir('daemon-hup');
    let hup: ReturnType<typeof spawnCli> | undefined;
    try {
      const img = (n: string): string => d.join(`${n}.img`);
      for (const n of ['a', 'c', 'd', 'e']) await writeFile(img(n), randomBytes(256 << 10));
      const port = 20000 + Math.floor(Math.random() * 20000);
      const prom = d.join('textfile', 'thinarchive.prom');
      await (await import('node:fs/promises')).mkdir(d.join('textfile'));
      const cfg = d.join('thinarchive.yml');
      const head = `state_dir: ${d.join('state')}\nmetrics:\n  listen: 127.0.0.1:${port}\n  textfile: ${prom}\njobs:\n`;
      // b is missing: it fails (a failures_total series) and is then removed.
      await writeFile(cfg, `${head}  - name: imgs
    volumes: [{image: ${img('a')}}, {image: ${img('b')}}]
    every: 1h
    to: ${d.join('store')}
    retry: {attempts: 1}
  - name: other
    volumes: [{image: ${img('c')}}]
    every: 1s
    to: ${d.join('store')}
    keep: {last: 3}
`);
      hup = spawnCli(['daemon', '--config', cfg]);
      let log = '';
      hup.stderr!.on('data', (b: Buffer) => { log += b.toString(); });
      const done = collect(hup, 300_000);
      const unit = (s: Status, job: string, v: string): Unit | undefined => s.units.find((u) => u.job === job && u.volume === v);
      const s1 = await waitFor(async () => {
        const s = await status(cfg).catch(() => undefined);
        return s?.source === 'daemon' && unit(s, 'imgs', img('a'))?.lastSuccess && unit(s, 'imgs', img('b'))?.lastError && (unit(s, 'other', img('c'))?.runs ?? 0) >= 2 ? s : undefined;
      }, 60_000, 200);
      expect(s1.units.map((u) => `${u.job} ${u.volume}`).sort()).toEqual([`imgs ${img('a')}`, `imgs ${img('b')}`, `other ${img('c')}`]);
      // An hourly unit ran once at start.
      expect(unit(s1, 'imgs', img('a'))!.runs).toBe(1);
      const series = (text: string, v: string): string[] => text.split('\n').filter((l) => !l.startsWith('#') && l.includes(`volume="${v}"`));
      let metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      expect(series(metrics, img('b')).join('\n')).toMatch(/thinarchive_failures_total\{job="imgs",volume="[^"]+",code="IO_ENOENT"\} 1/);
      // The textfile: the registry in the text format, rewritten after every run.
      const tf1 = await readFile(prom, 'utf8');
      expect(tf1).toContain('# TYPE thinarchive_last_success_timestamp_seconds gauge');
      expect(series(tf1, img('a')).join('\n')).toMatch(/thinarchive_last_success_timestamp_seconds\{job="imgs",volume="[^"]+"\} \d+/);
      const attemptOf = (text: string): number => Number(/thinarchive_last_attempt_timestamp_seconds\{job="other",volume="[^"]+"\} ([\d.e+]+)/.exec(text)?.[1]);
      await waitFor(async () => attemptOf(await readFile(prom, 'utf8')) > attemptOf(tf1), 20_000, 100);

      // `run` is refused while the daemon runs (exit 1, one line), and records nothing.
      const refused = await run(['run', 'imgs', '--config', cfg]);
      expect(refused.code, show(refused)).toBe(1);
      expect(refused.stderr).toMatch(/^thinarchive: a daemon \(pid \d+\) runs the jobs of .* stop it to run a job by hand\n$/);

      // Reload: imgs loses b and goes from 1h to 1s; other gains d; a new job "extra" with e.
      await writeFile(cfg, `${head}  - name: imgs
    volumes: [{image: ${img('a')}}]
    every: 1s
    to: ${d.join('store')}
  - name: other
    volumes: [{image: ${img('c')}}, {image: ${img('d')}}]
    every: 1s
    to: ${d.join('store')}
    keep: {last: 3}
  - name: extra
    volumes: [{image: ${img('e')}}]
    every: "* * * * *"
    to: ${d.join('store2')}
`);
      hup.kill('SIGHUP');
      const s2 = await waitFor(async () => {
        const s = await status(cfg);
        return (unit(s, 'imgs', img('a'))?.runs ?? 0) >= 3 && unit(s, 'other', img('d'))?.lastSuccess && unit(s, 'extra', img('e'))?.lastSuccess ? s : undefined;
      }, 60_000, 200);
      expect(s2.daemon!.pid).toBe(s1.daemon!.pid);
      // extra's calendar (every minute): it never ran, so at once; its next run is the next whole minute
      const extra = unit(s2, 'extra', img('e'))!;
      const nextRun = Date.parse(extra.nextRun!);
      expect(nextRun % 60_000, extra.nextRun!).toBe(0);
      expect(nextRun).toBeGreaterThan(Date.parse(extra.lastAttempt!));
      expect(nextRun).toBeLessThanOrEqual(Date.parse(extra.lastAttempt!) + 60_000);
      expect(s2.units.map((u) => `${u.job} ${u.volume}`).sort()).toEqual([`extra ${img('e')}`, `imgs ${img('a')}`, `other ${img('c')}`, `other ${img('d')}`]);
      // The counters of kept units go on (not restarted).
      expect(unit(s2, 'other', img('c'))!.runs).toBeGreaterThan(unit(s1, 'other', img('c'))!.runs!);
      metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      expect(series(metrics, img('b'))).toEqual([]);
      expect(series(metrics, img('e')).join('\n')).toMatch(/thinarchive_last_success_timestamp_seconds\{job="extra"/);
      await waitFor(async () => series(await readFile(prom, 'utf8'), img('b')).length === 0 && series(await readFile(prom, 'utf8'), img('e')).length > 0, 10_000, 100);
      expect(log).toMatch(/"msg":"configuration reloaded"/);

      // A bad file on SIGHUP: logged with its line; the daemon keeps running the configuration it has.
      const good = await readFile(cfg, 'utf8');
      await writeFile(cfg, good.replace('  - name: extra\n', '  - name: extra\n    colour: red\n'));
      const before = await status(cfg);
      hup.kill('SIGHUP');
      await waitFor(async () => /configuration not reloaded: line \d+: unknown key \\"colour\\"/.test(log), 10_000, 100);
      const s3 = await waitFor(async () => {
        const s = await status(cfg);
        return (unit(s, 'other', img('d'))?.runs ?? 0) >= (unit(before, 'other', img('d'))?.runs ?? 0) + 2 ? s : undefined;
      }, 30_000, 200);
      expect(s3.daemon!.pid).toBe(s1.daemon!.pid);
      expect(s3.units.map((u) => `${u.job} ${u.volume}`).sort()).toEqual(s2.units.map((u) => `${u.job} ${u.volume}`).sort());

      hup.kill('SIGTERM');
      const r = await done;
      expect(r.code, show(r)).toBe(0);
      // Nothing temporary left beside the textfile; its last version is complete.
      expect((await readdir(d.join('textfile')))).toEqual(['thinarchive.prom']);
      expect(await readFile(prom, 'utf8')).toMatch(/thinarchive_daemon_start_timestamp_seconds \d/);
      // With no daemon to ask, status needs a valid file; the removed volume is gone from the state file too.
      expect((await run(['status', '--config', cfg])).code).toBe(2);
      await writeFile(cfg, good);
      const sf = await status(cfg);
      expect(sf.source).toBe('state-file');
      expect(sf.units.some((u) => u.volume === img('b'))).toBe(false);

      // With no daemon, `run` runs and records.
      const lastA = unit(sf, 'imgs', img('a'))!.lastAttempt!;
      const ran = await run(['run', 'imgs', '--config', cfg]);
      expect(ran.code, show(ran)).toBe(0);
      expect(ran.stderr).toMatch(/imgs .*a\.img: ok/);
      expect(Date.parse(unit(await status(cfg), 'imgs', img('a'))!.lastAttempt!)).toBeGreaterThan(Date.parse(lastA));
    } finally {
      if (hup && hup.exitCode === null && hup.signalCode === null) hup.kill('SIGKILL');
      await d.remove();
    }
  });
});
