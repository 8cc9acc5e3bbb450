/**
 * Block devices (loop devices over files in a temporary directory) as apply targets and as send
 * sources. Needs root and loop devices: without them the tests are skipped with the reason printed,
 * and fail when $CI is set.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chainEntries, expectFailure, run, runOk, sha256, show, tempDir, waitFor, type TempDir } from '../helpers/cli.js';
import { probeLoopDevices } from '../helpers/host.js';
import { noiseBytes, POOL_BLOCK, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;

const unavailable = probeLoopDevices();
if (unavailable && !process.env.CI) console.warn(`skipping block-device tests: ${unavailable}`);

describe('block devices: availability', () => {
  // Under CI, missing loop devices are a failure; elsewhere the block-device tests are skipped.
  it('loop devices can be attached', (ctx) => {
    if (unavailable !== null && !process.env.CI) ctx.skip();
    expect(unavailable, 'block-device tests cannot run').toBeNull();
  });
});

describe.skipIf(unavailable !== null)('block devices (loop)', () => {
  let dir: TempDir;
  let store: string;
  let src: string;
  let stateDir: string;
  const hashes: string[] = [];
  const archives: string[] = [];
  const archiveIds: string[] = [];
  /** Attached loop devices, detached in afterAll whatever happens. */
  const attached: string[] = [];
  const mounts: string[] = [];
  const holders: ChildProcess[] = [];

  /** A loop device over a new backing file of `size` bytes filled with `fill`. */
  function loop(name: string, size: number, fill = 0xff): string {
    const f = dir.join(name);
    const fd = openSync(f, 'w');
    const chunk = Buffer.alloc(MiB, fill);
    for (let at = 0; at < size; at += MiB) writeSync(fd, chunk, 0, Math.min(MiB, size - at), at);
    closeSync(fd);
    const dev = execFileSync('losetup', ['-f', '--show', f], { encoding: 'utf8' }).trim();
    attached.push(dev);
    return dev;
  }

  function readAt(dev: string, offset: number, length: number): Buffer {
    const fd = openSync(dev, 'r');
    try {
      const b = Buffer.alloc(length);
      readSync(fd, b, 0, length, offset);
      return b;
    } finally {
      closeSync(fd);
    }
  }

  function stateFile(dev: string, sd = stateDir): string {
    return join(sd, 'blockdev', `${encodeURIComponent(dev)}.json`);
  }

  /** apply with an explicit state directory (never the system default). */
  function apply(args: string[], sd = stateDir) {
    return run(['apply', ...args, '--state-dir', sd], { env: { THINARCHIVE_STATE_DIR: join(dir.path, 'env-state') } });
  }

  beforeAll(async () => {
    dir = await tempDir('blockdev');
    store = dir.join('store');
    src = dir.join('vol.img');
    stateDir = dir.join('state');
    const rand = prng(4242);
    const m = new VolumeModel(src, SIZE);
    m.write(0, textBytes(rand, 3 * MiB));
    m.write(5 * MiB, noiseBytes(2 * MiB));
    m.writeZeroes(9 * MiB, MiB);
    m.write(20 * MiB + 777, textBytes(rand, 300 * 1024));
    m.write(SIZE - POOL_BLOCK, textBytes(rand, POOL_BLOCK));
    m.snapshotDelta();
    hashes[0] = await sha256(src);
    let r = JSON.parse((await runOk(['send', '--image', src, '--to', store, '--json'])).stdout);
    archives[0] = r.path;
    archiveIds[0] = r.archiveId;
    // 1: new data in holes and over data, a discard, zeroes written (one reported as discarded).
    m.write(12 * MiB, noiseBytes(MiB));
    m.write(POOL_BLOCK, textBytes(rand, 2 * POOL_BLOCK));
    m.punch(5 * MiB, 4 * POOL_BLOCK);
    m.writeZeroes(MiB, POOL_BLOCK);
    m.writeZeroes(2 * MiB, POOL_BLOCK);
    writeFileSync(dir.join('d1.xml'), m.snapshotDelta(new Map([[(2 * MiB) / POOL_BLOCK, 'left_only']])));
    hashes[1] = await sha256(src);
    r = JSON.parse((await runOk(['send', '--image', src, '--changes', dir.join('d1.xml'), '--parent', archives[0], '--to', store, '--json'])).stdout);
    archives[1] = r.path;
    archiveIds[1] = r.archiveId;
    // 2: discard the whole first MiB and the last block, rewrite part of the noise.
    m.punch(0, MiB);
    m.punch(SIZE - POOL_BLOCK, POOL_BLOCK);
    m.write(6 * MiB + 100, textBytes(rand, 10_000));
    writeFileSync(dir.join('d2.xml'), m.snapshotDelta());
    hashes[2] = await sha256(src);
    r = JSON.parse((await runOk(['send', '--image', src, '--changes', dir.join('d2.xml'), '--parent', archives[1], '--to', store, '--json'])).stdout);
    archives[2] = r.path;
    archiveIds[2] = r.archiveId;
    m.close();
  });

  afterAll(async () => {
    for (const h of holders) h.kill('SIGKILL');
    for (const m of mounts) {
      try {
        execFileSync('umount', [m]);
      } catch (e) {
        console.warn(`umount ${m}: ${(e as Error).message}`);
      }
    }
    for (const d of attached) {
      try {
        execFileSync('losetup', ['-d', d]);
      } catch (e) {
        console.warn(`losetup -d ${d}: ${(e as Error).message}`);
      }
    }
    await dir?.remove();
  });

  it('applies a chain archive by archive to a loop device full of garbage; UNMAP and ZERO really zero it', async () => {
    const dev = loop('target1.bin', 40 * MiB);
    for (let i = 0; i < 3; i++) {
      const r = await apply([archives[i], '--to', dev, ...(i === 0 ? ['--force'] : [])]);
      expect(r.code, show(r)).toBe(0);
      expect(r.stderr).toContain(`${dev} (blockdev) is at archive ${archiveIds[i]} (sequence ${i})`);
      expect(await sha256(dev, SIZE), `after archive ${i}`).toBe(hashes[i]);
      const st = JSON.parse(readFileSync(stateFile(dev), 'utf8'));
      expect(st).toMatchObject({ status: 'clean', archiveId: archiveIds[i], sequence: i, volumeSize: SIZE });
    }
    // Holes of the source (never written) read back as zeroes, not the 0xff the device held.
    expect(readAt(dev, 30 * MiB, MiB).every((b) => b === 0)).toBe(true);
    // Discarded in archive 2: the first MiB.
    expect(readAt(dev, 0, MiB).every((b) => b === 0)).toBe(true);
    // Beyond the volume the device is left alone.
    expect(readAt(dev, SIZE, 8 * MiB).every((b) => b === 0xff)).toBe(true);
    // Nothing written to the default or environment state directories.
    expect(existsSync(join(dir.path, 'env-state'))).toBe(false);
    const again = await apply([store, '--to', dev]);
    expect(again.code, show(again)).toBe(0);
    expect(again.stderr).toContain(`nothing to apply: ${dev} is at archive ${archiveIds[2]}`);
  });

  it('applies the whole store in one call; a device without state is refused (4) unless --force', async () => {
    const dev = loop('target2.bin', SIZE); // exactly the volume size
    const before = await sha256(dev);
    const r = await apply([store, '--to', dev]);
    expect(expectFailure(r, 4)).toContain('no thinarchive state');
    expect(await sha256(dev)).toBe(before);
    expect(existsSync(stateFile(dev))).toBe(false);
    const f = await apply([store, '--to', dev, '--force']);
    expect(f.code, show(f)).toBe(0);
    expect(f.stderr.match(/^applied /gm)).toHaveLength(3);
    expect(await sha256(dev)).toBe(hashes[2]);
  });

  it('uses $THINARCHIVE_STATE_DIR when --state-dir is not given', async () => {
    const dev = loop('target-env.bin', SIZE);
    const envDir = dir.join('env-state-2');
    const r = await run(['apply', archives[0], '--to', dev, '--force'], { env: { THINARCHIVE_STATE_DIR: envDir } });
    expect(r.code, show(r)).toBe(0);
    expect(existsSync(stateFile(dev, envDir))).toBe(true);
    expect(await sha256(dev)).toBe(hashes[0]);
  });

  it('apply --create onto a block device is refused (4), the device untouched', async () => {
    // Was: accepted; the device was treated as a new all-zero image, so the first archive's UNMAP
    // extents and ZERO records were skipped (0xff garbage left where the volume has zeroes, state
    // "clean"), and any existing state was ignored without --force.
    const dev = loop('target-create.bin', 40 * MiB);
    const before = await sha256(dev);
    const r = await apply([store, '--to', dev, '--create']);
    expect(expectFailure(r, 4)).toContain(dev);
    expect(await sha256(dev)).toBe(before);
    expect(existsSync(stateFile(dev))).toBe(false);
  });

  it('refuses a device smaller than the volume (4), the device untouched', async () => {
    const dev = loop('small.bin', 16 * MiB);
    const before = await sha256(dev);
    const r = await apply([archives[0], '--to', dev, '--force']);
    const line = expectFailure(r, 4);
    expect(line).toContain(`target ${dev} has ${16 * MiB} bytes, the volume needs ${SIZE}`);
    expect(await sha256(dev)).toBe(before);
    expect(existsSync(stateFile(dev))).toBe(false);
  });

  it('refuses a device held open exclusively by another process (4)', async () => {
    const dev = loop('held.bin', SIZE);
    const holder = spawn(process.execPath, ['-e', `
      const fs = require('fs');
      fs.openSync(${JSON.stringify(dev)}, fs.constants.O_RDWR | fs.constants.O_EXCL);
      process.stdout.write('held\\n');
      setInterval(() => {}, 1000);
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    holders.push(holder);
    let out = '';
    holder.stdout!.on('data', (b) => (out += b));
    await waitFor(() => out.includes('held'), 10_000);
    const before = await sha256(dev);
    const r = await apply([archives[0], '--to', dev, '--force']);
    expect(expectFailure(r, 4)).toContain(`target ${dev} is in use`);
    expect(await sha256(dev)).toBe(before);
    holder.kill('SIGKILL');
    await new Promise((res) => holder.once('exit', res));
    // Released: now it works.
    const ok = await apply([archives[0], '--to', dev, '--force']);
    expect(ok.code, show(ok)).toBe(0);
  });

  it('refuses a mounted device (4)', async (ctx) => {
    const dev = loop('mounted.bin', SIZE, 0);
    execFileSync('mkfs.ext4', ['-q', '-F', dev]);
    const mnt = dir.join('mnt');
    mkdirSync(mnt);
    try {
      execFileSync('mount', [dev, mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      console.warn(`mount does not work here, skipping the mounted-device case: ${(e as Error).message.split('\n')[0]}`);
      ctx.skip();
      return;
    }
    mounts.push(mnt);
    writeFileSync(join(mnt, 'precious.txt'), 'keep me');
    const r = await apply([archives[0], '--to', dev, '--force']);
    expect(expectFailure(r, 4)).toContain('in use');
    execFileSync('umount', [mnt]);
    mounts.splice(mounts.indexOf(mnt), 1);
    execFileSync('mount', ['-o', 'ro', dev, mnt]);
    mounts.push(mnt);
    expect(readFileSync(join(mnt, 'precious.txt'), 'utf8')).toBe('keep me');
  });

  it('sends from a loop device: a full archive reads the whole device', async () => {
    const dev = loop('source.bin', SIZE + 2 * MiB, 0);
    const w = await apply([store, '--to', dev, '--force']);
    expect(w.code, show(w)).toBe(0);
    const devHash = await sha256(dev);
    const s2 = dir.join('store-from-dev');
    const r = await runOk(['send', '--image', dev, '--to', s2, '--json']);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ full: true, volumeSize: SIZE + 2 * MiB, dryRun: false });
    expect(j.dataBytes + j.zeroBytes).toBe(SIZE + 2 * MiB); // every block read
    expect(j.unmapBytes).toBe(0);
    expect(j.zeroBytes).toBeGreaterThan(20 * MiB); // the zero blocks are found
    const info = JSON.parse((await runOk(['info', j.path, '--json'])).stdout);
    expect(info.header.meta.source).toEqual({ kind: 'blockdev', path: dev, host: hostname() });
    expect(info.header.meta.volume.name).toBe(dev.split('/').pop());
    expect(info.map).toMatchObject({ dataBlocks: (SIZE + 2 * MiB) / POOL_BLOCK, unmapBlocks: 0 });
    const img = dir.join('from-dev.img');
    await runOk(['apply', s2, '--to', img, '--create']);
    expect(await sha256(img)).toBe(devHash);
    // Restored sparse although the device was read whole.
    const { statSync } = await import('node:fs');
    expect(statSync(img).blocks * 512).toBeLessThan(20 * MiB);

    // An incremental from the device, with a delta, onto the restored image.
    const fd = openSync(dev, 'r+');
    writeSync(fd, Buffer.alloc(POOL_BLOCK, 0x5a), 0, POOL_BLOCK, SIZE + MiB);
    closeSync(fd);
    const d = dir.join('dev-delta.xml');
    writeFileSync(d, `<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="1000">\n  <diff left="1" right="2">\n    <different begin="${(SIZE + MiB) / POOL_BLOCK}" length="1"/>\n  </diff>\n</superblock>\n`);
    await runOk(['send', '--image', dev, '--changes', d, '--parent', s2, '--to', s2]);
    await runOk(['apply', s2, '--to', img]);
    expect(await sha256(img)).toBe(await sha256(dev));
    expect(chainEntries(join(s2, j.chainId))).toHaveLength(2);
  });
});
