/**
 * The s3:// store against a real Ceph radosgw on 127.0.0.1 (test/servers/ceph.ts): the store
 * conformance suite, multipart uploads, ranged reads, write-once, object lock, interrupted and dropped
 * uploads, and clear errors for wrong credentials, a missing bucket and an unreachable endpoint.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { GetObjectRetentionCommand, HeadObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArchiveFile } from '../../src/archive/reader.js';
import { ThinarchiveError } from '../../src/errors.js';
import { openStore } from '../../src/store/open.js';
import { parseS3Url, partSizeFor, S3Store, type S3StoreOptions } from '../../src/store/s3.js';
import { cephOrSkip } from '../servers/ceph.js';
import { describeStoreConformance, makeArchive, storeAndCommit, writeAll } from './conformance.js';
import { DropProxy, incompleteUploads, newBucket, rawClient } from './s3-helpers.js';

const ceph = await cephOrSkip();
const MIB = 1 << 20;

let raw: S3Client;
beforeAll(() => {
  if (ceph) raw = rawClient(ceph);
});
afterAll(() => raw?.destroy());

/** A store on the test gateway with explicit endpoint and keys (not the environment). */
function s3Store(bucket: string, prefix: string, o: S3StoreOptions = {}): S3Store {
  const c = ceph!;
  return new S3Store(`s3://${bucket}/${prefix}`, {
    s3Endpoint: c.endpoint,
    s3PartSize: 5 * MIB,
    ...o,
    s3ClientConfig: { region: c.region, credentials: { accessKeyId: c.accessKey, secretAccessKey: c.secretKey }, ...o.s3ClientConfig },
  });
}

/** One-line, typed, no stack trace in the message. */
function expectOneLine(e: unknown, re: RegExp): void {
  expect(e).toBeInstanceOf(ThinarchiveError);
  const msg = (e as Error).message;
  expect(msg).toMatch(re);
  expect(msg).not.toMatch(/\n|\s+at\s+\S+\s+\(|UnknownError/);
}

async function failure(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a failure');
}

describe('s3 URL parsing and part sizes (pure logic)', () => {
  it('parses bucket and prefix, rejects a URL without a bucket', () => {
    expect(parseS3Url('s3://bkt/a/b/')).toEqual({ bucket: 'bkt', prefix: 'a/b' });
    expect(parseS3Url('s3://bkt')).toEqual({ bucket: 'bkt', prefix: '' });
    expect(() => parseS3Url('s3:///x')).toThrow(/expected s3:\/\/bucket/);
  });
  it('part size doubles every 1000 parts up to 128 MiB, so 10000 parts hold about 860 GiB', () => {
    expect(partSizeFor(1, 8 * MIB)).toBe(8 * MIB);
    expect(partSizeFor(1001, 8 * MIB)).toBe(16 * MIB);
    expect(partSizeFor(10_000, 8 * MIB)).toBe(128 * MIB);
    let total = 0;
    for (let n = 1; n <= 10_000; n++) total += partSizeFor(n, 8 * MIB);
    expect(total).toBeGreaterThan(850 * 1024 * MIB);
  });
});

describe.skipIf(!ceph)('s3 store (Ceph radosgw)', () => {
  describeStoreConformance('s3:// (credentials and endpoint from AWS_* variables)', async () => {
    // The SDK's default chain: keys, region and AWS_ENDPOINT_URL_S3 from the environment.
    Object.assign(process.env, ceph!.env());
    const bucket = await newBucket(raw, 'conf');
    const prefix = 'backups/host1';
    return {
      store: await openStore(`s3://${bucket}/${prefix}`),
      cleanup: async () => {},
      leftovers: () => incompleteUploads(raw, bucket, `${prefix}/`),
    };
  });

  describe('multipart, ranged reads, write-once', () => {
    let bucket: string;
    let store: S3Store;
    const chain = randomUUID();
    let big: { bytes: Buffer; archiveId: string };
    beforeAll(async () => {
      bucket = await newBucket(raw, 'mp');
      store = s3Store(bucket, 'p');
      big = await makeArchive(chain, 0, 3300); // about 13 MiB: three 5 MiB parts
    });
    afterAll(() => store?.close());

    it('stores an archive larger than one part as a multipart upload and reads it back by range and stream', async () => {
      const p = await store.createArchive(chain, 0, big.archiveId);
      await writeAll(p, big.bytes, 1 << 20);
      expect(await store.chainArchives(chain)).toEqual([]);
      expect(await incompleteUploads(raw, bucket)).toHaveLength(1); // uploading, not visible
      await p.commit();
      const head = await raw.send(new HeadObjectCommand({ Bucket: bucket, Key: `p/${chain}/0000000000-${big.archiveId}.tna` }));
      expect(head.ContentLength).toBe(big.bytes.length);
      expect(head.ETag).toMatch(/-3"$/); // a multipart object of 3 parts
      expect(await incompleteUploads(raw, bucket)).toEqual([]);
      const [a] = await store.chainArchives(chain);
      expect(a.size).toBe(big.bytes.length);
      const src = await store.openArchive({ ...a, size: undefined }); // size from HeadObject
      try {
        expect(src.size).toBe(big.bytes.length);
        for (const [off, len] of [[5 * MIB - 7, 14], [10 * MIB - 1, 2], [0, 1], [big.bytes.length - 1, 1], [3 * MIB, 4 * MIB]]) {
          expect(Buffer.from(await src.read(off, len)).equals(big.bytes.subarray(off, off + len))).toBe(true);
        }
        expect((await src.read(big.bytes.length, 10)).length).toBe(0);
        const parts: Buffer[] = [];
        for await (const c of src.stream(5 * MIB + 3)) parts.push(Buffer.from(c));
        expect(Buffer.concat(parts).equals(big.bytes.subarray(5 * MIB + 3))).toBe(true);
      } finally {
        await src.close();
      }
      const f = await ArchiveFile.openSource(await store.openArchive(a));
      try {
        expect((await f.preflight()).dataBlocks).toBe(3300);
      } finally {
        await f.close();
      }
    });

    it('a multipart commit over an existing archive is refused (ARCHIVE_EXISTS), the original stays and the upload is aborted', async () => {
      const p = await store.createArchive(chain, 0, big.archiveId);
      await writeAll(p, randomBytes(11 * MIB));
      const e = await failure(p.commit());
      expect(e).toMatchObject({ code: 'ARCHIVE_EXISTS', exitClass: 'unsafe' });
      await p.abort();
      expect(await incompleteUploads(raw, bucket)).toEqual([]);
      const [a] = await store.chainArchives(chain);
      const src = await store.openArchive(a);
      expect(Buffer.from(await src.read(big.bytes.length - 64, 64)).equals(big.bytes.subarray(-64))).toBe(true);
    });

    it('two writers of the same small archive: the second is refused by If-None-Match (412)', async () => {
      const a = await makeArchive(chain, 1, 2, big.archiveId);
      const p1 = await store.createArchive(chain, 1, a.archiveId);
      const p2 = await store.createArchive(chain, 1, a.archiveId);
      await writeAll(p1, a.bytes);
      await writeAll(p2, randomBytes(a.bytes.length));
      await p1.commit();
      expect(await failure(p2.commit())).toMatchObject({ code: 'ARCHIVE_EXISTS' });
      await p2.abort();
      const listed = await store.chainArchives(chain);
      expect(listed.map((x) => x.sequence)).toEqual([0, 1]);
      const src = await store.openArchive(listed[1]);
      expect(Buffer.from(await src.read(0, a.bytes.length)).equals(a.bytes)).toBe(true);
    });

    it('multipart writers racing for one sequence (Ceph ignores If-None-Match on the complete): exactly one publishes', async () => {
      const racers = Array.from({ length: 4 }, () => randomUUID());
      const pending = await Promise.all(racers.map((id) => store.createArchive(chain, 5, id)));
      await Promise.all(pending.map((p) => writeAll(p, randomBytes(6 * MIB), 1 << 20)));
      const results = await Promise.allSettled(pending.map((p) => p.commit()));
      await Promise.all(pending.map((p) => p.abort()));
      const won = racers.filter((_, i) => results[i].status === 'fulfilled');
      expect(won).toHaveLength(1);
      for (const r of results) if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: 'CHAIN_FORK', exitClass: 'unsafe' });
      expect((await store.chainArchives(chain)).filter((a) => a.sequence === 5).map((a) => a.archiveId)).toEqual(won);
      expect(await incompleteUploads(raw, bucket)).toEqual([]);
    });

    it('abort in the middle of a multipart upload leaves nothing: no object, no incomplete upload', async () => {
      const id = randomUUID();
      const p = await store.createArchive(chain, 9, id);
      await writeAll(p, randomBytes(12 * MIB));
      expect(await incompleteUploads(raw, bucket)).toHaveLength(1);
      await p.abort();
      await p.abort();
      expect(await incompleteUploads(raw, bucket)).toEqual([]);
      expect((await store.chainArchives(chain)).map((x) => x.archiveId)).not.toContain(id);
    });
  });

  describe('interrupted writers', () => {
    it('an upload whose writer vanished is invisible, kept while fresh, aborted by the next writer once stale', async () => {
      const bucket = await newBucket(raw, 'stale');
      const chain = randomUUID();
      const dead = s3Store(bucket, 'x');
      const p = await dead.createArchive(chain, 0, randomUUID());
      await writeAll(p, randomBytes(11 * MIB)); // two parts sent, then the writer is gone: no commit, no abort
      await dead.close();
      expect(await incompleteUploads(raw, bucket)).toHaveLength(1);
      const next = s3Store(bucket, 'x', { s3StaleUploadSeconds: 3 });
      try {
        // Fresh (its last part is seconds old): could be a live writer on another host; left alone.
        const a = await makeArchive(chain, 0, 2);
        await storeAndCommit(next, chain, 0, a);
        expect(await incompleteUploads(raw, bucket)).toHaveLength(1);
        expect((await next.chainArchives(chain)).map((x) => x.archiveId)).toEqual([a.archiveId]);
        await new Promise((r) => setTimeout(r, 4000));
        const b = await makeArchive(chain, 1, 2, a.archiveId);
        await storeAndCommit(next, chain, 1, b);
        expect(await incompleteUploads(raw, bucket)).toEqual([]);
        expect((await next.chainArchives(chain)).map((x) => x.sequence)).toEqual([0, 1]);
      } finally {
        await next.close();
      }
    });

    it('sweep aborts a stale upload of its chain only', async () => {
      const bucket = await newBucket(raw, 'sweep');
      const [c1, c2] = [randomUUID(), randomUUID()];
      const dead = s3Store(bucket, 'x');
      for (const c of [c1, c2]) await writeAll(await dead.createArchive(c, 0, randomUUID()), randomBytes(11 * MIB)); // two parts each, then gone
      await dead.close();
      expect(await incompleteUploads(raw, bucket)).toHaveLength(2);
      const fresh = s3Store(bucket, 'x');
      const stale = s3Store(bucket, 'x', { s3StaleUploadSeconds: 0 });
      try {
        expect(await fresh.sweep(c1)).toEqual([]); // the default stale age: could be a live writer
        const swept = await stale.sweep(c1);
        expect(swept, swept.join(' ')).toHaveLength(1);
        expect(swept[0]).toContain(c1);
        const left = await incompleteUploads(raw, bucket);
        expect(left).toHaveLength(1);
        expect(left[0]).toContain(c2);
      } finally {
        await Promise.all([fresh.close(), stale.close()]);
      }
    });

    it('connection dropped mid-upload: a clear one-line error, nothing visible; cleaned up after the network is back', async () => {
      const bucket = await newBucket(raw, 'drop');
      const chain = randomUUID();
      const proxy = await new DropProxy(ceph!.port).start();
      const id = randomUUID();
      const viaProxy = s3Store(bucket, 'd', { s3Endpoint: proxy.url, s3ClientConfig: { maxAttempts: 2 } });
      const q = await viaProxy.createArchive(chain, 0, id);
      await writeAll(q, randomBytes(11 * MIB)); // parts 1 and 2 on their way or stored
      await proxy.drop();
      const e = await failure((async () => {
        await writeAll(q, randomBytes(6 * MIB));
        await q.commit();
      })());
      expectOneLine(e, /cannot (upload part|reach|complete|check).*(connection refused|connection reset|closed)/);
      expect((e as ThinarchiveError).exitClass).toBe('runtime');
      await q.abort(); // cannot reach the server: best effort, no error
      await proxy.restore();
      expect(await viaProxy.chainArchives(chain)).toEqual([]);
      const listed = await raw.send(new ListObjectsV2Command({ Bucket: bucket }));
      expect(listed.KeyCount ?? 0).toBe(0);
      // The next writer (stale age 0 here) aborts what the dropped one left.
      const left = await incompleteUploads(raw, bucket);
      expect(left).toHaveLength(1);
      const next = s3Store(bucket, 'd', { s3Endpoint: proxy.url, s3StaleUploadSeconds: 0 });
      const a = await makeArchive(chain, 0, 2);
      await storeAndCommit(next, chain, 0, a);
      expect(await incompleteUploads(raw, bucket)).toEqual([]);
      expect((await next.chainArchives(chain)).map((x) => x.archiveId)).toEqual([a.archiveId]);
      await Promise.all([viaProxy.close(), next.close(), proxy.drop()]);
    });
  });

  describe('object lock (--retain-days)', () => {
    it('archives get COMPLIANCE retention (single put and multipart); deleting one is refused by the server and reported in one line', async () => {
      const bucket = await newBucket(raw, 'lock', true);
      const chain = randomUUID();
      const store = s3Store(bucket, 'l', { retainDays: 2 });
      try {
        const small = await makeArchive(chain, 0, 2);
        await storeAndCommit(store, chain, 0, small);
        const large = await makeArchive(chain, 1, 1500, small.archiveId); // about 6 MiB: multipart
        await storeAndCommit(store, chain, 1, large);
        const listed = await store.chainArchives(chain);
        expect(listed.map((a) => a.sequence)).toEqual([0, 1]);
        for (const a of listed) {
          const r = await raw.send(new GetObjectRetentionCommand({ Bucket: bucket, Key: `l/${chain}/${a.name}` }));
          expect(r.Retention?.Mode).toBe('COMPLIANCE');
          const days = (r.Retention!.RetainUntilDate!.getTime() - Date.now()) / 86_400_000;
          expect(days).toBeGreaterThan(1.9);
          expect(days).toBeLessThan(2.01);
          const e = await failure(store.deleteArchive(a));
          expectOneLine(e, /^cannot delete s3:\/\/.+: protected by object lock \(COMPLIANCE\) until \d{4}-/);
          expect((e as ThinarchiveError).code).toBe('S3_OBJECT_LOCKED');
        }
        expect((await store.chainArchives(chain)).map((a) => a.sequence)).toEqual([0, 1]);
      } finally {
        await store.close();
      }
    });

    it('--retain-days on a bucket without object lock: a clear error before anything is written', async () => {
      const bucket = await newBucket(raw, 'nolock');
      const store = s3Store(bucket, 'n', { retainDays: 1 });
      const e = await failure(store.createArchive(randomUUID(), 0, randomUUID()));
      expectOneLine(e, /--retain-days needs a bucket with object lock enabled; bucket ta-nolock-\w+ has none/);
      expect(await incompleteUploads(raw, bucket)).toEqual([]);
      await store.close();
    });

    it('without retention, deleteArchive really deletes (no delete marker hiding a version)', async () => {
      const bucket = await newBucket(raw, 'del', true);
      const chain = randomUUID();
      const store = s3Store(bucket, '');
      const a = await makeArchive(chain, 0, 2);
      await storeAndCommit(store, chain, 0, a);
      await store.deleteArchive((await store.chainArchives(chain))[0]);
      expect(await store.chainArchives(chain)).toEqual([]);
      const { ListObjectVersionsCommand } = await import('@aws-sdk/client-s3');
      const v = await raw.send(new ListObjectVersionsCommand({ Bucket: bucket }));
      // Only the sequence's claim stays (it is never deleted: store/types.ts).
      expect([...(v.Versions ?? []), ...(v.DeleteMarkers ?? [])].map((x) => x.Key)).toEqual([`${chain}/.0000000000.seq`]);
      await store.close();
    });
  });

  describe('errors are one clear line', () => {
    it('wrong secret key, unknown access key, missing bucket, unreachable endpoint', async () => {
      const bucket = await newBucket(raw, 'err');
      const wrongSecret = s3Store(bucket, 'e', { s3ClientConfig: { credentials: { accessKeyId: ceph!.accessKey, secretAccessKey: 'wrong' } } });
      // Rejected credentials name the store, not the step (STORE_AUTH): listing, creating an archive.
      const e1 = await failure(wrongSecret.listChains());
      expectOneLine(e1, /^s3:\/\/ta-err-\w+\/e \(endpoint http:\/\/127\.0\.0\.1:\d+\) rejected the credentials: the request signature was rejected: wrong secret key/);
      expect(e1).toMatchObject({ code: 'STORE_AUTH', exitClass: 'runtime' });
      const wrongKey = s3Store(bucket, 'e', { s3ClientConfig: { credentials: { accessKeyId: 'NOSUCHKEY', secretAccessKey: 'x' } } });
      const e2 = await failure(wrongKey.createArchive(randomUUID(), 0, randomUUID()));
      expectOneLine(e2, /^s3:\/\/ta-err-\w+\/e \(endpoint [^)]+\) rejected the credentials: the access key is not known to the server/);
      expect(e2).toMatchObject({ code: 'STORE_AUTH' });
      const noBucket = s3Store('ta-no-such-bucket-here', 'e');
      expectOneLine(await failure(noBucket.listChains()), /bucket ta-no-such-bucket-here\): no such bucket$/);
      const proxy = await new DropProxy(ceph!.port).start();
      const port = proxy.port;
      await proxy.drop(); // a port where nothing listens
      const unreachable = s3Store(bucket, 'e', { s3Endpoint: `http://127.0.0.1:${port}`, s3ClientConfig: { maxAttempts: 1 } });
      const e4 = await failure(unreachable.listChains());
      expectOneLine(e4, new RegExp(`cannot reach http://127.0.0.1:${port}: connection refused`));
      expect((e4 as ThinarchiveError).exitClass).toBe('runtime');
      await Promise.all([wrongSecret.close(), wrongKey.close(), noBucket.close(), unreachable.close()]);
    });
  });
});
