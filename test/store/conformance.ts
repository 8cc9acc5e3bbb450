/**
 * The conformance suite every archive store must pass (directory, ssh://, s3://). A store's test file
 * calls `describeStoreConformance(name, setup)`; `setup` gives a fresh, empty store and a cleanup.
 *
 * What it proves: archives written through `createArchive` list and read back byte for byte (whole,
 * streamed from an offset, and by range through `openArchive` + `ArchiveFile.openSource`); nothing
 * is listed before `commit`; `abort` and an interrupted writer leave nothing listed; `commit` never
 * replaces an archive; chains are listed separately and in sequence order; `deleteArchive` removes;
 * writers racing for one sequence of a chain publish exactly one archive, the others fail with
 * CHAIN_FORK and leave nothing, while a merged archive (`replaces`) may take a claimed sequence; a
 * claim without its archive is removed by the next writer only when its owner is provably gone (this
 * host: its pid is dead or the host rebooted; another host: the chain's lease was taken over or has
 * expired), else
 * the writer is refused naming the owner; a writer whose claim was removed meanwhile withdraws its
 * archive.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArchiveFile, type ByteSource } from '../../src/archive/reader.js';
import { withPool } from '../../src/archive/pool.js';
import { writeArchive, type NewArchive } from '../../src/archive/writer.js';
import { ExtentKind } from '../../src/format/constants.js';
import { claimHooks, claimText, orphanMarkerName } from '../../src/store/claims.js';
import { claimFileName } from '../../src/store/layout.js';
import { ChainLeaseHolder, currentLease, LEASE_PREFIX, leaseName, localIdentity } from '../../src/store/lease.js';
import type { ArchiveStore, PendingArchive, StoredArchive } from '../../src/store/types.js';
import { waitFor } from '../helpers/cli.js';
import { deadPid } from '../helpers/host.js';
import { extents, listSource, MemorySink, MemorySource } from '../helpers/memory.js';

export interface StoreFixture {
  store: ArchiveStore;
  cleanup(): Promise<void>;
  /**
   * Optional: break the connection/process that is writing `p` the way a crash or network failure
   * would (e.g. kill the ssh client). The suite then checks that nothing is listed, and that the next
   * writer cleans up and succeeds.
   */
  dropWriter?(p: PendingArchive): Promise<void>;
  /**
   * Optional: whatever a crashed writer left behind that is not listed (temporary files, incomplete
   * uploads), so the suite can check it is cleaned up by the next write (or return [] if the store
   * leaves nothing).
   */
  leftovers?(): Promise<string[]>;
  /**
   * Optional: leave in `chainId` what a writer that is gone would have left (a temporary file whose
   * writer is dead), so the suite can check that `sweep` removes it.
   */
  plantDeadWriter?(chainId: string): Promise<void>;
}


const BS = 4096;

/** A sequence's claim in a chain directory (store/layout.ts): not a leftover. */
export const CLAIM = /^\.\d{10}\.seq$/;

/** A real archive of `blocks` random blocks (incompressible, so the archive is about that big). */
export async function makeArchive(chainId: string, sequence: number, blocks: number, parentId: string | null = null): Promise<{ bytes: Buffer; archiveId: string }> {
  const archiveId = randomUUID();
  const header: NewArchive = {
    full: parentId === null, blockSize: BS, archiveId, parentId, chainId, sequence, volumeUuid: '6f1d1a4e-2b4a-4a35-9a5e-0c3b1f0e8d11',
    volumeSize: blocks * BS, sourceChunkSize: BS, meta: { volume: { name: 'conformance' }, tool: 'thinarchive test' },
  };
  const sink = new MemorySink();
  const data = randomBytes(blocks * BS);
  await withPool((pool) => writeArchive({ header, pool, sink, source: new MemorySource(data), extents: listSource(extents([0, blocks, ExtentKind.DATA])) }), 2);
  return { bytes: sink.bytes(), archiveId };
}

/** Write `bytes` to `p` in chunks of `chunk` bytes. */
export async function writeAll(p: PendingArchive, bytes: Uint8Array, chunk = 256 * 1024): Promise<void> {
  for (let i = 0; i < bytes.length; i += chunk) await p.sink.write(bytes.subarray(i, Math.min(bytes.length, i + chunk)));
}

async function readAllOf(src: ByteSource, start = 0): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of src.stream(start)) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

export async function storeAndCommit(store: ArchiveStore, chainId: string, sequence: number, a: { bytes: Buffer; archiveId: string }): Promise<void> {
  const p = await store.createArchive(chainId, sequence, a.archiveId);
  try {
    await writeAll(p, a.bytes);
    await p.commit();
  } catch (e) {
    await p.abort();
    throw e;
  }
}

export function describeStoreConformance(name: string, setup: () => Promise<StoreFixture>): void {
  describe(`store conformance: ${name}`, () => {
    let fx: StoreFixture;
    let store: ArchiveStore;
    const chainA = randomUUID();
    const chainB = randomUUID();
    let big: { bytes: Buffer; archiveId: string }; // about 3 MiB: several read windows and upload chunks
    let small: { bytes: Buffer; archiveId: string }[];

    beforeAll(async () => {
      fx = await setup();
      store = fx.store;
      big = await makeArchive(chainA, 0, 750);
      small = [await makeArchive(chainA, 1, 3, big.archiveId), await makeArchive(chainA, 2, 2, big.archiveId)];
    });
    afterAll(async () => {
      await store?.close();
      await fx?.cleanup();
    });

    it('an empty store lists no chains', async () => {
      expect((await store.listChains()).filter((c) => c.archives.length > 0)).toEqual([]);
      expect(await store.chainArchives(chainA)).toEqual([]);
      await expect(store.onlyChain()).rejects.toMatchObject({ exitClass: 'usage' });
    });

    it('nothing is listed before commit; after commit the archive lists and reads back byte for byte', async () => {
      const p = await store.createArchive(chainA, 0, big.archiveId);
      await writeAll(p, big.bytes);
      expect(await store.chainArchives(chainA)).toEqual([]);
      await p.commit();
      const listed = await store.chainArchives(chainA);
      expect(listed.map((a) => [a.sequence, a.archiveId, a.chainId])).toEqual([[0, big.archiveId, chainA]]);
      expect(listed[0].name).toBe(`0000000000-${big.archiveId}.tna`);
      expect(listed[0].path).toBe(p.path);
      if (listed[0].size !== undefined) expect(listed[0].size).toBe(big.bytes.length);
      const src = await store.openArchive(listed[0]);
      try {
        expect(src.size).toBe(big.bytes.length);
        expect((await readAllOf(src)).equals(big.bytes)).toBe(true);
        const from = big.bytes.length - 1_234_567;
        expect((await readAllOf(src, from)).equals(big.bytes.subarray(from))).toBe(true);
        // Ranged reads: small, across a 1 MiB boundary, at the very end, and past the end.
        for (const [off, len] of [[0, 16], [(1 << 20) - 10, 20], [2_000_003, 70_000], [big.bytes.length - 5, 5]] as const) {
          expect(Buffer.from(await src.read(off, len)).equals(big.bytes.subarray(off, off + len))).toBe(true);
        }
        expect(Buffer.from(await src.read(big.bytes.length - 3, 10)).equals(big.bytes.subarray(big.bytes.length - 3))).toBe(true);
      } finally {
        await src.close();
      }
    });

    it('ArchiveFile.openSource reads header, trailer, map and records by range', async () => {
      const [a] = await store.chainArchives(chainA);
      const f = await ArchiveFile.openSource(await store.openArchive(a));
      try {
        expect(f.header.archiveId).toBe(big.archiveId);
        expect(f.header.chainId).toBe(chainA);
        const mapEnd = await f.preflight();
        expect(mapEnd.dataBlocks).toBe(750);
        const rec = await f.findRecord(700);
        expect(rec).toBeDefined();
        const r = await f.readRecordAt(rec!.offset);
        expect(r.type).toBe('data');
        expect(r.data!.firstBlock).toBeLessThanOrEqual(700);
      } finally {
        await f.close();
      }
    });

    it('commit refuses to replace an existing archive (ARCHIVE_EXISTS) and leaves it intact', async () => {
      const p = await store.createArchive(chainA, 0, big.archiveId);
      await writeAll(p, small[0].bytes);
      await expect(p.commit()).rejects.toMatchObject({ code: 'ARCHIVE_EXISTS', exitClass: 'unsafe' });
      await p.abort();
      await p.abort(); // more than once is fine
      const listed = await store.chainArchives(chainA);
      expect(listed).toHaveLength(1);
      const src = await store.openArchive(listed[0]);
      try {
        expect(src.size).toBe(big.bytes.length);
        expect(Buffer.from(await src.read(big.bytes.length - 100, 100)).equals(big.bytes.subarray(big.bytes.length - 100))).toBe(true);
      } finally {
        await src.close();
      }
    });

    it('abort leaves nothing listed', async () => {
      const p = await store.createArchive(chainB, 5, randomUUID());
      await writeAll(p, small[1].bytes);
      await p.abort();
      expect(await store.chainArchives(chainB)).toEqual([]);
      expect((await store.listChains()).filter((c) => c.archives.length > 0).map((c) => c.chainId)).toEqual([chainA]);
      // An abort without a single byte written, too.
      const q = await store.createArchive(chainB, 6, randomUUID());
      await q.abort();
      expect(await store.chainArchives(chainB)).toEqual([]);
    });

    it('lists archives in sequence order (whatever the commit order) and two chains separately', async () => {
      await storeAndCommit(store, chainA, 2, small[1]);
      await storeAndCommit(store, chainA, 1, small[0]);
      const b = await makeArchive(chainB, 0, 1);
      await storeAndCommit(store, chainB, 0, b);
      expect((await store.chainArchives(chainA)).map((a) => a.sequence)).toEqual([0, 1, 2]);
      expect((await store.chainArchives(chainB)).map((a) => a.archiveId)).toEqual([b.archiveId]);
      const chains = (await store.listChains()).filter((c) => c.archives.length > 0);
      expect(chains.map((c) => c.chainId).sort()).toEqual([chainA, chainB].sort());
      const a = chains.find((c) => c.chainId === chainA)!;
      expect(a.archives.map((x) => x.archiveId)).toEqual([big.archiveId, small[0].archiveId, small[1].archiveId]);
      await expect(store.onlyChain()).rejects.toThrow(/2 chains/);
    });

    it('deleteArchive removes one archive and leaves the others (checkDeletable agrees first)', async () => {
      const victim = (await store.chainArchives(chainB))[0];
      await store.checkDeletable([victim, ...(await store.chainArchives(chainA))]);
      await store.deleteArchive(victim);
      expect(await store.chainArchives(chainB)).toEqual([]);
      expect((await store.chainArchives(chainA)).map((a) => a.sequence)).toEqual([0, 1, 2]);
      const only = await store.onlyChain();
      expect(only.chainId).toBe(chainA);
      expect(only.archives).toHaveLength(3);
    });

    it('writers racing for one sequence: exactly one publishes, the others fail with CHAIN_FORK and leave nothing', async () => {
      const chainC = randomUUID();
      const full = await makeArchive(chainC, 0, 2);
      await storeAndCommit(store, chainC, 0, full);
      for (let round = 1; round <= 3; round++) {
        const racers = await Promise.all(Array.from({ length: 6 }, () => makeArchive(chainC, round, 2, full.archiveId)));
        const pending = await Promise.all(racers.map((r) => store.createArchive(chainC, round, r.archiveId)));
        await Promise.all(pending.map((p, i) => writeAll(p, racers[i].bytes)));
        const results = await Promise.allSettled(pending.map((p) => p.commit()));
        await Promise.all(pending.map((p) => p.abort()));
        const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [racers[i].archiveId] : []));
        expect(won).toHaveLength(1);
        for (const r of results) {
          if (r.status === 'rejected') {
            expect(r.reason).toMatchObject({ code: 'CHAIN_FORK', exitClass: 'unsafe' });
            // (a loser that looked before the winner's archive was visible names the winner's claim)
            expect(String(r.reason.message)).toMatch(new RegExp(`sequence ${round} of chain ${chainC} .*already taken by archive ${won[0]}(; this archive would fork the chain| \\(it is not in the store yet)`));
            expect(String(r.reason.message)).not.toContain('\n');
          }
        }
        expect((await store.chainArchives(chainC)).map((a) => [a.sequence, a.archiveId])).toEqual([[0, full.archiveId], ...Array.from({ length: round - 1 }, () => expect.anything()), [round, won[0]]]);
        if (fx.leftovers) expect(await fx.leftovers()).toEqual([]);
      }
      // Later, one after the other: still refused.
      const late = await makeArchive(chainC, 2, 2, full.archiveId);
      await expect(storeAndCommit(store, chainC, 2, late)).rejects.toMatchObject({ code: 'CHAIN_FORK' });
      // A merged archive takes a sequence its originals hold.
      const merged = await makeArchive(chainC, 1, 3, full.archiveId);
      const p = await store.createArchive(chainC, 1, merged.archiveId, { replaces: true });
      await writeAll(p, merged.bytes);
      await p.commit();
      expect((await store.chainArchives(chainC)).filter((a) => a.sequence === 1).map((a) => a.archiveId)).toContain(merged.archiveId);
      if (fx.leftovers) expect(await fx.leftovers()).toEqual([]);
    });

    it('sweep removes what a dead writer left in the chain, never a live writer\'s files', async () => {
      const chainE = randomUUID();
      const a = await makeArchive(chainE, 0, 2);
      const p = await store.createArchive(chainE, 0, a.archiveId);
      try {
        await writeAll(p, a.bytes.subarray(0, a.bytes.length >> 1));
        // A remote writer's file appears once its shell has started: wait for it, so the sweeps
        // below run beside a live writer's file (the point of the test), not before it exists.
        const live = fx.plantDeadWriter ? await waitFor(async () => { const l = await fx.leftovers!(); return l.length === 1 && l; }, 30_000, 100) : [];
        expect(await store.sweep(chainE)).toEqual([]);
        if (fx.plantDeadWriter) {
          await fx.plantDeadWriter(chainE);
          expect(await fx.leftovers!()).toHaveLength(2); // the live writer's and the dead one's
          const swept = await store.sweep(chainE);
          expect(swept).toHaveLength(1);
          expect(swept[0]).toContain(chainE);
          expect(await fx.leftovers!()).toEqual(live);
        }
        // The live writer goes on and publishes.
        await writeAll(p, a.bytes.subarray(a.bytes.length >> 1));
        await p.commit();
      } finally {
        await p.abort();
      }
      expect((await store.chainArchives(chainE)).map((x) => x.archiveId)).toEqual([a.archiveId]);
      if (fx.leftovers) expect(await fx.leftovers()).toEqual([]);
      expect(await store.sweep(randomUUID())).toEqual([]); // a chain the store does not have
    });

    it('a writer that stops mid-way (no commit) never lists; a dropped connection is cleaned up by the next writer', async () => {
      const id = randomUUID();
      const p = await store.createArchive(chainB, 1, id);
      await writeAll(p, big.bytes.subarray(0, 1_500_000));
      expect(await store.chainArchives(chainB)).toEqual([]);
      if (fx.dropWriter) {
        await fx.dropWriter(p);
        // The writer notices: either a write or the commit fails; an abort after that is safe.
        let failed = false;
        try {
          await writeAll(p, big.bytes.subarray(1_500_000));
          await p.commit();
        } catch {
          failed = true;
        }
        expect(failed).toBe(true);
        await p.abort().catch(() => {});
      } else {
        await p.abort();
      }
      expect(await store.chainArchives(chainB)).toEqual([]);
      const listedIds = (await store.listChains()).flatMap((c) => c.archives.map((a) => a.archiveId));
      expect(listedIds).not.toContain(id);
      // The next write in the same chain works and leaves no leftovers of the dead one.
      const next = await makeArchive(chainB, 1, 2);
      await storeAndCommit(store, chainB, 1, next);
      expect((await store.chainArchives(chainB)).map((a) => a.archiveId)).toEqual([next.archiveId]);
      if (fx.leftovers) expect(await fx.leftovers()).toEqual([]);
    });

    it('an orphan claim (no archive) goes only when its owner is provably gone; a writer whose claim went withdraws its archive', async () => {
      const chainD = randomUUID();
      const full = await makeArchive(chainD, 0, 2);
      await storeAndCommit(store, chainD, 0, full);
      const subject = { volume: 'conformance', source: null };
      const me = new ChainLeaseHolder();
      const commitAs = async (sequence: number): Promise<string> => {
        const a = await makeArchive(chainD, sequence, 2, full.archiveId);
        const p = await store.createArchive(chainD, sequence, a.archiveId, { leaseToken: me.token });
        try {
          await writeAll(p, a.bytes);
          await p.commit();
        } finally {
          await p.abort();
        }
        return a.archiveId;
      };
      const orphan = async (sequence: number, text: string): Promise<void> => {
        expect(await store.createMarker(chainD, claimFileName(sequence), text)).toBe(true);
      };
      const orphans = async (sequence: number): Promise<string[]> => store.listMarkers(chainD, `${claimFileName(sequence)}.orphan-`);

      // Another host's writer holding the chain's lease: refused, naming it; nothing removed.
      const other = new ChainLeaseHolder({ identity: { host: 'elsewhere', machineId: 'f'.repeat(32), pid: 4242 } });
      await other.hold(store, chainD, subject);
      const lost = randomUUID();
      await orphan(1, claimText(lost, other.token, { host: 'elsewhere', machineId: 'f'.repeat(32), pid: 4242 }));
      const refused = commitAs(1);
      await expect(refused).rejects.toMatchObject({ code: 'CHAIN_FORK' });
      await expect(refused).rejects.toThrow(new RegExp(`already taken by archive ${lost} \\(it is not in the store yet: its writer, host elsewhere pid 4242 \\(claimed [^)]+\\) on another host still holds the chain's lease`));
      expect(await store.readMarker(chainD, claimFileName(1))).toContain(lost);
      // Its lease taken over: the claim is removed (recorded beside it) and the sequence published.
      await me.hold(store, chainD, subject, true);
      const s1 = await commitAs(1);
      expect((await store.chainArchives(chainD)).map((a) => [a.sequence, a.archiveId])).toEqual([[0, full.archiveId], [1, s1]]);
      expect(await orphans(1)).toEqual([orphanMarkerName(1, lost)]);
      expect(JSON.parse((await store.readMarker(chainD, orphanMarkerName(1, lost)))!).why).toMatch(/host elsewhere pid 4242 .* lost the chain's lease/);

      // This host: a live pid refuses; a dead pid, or another boot, frees the sequence.
      const here = localIdentity();
      const live = randomUUID();
      await orphan(2, claimText(live, null, { ...here, pid: process.ppid }));
      await expect(commitAs(2)).rejects.toThrow(new RegExp(`its writer, host ${here.host} pid ${process.ppid} \\(claimed [^)]+\\) of this host still runs`));
      await store.deleteMarker(chainD, claimFileName(2));
      const dead = deadPid();
      await orphan(2, claimText(randomUUID(), null, { ...here, pid: dead }));
      await commitAs(2);
      const rebooted = JSON.parse(claimText(randomUUID(), null, { ...here, pid: process.ppid }).split('\n')[1]);
      await orphan(3, `${rebooted.archiveId}\n${JSON.stringify({ ...rebooted, bootId: randomUUID() })}\n`);
      await commitAs(3);
      expect((await store.chainArchives(chainD)).map((a) => a.sequence)).toEqual([0, 1, 2, 3]);
      expect(await orphans(3)).toHaveLength(1);
      // A claim that names no owner (an older writer's) is never removed.
      await orphan(4, `${randomUUID()}\n`);
      await expect(commitAs(4)).rejects.toThrow(/the claim does not say who made it; if no send of this chain is running, remove .*\.0000000004\.seq/);
      await store.deleteMarker(chainD, claimFileName(4));

      // A writer stalled between its claim and its publish whose claim another writer removed as an
      // orphan (simulated in the hook): it withdraws its archive.
      const taker = randomUUID();
      claimHooks.afterClaim = async () => {
        claimHooks.afterClaim = undefined;
        await store.deleteMarker(chainD, claimFileName(4));
        await orphan(4, claimText(taker, null));
      };
      try {
        await expect(commitAs(4)).rejects.toThrow(new RegExp(`sequence 4 of chain ${chainD} .* is no longer claimed by this send \\(now archive ${taker}\\).*its archive is withdrawn`));
      } finally {
        claimHooks.afterClaim = undefined;
      }
      expect((await store.chainArchives(chainD)).map((a) => a.sequence)).toEqual([0, 1, 2, 3]);

      // Another host's writer whose own lease of the chain has expired: gone.
      await me.release();
      const cur = (await currentLease(store, chainD))!;
      const elsewhere = { host: 'elsewhere', machineId: 'f'.repeat(32), pid: 4343 };
      const lapsed = { ...cur.record!, ...elsewhere, generation: cur.generation + 1, token: randomUUID(), released: false, expires: new Date(Date.now() - 1000).toISOString() };
      expect(await store.createMarker(chainD, leaseName(lapsed.generation), `${JSON.stringify(lapsed)}\n`)).toBe(true);
      await store.deleteMarker(chainD, claimFileName(4));
      const expired = randomUUID();
      await orphan(4, claimText(expired, lapsed.token, elsewhere));
      await commitAs(4);
      expect((await store.chainArchives(chainD)).map((a) => a.sequence)).toEqual([0, 1, 2, 3, 4]);
      expect(JSON.parse((await store.readMarker(chainD, orphanMarkerName(4, expired)))!).why).toMatch(/^host elsewhere pid 4343 \(claimed [^)]+\): its lease of the chain is expired$/);

      await other.release();
      for (const n of [...await store.listMarkers(chainD, LEASE_PREFIX), ...await store.listMarkers(chainD, '.000000000')]) {
        if (!/^\.\d{10}\.seq$/.test(n)) await store.deleteMarker(chainD, n);
      }
    });
  });
}
