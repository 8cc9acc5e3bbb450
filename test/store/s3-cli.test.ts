/**
 * End to end through bin/thinarchive against the test Ceph radosgw: send a full archive (multipart:
 * larger than one 8 MiB part) and two incrementals to s3://bucket/prefix, list, verify, apply the
 * chain from S3 onto a new image (sha256 equal to the source), a send killed mid-upload (nothing
 * visible), and a wrong secret key (one clear line, exit 1). Credentials come from AWS_* variables;
 * the endpoint from --s3-endpoint in one half, from AWS_ENDPOINT_URL_S3 in the other.
 */
import { writeFileSync } from 'node:fs';
import { GetObjectRetentionCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, expectFailure, run, runOk, sha256, show, spawnCli, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, POOL_BLOCK, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';
import { S3Store } from '../../src/store/s3.js';
import { cephOrSkip } from '../servers/ceph.js';
import { incompleteUploads, newBucket, rawClient } from './s3-helpers.js';

const ceph = await cephOrSkip();
const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

describe.skipIf(!ceph)('CLI with an s3:// store (Ceph radosgw)', () => {
  let raw: S3Client;
  let dir: TempDir;
  let bucket: string;
  let url: string;
  let model: VolumeModel;
  let src: string;
  const rand = prng(7);
  const hashes: string[] = [];
  const ids: string[] = [];
  let chainId = '';
  /** Keys in the environment, endpoint on the command line. */
  let env: Record<string, string | undefined>;
  let envWithEndpoint: Record<string, string>;
  let endpointArgs: string[];

  beforeAll(async () => {
    raw = rawClient(ceph!);
    bucket = await newBucket(raw, 'cli');
    url = `s3://${bucket}/hosts/db1`;
    dir = await tempDir('s3-cli');
    src = dir.join('source.img');
    model = new VolumeModel(src, SIZE);
    model.write(0, noiseBytes(20 * MiB)); // incompressible: the full archive needs 3 parts of 8 MiB
    model.write(30 * MiB, textBytes(rand, 4 * MiB));
    model.writeZeroes(40 * MiB, MiB);
    model.snapshotDelta();
    hashes[0] = await sha256(src);
    envWithEndpoint = ceph!.env();
    const { AWS_ENDPOINT_URL_S3: _e, ...keysOnly } = envWithEndpoint;
    env = { ...keysOnly, AWS_ENDPOINT_URL_S3: undefined, AWS_ENDPOINT_URL: undefined };
    endpointArgs = ['--s3-endpoint', ceph!.endpoint];
  });
  afterAll(async () => {
    model?.close();
    await dir?.remove();
    raw?.destroy();
  });

  it('send --to s3:// (full, multipart) then two incrementals with an s3:// parent', async () => {
    const r = await runOk(['send', ...endpointArgs, '--image', src, '--to', url, '--json'], { env });
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ full: true, sequence: 0 });
    chainId = j.chainId;
    ids[0] = j.archiveId;
    expect(j.path).toBe(`${url}/${chainId}/0000000000-${j.archiveId}.tna`);
    const head = await raw.send(new HeadObjectCommand({ Bucket: bucket, Key: `hosts/db1/${chainId}/0000000000-${j.archiveId}.tna` }));
    expect(head.ContentLength).toBe(j.archiveBytes);
    expect(j.archiveBytes).toBeGreaterThan(16 * MiB);
    expect(head.ETag).toMatch(/-3"$/);
    for (let step = 1; step <= 2; step++) {
      for (let i = 0; i < 8; i++) model.write(Math.floor(rand() * (SIZE / POOL_BLOCK)) * POOL_BLOCK, textBytes(rand, POOL_BLOCK));
      model.write(step * 7 * MiB + 123, noiseBytes(3000));
      const delta = dir.join(`delta-${step}.xml`);
      writeFileSync(delta, model.snapshotDelta());
      hashes[step] = await sha256(src);
      // Endpoint from AWS_ENDPOINT_URL_S3 this time; the parent is the store URL (its newest archive).
      const s = await runOk(['send', '--image', src, '--changes', delta, '--parent', url, '--to', url, '--json'], { env: envWithEndpoint });
      const k = JSON.parse(s.stdout);
      expect(k).toMatchObject({ full: false, sequence: step, chainId, parentId: ids[step - 1] });
      ids[step] = k.archiveId;
    }
    expect(await incompleteUploads(raw, bucket)).toEqual([]);
  });

  it('list and verify read the chain from S3', async () => {
    const l = JSON.parse((await runOk(['list', url, '--json'], { env: envWithEndpoint })).stdout);
    expect(l).toHaveLength(1);
    expect(l[0].chainId).toBe(chainId);
    expect(l[0].archives.map((a: { archiveId: string; status: string }) => [a.archiveId, a.status])).toEqual(ids.map((id) => [id, 'complete']));
    const v = await run(['verify', url], { env: envWithEndpoint });
    expect(v.code, show(v)).toBe(0);
    expect(v.stdout).toMatch(/^verified: 3 archive\(s\), 0 finding\(s\)/m);
  });

  it('apply s3://… --to a new image reproduces the source exactly, and each step of the chain', async () => {
    const out = dir.join('restored.img');
    const r = await run(['apply', url, '--to', out, '--create'], { env: envWithEndpoint });
    expect(r.code, show(r)).toBe(0);
    expect(await sha256(out)).toBe(hashes[2]);
    // One archive by URL: the full one alone gives the first state.
    const first = dir.join('first.img');
    const r0 = await run(['apply', `${url}/${chainId}/0000000000-${ids[0]}.tna`, '--to', first, '--create'], { env: envWithEndpoint });
    expect(r0.code, show(r0)).toBe(0);
    expect(await sha256(first)).toBe(hashes[0]);
  });

  /**
   * Start a send of 48 MiB of noise (several parts) to s3://bucket/PREFIX and return once its
   * multipart upload shows on the server (or after 60 s): the process, its result, the uploads seen.
   */
  async function sendUntilUploading(prefix: string, image: string): Promise<{ child: ReturnType<typeof spawnCli>; res: ReturnType<typeof collect>; uploads: string[] }> {
    const m = new VolumeModel(image, 64 * MiB);
    m.write(0, noiseBytes(48 * MiB));
    m.close();
    const child = spawnCli(['send', ...endpointArgs, '--image', image, '--to', `s3://${bucket}/${prefix}`], { env });
    const res = collect(child, 120_000);
    const deadline = Date.now() + 60_000;
    let uploads: string[] = [];
    while (Date.now() < deadline) {
      uploads = await incompleteUploads(raw, bucket, `${prefix}/`);
      if (uploads.length) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    return { child, res, uploads };
  }

  it('a send killed mid-upload leaves no visible archive; its upload is removed by a later sweep once stale', async () => {
    const { child, res, uploads } = await sendUntilUploading('killed', dir.join('big.img'));
    expect(uploads).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 50)); // a part on the server (at 300 ms a quiet machine had finished the 50 MB upload)
    child.kill('SIGKILL');
    const done = await res;
    expect(done.signal).toBe('SIGKILL');
    const l = await run(['list', `s3://${bucket}/killed`, '--json'], { env: envWithEndpoint });
    const listed = l.code === 0 ? JSON.parse(l.stdout).flatMap((c: { archives: unknown[] }) => c.archives) : [];
    expect(listed).toEqual([]);
    expect(await incompleteUploads(raw, bucket, 'killed/')).toEqual(uploads);
    // A writer with the default stale age (1 h) leaves a fresh upload alone; one with 0 s removes it.
    const sweeper = new S3Store(`s3://${bucket}/killed`, { s3Endpoint: ceph!.endpoint, s3ClientConfig: { region: ceph!.region, credentials: { accessKeyId: ceph!.accessKey, secretAccessKey: ceph!.secretKey } } });
    expect(await sweeper.sweepStaleUploads()).toEqual([]);
    const now = new S3Store(`s3://${bucket}/killed`, { s3Endpoint: ceph!.endpoint, s3StaleUploadSeconds: 0, s3ClientConfig: { region: ceph!.region, credentials: { accessKeyId: ceph!.accessKey, secretAccessKey: ceph!.secretKey } } });
    expect(await now.sweepStaleUploads()).toEqual(uploads);
    expect(await incompleteUploads(raw, bucket, 'killed/')).toEqual([]);
    await Promise.all([sweeper.close(), now.close()]);
  });

  it('SIGINT mid-upload: exit 130, no archive, and the multipart upload is aborted (nothing left behind)', async () => {
    const { child, res } = await sendUntilUploading('interrupted', dir.join('big2.img'));
    child.kill('SIGINT');
    const done = await res;
    expect(done.code, show(done)).toBe(130);
    expect(await incompleteUploads(raw, bucket, 'interrupted/')).toEqual([]);
    const l = await run(['list', `s3://${bucket}/interrupted`, '--json'], { env: envWithEndpoint });
    const listed = l.code === 0 ? JSON.parse(l.stdout).flatMap((c: { archives: unknown[] }) => c.archives) : [];
    expect(listed).toEqual([]);
  });

  it('wrong secret key, no credentials at all, a missing bucket, --retain-days without object lock: one clear line each', async () => {
    // Rejected credentials read the same whichever step meets them first (listing for list and
    // send's fork check, a GET for info, the upload for a send into a fresh prefix): one line naming
    // the store, code STORE_AUTH, exit 1.
    const badEnv = { ...envWithEndpoint, AWS_SECRET_ACCESS_KEY: 'not-the-secret' };
    const authLine = new RegExp(`^thinarchive: ${url.replace(/[/.]/g, '\\$&')} \\(endpoint http://127\\.0\\.0\\.1:\\d+\\) rejected the credentials: `
      + 'the request signature was rejected: wrong secret key \\(check AWS_SECRET_ACCESS_KEY / the credentials file\\)$');
    for (const args of [['list', url], ['send', '--image', src, '--to', url], ['info', url], ['verify', url]]) {
      const bad = await run([...args, '--json'], { env: badEnv });
      const msg = expectFailure(bad, 1);
      expect(msg, args[0]).toMatch(authLine);
      expect(msg).not.toMatch(/cannot (list|read|store|claim)/);
      expect(JSON.parse(bad.stdout).error).toMatchObject({ code: 'STORE_AUTH', exitClass: 'runtime', exit: 1 });
      expect(bad.stderr).not.toMatch(/NodeVersionSupportWarning/);
    }
    const unknownKey = await run(['send', '--image', src, '--to', url], { env: { ...envWithEndpoint, AWS_ACCESS_KEY_ID: 'NOSUCHKEY0000000000X' } });
    expect(expectFailure(unknownKey, 1)).toMatch(/rejected the credentials: the access key is not known to the server \(check AWS_ACCESS_KEY_ID/);
    const none = await run(['list', url], {
      env: { ...envWithEndpoint, AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_PROFILE: undefined, HOME: dir.path, AWS_EC2_METADATA_DISABLED: 'true' },
    });
    expect(expectFailure(none, 1)).toMatch(/no S3 credentials found \(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/);
    const nob = await run(['send', '--image', src, '--to', `s3://ta-no-such-bucket-${Date.now()}/x`], { env: envWithEndpoint });
    expect(expectFailure(nob, 1)).toMatch(/no such bucket/);
    const lock = await run(['send', '--retain-days', '3', '--image', src, '--to', `s3://${bucket}/locked`], { env: envWithEndpoint });
    expect(expectFailure(lock, 2)).toMatch(/--retain-days needs a bucket with object lock enabled/);
  });

  it('send --retain-days N to a bucket with object lock: the archive is retained in COMPLIANCE mode for N days', async () => {
    const locked = await newBucket(raw, 'clilock', true);
    const r = await runOk(['send', '--retain-days', '3', '--image', src, '--to', `s3://${locked}/x`, '--json'], { env: envWithEndpoint });
    const j = JSON.parse(r.stdout);
    const key = (j.path as string).slice(`s3://${locked}/`.length);
    const ret = await raw.send(new GetObjectRetentionCommand({ Bucket: locked, Key: key }));
    expect(ret.Retention?.Mode).toBe('COMPLIANCE');
    expect((ret.Retention!.RetainUntilDate!.getTime() - Date.now()) / 86_400_000).toBeGreaterThan(2.9);
  });
});
