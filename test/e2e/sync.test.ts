/**
 * `thinarchive sync` (resync by hashes, docs/SYNC.md) end to end through bin/thinarchive: a target
 * image that is a copy of the source with 1% of its blocks changed and no thinarchive state is
 * brought up to date by sending about 1% of the volume (hashes cross the wire for the rest); an
 * ordinary incremental then applies on top of the resync archive. The same over ssh to the test
 * sshd, with `sync-target` on the remote side. Safety: a target changed between hashing and applying
 * is refused (TARGET_CHANGED) and untouched; the target side refuses an archive that is not the one
 * computed against its hashes (RESYNC_MISMATCH); a saved resync archive is refused by a target that
 * was not the one hashed.
 */
import { copyFileSync, writeFileSync, readFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, collect, expectFailure, REPO, run, runOk, sha256, spawnCli, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';
import { ciSet, cliSshOptions, sshdAvailable, startSshd, type Sshd } from '../servers/sshd.js';

const MiB = 1024 * 1024;
const BS = 64 * 1024;
const SIZE = 64 * MiB;
const BLOCKS = SIZE / BS;

/** A source image: text and noise with holes (the last 8 MiB and a few gaps never written). */
function makeSource(path: string): VolumeModel {
  const m = new VolumeModel(path, SIZE);
  const rand = prng(11);
  m.write(0, textBytes(rand, 20 * MiB));
  m.write(20 * MiB + 3 * BS, noiseBytes(24 * MiB));
  m.write(46 * MiB, textBytes(rand, 10 * MiB));
  return m;
}

/** Overwrite `n` distinct blocks (in the source's data) of `path` with noise; returns them. */
function damage(path: string, n: number, seed: number): number[] {
  const rand = prng(seed);
  const picked = new Set<number>();
  while (picked.size < n) picked.add(Math.floor(rand() * (56 * MiB / BS)));
  const fd = openSync(path, 'r+');
  for (const b of picked) writeSync(fd, noiseBytes(BS), 0, BS, b * BS);
  closeSync(fd);
  return [...picked].sort((a, b) => a - b);
}

function writeAt(path: string, offset: number, buf: Buffer): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, buf, 0, buf.length, offset);
  closeSync(fd);
}

describe('sync (resync by hashes) to a local target', () => {
  let tmp: TempDir;
  let src: string;
  let model: VolumeModel;
  beforeAll(async () => {
    tmp = await tempDir('sync');
    src = tmp.join('src.img');
    model = makeSource(src);
  });
  afterAll(async () => {
    model?.close();
    await tmp?.remove();
  });

  it('brings a stateless copy with 1% of its blocks changed up to date sending about 1% of the volume; an ordinary incremental applies on top', async () => {
    const tgt = tmp.join('tgt.img');
    copyFileSync(src, tgt);
    const changed = damage(tgt, BLOCKS / 100, 5); // 10 blocks of 1024
    // A block of data where the source has a hole: sent as unmapped.
    writeAt(tgt, 60 * MiB, noiseBytes(BS));
    expect(await sha256(tgt)).not.toBe(await sha256(src));

    const saved = tmp.join('resync.tna');
    const r = JSON.parse((await runOk(['sync', src, '--to', tgt, '--save', saved, '--json'])).stdout);
    expect(await sha256(tgt)).toBe(await sha256(src));
    expect(r).toMatchObject({ blocks: BLOCKS, dataBlocks: changed.length, unmapBlocks: 1, sameBlocks: BLOCKS - changed.length - 1, targetKind: 'image', host: null });
    // About 1% of the volume's bytes sent: exactly the changed blocks' data (compressed, as the
    // source holds text in some of them), and the archive's frames.
    expect(r.archive.dataBytes).toBe(changed.length * BS);
    expect(r.bytesSent).toBe(r.archive.archiveBytes);
    expect(r.bytesSent).toBeLessThan(changed.length * BS + 64 * 1024);
    expect(r.bytesSent / SIZE).toBeLessThan(0.011);
    // Hashes, not data, for the blocks that match: 8 bytes per block and two protocol lines.
    expect(r.bytesReceived).toBeGreaterThanOrEqual(BLOCKS * 8);
    expect(r.bytesReceived).toBeLessThan(BLOCKS * 8 + 4096);
    // The source read its allocated blocks once, then the differing ones again for the archive.
    expect(r.sourceSide.blocksHashed).toBe(54 * MiB / BS);
    expect(r.sourceSide.bytesRead).toBe(54 * MiB + changed.length * BS);
    expect(r.targetSide.bytesRead).toBe(SIZE); // the copy is fully allocated
    expect(r.targetSide.previousState).toBeNull();
    // The target's state is the resync archive: a new chain point.
    const state = JSON.parse(readFileSync(`${tgt}.thinarchive.json`, 'utf8'));
    expect(state).toMatchObject({ status: 'clean', archiveId: r.archive.archiveId, chainId: r.archive.chainId, sequence: 1 });
    const info = JSON.parse((await runOk(['info', saved, '--json'])).stdout);
    expect(info.header).toMatchObject({ archiveId: r.archive.archiveId, parentId: r.apply.nonce, full: false, sequence: 1 });

    // An ordinary incremental on top of it: send --image with the saved archive as parent, applied as usual.
    const rand = prng(12);
    model.write(5 * MiB, noiseBytes(2 * MiB));
    model.write(61 * MiB, textBytes(rand, 100_000));
    const delta = tmp.join('delta.xml');
    writeFileSync(delta, model.snapshotDelta());
    const inc = tmp.join('inc.tna');
    const sent = JSON.parse((await runOk(['send', '--image', src, '--changes', delta, '--parent', saved, '--to', tmp.path, '--json'])).stdout);
    expect(sent).toMatchObject({ sequence: 2, parentId: r.archive.archiveId, chainId: r.archive.chainId });
    void inc;
    const ap = JSON.parse((await runOk(['apply', sent.path, '--to', tgt, '--json'])).stdout);
    expect(ap.applied.map((a: { sequence: number }) => a.sequence)).toEqual([2]);
    expect(await sha256(tgt)).toBe(await sha256(src));

    // A second sync of an equal target sends no block, only an archive's frames.
    const again = JSON.parse((await runOk(['sync', src, '--to', tgt, '--json'])).stdout);
    expect(again).toMatchObject({ dataBlocks: 0, unmapBlocks: 0, sameBlocks: BLOCKS });
    expect(again.bytesSent).toBeLessThan(4096);
    expect(again.targetSide.previousState).toMatchObject({ status: 'clean', sequence: 2, chainId: r.archive.chainId });
    expect(await sha256(tgt)).toBe(await sha256(src));
  });

  it('sends an archive larger than the in-process pipe holds (a quarter of the blocks differ)', async () => {
    // (regressions: chunks queued in the pipe shared the writer's reused memory; a target side that
    // failed while the source waited for the pipe to drain hung both)
    const tgt = tmp.join('tgt-quarter.img');
    copyFileSync(src, tgt);
    const changed = damage(tgt, 400, 9);
    const r = JSON.parse((await runOk(['sync', src, '--to', tgt, '--json'])).stdout);
    // (some of the damaged blocks lie where the source has holes: sent as unmapped)
    expect(r.dataBlocks + r.unmapBlocks).toBe(changed.length);
    expect(r.archive.dataBytes).toBe(r.dataBlocks * BS);
    expect(r.bytesSent).toBeGreaterThan(9 * MiB); // more than the pipe holds (8 MiB)
    expect(await sha256(tgt)).toBe(await sha256(src));
  });

  it('a resync archive is accepted only by the target it was computed against', async () => {
    const tgt = tmp.join('tgt2.img');
    copyFileSync(src, tgt);
    damage(tgt, 4, 21);
    const saved = tmp.join('resync2.tna');
    await runOk(['sync', src, '--to', tgt, '--save', saved]);
    // Another copy without state: the saved archive is an incremental on a hashing session's nonce.
    const other = tmp.join('other.img');
    copyFileSync(src, other);
    damage(other, 4, 22);
    const before = await sha256(other);
    expect(expectFailure(await run(['apply', saved, '--to', other]), 4)).toMatch(/no thinarchive state .* is incremental/);
    // The target side of a new session refuses it too: its parent is not this session's nonce.
    const child = spawnCli(['sync-target', other, '--block-size', String(BS), '--volume-size', String(SIZE), '--json']);
    child.stdin!.end(readFileSync(saved));
    const res = await collect(child);
    expect(res.code).toBe(4);
    expect(res.stderr).toMatch(/^thinarchive: archive \S+ \(sequence 1\) is not the resync archive of this hashing session/m);
    // It still hashed and sent every block's hash before it refused.
    const hello = JSON.parse(res.stdoutBytes.subarray(0, res.stdoutBytes.indexOf(10)).toString());
    expect(hello).toMatchObject({ protocol: 'thinarchive-sync', version: 1, blocks: BLOCKS, targetKind: 'image', state: null });
    expect(await sha256(other)).toBe(before);
  });

  it('a target modified between hashing and applying is refused (TARGET_CHANGED) and left as it was', async () => {
    const tgt = tmp.join('tgt3.img');
    copyFileSync(src, tgt);
    damage(tgt, 3, 31);
    const api = await import(join(REPO, 'dist', 'api', 'index.js')) as typeof import('../../src/api/index.js');
    let modified = '';
    const err = await api.sync({
      source: src, to: tgt,
      beforeSend: async () => {
        writeAt(tgt, 33 * MiB, Buffer.from('written by someone else'));
        modified = await sha256(tgt);
      },
    }).catch((e: unknown) => e as { code: string; message: string });
    expect(err).toMatchObject({ code: 'TARGET_CHANGED' });
    expect((err as { message: string }).message).toMatch(/was modified after it was hashed; nothing was written/);
    expect(await sha256(tgt)).toBe(modified);
    // A new sync, hashing the target as it is now, succeeds.
    const r = await api.sync({ source: src, to: tgt });
    expect(r.dataBlocks).toBe(4);
    expect(await sha256(tgt)).toBe(await sha256(src));
  });

  it('bad invocations fail with one line before anything is read', async () => {
    expect(expectFailure(await run(['sync', src]), 2)).toMatch(/name the target: --to TARGET or --apply-remote/);
    expect(expectFailure(await run(['sync', src, '--to', 'x.img', '--apply-remote', 'ssh://h']), 2)).toMatch(/--to and --apply-remote do not go together/);
    expect(expectFailure(await run(['sync', src, '--apply-remote', 'ssh://h']), 2)).toMatch(/--apply-remote needs --remote-to/);
    expect(expectFailure(await run(['sync', src, '--to', 'x.img', '--remote-to', 'y']), 2)).toMatch(/--remote-to goes with --apply-remote/);
    expect(expectFailure(await run(['sync', src, '--to', 'x.img', '--block-size', '3000']), 2)).toMatch(/invalid block size 3000/);
  });
});

const avail = sshdAvailable();
if (!avail.ok && ciSet()) throw new Error(`sshd is not available under CI: ${avail.reason}`);

describe.skipIf(!avail.ok)('sync over ssh (sync-target on the remote host)', () => {
  let sshd: Sshd;
  let tmp: TempDir;
  let src: string;
  let model: VolumeModel;
  beforeAll(async () => {
    sshd = await startSshd();
    tmp = await tempDir('sync-ssh');
    src = tmp.join('src.img');
    model = makeSource(src);
  });
  afterAll(async () => {
    model?.close();
    await sshd?.stop();
    await tmp?.remove();
  });

  it('resyncs a remote stateless copy with 1% changed, sending about 1%; then an ordinary send --apply-remote incremental continues', async () => {
    const remote = join(sshd.dir, "replica's.img");
    copyFileSync(src, remote);
    const changed = damage(remote, BLOCKS / 100, 41);
    const o = cliSshOptions(sshd);
    const host = `ssh://${sshd.user}@127.0.0.1:${sshd.port}`;
    const saved = tmp.join('resync.tna');
    const r = JSON.parse((await runOk(['sync', src, '--apply-remote', host, '--remote-to', remote, '--remote-command', BIN, '--save', saved, '--json', ...o])).stdout);
    expect(await sha256(remote)).toBe(await sha256(src));
    expect(r.host).toMatch(/^[\w.-]+@127\.0\.0\.1:\d+$/);
    expect(r).toMatchObject({ dataBlocks: changed.length, unmapBlocks: 0, targetKind: 'image', target: remote });
    expect(r.bytesSent / SIZE).toBeLessThan(0.011);
    expect(r.archive.dataBytes).toBe(changed.length * BS);
    // What crossed the wire from the target: the hashes, the protocol lines and its --json result.
    expect(r.bytesReceived).toBeGreaterThanOrEqual(BLOCKS * 8);
    expect(r.bytesReceived).toBeLessThan(BLOCKS * 8 + 16384);
    expect(r.targetSide.bytesRead).toBe(SIZE);
    expect(r.apply.apply.state).toMatchObject({ archiveId: r.archive.archiveId, sequence: 1 });

    // The ordinary replication path continues from it.
    model.write(2 * MiB, noiseBytes(MiB));
    const delta = tmp.join('delta.xml');
    writeFileSync(delta, model.snapshotDelta());
    const inc = await runOk(['send', '--image', src, '--changes', delta, '--parent', saved, '--apply-remote', host, '--remote-to', remote, '--remote-command', BIN, '--json', ...o]);
    expect(JSON.parse(inc.stdout).remoteApply.result.state).toMatchObject({ sequence: 2, chainId: r.archive.chainId });
    expect(await sha256(remote)).toBe(await sha256(src));

    // A remote failure keeps its exit class and says why: a remote target that does not exist.
    const missing = await run(['sync', src, '--apply-remote', host, '--remote-to', join(sshd.dir, 'nope.img'), '--remote-command', BIN, ...o]);
    expect(expectFailure(missing, 1)).toMatch(/remote exit 1\): cannot open target .*nope\.img/);
  });
});
