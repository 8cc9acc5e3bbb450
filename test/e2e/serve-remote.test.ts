/**
 * `thinarchive serve` from remote stores: a chain of six on an ssh:// store (a private sshd on
 * 127.0.0.1) and on an s3:// store (the test Ceph radosgw). nbdcopy of every point gives the same
 * sha256 as `restore --at` of that point; reads go through the stores' ranged reads.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runOk, sha256, show, tempDir, type TempDir } from '../helpers/cli.js';
import { startServe, tool } from '../helpers/nbd.js';
import { noiseBytes, POOL_BLOCK, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';
import { cephOrSkip } from '../servers/ceph.js';
import { ciSet, sshdAvailable, startSshd, type Sshd } from '../servers/sshd.js';
import { newBucket, rawClient } from '../store/s3-helpers.js';

const MiB = 1024 * 1024;
const SIZE = 12 * MiB;
const POINTS = 6;

/** A chain of six points sent to `url`; the sha256 of the volume at each point. */
async function makeChain(tmp: TempDir, url: string, extra: string[], env?: Record<string, string>): Promise<string[]> {
  const img = tmp.join(`vol-${Math.random().toString(36).slice(2)}.img`);
  const m = new VolumeModel(img, SIZE);
  const rand = prng(23);
  m.write(0, textBytes(rand, 2 * MiB));
  m.write(5 * MiB, noiseBytes(MiB));
  m.snapshotDelta();
  await runOk(['send', '--image', img, '--to', url, ...extra], { env });
  const hashes = [await sha256(img)];
  for (let i = 1; i < POINTS; i++) {
    for (let k = 0; k < 4; k++) m.write(Math.floor(rand() * (SIZE / POOL_BLOCK)) * POOL_BLOCK, textBytes(rand, POOL_BLOCK));
    m.punch(5 * MiB + i * POOL_BLOCK, POOL_BLOCK);
    const delta = tmp.join(`d${i}-${Math.random().toString(36).slice(2)}.xml`);
    writeFileSync(delta, m.snapshotDelta());
    await runOk(['send', '--image', img, '--changes', delta, '--parent', url, '--to', url, ...extra], { env });
    hashes.push(await sha256(img));
  }
  m.close();
  return hashes;
}

/** Serve `url`, nbdcopy every point, compare with the source's hashes and with restore --at. */
async function copyEveryPoint(tmp: TempDir, url: string, hashes: string[], extra: string[], env: Record<string, string> | undefined, label: string): Promise<void> {
  const s = await startServe([url, ...extra], tmp.join(`${label}.sock`), env);
  try {
    for (let i = 0; i < POINTS; i++) {
      const out = tmp.join(`${label}-copy${i}.img`);
      await tool('nbdcopy', [s.uri(String(i)), out]);
      expect(await sha256(out), `${label} point ${i}`).toBe(hashes[i]);
      const r = tmp.join(`${label}-restored${i}.img`);
      await runOk(['restore', url, '--at', String(i), '--to', r, '--create', ...extra], { env });
      expect(await sha256(r), `${label} restore point ${i}`).toBe(hashes[i]);
    }
  } finally {
    const r = await s.stop();
    expect(r.code, show(r)).toBe(0);
  }
}

const sshAvail = sshdAvailable();
if (!sshAvail.ok && ciSet()) throw new Error(`sshd is not available under CI: ${sshAvail.reason}`);

describe.skipIf(!sshAvail.ok)('serve from an ssh:// store', () => {
  let sshd: Sshd;
  let tmp: TempDir;
  let o: string[];

  beforeAll(async () => {
    sshd = await startSshd();
    tmp = await tempDir('serve-ssh');
    o = [`IdentityFile=${sshd.key}`, 'IdentitiesOnly=yes', 'BatchMode=yes', `UserKnownHostsFile=${join(sshd.dir, 'known_hosts')}`,
      'StrictHostKeyChecking=yes', 'GSSAPIAuthentication=no', 'LogLevel=ERROR'].flatMap((x) => ['-o', x]);
  }, 120_000);
  afterAll(async () => {
    await sshd?.stop();
    await tmp?.remove();
  });

  it('nbdcopy of every point of a chain of six equals restore --at', async () => {
    const url = sshd.url(join(sshd.dir, 'store'));
    const hashes = await makeChain(tmp, url, o);
    await copyEveryPoint(tmp, url, hashes, o, undefined, 'ssh');
  }, 400_000);
});

const ceph = await cephOrSkip();

describe.skipIf(!ceph)('serve from an s3:// store (Ceph radosgw)', () => {
  let tmp: TempDir;

  beforeAll(async () => {
    tmp = await tempDir('serve-s3');
  });
  afterAll(async () => {
    await tmp?.remove();
  });

  it('nbdcopy of every point of a chain of six equals restore --at', async () => {
    const raw = rawClient(ceph!);
    try {
      const bucket = await newBucket(raw, 'serve');
      const url = `s3://${bucket}/vm/disk0`;
      const env = ceph!.env();
      const hashes = await makeChain(tmp, url, [], env);
      await copyEveryPoint(tmp, url, hashes, [], env, 's3');
    } finally {
      raw.destroy();
    }
  }, 400_000);
});
