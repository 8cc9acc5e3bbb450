/**
 * The conformance suite every archive store must pass (directory, ssh://, s3://). A store's test file
 * calls `describeStoreConformance(name, setup)`; `setup` gives a fresh, empty store and a cleanup.
 *
 * What it proves: archives written through `createArchive` list and read back byte for byte (whole,
 * streamed from an offset, and by range through `openArchive` + `ArchiveFile.openSource`); nothing
 * is listed before `commit`; `abort` and an interrupted writer leave nothing listed; `commit` never
 * replaces an archive; chains are listed separately and in sequence order; `deleteArchive` removes;
 * writers racing for one sequence of a chain publish exactly one archive, the others fail with
 * CHAIN_FORK and leave nothing, while a merged archive (`replaces`) may take a claimed sequence.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArchiveFile, type ByteSource } from '../../src/archive/reader.js';
import { withPool } from '../../src/archive/pool.js';
import { writeArchive, type NewArchive } from '../../src/archive/writer.js';
import { ExtentKind } from '../../src/format/constants.js';
import type { ArchiveStore, PendingArchive, StoredArchive } from '../../src/store/types.js';
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
            expect(String(r.reason.message)).toMatch(new RegExp(`sequence ${round} of chain ${chainC} .*already taken by archive ${won[0]}; this archive would fork the chain`));
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
  });
}
