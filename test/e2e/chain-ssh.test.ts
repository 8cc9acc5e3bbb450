/**
 * Chain management against an ssh:// store (a private sshd on 127.0.0.1): restore, verify --against
 * and prune read archives through the store interface (ranged reads over ssh), and prune writes the
 * merged archive and deletes the originals through it.
 */
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runOk, sha256, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';
import { ciSet, sshdAvailable, startSshd, type Sshd } from '../servers/sshd.js';

const MiB = 1024 * 1024;
const avail = sshdAvailable();
if (!avail.ok && ciSet()) throw new Error(`sshd is not available under CI: ${avail.reason}`);

describe.skipIf(!avail.ok)('chain management on an ssh:// store', () => {
  let sshd: Sshd;
  let tmp: TempDir;
  let url: string;
  let root: string;
  let o: string[];
  const hashes: string[] = [];

  beforeAll(async () => {
    sshd = await startSshd();
    tmp = await tempDir('chain-ssh');
    root = join(sshd.dir, 'store');
    url = sshd.url(root);
    // the server's client settings as the CLI's -o (--ssh-option) options
    o = [`IdentityFile=${sshd.key}`, 'IdentitiesOnly=yes', 'BatchMode=yes', `UserKnownHostsFile=${join(sshd.dir, 'known_hosts')}`,
      'StrictHostKeyChecking=yes', 'GSSAPIAuthentication=no', 'LogLevel=ERROR'].flatMap((x) => ['-o', x]);
    const img = tmp.join('vol.img');
    const m = new VolumeModel(img, 8 * MiB);
    const rand = prng(11);
    m.write(0, textBytes(rand, MiB));
    m.write(3 * MiB, noiseBytes(MiB));
    m.snapshotDelta();
    await runOk(['send', '--image', img, '--to', url, ...o]);
    hashes.push(await sha256(img));
    for (let i = 1; i < 3; i++) {
      m.write(i * 2 * MiB, textBytes(rand, 300_000));
      m.punch(3 * MiB + i * 65536, 65536);
      const delta = tmp.join(`d${i}.xml`);
      writeFileSync(delta, m.snapshotDelta());
      await runOk(['send', '--image', img, '--changes', delta, '--parent', url, '--to', url, ...o]);
      hashes.push(await sha256(img));
    }
    m.close();
  }, 300_000);

  afterAll(async () => {
    await sshd?.stop();
    await tmp?.remove();
  });

  it('restores each point, verifies against it, and prunes through the store', async () => {
    for (let i = 0; i < 3; i++) {
      const t = tmp.join(`r${i}.img`);
      await runOk(['restore', url, '--at', String(i), '--to', t, '--create', ...o]);
      expect(await sha256(t), `point ${i}`).toBe(hashes[i]);
    }
    const v = JSON.parse((await runOk(['verify', url, '--against', tmp.join('r2.img'), '--json', ...o])).stdout) as { ok: boolean; mismatchedBlocks: number };
    expect(v).toMatchObject({ ok: true, mismatchedBlocks: 0 });
    await runOk(['prune', url, '--keep', '1', ...o]);
    const chainDir = readdirSync(root).map((d) => join(root, d)).find((d) => existsSync(d))!;
    expect(readdirSync(chainDir).filter((n) => n.endsWith('.tna'))).toHaveLength(1);
    const t = tmp.join('after-prune.img');
    await runOk(['restore', url, '--to', t, '--create', ...o]);
    expect(await sha256(t)).toBe(hashes[2]);
  }, 300_000);
});
