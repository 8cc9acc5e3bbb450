/**
 * `thinarchive serve --writable --keep-overlay DIR` with real NBD clients (qemu-io writes, nbdcopy and
 * qemu-img compare read back): writes survive a stop by SIGTERM or SIGINT and are served again by
 * the next server (the untouched rest equal to `restore --at`), sessions accumulate, a point that was
 * only read leaves nothing; a kept overlay of another chain, of a merged-away archive, of another
 * size, a damaged sidecar or overlay file, and one left by a killed or a running server are refused
 * with one line and their exit code, changing nothing; the archives are never written. Without the
 * flag the overlay directory is empty after the stop (unchanged behaviour).
 */
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectFailure, run, runOk, sha256, show, tempDir, type RunResult, type TempDir } from '../helpers/cli.js';
import { startServe, tool, type Served } from '../helpers/nbd.js';
import { noiseBytes, POOL_BLOCK, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB + 4608; // whole 512-byte sectors (qemu's client) but not whole 4 KiB granules
const POINTS = 3;

interface Sidecar { version: number; chainId: string; archiveId: string; sequence: number; volumeSize: number; keptAt: string; data: [number, number][]; zero: [number, number][] }

describe('serve --writable --keep-overlay DIR', () => {
  let tmp: TempDir;
  let store: string;
  let other: string;
  let keep: string;
  let chainId: string;
  let archiveIds: string[];
  const restored: string[] = [];
  /** What point 1 and point 2 should read as after the writes so far. */
  let expected1: Buffer;
  let expected2: Buffer;
  let archiveHashes: () => Promise<string[]>;
  let archivesBefore: string[];

  const sidecar = (dir: string, n: number): Sidecar => JSON.parse(readFileSync(join(dir, `point-${n}.json`), 'utf8')) as Sidecar;
  /** Every file of a directory with its sha256 (a refused start must change none). */
  const snapshot = async (dir: string): Promise<Record<string, string>> =>
    Object.fromEntries(await Promise.all(readdirSync(dir).sort().map(async (n) => [n, await sha256(join(dir, n))] as const)));
  const serveKept = (args: string[], dir: string, sock: string): Promise<Served> =>
    startServe([...args, '--writable', '--keep-overlay', dir], tmp.join(sock));
  const refused = (args: string[], dir: string): Promise<RunResult> =>
    run(['serve', ...args, '--writable', '--keep-overlay', dir, '--socket', tmp.join('refused.sock')]);
  /** nbdcopy of an export equals `want`. */
  const copyEquals = async (s: Served, name: string, want: Buffer): Promise<void> => {
    const out = tmp.join(`copy-${name || 'default'}.img`);
    await tool('nbdcopy', [s.uri(name), out]);
    expect(readFileSync(out).equals(want), `export "${name}"`).toBe(true);
  };

  beforeAll(async () => {
    tmp = await tempDir('keep-overlay');
    store = tmp.join('store');
    other = tmp.join('other');
    keep = tmp.join('kept');
    const img = tmp.join('vol.img');
    const m = new VolumeModel(img, SIZE);
    const rand = prng(11);
    m.write(0, textBytes(rand, 2 * MiB));
    m.write(4 * MiB, noiseBytes(MiB));
    m.write(SIZE - 9000, textBytes(rand, 9000));
    m.snapshotDelta();
    await runOk(['send', '--image', img, '--to', store]);
    for (let i = 1; i < POINTS; i++) {
      for (let k = 0; k < 4; k++) m.write(Math.floor(rand() * (SIZE / POOL_BLOCK - 1)) * POOL_BLOCK, textBytes(rand, POOL_BLOCK));
      m.punch(4 * MiB + i * POOL_BLOCK, POOL_BLOCK);
      const delta = tmp.join(`d${i}.xml`);
      writeFileSync(delta, m.snapshotDelta());
      await runOk(['send', '--image', img, '--changes', delta, '--parent', store, '--to', store]);
    }
    m.close();
    // another chain: a full archive of another image of the same size
    const img2 = tmp.join('other.img');
    const m2 = new VolumeModel(img2, SIZE);
    m2.write(0, noiseBytes(MiB));
    m2.snapshotDelta();
    m2.close();
    await runOk(['send', '--image', img2, '--to', other]);

    const listed = JSON.parse((await runOk(['list', store, '--json'])).stdout) as { chainId: string; archives: { sequence: number; archiveId: string }[] }[];
    chainId = listed[0].chainId;
    archiveIds = listed[0].archives.map((a) => a.archiveId);
    expect(archiveIds).toHaveLength(POINTS);
    for (let i = 0; i < POINTS; i++) {
      restored.push(tmp.join(`restored${i}.img`));
      await runOk(['restore', store, '--at', String(i), '--to', restored[i], '--create']);
    }
    expected1 = readFileSync(restored[1]);
    expected2 = readFileSync(restored[2]);
    const chainDir = join(store, readdirSync(store).find((d) => !d.startsWith('.'))!);
    archiveHashes = () => Promise.all(readdirSync(chainDir).filter((n) => n.endsWith('.tna')).sort().map((n) => sha256(join(chainDir, n))));
    archivesBefore = await archiveHashes();
  }, 240_000);

  afterAll(async () => {
    await tmp?.remove();
  });

  it('SIGTERM keeps each written overlay with its sidecar; a point only read leaves nothing', async () => {
    const s = await serveKept([store, '--at', '1'], keep, 'k1.sock');
    try {
      expect(s.stderr()).toContain(`writable overlay kept in ${keep}`);
      // unaligned, aligned, zeroing, and a partial last granule (the volume ends mid-granule)
      await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 1000 5000', '-c', 'write -P 0xcd 4194304 131072', '-c', 'write -z 6291456 65536',
        '-c', `write -P 0xee ${SIZE - 3000} 3000`, s.uri()]);
      await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 65536 65536', s.uri('2')]);
      await tool('nbdinfo', ['--json', s.uri('0')]); // opened, never written
      expect(readdirSync(keep).sort()).toEqual(['point-0.lock', 'point-0.overlay', 'point-1.lock', 'point-1.overlay', 'point-2.lock', 'point-2.overlay']);
    } finally {
      const r = await s.stop();
      expect(r.code, show(r)).toBe(0);
      expect(r.stderr).toMatch(/kept the overlay of point 1 \(archive [0-9a-f-]+\): 140\.5 KiB written, 64\.0 KiB zeroed/);
    }
    expected1.fill(0xab, 1000, 6000);
    expected1.fill(0xcd, 4194304, 4194304 + 131072);
    expected1.fill(0, 6291456, 6291456 + 65536);
    expected1.fill(0xee, SIZE - 3000, SIZE);
    expected2.fill(0x5a, 65536, 131072);
    expect(readdirSync(keep).sort()).toEqual(['point-1.json', 'point-1.overlay', 'point-2.json', 'point-2.overlay']);
    const side = sidecar(keep, 1);
    expect(side).toMatchObject({
      version: 1, chainId, archiveId: archiveIds[1], sequence: 1, volumeSize: SIZE,
      data: [[0, 8192], [4194304, 131072], [8388608, 4608]], zero: [[6291456, 65536]],
    });
    expect(Number.isNaN(Date.parse(side.keptAt))).toBe(false);
    expect(sidecar(keep, 2)).toMatchObject({ archiveId: archiveIds[2], sequence: 2, data: [[65536, 65536]], zero: [] });
    expect(statSync(join(keep, 'point-1.overlay')).size).toBe(SIZE);
    expect(await archiveHashes()).toEqual(archivesBefore);
  }, 120_000);

  it('the next server resumes them: reads return the bytes written before the stop, the rest equals restore --at; SIGINT keeps again', async () => {
    const s = await serveKept([store, '--at', '1'], keep, 'k2.sock');
    try {
      expect(s.stderr()).toContain(`writable overlay resumed from ${keep}`);
      await copyEquals(s, '', expected1);
      await copyEquals(s, '2', expected2);
      const want = tmp.join('expected1.img');
      writeFileSync(want, expected1);
      expect(await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', want, s.uri()])).toContain('Images are identical');
      const differs = await tool('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', restored[1], s.uri()]).then(() => 0, (e: { code: number }) => e.code);
      expect(differs).toBe(1); // the resumed overlay is not the archive
      // while served, the sidecars are gone (they no longer describe the files) and the points are locked
      expect(readdirSync(keep).sort()).toEqual(['point-1.lock', 'point-1.overlay', 'point-2.lock', 'point-2.overlay']);
      // a second session's writes: over the kept data, and zeroing part of it
      await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 2097152 4096', '-c', 'write -z 0 4096', s.uri()]);
    } finally {
      const r = await s.stop('SIGINT');
      expect(r.code, show(r)).toBe(0);
    }
    expected1.fill(0x77, 2097152, 2097152 + 4096);
    expected1.fill(0, 0, 4096);
    expect(sidecar(keep, 1)).toMatchObject({ data: [[4096, 4096], [2097152, 4096], [4194304, 131072], [8388608, 4608]], zero: [[0, 4096], [6291456, 65536]] });
    const again = await serveKept([store], keep, 'k3.sock'); // default point 2 this time: point 1 is opened by name
    try {
      expect(again.stderr()).toContain('resumed from');
      await copyEquals(again, '1', expected1);
      await copyEquals(again, '', expected2);
      const map = JSON.parse(await tool('nbdinfo', ['--map', '--json', again.uri('1')])) as { offset: number; length: number; type: number }[];
      const at = (o: number): number => map.find((x) => x.offset <= o && o < x.offset + x.length)!.type;
      expect(at(0) & 1).toBe(1); // zeroed: a hole
      expect(at(4194304) & 1).toBe(0);
    } finally {
      const r = await again.stop();
      expect(r.code, show(r)).toBe(0);
    }
    expect(readdirSync(keep).sort()).toEqual(['point-1.json', 'point-1.overlay', 'point-2.json', 'point-2.overlay']);
    expect(await archiveHashes()).toEqual(archivesBefore);
    const plain = tmp.join('plain.img');
    await runOk(['restore', store, '--at', '1', '--to', plain, '--create']);
    expect(await sha256(plain)).toBe(await sha256(restored[1]));
  }, 120_000);

  it('a kept overlay of another chain, of an archive merged away or of another size is refused (OVERLAY_MISMATCH, exit 4), nothing changed', async () => {
    const before = await snapshot(keep);
    const otherChain = expectFailure(await refused([other], keep), 4);
    expect(otherChain).toMatch(/^thinarchive: kept overlay .*point-1\.json is of chain [0-9a-f-]+, not of the chain served/);

    // merging points 1..2 into one archive (the state of 2, with 2's archive id): point 1 is gone
    const merged = tmp.join('merged-store');
    cpSync(store, merged, { recursive: true });
    await runOk(['merge', merged, '--from', '1', '--to', '2']);
    const line = expectFailure(await refused([merged, '--at', '2'], keep), 4);
    expect(line).toMatch(/point-1\.json is of point 1, which the chain no longer has \(points: 0, 2\)/);

    const replaced = tmp.join('kept-replaced');
    cpSync(keep, replaced, { recursive: true });
    writeFileSync(join(replaced, 'point-2.json'), JSON.stringify({ ...sidecar(replaced, 2), archiveId: archiveIds[0] }));
    expect(expectFailure(await refused([store], replaced), 4)).toContain(`point-2.json was written over archive ${archiveIds[0]}, but point 2 is now archive ${archiveIds[2]}`);

    const sized = tmp.join('kept-sized');
    cpSync(keep, sized, { recursive: true });
    const side = sidecar(sized, 2);
    writeFileSync(join(sized, 'point-2.json'), JSON.stringify({ ...side, volumeSize: SIZE + 4096 }));
    expect(expectFailure(await refused([store], sized), 4)).toContain(`point-2.json is of a ${SIZE + 4096}-byte volume, but point 2 is ${SIZE} bytes`);

    const json = await run(['serve', other, '--writable', '--keep-overlay', keep, '--socket', tmp.join('j.sock'), '--json']);
    expect(json.code).toBe(4);
    expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: 'OVERLAY_MISMATCH', exit: 4 } });
    expect(await snapshot(keep)).toEqual(before);
  }, 120_000);

  it('a truncated or malformed sidecar, or a truncated overlay file, is refused (OVERLAY_INVALID, exit 3)', async () => {
    const variants: [string, (dir: string) => void, RegExp][] = [
      ['truncated sidecar', (d) => truncateSync(join(d, 'point-1.json'), Math.floor(statSync(join(d, 'point-1.json')).size / 2)), /point-1\.json: not valid JSON \(truncated or damaged\)/],
      ['overlapping runs', (d) => writeFileSync(join(d, 'point-1.json'), JSON.stringify({ ...sidecar(d, 1), zero: [[4096, 8192]] })), /point-1\.json: runs overlap at byte/],
      ['run past the end', (d) => writeFileSync(join(d, 'point-1.json'), JSON.stringify({ ...sidecar(d, 1), data: [[SIZE - 4608, 8192]] })), /past the end/],
      ['unknown version', (d) => writeFileSync(join(d, 'point-1.json'), JSON.stringify({ ...sidecar(d, 1), version: 2 })), /version 2 is not supported/],
      ['truncated overlay file', (d) => truncateSync(join(d, 'point-2.overlay'), 4096), /point-2\.overlay: it is 4096 bytes, not \d+ \(truncated or replaced\)/],
      ['overlay without its sidecar', (d) => unlinkSync(join(d, 'point-2.json')), /point-2\.overlay: it has no sidecar/],
    ];
    for (const [what, damage, message] of variants) {
      const d = tmp.join(`kept-${what.replace(/ /g, '-')}`);
      cpSync(keep, d, { recursive: true });
      damage(d);
      const before = await snapshot(d);
      const line = expectFailure(await refused([store, '--at', '0'], d), 3);
      expect(line, what).toMatch(message);
      expect(await snapshot(d), what).toEqual(before);
    }
  }, 120_000);

  it('an overlay in use by a running server, or left by a killed one, is refused (OVERLAY_IN_USE, exit 4)', async () => {
    const d = tmp.join('kept-in-use');
    cpSync(keep, d, { recursive: true });
    const first = await serveKept([store, '--at', '1'], d, 'u1.sock');
    try {
      const line = expectFailure(await refused([store, '--at', '0'], d), 4);
      expect(line).toMatch(new RegExp(`kept overlay of point 1 in .* is in use by server pid ${first.child.pid} on `));
    } finally {
      const r = await first.stop();
      expect(r.code, show(r)).toBe(0);
    }
    // a killed server: its lock stays, and the resumed overlay's sidecar is gone
    const killed = await serveKept([store, '--at', '1'], d, 'u2.sock');
    await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 4096', killed.uri()]);
    const r = await killed.stop('SIGKILL');
    expect(r.signal).toBe('SIGKILL');
    const line = expectFailure(await refused([store, '--at', '2'], d), 4);
    expect(line).toMatch(/server pid \d+ on .* did not stop cleanly, so what the overlay holds is unknown; delete .*point-1\.\* to discard it/);
    unlinkSync(join(d, 'point-1.lock'));
    expect(expectFailure(await refused([store, '--at', '2'], d), 3)).toMatch(/point-1\.overlay: it has no sidecar/);
    // discarding it as told lets the directory be used again
    unlinkSync(join(d, 'point-1.overlay'));
    const fresh = await serveKept([store, '--at', '2'], d, 'u3.sock');
    try {
      await copyEquals(fresh, '', expected2);
      await copyEquals(fresh, '1', readFileSync(restored[1]));
    } finally {
      expect((await fresh.stop()).code).toBe(0);
    }
  }, 120_000);

  it('an overlay that cannot be kept at the stop: one line naming it, exit 1, and its lock stays so it is never resumed', async () => {
    const d = tmp.join('kept-fails');
    const s = await serveKept([store, '--at', '0'], d, 'f.sock');
    try {
      await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 0 4096', s.uri()]);
      mkdirSync(join(d, 'point-0.json', 'x'), { recursive: true }); // the sidecar cannot be renamed into place
    } finally {
      const r = await s.stop();
      expect(r.code, show(r)).toBe(1);
      expect(r.stderr).toMatch(/^thinarchive: the overlay of point 0 could not be kept in .*kept-fails: .*point-0\.json/m);
    }
    expect(existsSync(join(d, 'point-0.lock'))).toBe(true);
    expect(expectFailure(await refused([store, '--at', '0'], d), 4)).toContain('did not stop cleanly');
  }, 60_000);

  it('bad invocations: --keep-overlay without --writable or with --overlay-dir (exit 2)', async () => {
    expect(expectFailure(await run(['serve', store, '--keep-overlay', keep, '--socket', tmp.join('b.sock')]), 2)).toContain('--keep-overlay needs --writable');
    expect(expectFailure(await run(['serve', store, '--writable', '--keep-overlay', keep, '--overlay-dir', tmp.path, '--socket', tmp.join('b.sock')]), 2))
      .toContain('not both');
  });

  it('without --keep-overlay the overlay is discarded: its directory is empty after the stop', async () => {
    const dir = tmp.join('plain-overlays');
    await import('node:fs/promises').then((fs) => fs.mkdir(dir));
    const s = await startServe([store, '--at', '1', '--writable', '--overlay-dir', dir], tmp.join('plain.sock'));
    try {
      await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 65536', s.uri()]);
      expect(readdirSync(dir)).toHaveLength(1);
    } finally {
      const r = await s.stop();
      expect(r.code, show(r)).toBe(0);
      expect(r.stderr).not.toContain('kept the overlay');
    }
    expect(readdirSync(dir)).toEqual([]);
    const s2 = await startServe([store, '--at', '1', '--writable', '--overlay-dir', dir], tmp.join('plain.sock'));
    try {
      await copyEquals(s2, '', readFileSync(restored[1]));
    } finally {
      expect((await s2.stop()).code).toBe(0);
    }
    expect(existsSync(tmp.join('plain.sock'))).toBe(false);
    expect(await archiveHashes()).toEqual(archivesBefore);
  }, 120_000);
});
