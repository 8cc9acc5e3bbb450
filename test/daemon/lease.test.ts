// Two daemons (two state directories, one image source, one directory store) configured on one chain:
// the second has a copy of the first's state, as a standby host would. The first holds the chain's lease
// from its first run; `thinarchive run` and the second daemon are refused with CHAIN_LEASED, shown in
// their status, while the first keeps writing the chain; after the first is killed (SIGKILL) the second
// takes the lease over at once (same host, holder gone) and continues the chain; SIGTERM releases it.
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readdir, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { collect, run, runOk, show, spawnCli, tempDir, waitFor, type TempDir } from '../helpers/cli.js';
import type { StatusReport as Status, UnitStatus as Unit } from '../../src/daemon/daemon.js';

interface Listed { chainId: string; host: string | null; volume: string | null; archives: unknown[]; lease: { state: string; host: string; pid: number; job: string | null; volume: string | null; acquired: string; renewed: string } | null }

async function unit(cfg: string): Promise<Unit | undefined> {
  const r = await run(['status', '--config', cfg, '--json']);
  return r.code === 0 ? (JSON.parse(r.stdout) as Status).units[0] : undefined;
}

async function listed(store: string): Promise<Listed[]> {
  return JSON.parse((await runOk(['list', store, '--json'])).stdout) as Listed[];
}

/** The image hash file of the one job (docs/DAEMON.md, "State file"), copied to another state directory. */
async function copyHashes(from: string, to: string): Promise<void> {
  const name = (await readdir(from)).find((n) => /^image-vms-[0-9a-f]{16}\.hashes$/.test(n))!;
  await copyFile(`${from}/${name}`, `${to}/${name}`);
}

describe('chain leases between daemons', () => {
  let t: TempDir;
  const daemons: ReturnType<typeof spawnCli>[] = [];
  afterAll(async () => {
    for (const d of daemons) if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL');
    await t?.remove();
  });

  it('a second daemon on the same chain gets CHAIN_LEASED in its status while the first keeps working; a killed holder is taken over at once', async () => {
    t = await tempDir('daemon-lease');
    const img = t.join('vm.img');
    await writeFile(img, randomBytes(2 << 20));
    const store = t.join('store');
    const config = (stateDir: string, every: string): string => `state_dir: ${stateDir}
lease_ttl: 12s
jobs:
  - name: vms
    volumes: [{image: ${img}}]
    every: ${every}
    to: ${store}
`;
    const [cfg1, cfg2, s1, s2] = [t.join('one.yml'), t.join('two.yml'), t.join('state-one'), t.join('state-two')];
    // The first runs every 60 s: the standby's copy of its hashes must still name the chain's newest
    // archive when the standby runs (with 25 s, under a loaded suite, the first's second run came before
    // the standby's and the standby, its hashes now one point behind, rightly started a new chain).
    await writeFile(cfg1, config(s1, '60s'));
    await writeFile(cfg2, config(s2, '1s'));
    const start = (cfg: string): { child: ReturnType<typeof spawnCli>; done: ReturnType<typeof collect> } => {
      const child = spawnCli(['daemon', '--config', cfg]);
      daemons.push(child);
      return { child, done: collect(child, 300_000) };
    };

    const one = start(cfg1);
    const first = await waitFor(async () => { const u = await unit(cfg1); return u?.lastSuccess ? u : undefined; }, 60_000, 100);
    const chain = first.chainId!;
    let l = (await listed(store))[0];
    expect(l).toMatchObject({ chainId: chain, host: hostname(), volume: 'vm.img', lease: { state: 'held', host: hostname(), pid: one.child.pid, job: 'vms', volume: 'vm.img' } });

    // The standby gets the first's image hashes: its next run would continue the same chain.
    await runOk(['config', 'check', '--config', cfg2]);
    await mkdir(s2, { recursive: true });
    await copyHashes(s1, s2);
    const leased = new RegExp(`chain ${chain} in .* is leased by host ${hostname()} \\(this host\\) pid ${one.child.pid} \\(job vms, volume vm\\.img\\) until `);
    // `thinarchive run` while a daemon holds the chain: refused, exit 4, naming the daemon.
    const once = await run(['run', 'vms', '--config', cfg2]);
    expect(once.code, show(once)).toBe(4);
    expect(once.stderr).toMatch(/failed after 1 attempt: CHAIN_LEASED: /);
    expect(once.stderr).toMatch(leased);

    const two = start(cfg2);
    // Between its runs (a run in progress shows "running") the refused unit is failing.
    const refused = await waitFor(async () => { const u = await unit(cfg2); return u && (u.runs ?? 0) >= 2 && u.lastError?.code === 'CHAIN_LEASED' && u.state !== 'running' ? u : undefined; }, 60_000, 100);
    expect(refused.state).toBe('failing');
    expect(refused.lastSuccess).toBeNull();
    expect(refused.lastError!.message).toMatch(leased);
    two.child.kill('SIGTERM');
    expect((await two.done).code).toBe(0);

    // The first keeps writing the chain, its lease renewed (every 4 s) past the ttl. (A 6 s ttl expired
    // once under a loaded full suite: a renewal more than 4 s late let the standby take the chain over.)
    const later = await waitFor(async () => { const u = await unit(cfg1); return u && (u.runs ?? 0) >= 2 && u.state === 'ok' ? u : undefined; }, 120_000, 100);
    expect(later).toMatchObject({ chainId: chain, chainLength: 2, lastError: null });
    const chains = await listed(store);
    expect(chains.map((c) => c.chainId)).toEqual([chain]); // the second wrote nothing
    l = chains[0];
    expect(l.archives).toHaveLength(2);
    expect(l.lease).toMatchObject({ state: 'held', pid: one.child.pid });
    expect(Date.parse(l.lease!.renewed) - Date.parse(l.lease!.acquired)).toBeGreaterThan(12_000);

    // Killed: the lease stays, but its holder is gone; the standby takes it over at once.
    one.child.kill('SIGKILL');
    await one.done;
    expect((await listed(store))[0].lease).toMatchObject({ state: 'holder-gone', pid: one.child.pid });
    await copyHashes(s1, s2);
    const again = start(cfg2);
    const took = await waitFor(async () => { const u = await unit(cfg2); return u?.lastSuccess ? u : undefined; }, 60_000, 100);
    expect(took.chainId).toBe(chain);
    expect(took.chainLength).toBeGreaterThanOrEqual(3); // it continued the chain (and may have run again since)
    expect((await listed(store))[0].lease).toMatchObject({ state: 'held', pid: again.child.pid, job: 'vms' });
    // SIGTERM releases it: the next writer need not wait.
    again.child.kill('SIGTERM');
    expect((await again.done).code).toBe(0);
    expect((await listed(store))[0].lease).toMatchObject({ state: 'released', pid: again.child.pid });
  });
});
