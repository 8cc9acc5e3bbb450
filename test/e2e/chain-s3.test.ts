/**
 * Chain management against an s3:// store (the test Ceph radosgw): restore to each point, info,
 * verify --against, merge and prune read archives through ranged GETs and write the merged archive
 * and delete the originals through the store. On a bucket whose archives are under object-lock
 * retention, prune and merge are refused before anything is written, and the chain still restores.
 */
import { writeFileSync } from 'node:fs';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectFailure, run, runOk, sha256, show, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, POOL_BLOCK, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';
import { cephOrSkip } from '../servers/ceph.js';
import { newBucket, rawClient } from '../store/s3-helpers.js';

const ceph = await cephOrSkip();
const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

describe.skipIf(!ceph)('chain management on an s3:// store (Ceph radosgw)', () => {
  let raw: S3Client;
  let tmp: TempDir;
  let env: Record<string, string>;

  /** A chain of four points (full + 3 incrementals) sent to `url`; returns the sha256 of each point. */
  async function makeChain(url: string, extra: string[] = []): Promise<string[]> {
    const img = tmp.join(`vol-${Math.random().toString(36).slice(2)}.img`);
    const m = new VolumeModel(img, SIZE);
    const rand = prng(5);
    m.write(0, textBytes(rand, 2 * MiB));
    m.write(4 * MiB, noiseBytes(MiB));
    m.snapshotDelta();
    await runOk(['send', '--image', img, '--to', url, ...extra], { env });
    const hashes = [await sha256(img)];
    for (let i = 1; i < 4; i++) {
      for (let k = 0; k < 6; k++) m.write(Math.floor(rand() * (SIZE / POOL_BLOCK)) * POOL_BLOCK, textBytes(rand, POOL_BLOCK));
      m.punch(4 * MiB + i * POOL_BLOCK, POOL_BLOCK);
      const delta = tmp.join(`d${i}-${hashes.length}.xml`);
      writeFileSync(delta, m.snapshotDelta());
      await runOk(['send', '--image', img, '--changes', delta, '--parent', url, '--to', url, ...extra], { env });
      hashes.push(await sha256(img));
    }
    m.close();
    return hashes;
  }

  async function keys(bucket: string, prefix: string): Promise<string[]> {
    const r = await raw.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
    // Sequence claims (`.<seq>.seq`, store/types.ts) stay for good, as does the chain's lease: only archives are counted.
    return (r.Contents ?? []).map((c) => c.Key!).filter((k) => !/\/\.\d{10}\.seq$|\/\.lease\.\d{10}$/.test(k)).sort();
  }

  beforeAll(async () => {
    raw = rawClient(ceph!);
    tmp = await tempDir('chain-s3');
    env = ceph!.env();
  });
  afterAll(async () => {
    await tmp?.remove();
    raw?.destroy();
  });

  it('restores each point, shows info, verifies against a point, merges and prunes through the store', async () => {
    const bucket = await newBucket(raw, 'chain');
    const url = `s3://${bucket}/vm/disk0`;
    const hashes = await makeChain(url);
    for (let i = 0; i < 4; i++) {
      const t = tmp.join(`r${i}.img`);
      const r = await run(['restore', url, '--at', String(i), '--to', t, '--create'], { env });
      expect(r.code, show(r)).toBe(0);
      expect(await sha256(t), `point ${i}`).toBe(hashes[i]);
    }
    const listed = JSON.parse((await runOk(['list', url, '--json'], { env })).stdout) as { chainId: string; archives: { archiveId: string; sequence: number }[] }[];
    expect(listed[0]!.archives.map((a) => a.sequence)).toEqual([0, 1, 2, 3]);
    const { chainId, archives } = listed[0]!;
    const second = `${url}/${chainId}/0000000001-${archives[1]!.archiveId}.tna`;
    const info = JSON.parse((await runOk(['info', second, '--json'], { env })).stdout) as { archive: string; header: { sequence: number; chainId: string } };
    expect(info).toMatchObject({ archive: second, header: { sequence: 1, chainId } });

    const v = JSON.parse((await runOk(['verify', url, '--against', tmp.join('r3.img'), '--json'], { env })).stdout) as { ok: boolean; mismatchedBlocks: number };
    expect(v).toMatchObject({ ok: true, mismatchedBlocks: 0 });
    const bad = await run(['verify', url, '--against', tmp.join('r2.img')], { env });
    expect(bad.code, show(bad)).toBe(3);

    // merge 1..2: one archive takes their place, the originals are deleted from the bucket
    const before = await keys(bucket, `vm/disk0/${chainId}/`);
    expect(before).toHaveLength(4);
    await runOk(['merge', url, '--from', '1', '--to', '2'], { env });
    const merged = await keys(bucket, `vm/disk0/${chainId}/`);
    expect(merged).toHaveLength(3);
    expect(merged).toContain(before[0]);
    expect(merged).toContain(before[3]);
    const m3 = tmp.join('after-merge.img');
    await runOk(['restore', url, '--to', m3, '--create'], { env });
    expect(await sha256(m3)).toBe(hashes[3]);
    const m2 = tmp.join('after-merge-2.img');
    await runOk(['restore', url, '--at', '2', '--to', m2, '--create'], { env });
    expect(await sha256(m2), 'point 2 is the merged archive').toBe(hashes[2]);

    await runOk(['prune', url, '--keep', '1'], { env });
    expect(await keys(bucket, `vm/disk0/${chainId}/`)).toHaveLength(1);
    const p = tmp.join('after-prune.img');
    await runOk(['restore', url, '--to', p, '--create'], { env });
    expect(await sha256(p)).toBe(hashes[3]);
    const vp = await run(['verify', url], { env });
    expect(vp.code, show(vp)).toBe(0);
  }, 400_000);

  it('under object-lock retention, prune and merge are refused before anything is written; the chain still restores', async () => {
    const bucket = await newBucket(raw, 'chainlock', true);
    const url = `s3://${bucket}/vm`;
    const hashes = await makeChain(url, ['--retain-days', '2']);
    const chainKeys = await keys(bucket, 'vm/');
    expect(chainKeys).toHaveLength(4);
    const pr = await run(['prune', url, '--keep', '1'], { env });
    const msg = expectFailure(pr, 1);
    expect(msg).toMatch(/retain|retention|lock/i);
    const mg = await run(['merge', url, '--from', '0', '--to', '1'], { env });
    expect(expectFailure(mg, 1)).toMatch(/retain|retention|lock/i);
    expect(await keys(bucket, 'vm/'), 'nothing written, nothing deleted').toEqual(chainKeys);
    const t = tmp.join('locked.img');
    await runOk(['restore', url, '--to', t, '--create'], { env });
    expect(await sha256(t)).toBe(hashes[3]);
  }, 400_000);
});
