/**
 * Chain leases (src/store/lease.ts, FORMAT.md §3.3) on a real directory store, a real sshd and the
 * test Ceph radosgw: a second writer is refused with CHAIN_LEASED naming the holder; renewal keeps a
 * lease past its ttl; an expired lease is taken over, a live one only when forced, and of takers racing
 * for one lease exactly one wins; a released lease is free at once, as is one of a dead process of this
 * host; a chain that was never published keeps no lease. Then the CLI: `send` into a leased chain
 * exits 4 with one line, `--take-lease` takes it over, and `list` shows each chain's host, volume and
 * lease.
 */
import { readdirSync } from 'node:fs';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { send } from '../../src/api/index.js';
import { DirectoryStore } from '../../src/store/dir.js';
import {
  ChainLeaseHolder, checkLease, LEASE_PREFIX, LEASE_VERSION, leaseName, localIdentity, readLease, type LeaseIdentity, type LeaseRecord,
} from '../../src/store/lease.js';
import { openStore } from '../../src/store/open.js';
import { S3Store } from '../../src/store/s3.js';
import type { ArchiveStore } from '../../src/store/types.js';
import { expectFailure, run, runOk, sleep, tempDir } from '../helpers/cli.js';
import { deadPid } from '../helpers/host.js';
import { cephOrSkip } from '../servers/ceph.js';
import { ciSet, sshdAvailable, startSshd, type Sshd } from '../servers/sshd.js';
import { newBucket, rawClient } from './s3-helpers.js';

const ceph = await cephOrSkip();
const ssh = sshdAvailable();
if (!ssh.ok && ciSet()) throw new Error(`sshd is not available under CI: ${ssh.reason}`);
let sshd: Sshd | undefined;
const sshdStarted = ssh.ok ? startSshd().then((s) => (sshd = s)) : undefined;
afterAll(async () => { await sshd?.stop(); });

const ISO = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z';
const SUBJECT = { volume: 'vg0/vm1', source: '/dev/vg0/vm1' };

/** Another host (name and machine id differ from this one's). */
function otherHost(n: number): Partial<LeaseIdentity> {
  return { host: `other-host-${n}`, machineId: randomBytes(16).toString('hex'), pid: 40_000 + n };
}


/** Store a lease generation as another writer (that is not running here) would have. */
async function plant(store: ArchiveStore, chainId: string, generation: number, r: Partial<LeaseRecord> & { expiresInMs: number }): Promise<void> {
  const now = Date.now();
  const rec: LeaseRecord = {
    version: LEASE_VERSION, chainId, generation, token: randomUUID(), host: 'gone-host', machineId: randomBytes(16).toString('hex'), pid: 777,
    job: 'vms', volume: 'vg0/old', source: '/dev/vg0/old', acquired: new Date(now - 60_000).toISOString(), renewed: new Date(now).toISOString(),
    expires: new Date(now + r.expiresInMs).toISOString(), ttlSeconds: 60, released: false, tool: 'thinarchive test', ...r,
  };
  delete (rec as Partial<typeof r>).expiresInMs;
  expect(await store.createMarker(chainId, leaseName(generation), JSON.stringify(rec))).toBe(true);
}

async function leaseMarkers(store: ArchiveStore, chainId: string): Promise<string[]> {
  return store.listMarkers(chainId, LEASE_PREFIX);
}

async function refusal(p: Promise<unknown>): Promise<Error & { code?: string; exitClass?: string }> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected CHAIN_LEASED');
}

function describeLeases(name: string, setup: () => Promise<{ store: ArchiveStore; cleanup: () => Promise<void> }>): void {
  describe(`chain leases: ${name}`, () => {
    let store: ArchiveStore;
    let cleanup: (() => Promise<void>) | undefined;
    const holders: ChainLeaseHolder[] = [];
    const holder = (o: ConstructorParameters<typeof ChainLeaseHolder>[0] = {}): ChainLeaseHolder => {
      const h = new ChainLeaseHolder(o);
      holders.push(h);
      return h;
    };
    afterAll(async () => {
      for (const h of holders) await h.release();
      await store?.close();
      await cleanup?.();
    });

    it('a second writer is refused with CHAIN_LEASED naming the holder; released, the lease is free at once', async () => {
      ({ store, cleanup } = await setup());
      const chain = randomUUID();
      const a = holder({ job: 'vms', ttlMs: 60_000 });
      const rec = await a.hold(store, chain, SUBJECT);
      expect(rec).toMatchObject({ generation: 1, host: hostname(), pid: process.pid, job: 'vms', volume: 'vg0/vm1', source: '/dev/vg0/vm1', released: false });
      // From another host, and from another holder of this very process (two units of one daemon).
      for (const b of [holder({ identity: otherHost(1) }), holder()]) {
        const e = await refusal(b.hold(store, chain, { volume: 'a.img', source: '/srv/a.img' }));
        expect(e).toMatchObject({ code: 'CHAIN_LEASED', exitClass: 'unsafe' });
        expect(e.message).toMatch(new RegExp(`^chain ${chain} in \\S.* is leased by host ${hostname()} \\(this host\\) pid ${process.pid} \\(job vms, volume vg0/vm1\\) until ${ISO}; one writer per chain: .*--take-lease`));
        expect(e.message).not.toContain('\n');
        await expect(checkLease(store, chain, b)).rejects.toMatchObject({ code: 'CHAIN_LEASED' });
      }
      await checkLease(store, chain, a);
      expect(await leaseMarkers(store, chain)).toEqual([leaseName(1)]);
      expect((await readLease(store, chain))?.token).toBe(a.token);

      await a.release();
      expect(await readLease(store, chain)).toMatchObject({ generation: 2, released: true, pid: process.pid });
      const c = holder({ identity: otherHost(2), job: 'other' });
      expect(await c.hold(store, chain, SUBJECT)).toMatchObject({ generation: 3, host: 'other-host-2', job: 'other' });
      expect(await leaseMarkers(store, chain)).toEqual([leaseName(3)]);
      await c.release();
    });

    it('renewal keeps a lease past its ttl; a lease nobody renews is taken over once it expires', async () => {
      const chain = randomUUID();
      const a = holder({ ttlMs: 6000 });
      const first = await a.hold(store, chain, SUBJECT);
      await sleep(7500);
      const b = holder({ identity: otherHost(3) });
      await expect(b.hold(store, chain, SUBJECT)).rejects.toMatchObject({ code: 'CHAIN_LEASED' });
      const now = await readLease(store, chain);
      expect(now!.token).toBe(a.token);
      expect(now!.generation).toBeGreaterThanOrEqual(3); // renewed every 2 s
      expect(now!.acquired).toBe(first.acquired);
      expect(Date.parse(now!.expires)).toBeGreaterThan(Date.parse(first.expires));
      await a.confirm();
      await a.release();
      // Renewals delete the generations below theirs: the tombstone is all that is left.
      const last = await readLease(store, chain);
      expect(last).toMatchObject({ token: a.token, released: true });
      expect(last!.generation).toBeGreaterThan(now!.generation);
      expect(await leaseMarkers(store, chain)).toEqual([leaseName(last!.generation)]);

      // A writer on a host that went away: refused until its expiry, then taken over.
      const lone = randomUUID();
      await plant(store, lone, 7, { expiresInMs: 2500 });
      const e = await refusal(b.hold(store, lone, SUBJECT));
      expect(e.message).toMatch(/leased by host gone-host pid 777 \(job vms, volume vg0\/old\)/);
      await sleep(2700);
      expect(await b.hold(store, lone, SUBJECT)).toMatchObject({ generation: 8, host: 'other-host-3' });
      expect(await leaseMarkers(store, lone)).toEqual([leaseName(8)]);
      await b.release();
    });

    it('--take-lease takes a live lease over; the old holder finds out at its next renewal or commit', async () => {
      const chain = randomUUID();
      const a = holder({ ttlMs: 60_000, job: 'vms' });
      await a.hold(store, chain, SUBJECT);
      const b = holder({ identity: otherHost(4), job: 'migrated' });
      await expect(b.hold(store, chain, SUBJECT)).rejects.toMatchObject({ code: 'CHAIN_LEASED' });
      expect(await b.hold(store, chain, SUBJECT, true)).toMatchObject({ generation: 2, host: 'other-host-4' });
      const e = await refusal(a.confirm());
      expect(e).toMatchObject({ code: 'CHAIN_LEASED' });
      expect(e.message).toMatch(/leased by host other-host-4 pid 40004 \(job migrated, volume vg0\/vm1\)/);
      expect(a.record).toBeNull();
      // Letting go of a lost lease leaves the new holder's alone.
      await a.release();
      expect(await readLease(store, chain)).toMatchObject({ token: b.token, released: false });
      await b.release();
    });

    it('takers racing for one expired lease, or forcing one live lease: exactly one wins, the others are refused naming it', async () => {
      for (const [round, expiresInMs, take] of [[1, -1000, false], [2, -1, false], [3, 3_600_000, true]] as const) {
        const chain = randomUUID();
        await plant(store, chain, 4, { expiresInMs, host: `stuck-${round}` });
        const racers = Array.from({ length: 6 }, (_, i) => holder({ identity: otherHost(100 * round + i) }));
        const results = await Promise.allSettled(racers.map((h) => h.hold(store, chain, SUBJECT, take)));
        const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [racers[i]] : []));
        expect(won, `round ${round}`).toHaveLength(1);
        const winner = (await readLease(store, chain))!;
        expect(winner.token).toBe(won[0].token);
        expect(winner.generation).toBe(5);
        for (const r of results) {
          if (r.status === 'rejected') {
            expect(r.reason).toMatchObject({ code: 'CHAIN_LEASED' });
            expect(String(r.reason.message)).toMatch(new RegExp(`leased by host ${winner.host} pid ${winner.pid} |was just leased by another writer`));
          }
        }
        expect(await leaseMarkers(store, chain)).toEqual([leaseName(5)]);
        await won[0].release();
      }
    });

    it("a live lease of a process of this host that is gone is free at once; discarded, no lease is left; an unreadable one holds until forced", async () => {
      const chain = randomUUID();
      const me = localIdentity();
      await plant(store, chain, 2, { expiresInMs: 3_600_000, host: me.host, machineId: me.machineId, pid: deadPid() });
      const a = holder();
      expect(await a.hold(store, chain, SUBJECT)).toMatchObject({ generation: 3, pid: process.pid });
      await a.discard();
      expect(await leaseMarkers(store, chain)).toEqual([]);
      expect(await readLease(store, chain)).toBeNull();

      // A lease this version cannot read holds the chain until taken over by force.
      expect(await store.createMarker(chain, leaseName(3), '{"version": 2, "future": true}\n')).toBe(true);
      const b = holder({ identity: otherHost(5) });
      const e = await refusal(b.hold(store, chain, SUBJECT));
      expect(e).toMatchObject({ code: 'CHAIN_LEASED' });
      expect(e.message).toMatch(/has a lease this thinarchive cannot read \(\.lease\.0000000003: another version's, or damaged\)/);
      await expect(checkLease(store, chain, b)).rejects.toMatchObject({ code: 'CHAIN_LEASED' });
      expect(await b.hold(store, chain, SUBJECT, true)).toMatchObject({ generation: 4 });
      expect(await leaseMarkers(store, chain)).toEqual([leaseName(4)]);
      await b.release();
    });
  });
}

describeLeases('directory', async () => {
  const t = await tempDir('lease-dir');
  return { store: new DirectoryStore(t.path), cleanup: () => t.remove() };
});

describe.skipIf(!ssh.ok)('ssh', () => {
  describeLeases('ssh://', async () => {
    const s = await sshdStarted!;
    const root = `${s.dir}/lease store's "$HOME"`;
    await mkdir(root, { recursive: true });
    return { store: await openStore(s.url(root), { sshOptions: s.sshOptions }), cleanup: () => rm(root, { recursive: true, force: true }) };
  });
});

describe.skipIf(!ceph)('s3', () => {
  describeLeases('s3:// (Ceph radosgw)', async () => {
    const c = ceph!;
    const raw = rawClient(c);
    const bucket = await newBucket(raw, 'lease');
    raw.destroy();
    const store = new S3Store(`s3://${bucket}/fleet`, {
      s3Endpoint: c.endpoint, s3ClientConfig: { region: c.region, credentials: { accessKeyId: c.accessKey, secretAccessKey: c.secretKey } },
    });
    return { store, cleanup: async () => {} };
  });
});

describe('a send that starts a chain', () => {
  it('takes the lease only at its commit: cancelled before, it leaves no lease and no chain directory', async () => {
    const t = await tempDir('lease-new');
    try {
      const img = t.join('vm1.img');
      await writeFile(img, randomBytes(8 << 20));
      const store = t.join('store');
      await mkdir(store);
      const stop = new AbortController();
      let during: string[] | undefined;
      const sent = send({
        image: img, to: store, level: 1, signal: stop.signal,
        onProgress: () => {
          during ??= readdirSync(store, { recursive: true }).map(String);
          stop.abort();
        },
      });
      await expect(sent).rejects.toMatchObject({ code: 'ABORTED' });
      // While it wrote: its temporary file, no lease.
      expect(during!.some((n) => n.includes('.tna.tmp-'))).toBe(true);
      expect(during!.filter((n) => n.includes('.lease.'))).toEqual([]);
      expect(await readdir(store)).toEqual([]);
      // Sent to the end, it holds the chain only at the commit and lets go after.
      const r = await send({ image: img, to: store, level: 1 });
      expect(await readLease(new DirectoryStore(store), r.chainId)).toMatchObject({ generation: 2, released: true, volume: 'vm1.img', source: img, job: null });
    } finally {
      await t.remove();
    }
  });
});

describe('CLI: send into a leased chain, --take-lease, list', () => {
  it('send is refused with exit 4 and one line while another writer holds the chain; --take-lease takes it; list shows host, volume and lease', async () => {
    const t = await tempDir('lease-cli');
    try {
      const img = t.join('vm1.img');
      await writeFile(img, randomBytes(1 << 20));
      const storeDir = t.join('store');
      const full = JSON.parse((await runOk(['send', '--image', img, '--to', storeDir, '--json'])).stdout) as { chainId: string };
      const chain = full.chainId;
      const delta = t.join('delta.xml');
      await writeFile(delta, '<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="16">\n  <diff left="1" right="2">\n    <different begin="0" length="1"/>\n  </diff>\n</superblock>\n');
      const incr = ['send', '--image', img, '--changes', delta, '--parent', storeDir, '--to', storeDir, '--json'];

      // This test process holds the chain, as a daemon of this host would.
      const store = new DirectoryStore(storeDir);
      const mine = new ChainLeaseHolder({ job: 'vms', ttlMs: 60_000 });
      await mine.hold(store, chain, { volume: 'vg0/vm1', source: '/dev/vg0/vm1' });
      const refused = await run(incr);
      const line = expectFailure(refused, 4);
      expect(line).toMatch(new RegExp(`^thinarchive: chain ${chain} in .* is leased by host ${hostname()} \\(this host\\) pid ${process.pid} \\(job vms, volume vg0/vm1\\) until ${ISO}; `));
      expect((await readdir(t.join('store', chain))).filter((n) => n.endsWith('.tna'))).toHaveLength(1);

      const listed = JSON.parse((await runOk(['list', storeDir, '--json'])).stdout) as { chainId: string; host: string; volume: string; lease: Record<string, unknown> }[];
      expect(listed).toHaveLength(1);
      expect(listed[0]).toMatchObject({ chainId: chain, host: hostname(), volume: 'vm1.img', lease: { state: 'held', host: hostname(), pid: process.pid, job: 'vms', volume: 'vg0/vm1' } });
      expect((await runOk(['list', storeDir])).stdout).toMatch(new RegExp(`host ${hostname()} .*\\n  lease: held by host ${hostname()} pid ${process.pid} \\(job vms, volume vg0/vm1\\) until ${ISO}`));

      await runOk([...incr, '--take-lease']);
      await expect(mine.confirm()).rejects.toMatchObject({ code: 'CHAIN_LEASED' });
      const after = JSON.parse((await runOk(['list', storeDir, '--json'])).stdout) as { lease: { state: string; job: string | null; volume: string } }[];
      expect(after[0].lease).toMatchObject({ state: 'released', job: null, volume: 'vm1.img' });
      // Free again: a plain send goes ahead.
      await runOk(incr);
      expect((await readdir(t.join('store', chain))).filter((n) => n.endsWith('.tna'))).toHaveLength(3);
      await mine.release();
      expect(await leaseMarkers(store, chain)).toHaveLength(1);
    } finally {
      await t.remove();
    }
  });
});
