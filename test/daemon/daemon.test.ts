// The real daemon process on image sources, 1 s interval, into a directory store: ~10 cycles per
// volume while a writer changes one image; status --json and /metrics show each volume's last success;
// a missing image fails alone; restore of the newest point equals the image; SIGTERM exits within
// 10 s leaving no temporary file; after SIGKILL a restart continues the same chains with no manual step.
import { randomBytes } from 'node:crypto';
import { open, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { collect, run, runOk, sha256, show, sleep, spawnCli, tempDir, waitFor, type TempDir } from '../helpers/cli.js';

interface Unit { job: string; volume: string; state: string; lastSuccess: string | null; lastError: { code: string } | null; runs: number | null; chainLength: number | null; chainId: string | null; lagSeconds: number | null; nextRun: string | null; bytes: number | null; durationSeconds: number | null }
interface Status { source: string; daemon: { pid: number } | null; units: Unit[] }

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
    await waitFor(async () => good(await status(cfg)).every((u, i) => (u.runs ?? 0) >= after[i] + 2 && u.state !== 'running'), 60_000, 100);

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
    await waitFor(async () => { const s = await status(cfg).catch(() => undefined); return s?.source === 'daemon' && good(s).every((u) => (u.runs ?? 0) >= 2); }, 60_000, 100);
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
    }, 60_000, 100);
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
});
