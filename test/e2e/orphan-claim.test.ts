/**
 * A send killed between its sequence claim and its publish (issue 11) leaves a claim without its
 * archive; the next send heals it by itself when the owner is provably gone. Through bin/thinarchive,
 * against a directory store, an ssh:// store (private sshd) and an s3:// store (the test Ceph
 * radosgw): a send stopped right after its claim (THINARCHIVE_TEST_SIGNAL_AFTER_CLAIM=STOP, a real
 * SIGSTOP) keeps the sequence: another send, even one taking the lease over, is refused (exit 4)
 * naming the owner's host and pid; after a real SIGKILL of the owner the next send publishes the
 * sequence, records the removal beside the claim, and `verify` passes. A send killed with
 * THINARCHIVE_TEST_SIGNAL_AFTER_CLAIM=KILL is healed the same way.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, expectFailure, runOk, spawnCli, tempDir, waitFor, type TempDir } from '../helpers/cli.js';
import { noiseBytes, VolumeModel } from '../helpers/volume-model.js';
import { cephOrSkip } from '../servers/ceph.js';
import { ciSet, cliSshOptions, sshdAvailable, startSshd, type Sshd } from '../servers/sshd.js';
import { newBucket, rawClient } from '../store/s3-helpers.js';
import { openStore, type StoreOptions } from '../../src/store/open.js';

const MiB = 1024 * 1024;

/** The state letter of a process (R, S, T, ...); '' when it is gone. */
function procState(pid: number): string {
  try {
    return /^\d+ \(.*\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1] ?? '';
  } catch {
    return '';
  }
}

/** `args`: the CLI's global options for the store; `opts`: the same for opening it here; `env`: the CLI's environment. */
async function orphanStory(dir: TempDir, store: string, args: string[], opts: StoreOptions = {}, env?: Record<string, string | undefined>): Promise<void> {
  const img = dir.join('vol.img');
  const model = new VolumeModel(img, 4 * MiB);
  model.write(0, noiseBytes(MiB));
  model.snapshotDelta();
  const full = JSON.parse((await runOk(['send', '--image', img, '--to', store, '--json', ...args], { env })).stdout);
  const chainId: string = full.chainId;
  let parent: string = full.path;
  const markers = async (): Promise<string[]> => {
    const s = await openStore(store, opts);
    try {
      return await s.listMarkers(chainId, '.0000000');
    } finally {
      await s.close();
    }
  };
  for (const [round, how] of [[1, 'STOP'], [2, 'KILL']] as const) {
    model.write(round * MiB, noiseBytes(64 * 1024));
    const delta = dir.join(`delta-${round}.xml`);
    writeFileSync(delta, model.snapshotDelta());
    const sendArgs = ['send', '--image', img, '--changes', delta, '--parent', parent, '--to', store, '--json', ...args];
    const owner = spawnCli(sendArgs, { env: { ...env, THINARCHIVE_TEST_SIGNAL_AFTER_CLAIM: how } });
    const ownerDone = collect(owner, 120_000);
    if (how === 'STOP') {
      await waitFor(() => procState(owner.pid!) === 'T', 60_000);
      // The owner runs (stopped): the sequence stays its own, even for a send that takes the lease over.
      const refused = await collect(spawnCli([...sendArgs, '--take-lease'], { env }), 120_000);
      expect(expectFailure(refused, 4)).toMatch(new RegExp(`sequence ${round} of chain ${chainId} in .* is already taken by archive [0-9a-f-]{36} \\(it is not in the store yet: its writer, host ${hostname()} pid ${owner.pid} \\(claimed [^)]+\\) of this host still runs`));
      expect(JSON.parse(refused.stdout).error.code).toBe('CHAIN_FORK');
      process.kill(owner.pid!, 'SIGKILL');
    }
    const died = await ownerDone;
    expect(died.signal).toBe('SIGKILL');
    expect((await markers()).filter((n) => n.includes('.orphan-'))).toHaveLength(round - 1);
    // The owner is gone: the next send removes its claim and publishes the sequence.
    const healed = JSON.parse((await runOk(sendArgs, { env })).stdout);
    expect(healed).toMatchObject({ sequence: round, chainId });
    parent = healed.path;
    expect((await markers()).filter((n) => n.startsWith(`.${String(round).padStart(10, '0')}.seq.orphan-`))).toHaveLength(1);
  }
  await runOk(['verify', store, ...args], { env });
  const listed = JSON.parse((await runOk(['list', store, '--json', ...args], { env })).stdout);
  expect(JSON.stringify(listed).match(/"archiveId"/g)).toHaveLength(3);
  model.close();
}

describe('a send killed between its claim and its publish: the next send heals the chain', () => {
  it('directory store', async () => {
    const dir = await tempDir('orphan-dir');
    try {
      await orphanStory(dir, dir.join('store'), []);
    } finally {
      await dir.remove();
    }
  });

  const ssh = sshdAvailable();
  describe.skipIf(!ssh.ok && !ciSet())('ssh:// store', () => {
    let sshd: Sshd;
    beforeAll(async () => {
      sshd = await startSshd();
    });
    afterAll(async () => {
      await sshd?.stop();
    });
    it('ssh:// store', async () => {
      const dir = await tempDir('orphan-ssh');
      try {
        const root = join(sshd.dir, 'orphan store');
        await mkdir(root, { recursive: true });
        await orphanStory(dir, sshd.url(root), cliSshOptions(sshd), { sshOptions: sshd.sshOptions });
      } finally {
        await dir.remove();
      }
    });
  });

  describe('s3:// store (Ceph radosgw)', async () => {
    const ceph = await cephOrSkip();
    it.skipIf(!ceph)('s3:// store', async () => {
      const raw = rawClient(ceph!);
      const bucket = await newBucket(raw, 'orphan');
      const dir = await tempDir('orphan-s3');
      try {
        await orphanStory(dir, `s3://${bucket}/o`, [], {
          s3Endpoint: ceph!.endpoint, s3ClientConfig: { region: ceph!.region, credentials: { accessKeyId: ceph!.accessKey, secretAccessKey: ceph!.secretKey } },
        }, ceph!.env());
      } finally {
        raw.destroy();
        await dir.remove();
      }
    });
  });
});
