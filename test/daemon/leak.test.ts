// Leak check (issue 12): 1,000 runs on image sources in one daemon process; its RSS and open file
// descriptors after run 1,000 are within 10% of after run 100. Ten 256 KiB images, every 1 s, into
// a directory store with retention (keep the last 3: a merge after every send, so the store stays
// bounded), while a writer changes the images.
//
// Measuring: /proc/PID/status VmRSS and the entries of /proc/PID/fd of the daemon, read only while
// no run is in progress: during a run the worker pool's threads and buffers, and the garbage of the
// run, come and go, and would be measured instead of what stays. At run 100 and at run 1,000 the test
// holds the daemon (the configuration reloaded, SIGHUP, with a 1 h interval: runs in progress finish,
// none starts), waits until every unit is idle, samples every 500 ms for 5 s, and lets it go on
// (reloaded back to every second). Waiting instead for a moment when ten units due every second
// happen to be idle at once did not work on a loaded machine (on CI none came in 800 s). Each figure
// is the minimum of the samples; the median and the first sample are printed too. The daemon collects
// its garbage and trims the allocator a second after its last run ends (daemon/idle-gc.ts): the first
// sample may come before that, the floor after. The numbers, and the daemon's CPU time per run, are
// printed (docs/PERFORMANCE.md, "Daemon").
import { randomBytes } from 'node:crypto';
import { open, readdir, readFile, writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { collect, show, sleep, spawnCli, tempDir, type TempDir } from '../helpers/cli.js';
import type { StatusReport as Status, UnitStatus as Unit } from '../../src/daemon/daemon.js';


const UNITS = 10;
const IMAGE = 256 << 10;

/** The daemon's status over its socket (what `status --json` prints), without starting a process per poll. */
function ask(sock: string): Promise<Status | undefined> {
  return new Promise((resolve) => {
    const c = createConnection(sock);
    const chunks: Buffer[] = [];
    c.on('data', (b: Buffer) => chunks.push(b));
    c.on('error', () => resolve(undefined));
    c.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as Status);
      } catch {
        resolve(undefined);
      }
    });
  });
}

const total = (s: Status): number => s.units.reduce((n, u) => n + (u.runs ?? 0), 0);
const idle = (s: Status | undefined): s is Status => !!s && s.units.length === UNITS && s.units.every((u) => u.state !== 'running');
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** CPU time of a process so far, all its threads (utime + stime of /proc/PID/stat), in seconds. */
async function cpuSeconds(pid: number): Promise<number> {
  const f = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // fields 14 and 15, in clock ticks (USER_HZ: 100)
}

async function rssKiB(pid: number): Promise<number> {
  return Number(/VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))![1]);
}

describe('thinarchive daemon: 1,000 runs without growth', () => {
  let t: TempDir;
  let daemon: ReturnType<typeof spawnCli> | undefined;
  afterAll(async () => {
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
    await t?.remove();
  });

  it('RSS and open file descriptors after run 1,000 are within 10% of after run 100', async () => {
    t = await tempDir('daemon-leak');
    const images = Array.from({ length: UNITS }, (_, i) => t.join(`v${i}.img`));
    for (const p of images) await writeFile(p, randomBytes(IMAGE));
    const cfg = t.join('thinarchive.yml');
    // All ten units may run at once (the default max_concurrent_runs is 4).
    const config = (every: string): Promise<void> => writeFile(cfg, `state_dir: ${t.join('state')}
max_concurrent_runs: ${UNITS}
jobs:
  - name: leak
    volumes: [${images.map((p) => `{image: ${p}}`).join(', ')}]
    every: ${every}
    to: ${t.join('store')}
    keep: {last: 3}
`);
    await config('1s');
    daemon = spawnCli(['daemon', '--config', cfg]);
    const done = collect(daemon, 1_400_000);
    const pid = daemon.pid!;
    const sock = join(t.join('state'), 'daemon.sock');
    const windows = { early: { from: 100, rss: [] as number[], fds: [] as number[] }, late: { from: 1000, rss: [] as number[], fds: [] as number[] } };
    const HOLD_MS = 5_000;
    let runs = 0;
    let lastWrite = 0;
    const started = Date.now();
    const deadline = (what: string): void => {
      if (Date.now() - started > 1_300_000) throw new Error(`${what}: only ${runs} runs after ${Math.round((Date.now() - started) / 1000)} s`);
    };
    for (const w of Object.values(windows)) {
      while (runs < w.from) {
        deadline(`waiting for run ${w.from}`);
        if (Date.now() - lastWrite > 300) {
          // a writer: 4 KiB somewhere in one image, so that incrementals carry data and merges have work
          lastWrite = Date.now();
          const fh = await open(images[Math.floor(Math.random() * UNITS)], 'r+');
          await fh.write(randomBytes(4096), 0, 4096, Math.floor(Math.random() * (IMAGE / 4096)) * 4096);
          await fh.close();
        }
        const st = await ask(sock);
        if (st) runs = total(st);
        await sleep(100);
      }
      // hold: no run starts; wait until none is in progress, then sample for HOLD_MS
      await config('1h');
      daemon.kill('SIGHUP');
      let idleSince = 0;
      while (!idleSince || Date.now() - idleSince < HOLD_MS) {
        deadline(`holding the daemon at run ${runs}`);
        const before = await ask(sock);
        const rss = await rssKiB(pid);
        const fds = (await readdir(`/proc/${pid}/fd`)).length;
        const after = await ask(sock);
        if (idle(before) && idle(after) && total(before) === total(after)) {
          idleSince ||= Date.now();
          w.rss.push(rss);
          w.fds.push(fds);
        }
        await sleep(500);
      }
      await config('1s');
      daemon.kill('SIGHUP');
    }
    const seconds = Math.round((Date.now() - started) / 1000);
    const final = (await ask(sock))!;
    const cpu = await cpuSeconds(pid);
    daemon.kill('SIGTERM');
    const r = await done;
    expect(r.code, show(r)).toBe(0);

    const floor = (w: { rss: number[]; fds: number[] }): { rss: number; fds: number; median: number; samples: number; first: number } => ({
      rss: Math.min(...w.rss), fds: Math.min(...w.fds), median: median(w.rss), samples: w.rss.length, first: w.rss[0]!,
    });
    const early = floor(windows.early);
    const late = floor(windows.late);
    const mib = (k: number): string => (k / 1024).toFixed(1);
    console.log(`daemon leak check: ${total(final)} runs of ${UNITS} image units in ${seconds} s; idle RSS floor (median, first sample) ${mib(early.rss)} (${mib(early.median)}, ${mib(early.first)}) MiB at run ${windows.early.from}+ (${early.samples} samples in ${HOLD_MS / 1000} s), ${mib(late.rss)} (${mib(late.median)}, ${mib(late.first)}) MiB at run ${windows.late.from}+ (${late.samples}) = ${(100 * (late.rss / early.rss - 1)).toFixed(1)}%; fds ${early.fds} -> ${late.fds}; CPU ${cpu.toFixed(1)} s (${(1000 * cpu / total(final)).toFixed(0)} ms per run)`);
    // Every run succeeded: real runs, not failures.
    for (const u of final.units) expect(u.lastError, JSON.stringify(u)).toBeNull();
    expect(Math.abs(late.rss / early.rss - 1)).toBeLessThanOrEqual(0.1);
    expect(Math.abs(late.fds / early.fds - 1)).toBeLessThanOrEqual(0.1);
    // Retention kept the store bounded: at most 3 points per chain (4 when stopped between a send and its prune).
    const chains = (await readdir(t.join('store'), { withFileTypes: true })).filter((e) => e.isDirectory());
    expect(chains).toHaveLength(UNITS);
    for (const c of chains) {
      const archives = (await readdir(join(t.join('store'), c.name))).filter((n) => n.endsWith('.tna'));
      expect(archives.length).toBeLessThanOrEqual(4);
    }
  }, 1_500_000);
});
