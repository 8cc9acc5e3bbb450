/**
 * Racing senders never fork a chain (issue 11): 8 `send --changes D --parent P --to STORE` started at
 * once, over several rounds, against a directory store, an ssh:// store (private sshd) and an s3://
 * store (the test Ceph radosgw). Each round exactly one sender publishes the next sequence; every
 * other exits 4 with one line, saying that the chain is leased by another send (CHAIN_LEASED: a racing
 * send holds the chain's lease) or that the archive would fork the chain (CHAIN_FORK: it got the lease
 * after the winner published), and leaves nothing behind (no archive, temporary file or incomplete
 * upload; the chain keeps one lease marker); `verify STORE` passes afterwards. The race for a sequence
 * claim itself, below the lease, is the store conformance suite's (test/store/conformance.ts).
 */
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, expectFailure, runOk, show, spawnCli, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, VolumeModel } from '../helpers/volume-model.js';
import { cephOrSkip } from '../servers/ceph.js';
import { ciSet, cliSshOptions, sshdAvailable, startSshd, type Sshd } from '../servers/sshd.js';
import { incompleteUploads, newBucket, rawClient } from '../store/s3-helpers.js';

const MiB = 1024 * 1024;
const SENDERS = 8;
const ROUNDS = 3;
const FORK = /^thinarchive: .*(would fork|is leased by host .* pid \d+ \(a one-shot send, volume vol\.img\) until|was just leased by another writer)/;

/** Hidden files of every chain directory under `root` that are not sequence claims or the chain's lease. */
function leftovers(root: string): string[] {
  const out: string[] = [];
  if (!existsSync(root)) return out;
  for (const d of readdirSync(root)) {
    const p = join(root, d);
    if (!statSync(p).isDirectory()) continue;
    for (const n of readdirSync(p)) if (n.startsWith('.') && !/^\.\d{10}\.seq$|^\.lease\.\d{10}$/.test(n)) out.push(`${d}/${n}`);
  }
  return out;
}

/** Full send, then ROUNDS rounds of SENDERS racing incrementals on the previous winner; `after` checks each round. */
async function race(dir: TempDir, store: string, args: string[], env?: Record<string, string | undefined>, after?: () => Promise<void>): Promise<void> {
  const img = dir.join('vol.img');
  const model = new VolumeModel(img, 8 * MiB);
  model.write(0, noiseBytes(MiB));
  model.snapshotDelta();
  const full = JSON.parse((await runOk(['send', '--image', img, '--to', store, '--json', ...args], { env })).stdout);
  let parent: string = full.path;
  for (let round = 1; round <= ROUNDS; round++) {
    model.write(round * MiB, noiseBytes(128 * 1024));
    const delta = dir.join(`delta-${round}.xml`);
    writeFileSync(delta, model.snapshotDelta());
    const results = await Promise.all(Array.from({ length: SENDERS }, () => collect(
      spawnCli(['send', '--image', img, '--changes', delta, '--parent', parent, '--to', store, '--json', ...args], { env }), 180_000,
    )));
    const winners = results.filter((r) => r.code === 0);
    expect(winners.length, `round ${round}: exactly one sender publishes\n${results.map(show).join('\n')}`).toBe(1);
    for (const r of results) if (r.code !== 0) expect(expectFailure(r, 4)).toMatch(FORK);
    const w = JSON.parse(winners[0].stdout);
    expect(w).toMatchObject({ sequence: round, chainId: full.chainId });
    parent = w.path;
    await after?.();
  }
  await runOk(['verify', store, ...args], { env });
  const listed = (await runOk(['list', store, '--json', ...args], { env })).stdout;
  expect(listed).toContain(full.chainId);
  expect(listed.match(/"archiveId"/g)?.length ?? 0, listed).toBe(ROUNDS + 1);
}

describe('racing senders never fork a chain', () => {
  it(`directory store: ${SENDERS} senders at once, ${ROUNDS} rounds: one winner each`, async () => {
    const dir = await tempDir('fork-dir');
    try {
      const store = dir.join('store');
      await race(dir, store, [], undefined, async () => expect(leftovers(store)).toEqual([]));
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
    it(`${SENDERS} senders at once, ${ROUNDS} rounds: one winner each`, async () => {
      const dir = await tempDir('fork-ssh');
      try {
        const root = join(sshd.dir, 'fork store');
        await mkdir(root, { recursive: true });
        await race(dir, sshd.url(root), cliSshOptions(sshd), undefined, async () => expect(leftovers(root)).toEqual([]));
      } finally {
        await dir.remove();
      }
    });
  });

  describe('s3:// store (Ceph radosgw)', async () => {
    const ceph = await cephOrSkip();
    let raw: S3Client;
    it.skipIf(!ceph)(`${SENDERS} senders at once, ${ROUNDS} rounds: one winner each`, async () => {
      raw = rawClient(ceph!);
      const bucket = await newBucket(raw, 'fork');
      const dir = await tempDir('fork-s3');
      try {
        await race(dir, `s3://${bucket}/f`, [], ceph!.env(), async () => expect(await incompleteUploads(raw, bucket)).toEqual([]));
      } finally {
        await dir.remove();
      }
    });
  });
});
