/**
 * End to end through bin/thinarchive against a private sshd on 127.0.0.1: send to an ssh:// store
 * whose path has spaces and quotes, list / info / verify / apply from it (whole chain, one archive by
 * URL, an incremental with --parent from the store), replication with --apply-remote, and the fault
 * cases: a dropped connection and a killed sender mid-upload (no partial archive visible, cleaned
 * up by the next send), a full remote disk, a read-only or missing remote directory, a wrong key,
 * and remote apply failures mapped to the sender's exit code.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, CLAIM_NAME, collect, expectFailure, LEASE_NAME, run, runOk, sha256, show, sleep, spawnCli, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';
import { ciSet, cliSshOptions, sshdAvailable, startSshd, type Sshd } from '../servers/sshd.js';

const execp = promisify(execFile);
const MiB = 1024 * 1024;
const avail = sshdAvailable();
if (!avail.ok && ciSet()) throw new Error(`sshd is not available under CI: ${avail.reason}`);

const cliSsh = cliSshOptions;

/** Visible entries (no dot files) and hidden ones (temporary files; not the sequence claims) of every chain directory under `root`. */
function storeFiles(root: string): { archives: string[]; hidden: string[] } {
  const archives: string[] = [];
  const hidden: string[] = [];
  if (!existsSync(root)) return { archives, hidden };
  for (const d of readdirSync(root)) {
    const p = join(root, d);
    if (!statSync(p).isDirectory()) continue;
    for (const n of readdirSync(p)) if (!CLAIM_NAME.test(n) && !LEASE_NAME.test(n)) (n.startsWith('.') ? hidden : archives).push(`${d}/${n}`);
  }
  return { archives, hidden };
}

describe.skipIf(!avail.ok)('ssh:// stores and replication over ssh, end to end', () => {
  let sshd: Sshd;
  let tmp: TempDir;
  let img: string;
  let model: VolumeModel;
  let remoteRoot: string;
  let url: string;
  let o: string[];
  let firstArchive: string;

  beforeAll(async () => {
    sshd = await startSshd();
    tmp = await tempDir('ssh');
    img = tmp.join('vol.img');
    model = new VolumeModel(img, 16 * MiB);
    const rand = prng(7);
    model.write(0, textBytes(rand, 2 * MiB));
    model.write(4 * MiB, noiseBytes(3 * MiB));
    model.write(12 * MiB + 5000, textBytes(rand, 300_000));
    model.snapshotDelta();
    remoteRoot = join(sshd.dir, `back ups/it's "here"`);
    url = sshd.url(remoteRoot);
    o = cliSsh(sshd);
  });
  afterAll(async () => {
    model?.close();
    await sshd?.stop();
    await tmp?.remove();
  });

  it('send to ssh://, then list, info, verify and apply from the store and by archive URL; an incremental with --parent from the store', async () => {
    const full = await runOk(['send', '--image', img, '--to', url, '--json', ...o]);
    const fr = JSON.parse(full.stdout);
    expect(fr.path).toMatch(new RegExp(`^ssh://${sshd.user}@127\\.0\\.0\\.1:${sshd.port}/.*/${fr.chainId}/0000000000-${fr.archiveId}\\.tna$`));
    expect(storeFiles(remoteRoot)).toEqual({ archives: [`${fr.chainId}/0000000000-${fr.archiveId}.tna`], hidden: [] });

    // An incremental whose parent is found in the remote store (its newest archive).
    const rand = prng(8);
    model.write(1 * MiB, noiseBytes(MiB));
    model.write(14 * MiB, textBytes(rand, 100_000));
    const delta = tmp.join('delta.xml');
    writeFileSync(delta, model.snapshotDelta());
    const inc = JSON.parse((await runOk(['send', '--image', img, '--changes', delta, '--parent', url, '--to', url, '--json', ...o])).stdout);
    expect(inc).toMatchObject({ full: false, sequence: 1, chainId: fr.chainId, parentId: fr.archiveId });

    const listed = JSON.parse((await runOk(['list', url, '--json', ...o])).stdout);
    expect(listed).toHaveLength(1);
    expect(listed[0].archives.map((a: { sequence: number; status: string }) => [a.sequence, a.status])).toEqual([[0, 'complete'], [1, 'complete']]);

    const info = JSON.parse((await runOk(['info', fr.path, '--json', ...o])).stdout);
    expect(info.header.archiveId).toBe(fr.archiveId);
    expect(info.archive).toBe(fr.path);
    // A store URL means its newest archive.
    expect(JSON.parse((await runOk(['info', url, '--json', ...o])).stdout).header.archiveId).toBe(inc.archiveId);

    const ver = JSON.parse((await runOk(['verify', url, '--json', ...o])).stdout);
    expect(ver.ok).toBe(true);
    expect(ver.archives).toHaveLength(2);
    expect(ver.bytesRead).toBe(fr.archiveBytes + inc.archiveBytes);

    // The whole chain from the store onto a new image equals the volume (the ssh options given
    // before the command this time).
    const out = tmp.join('restored.img');
    const ap = JSON.parse((await runOk([...o, 'apply', url, '--to', out, '--create', '--json'])).stdout);
    expect(ap.applied.map((a: { archiveId: string }) => a.archiveId)).toEqual([fr.archiveId, inc.archiveId]);
    expect(await sha256(out)).toBe(await sha256(img));
    firstArchive = fr.path;
  });

  it('a send that would fork the chain in the remote store is refused', async () => {
    const delta = tmp.join('delta-fork.xml');
    writeFileSync(delta, model.snapshotDelta());
    const r = await run(['send', '--image', img, '--changes', delta, '--parent', firstArchive, '--to', url, ...o]);
    expect(expectFailure(r, 4)).toMatch(/already has sequence 1/);
  });

  it('a dropped connection mid-upload fails with one line and leaves no visible archive; the next send removes the leftover', async () => {
    const big = tmp.join('big.img');
    const m = new VolumeModel(big, 64 * MiB);
    m.write(0, noiseBytes(64 * MiB));
    m.close();
    const root = join(sshd.dir, 'drop');
    const before = new Set(await sshd.connectionPids());
    const child = spawnCli(['send', '--image', big, '--to', sshd.url(root), '--level', '1', ...o]);
    const done = collect(child, 120_000);
    // Wait until the upload is under way, then kill the server side of the connection.
    const deadline = Date.now() + 60_000;
    while (storeFiles(root).hidden.length === 0 || statSync(join(root, storeFiles(root).hidden[0])).size < 4 * MiB) {
      if (Date.now() > deadline) throw new Error('the upload did not start');
      await sleep(20);
    }
    const conns = (await sshd.connectionPids()).filter((p) => !before.has(p));
    expect(conns.length).toBeGreaterThan(0);
    for (const p of conns) process.kill(p, 'SIGKILL');
    const r = await done;
    const line = expectFailure(r, 1);
    expect(line).toMatch(/^thinarchive: cannot write ssh:\/\/.*\.tna: (ssh to [\w.-]+@127\.0\.0\.1:\d+ failed|the connection to [\w.-]+@127\.0\.0\.1:\d+ was lost)/);
    expect(storeFiles(root).archives).toEqual([]);
    // The sender removed its temporary file over a new connection, or left it for the next writer.
    expect(storeFiles(root).hidden.length).toBeLessThanOrEqual(1);
    expect(JSON.parse((await runOk(['list', sshd.url(root), '--json', ...o])).stdout).flatMap((c: { archives: unknown[] }) => c.archives)).toEqual([]);

    // A sender killed mid-upload: the same.
    const child2 = spawnCli(['send', '--image', big, '--to', sshd.url(root), '--level', '1', ...o]);
    const done2 = collect(child2, 120_000);
    const hiddenBefore = storeFiles(root).hidden.length;
    while (storeFiles(root).hidden.length === hiddenBefore) {
      if (Date.now() > deadline + 60_000) throw new Error('the second upload did not start');
      await sleep(20);
    }
    await sleep(300);
    child2.kill('SIGKILL');
    await done2;
    expect(storeFiles(root).archives).toEqual([]);
    expect(storeFiles(root).hidden.length).toBe(hiddenBefore + 1); // the killed sender's temporary file

    // The next send to the store succeeds and removes both leftovers (their writers are gone).
    const ok = JSON.parse((await runOk(['send', '--image', img, '--to', sshd.url(root), '--json', ...o])).stdout);
    const files = storeFiles(root);
    expect(files.hidden).toEqual([]);
    expect(files.archives.filter((a) => a.startsWith(ok.chainId))).toEqual([`${ok.chainId}/0000000000-${ok.archiveId}.tna`]);
  });

  it('a full remote disk and a read-only remote file system: one clear line each, nothing left behind', async (ctx) => {
    if (process.getuid?.() !== 0) {
      // Mounting the small file system needs root (CI runs as root).
      if (ciSet()) throw new Error('the disk-full test needs root under CI');
      ctx.skip('not root: cannot mount a small tmpfs');
    }
    const small = join(sshd.dir, 'small fs');
    await mkdir(small, { recursive: true });
    await execp('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', small]);
    try {
      const full = await run(['send', '--image', img, '--to', sshd.url(small), ...o]);
      expect(expectFailure(full, 1)).toMatch(/no space left on device/i);
      expect(storeFiles(small)).toEqual({ archives: [], hidden: [] });

      await execp('mount', ['-o', 'remount,ro', small]);
      const ro = await run(['send', '--image', img, '--to', sshd.url(`${small}/sub`), ...o]);
      expect(expectFailure(ro, 1)).toMatch(/read-only file system/i);
    } finally {
      await execp('umount', [small]);
    }
  });

  it('a missing remote directory, a path through a file, a missing archive and a wrong key: one clear line each', async () => {
    const missing = await run(['list', sshd.url(join(sshd.dir, 'no such dir')), ...o]);
    expect(expectFailure(missing, 1)).toMatch(/cannot read store ssh:\/\/.*no such dir.*: no such directory/);
    const missingArchive = await run(['info', sshd.url(join(remoteRoot, 'x', '0000000000-6f1d1a4e-2b4a-4a35-9a5e-0c3b1f0e8d11.tna')), ...o]);
    expectFailure(missingArchive, 1);

    writeFileSync(join(sshd.dir, 'a file'), 'x');
    const notDir = await run(['send', '--image', img, '--to', sshd.url(join(sshd.dir, 'a file', 'store')), ...o]);
    expect(expectFailure(notDir, 1)).toMatch(/cannot create chain directory .*: .*not a directory/i);

    const wrongKey = tmp.join('wrong_key');
    await execp('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', wrongKey]);
    for (const args of [['list', url], ['send', '--image', img, '--to', url]]) {
      const denied = await run([...args, '--json', ...cliSsh(sshd, wrongKey)]);
      expect(expectFailure(denied, 1)).toMatch(/^thinarchive: [\w.-]+@127\.0\.0\.1:\d+ rejected the credentials: ssh authentication failed \(.*Permission denied \(publickey\)/);
      expect(JSON.parse(denied.stdout).error.code).toBe('STORE_AUTH');
    }
  });

  it('replication: send --apply-remote runs thinarchive apply on the remote host and reports its outcome and exit code', async () => {
    const remoteTarget = join(sshd.dir, 'replica dir', "target's.img");
    await mkdir(join(sshd.dir, 'replica dir'), { recursive: true });
    const rep = ['--apply-remote', `ssh://${sshd.user}@127.0.0.1:${sshd.port}`, '--remote-to', remoteTarget, '--remote-command', BIN];
    const first = await runOk(['send', '--image', img, ...rep, '--remote-arg', '--create', ...o]);
    expect(first.stderr).toMatch(/streamed to thinarchive apply on [\w.-]+@127\.0\.0\.1/);
    expect(first.stderr).toMatch(/applied on [\w.-]+@127\.0\.0\.1:\d+ to .*target's\.img: 1 archive\(s\) applied, 0 skipped; target now at sequence 0/);
    expect(await sha256(remoteTarget)).toBe(await sha256(img));

    // A new full archive onto a target with another chain's state: the remote apply refuses (exit 4),
    // and so does the sender, with the remote's reason.
    const refused = await run(['send', '--image', img, ...rep, ...o]);
    // (the remote's own error code comes back from its --json error)
    expect(expectFailure(refused, 4)).toMatch(/^thinarchive: remote apply on [\w.-]+@127\.0\.0\.1:\d+ failed \(remote exit 4\): [A-Z_]+: /);
    expect(await sha256(remoteTarget)).toBe(await sha256(img));
    // --verify on the remote side: it reads back what it wrote before recording its state, and says so
    const fresh = join(sshd.dir, 'replica dir', 'verified.img');
    const verified = await runOk(['send', '--image', img, '--apply-remote', `ssh://${sshd.user}@127.0.0.1:${sshd.port}`, '--remote-to', fresh, '--remote-command', BIN,
      '--remote-arg', '--create', '--remote-arg', '--verify', '--json', ...o]);
    const rr = (JSON.parse(verified.stdout) as { remoteApply: { result: { applied: { dataBytes: number; verify: { blocksChecked: number; mismatchedBlocks: number } }[] } } }).remoteApply.result;
    expect(rr.applied).toHaveLength(1);
    expect(rr.applied[0]!.verify.mismatchedBlocks).toBe(0);
    expect(rr.applied[0]!.verify.blocksChecked).toBeGreaterThan(0);
    expect(await sha256(fresh)).toBe(await sha256(img));
    // A remote usage error keeps its class (2); a missing remote command is a runtime error (1).
    const usage = await run(['send', '--image', img, ...rep, '--remote-arg', '--keep', '--remote-arg', '0', ...o]);
    expect(expectFailure(usage, 2)).toMatch(/remote exit 2/);
    const missing = await run(['send', '--image', img, '--apply-remote', `ssh://${sshd.user}@127.0.0.1:${sshd.port}`, '--remote-to', remoteTarget, '--remote-command', '/nonexistent/thinarchive', ...o]);
    expect(expectFailure(missing, 1)).toMatch(/command not found: \/nonexistent\/thinarchive/);
    // Option misuse is caught before anything runs.
    expect(expectFailure(await run(['send', '--image', img, '--to', url, ...rep, ...o]), 2)).toMatch(/--to and --apply-remote do not go together/);
  });
});
