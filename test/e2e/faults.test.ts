/**
 * Faults during apply and send (issue 5): disk full (a small tmpfs), read-only targets (a read-only
 * bind mount, `chattr +i`, `blockdev --setro`). Each must end with one clear line on stderr and its
 * documented exit code; a target written to must stay recoverable (to its previous state, byte for
 * byte), a refused one must be untouched, and a store must hold no partial archive.
 * Needs root (mount, chattr, losetup): without it the tests are skipped, and fail when $CI is set.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectFailure, run, runOk, sha256, show, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';

const MiB = 1024 * 1024;
const root = process.getuid?.() === 0;

describe('faults: availability', () => {
  it('runs as root (mount, chattr, losetup)', (ctx) => {
    if (!root && !process.env.CI) ctx.skip();
    expect(root, 'the fault tests need root').toBe(true);
  });
});

describe.skipIf(!root)('faults during apply and send', () => {
  let dir: TempDir;
  let a0: string;
  let big: string;
  let sha0: string;
  let shaBig: string;
  const mounts: string[] = [];
  const loops: string[] = [];

  const sh = (cmd: string, ...args: string[]): string => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  function tmpfs(name: string, size: string): string {
    const m = dir.join(name);
    mkdirSync(m, { recursive: true });
    sh('mount', '-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', m);
    mounts.push(m);
    return m;
  }

  beforeAll(async () => {
    dir = await tempDir('faults');
    const rand = prng(5);
    const v0 = dir.join('v0.img');
    const m = new VolumeModel(v0, 4 * MiB);
    for (let i = 0; i < 16; i++) m.write(i * 256 * 1024, textBytes(rand, 64 * 1024));
    m.close();
    a0 = JSON.parse((await runOk(['send', '--image', v0, '--to', dir.join('store'), '--json'])).stdout).path;
    sha0 = await sha256(v0);
    // 4 MiB of noise: does not compress, fills a small filesystem
    const vb = dir.join('big.img');
    writeFileSync(vb, noiseBytes(4 * MiB));
    big = JSON.parse((await runOk(['send', '--image', vb, '--to', dir.join('store-big'), '--json', '--level', '1'])).stdout).path;
    shaBig = await sha256(vb);
  });

  afterAll(async () => {
    for (const m of mounts.reverse()) {
      try {
        sh('umount', m);
      } catch {
        // already gone
      }
    }
    for (const l of loops) {
      try {
        sh('blockdev', '--setrw', l);
        sh('losetup', '-d', l);
      } catch {
        // already gone
      }
    }
    await dir?.remove();
  });

  it('disk full during apply: exit 1, "no space left on device"; recover restores the previous state; apply completes once there is room', async () => {
    // 4 MiB image with 1 MiB of data, on a 4.5 MiB filesystem: the 4 MiB of noise plus the journal
    // of the old 1 MiB do not fit.
    const m = tmpfs('full-apply', '4608k');
    const img = `${m}/t.img`;
    await runOk(['apply', a0, '--to', img, '--create']);
    expect(await sha256(img)).toBe(sha0);
    const r = await run(['apply', big, '--to', img, '--force']);
    const line = expectFailure(r, 1);
    expect(line).toMatch(/no space left on device/);
    const st = JSON.parse(readFileSync(`${img}.thinarchive.json`, 'utf8'));
    expect(st.status).toBe('applying');
    const rec = await run(['recover', img]);
    expect(rec.code, show(rec)).toBe(0);
    expect(rec.stderr).toMatch(/rolled back the interrupted apply/);
    expect(await sha256(img)).toBe(sha0);
    expect(JSON.parse(readFileSync(`${img}.thinarchive.json`, 'utf8'))).toMatchObject({ status: 'clean', archiveId: st.archiveId });
    expect(existsSync(`${img}.thinarchive.undo`)).toBe(false);
    sh('mount', '-o', 'remount,size=32M', m);
    await runOk(['apply', big, '--to', img, '--force']);
    expect(await sha256(img)).toBe(shaBig);
  });

  it('disk full during apply, recovered by the next apply (which says so)', async () => {
    const m = tmpfs('full-apply2', '4608k');
    const img = `${m}/t.img`;
    await runOk(['apply', a0, '--to', img, '--create']);
    expectFailure(await run(['apply', big, '--to', img, '--force']), 1);
    sh('mount', '-o', 'remount,size=32M', m);
    const r = await runOk(['apply', big, '--to', img, '--force']);
    expect(r.stderr).toMatch(/^recovered first: .*rolled back the interrupted apply/m);
    expect(await sha256(img)).toBe(shaBig);
  });

  it('disk full during send: exit 1, "no space left on device", no archive and no temporary file in the store', async () => {
    const m = tmpfs('full-send', '2M');
    const vb = dir.join('big.img');
    const r = await run(['send', '--image', vb, '--to', `${m}/store`, '--level', '1']);
    expect(expectFailure(r, 1)).toMatch(/no space left on device/);
    const left = existsSync(`${m}/store`) ? readdirSync(`${m}/store`, { recursive: true }).map(String) : [];
    expect(left.filter((n) => n.endsWith('.tna') || n.includes('.tmp-'))).toEqual([]);
  });

  it('read-only filesystem: the image is refused before anything is written (exit 4)', async () => {
    const img = dir.join('ro-src/t.img');
    mkdirSync(dir.join('ro-src'));
    await runOk(['apply', a0, '--to', img, '--create']);
    const ro = dir.join('ro');
    mkdirSync(ro);
    sh('mount', '--bind', dir.join('ro-src'), ro);
    mounts.push(ro);
    sh('mount', '-o', 'remount,ro,bind', ro);
    const r = await run(['apply', big, '--to', `${ro}/t.img`, '--force']);
    expect(expectFailure(r, 4)).toMatch(/cannot be opened for writing \(EROFS\)/);
    expect(await sha256(img)).toBe(sha0);
    expect(readdirSync(dir.join('ro-src')).sort()).toEqual(['t.img', 't.img.thinarchive.json', 't.img.thinarchive.lock']);
  });

  it('read-only store: prune and merge are refused before anything is written (exit 1)', async () => {
    const src = dir.join('ro-store-src');
    const img = dir.join('chain.img');
    const m = new VolumeModel(img, 2 * MiB);
    const rand = prng(9);
    m.write(0, textBytes(rand, 256 * 1024));
    m.snapshotDelta();
    await runOk(['send', '--image', img, '--to', src]);
    for (let i = 1; i < 3; i++) {
      m.write(i * 512 * 1024, textBytes(rand, 64 * 1024));
      writeFileSync(dir.join(`ro-d${i}.xml`), m.snapshotDelta());
      await runOk(['send', '--image', img, '--changes', dir.join(`ro-d${i}.xml`), '--parent', src, '--to', src]);
    }
    m.close();
    const ro = dir.join('ro-store');
    mkdirSync(ro);
    sh('mount', '--bind', src, ro);
    mounts.push(ro);
    sh('mount', '-o', 'remount,ro,bind', ro);
    const before = readdirSync(src, { recursive: true }).map(String).sort();
    expect(before.filter((n) => n.endsWith('.tna'))).toHaveLength(3);
    expect(expectFailure(await run(['prune', ro, '--keep', '1']), 1)).toMatch(/^thinarchive: prune refused, nothing changed: cannot delete archives in .*(EROFS|read-only)/i);
    expect(expectFailure(await run(['merge', ro, '--from', '1', '--to', '2']), 1)).toMatch(/merge refused, nothing changed: .*(EROFS|read-only)/i);
    expect(readdirSync(src, { recursive: true }).map(String).sort()).toEqual(before);
  });

  it('immutable image (chattr +i): refused before anything is written (exit 4)', async () => {
    const img = dir.join('immutable.img');
    await runOk(['apply', a0, '--to', img, '--create']);
    sh('chattr', '+i', img);
    try {
      const r = await run(['apply', big, '--to', img, '--force']);
      expect(expectFailure(r, 4)).toMatch(/cannot be opened for writing \(EPERM\)/);
      expect(existsSync(`${img}.thinarchive.undo`)).toBe(false);
      expect(JSON.parse(readFileSync(`${img}.thinarchive.json`, 'utf8')).status).toBe('clean');
    } finally {
      sh('chattr', '-i', img);
    }
    expect(await sha256(img)).toBe(sha0);
  });

  it('read-only block device (blockdev --setro): refused before anything is written (exit 4)', async () => {
    const back = dir.join('loop.img');
    copyFileSync(dir.join('v0.img'), back);
    let dev: string;
    try {
      dev = sh('losetup', '-f', '--show', back).trim();
    } catch (e) {
      if (process.env.CI) throw e;
      console.warn(`no loop device: ${(e as Error).message.split('\n')[0]}`);
      return;
    }
    loops.push(dev);
    sh('blockdev', '--setro', dev);
    const stateDir = dir.join('state');
    const r = await run(['apply', big, '--to', dev, '--force', '--state-dir', stateDir]);
    expect(expectFailure(r, 4)).toMatch(/cannot be opened for writing \((EROFS|EACCES|EPERM|the block device is read-only)\)/);
    expect(existsSync(stateDir) ? readdirSync(stateDir, { recursive: true }).map(String).filter((n) => n.endsWith('.json') || n.endsWith('.undo')) : []).toEqual([]);
    expect(await sha256(dev)).toBe(sha0);
  });
});
