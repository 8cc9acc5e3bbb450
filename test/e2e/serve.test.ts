/**
 * `thinarchive serve` with real NBD clients (libnbd's nbdinfo and nbdcopy, qemu-img, qemu-io) and a
 * raw client for hostile behaviour, on a chain of six in a directory store: every point copies out
 * equal to `restore --at`, the allocation map has holes exactly where the point reads as zeroes, bad
 * clients are refused or disconnected while others are served, a damaged record answers EIO for its
 * range only, and --writable keeps writes in an overlay without touching the archives.
 */
import { copyFileSync, cpSync, existsSync, openSync, readdirSync, readFileSync, readSync, closeSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArchiveFile } from '../../src/archive/reader.js';
import { FrameType } from '../../src/format/constants.js';
import { collect, run, runOk, sha256, show, spawnCli, tempDir, waitFor, type TempDir } from '../helpers/cli.js';
import { RawNbd, startServe, tool, u16, u32, type Served } from '../helpers/nbd.js';
import { noiseBytes, POOL_BLOCK, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB + 12345; // not a multiple of the block size: the last block is short
const POINTS = 6;

/** [offset, length, hole] runs of a file read in `bs` blocks: hole where a block is all zeroes. */
function zeroRuns(path: string, bs: number): [number, number, boolean][] {
  const b = readFileSync(path);
  const out: [number, number, boolean][] = [];
  for (let at = 0; at < b.length; at += bs) {
    const n = Math.min(bs, b.length - at);
    const hole = b.subarray(at, at + n).every((x) => x === 0);
    const last = out[out.length - 1];
    if (last && last[2] === hole) last[1] += n;
    else out.push([at, n, hole]);
  }
  return out;
}

describe('serve: NBD export of a chain in a directory store', () => {
  let tmp: TempDir;
  let store: string;
  let served: Served;
  const images: string[] = [];
  const hashes: string[] = [];

  beforeAll(async () => {
    tmp = await tempDir('serve');
    store = tmp.join('store');
    const img = tmp.join('vol.img');
    const m = new VolumeModel(img, SIZE);
    const rand = prng(7);
    m.write(0, textBytes(rand, 3 * MiB));
    m.write(6 * MiB, noiseBytes(2 * MiB));
    m.writeZeroes(10 * MiB, MiB); // mapped but zero: a ZERO record, a hole
    m.write(SIZE - 20000, textBytes(rand, 20000));
    m.snapshotDelta();
    await runOk(['send', '--image', img, '--to', store]);
    for (let i = 0; i < POINTS; i++) {
      if (i > 0) {
        for (let k = 0; k < 5; k++) m.write(Math.floor(rand() * (SIZE / POOL_BLOCK - 1)) * POOL_BLOCK, textBytes(rand, POOL_BLOCK));
        m.punch(6 * MiB + i * 2 * POOL_BLOCK, POOL_BLOCK);
        m.writeZeroes(i * 3 * POOL_BLOCK, POOL_BLOCK);
        const delta = tmp.join(`d${i}.xml`);
        writeFileSync(delta, m.snapshotDelta());
        await runOk(['send', '--image', img, '--changes', delta, '--parent', store, '--to', store]);
      }
      const copy = tmp.join(`point${i}.img`);
      copyFileSync(img, copy);
      images.push(copy);
      hashes.push(await sha256(copy));
    }
    m.close();
    served = await startServe([store, '--at', '3'], tmp.join('nbd.sock'));
  }, 300_000);

  afterAll(async () => {
    await served?.stop().catch(() => {});
    await tmp?.remove();
  });

  it('nbdinfo lists the default export and every point, read-only, with base:allocation', async () => {
    const list = JSON.parse(await tool('nbdinfo', ['--list', '--json', served.uri()])) as { exports: { 'export-name': string; 'export-size': number; is_read_only: boolean; contexts: string[] }[] };
    const names = list.exports.map((e) => e['export-name']);
    expect(names).toEqual(['3', ...Array.from({ length: POINTS }, (_, i) => String(i))]); // the default's canonical name is its point
    for (const e of list.exports) {
      expect(e['export-size']).toBe(SIZE);
      expect(e.is_read_only).toBe(true);
      expect(e.contexts).toContain('base:allocation');
    }
  });

  it('nbdinfo --map shows holes exactly where each point reads as zeroes', async () => {
    for (const i of [0, 3, 5]) {
      const map = JSON.parse(await tool('nbdinfo', ['--map', '--json', served.uri(String(i))])) as { offset: number; length: number; type: number }[];
      const got = map.map((e) => [e.offset, e.length, (e.type & 1) === 1] as [number, number, boolean]);
      expect(got, `point ${i}`).toEqual(zeroRuns(images[i], 65536));
      expect(got.some((r) => r[2]) && got.some((r) => !r[2])).toBe(true);
    }
  });

  it('nbdcopy of every point (by sequence, by archive id, by time) equals restore --at and the source at that point', async () => {
    const listed = JSON.parse((await runOk(['list', store, '--json'])).stdout) as { archives: { sequence: number; archiveId: string; created: string }[] }[];
    const archives = listed[0].archives;
    for (let i = 0; i < POINTS; i++) {
      const out = tmp.join(`copy${i}.img`);
      await tool('nbdcopy', [served.uri(String(i)), out]);
      const restored = tmp.join(`restored${i}.img`);
      await runOk(['restore', store, '--at', String(i), '--to', restored, '--create']);
      expect(await sha256(out), `point ${i}`).toBe(hashes[i]);
      expect(await sha256(restored), `restore point ${i}`).toBe(hashes[i]);
    }
    const byId = tmp.join('by-id.img');
    await tool('nbdcopy', [served.uri(archives[2].archiveId), byId]);
    expect(await sha256(byId)).toBe(hashes[2]);
    const byTime = tmp.join('by-time.img');
    await tool('nbdcopy', [served.uri(archives[4].created), byTime]);
    expect(await sha256(byTime)).toBe(hashes[4]);
    const def = tmp.join('default.img');
    await tool('nbdcopy', [served.uri(), def]);
    expect(await sha256(def)).toBe(hashes[3]);
  }, 240_000);

  it('qemu-img info and compare against a restored image', async () => {
    const info = JSON.parse(await tool('qemu-img', ['info', '--output=json', served.uri('5')])) as { 'virtual-size': number; format: string };
    // qemu's NBD client rounds the size up to whole 512-byte sectors (the tail reads as zeroes)
    expect(info).toMatchObject({ 'virtual-size': Math.ceil(SIZE / 512) * 512, format: 'raw' });
    const restored = tmp.join('restored5.img');
    expect(await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', restored, served.uri('5')])).toContain('Images are identical');
    const r = await new Promise<number>((resolve) => {
      import('node:child_process').then(({ execFile }) => execFile('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', tmp.join('restored4.img'), served.uri('5')], (e) => resolve(e ? (e.code as number) : 0)));
    });
    expect(r).toBe(1); // points 4 and 5 differ
  });

  it('an unknown export is refused (GO: ERR_UNKNOWN) and the connection may go on', async () => {
    const c = await RawNbd.connect(served.socket);
    await c.greet();
    const n = Buffer.from('no-such-point');
    c.option(7, Buffer.concat([u32(n.length), n, u16(0)]));
    const r = await c.optReply();
    expect(r.type).toBe(0x80000006);
    expect(await c.go('1')).toBe(SIZE);
    c.destroy();
  });

  it('NBD_OPT_EXPORT_NAME (old clients): size and flags, then reads; an unknown name ends the connection', async () => {
    const c = await RawNbd.connect(served.socket);
    await c.greet(); // with NO_ZEROES: no 124 bytes of padding
    c.option(1, Buffer.from('3'));
    const h = await c.read(10);
    expect(Number(h.readBigUInt64BE(0))).toBe(SIZE);
    expect(h.readUInt16BE(8) & 3).toBe(3); // HAS_FLAGS | READ_ONLY
    c.request(0, 9, 6 * MiB, 8192);
    const r = await c.simpleReply(8192);
    expect(r).toMatchObject({ error: 0, cookie: 9 });
    expect(r.data.equals(readFileSync(images[3]).subarray(6 * MiB, 6 * MiB + 8192))).toBe(true);
    c.destroy();
    const d = await RawNbd.connect(served.socket);
    await d.greet();
    d.option(1, Buffer.from('nope'));
    expect(await d.closedByServer()).toBe(true);
  });

  it('hostile clients get errors or are disconnected; the server keeps serving others', async () => {
    // unknown client flags: disconnected
    const a = await RawNbd.connect(served.socket);
    await a.read(18);
    a.write(u32(0xff));
    expect(await a.closedByServer()).toBe(true);
    // unknown option: ERR_UNSUP, then ABORT is acknowledged
    const b = await RawNbd.connect(served.socket);
    await b.greet();
    b.option(4242);
    expect((await b.optReply()).type).toBe(0x80000001);
    b.option(3, Buffer.from('x')); // LIST with data
    expect((await b.optReply()).type).toBe(0x80000003);
    b.option(2);
    expect((await b.optReply()).type).toBe(1);
    expect(await b.closedByServer()).toBe(true);
    // bad option magic; an oversized option: disconnected
    const c = await RawNbd.connect(served.socket);
    await c.greet();
    c.write(Buffer.alloc(16, 0x41));
    expect(await c.closedByServer()).toBe(true);
    const d = await RawNbd.connect(served.socket);
    await d.greet();
    d.write(Buffer.concat([Buffer.from('IHAVEOPT'), u32(7), u32(0x7fffffff)]));
    expect(await d.closedByServer()).toBe(true);
    // transmission: out of range, oversized, writes, bad flags, unknown command, then bad magic
    const e = await RawNbd.connect(served.socket);
    await e.greet();
    expect(await e.go('2')).toBe(SIZE);
    e.request(0, 1, SIZE - 100, 4096); // read past the end
    expect(await e.simpleReply()).toMatchObject({ error: 22, cookie: 1 });
    e.request(0, 2, 0, 64 * MiB); // larger than the maximum payload
    expect(await e.simpleReply()).toMatchObject({ error: 22, cookie: 2 });
    e.request(1, 3, 0, 4096, 0, Buffer.alloc(4096, 1)); // write on a read-only export
    expect(await e.simpleReply()).toMatchObject({ error: 1, cookie: 3 });
    e.request(6, 4, 0, 4096); // write zeroes
    expect(await e.simpleReply()).toMatchObject({ error: 1, cookie: 4 });
    e.request(0, 5, 0, 4096, 0x40); // unknown flag
    expect(await e.simpleReply()).toMatchObject({ error: 22, cookie: 5 });
    e.request(99, 6, 0, 0); // unknown command
    expect(await e.simpleReply()).toMatchObject({ error: 22, cookie: 6 });
    e.request(7, 7, 0, 4096); // block status without a metadata context
    expect(await e.simpleReply()).toMatchObject({ error: 22, cookie: 7 });
    e.request(0, 8, 0, 4096); // still serving this client
    const ok = await e.simpleReply(4096);
    expect(ok.error).toBe(0);
    expect(ok.data.equals(readFileSync(images[2]).subarray(0, 4096))).toBe(true);
    e.write(Buffer.alloc(28, 0x55)); // bad request magic: disconnected
    expect(await e.closedByServer()).toBe(true);
    // a write payload larger than the maximum: disconnected (the payload cannot be skipped)
    const f = await RawNbd.connect(served.socket);
    await f.greet();
    await f.go();
    f.request(1, 1, 0, 0x7fffffff);
    expect(await f.closedByServer()).toBe(true);
    // a client that connects and says nothing does not block others; one killed mid-request neither
    const silent = await RawNbd.connect(served.socket);
    const g = await RawNbd.connect(served.socket);
    await g.greet();
    await g.go('5');
    for (let i = 0; i < 64; i++) g.request(0, i, (i * 256 * 1024) % (SIZE - MiB), MiB);
    g.destroy();
    const out = tmp.join('after-hostile.img');
    await tool('nbdcopy', [served.uri('5'), out]);
    expect(await sha256(out)).toBe(hashes[5]);
    silent.destroy();
  }, 120_000);

  it('1,000 concurrent requests on one connection are all answered correctly, with several clients at once', async () => {
    const img = readFileSync(images[4]);
    const clients = await Promise.all([0, 1, 2].map(async () => {
      const c = await RawNbd.connect(served.socket);
      await c.greet();
      await c.go('4');
      return c;
    }));
    const offsets = Array.from({ length: 1000 }, (_, i) => (i * 7919 * 4096) % (SIZE - 4096));
    await Promise.all(clients.map(async (c) => {
      for (let i = 0; i < offsets.length; i++) c.request(0, i + 1, offsets[i], 4096);
      const seen = new Set<number>();
      for (let i = 0; i < offsets.length; i++) {
        const r = await c.simpleReply(4096);
        expect(r.error).toBe(0);
        expect(seen.has(r.cookie)).toBe(false);
        seen.add(r.cookie);
        const at = offsets[r.cookie - 1];
        expect(r.data.equals(img.subarray(at, at + 4096)), `cookie ${r.cookie}`).toBe(true);
      }
      c.request(2, 0, 0, 0); // DISC
      expect(await c.closedByServer()).toBe(true);
    }));
  }, 120_000);

  it('a damaged record answers EIO for its range; other ranges read correctly', async () => {
    const bad = tmp.join('bad-store');
    cpSync(store, bad, { recursive: true });
    const chainDir = join(bad, readdirSync(bad).find((d) => !d.startsWith('.'))!);
    const full = join(chainDir, readdirSync(chainDir).find((n) => n.startsWith('0000000000-'))!);
    // the first DATA record of the full archive (blocks at the start of the volume, kept by every point)
    const f = await ArchiveFile.open(full);
    const idx = await f.loadIndexes();
    const e = (await f.indexEntriesAt(idx[0].offset)).find((x) => x.type === FrameType.DATA)!;
    const frame = await f.frameAt(e.offset, FrameType.DATA);
    const payloadAt = e.offset + frame.head.length + frame.body.length + frame.check.length;
    await f.close();
    const fd = openSync(full, 'r+');
    const one = Buffer.alloc(1);
    readSync(fd, one, 0, 1, payloadAt + 100);
    one[0] ^= 0xff;
    writeSync(fd, one, 0, 1, payloadAt + 100);
    closeSync(fd);
    const s = await startServe([bad, '--at', '0'], tmp.join('bad.sock'));
    try {
      const c = await RawNbd.connect(s.socket);
      await c.greet();
      await c.go();
      const bs = 65536;
      c.request(0, 1, e.firstBlock * bs + 10, 4096);
      expect(await c.simpleReply(4096)).toMatchObject({ error: 5, cookie: 1 });
      // the range after the damaged record reads correctly
      const after = (e.firstBlock + e.blockCount) * bs;
      c.request(0, 2, after, 4096);
      const r = await c.simpleReply(4096);
      expect(r.error).toBe(0);
      expect(r.data.equals(readFileSync(images[0]).subarray(after, after + 4096))).toBe(true);
      // asked again: still EIO, never wrong bytes
      c.request(0, 3, e.firstBlock * bs, 512);
      expect(await c.simpleReply(512)).toMatchObject({ error: 5, cookie: 3 });
      c.destroy();
    } finally {
      const r = await s.stop();
      expect(r.code, show(r)).toBe(0);
      // one warning line for the damaged record (not one per failed read), naming it
      const warnings = r.stderr.split('\n').filter((l) => l.startsWith('thinarchive: warning:'));
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/^thinarchive: warning: export "0": a read of 4096 bytes at \d+ failed and was answered EIO: PAYLOAD_CORRUPT: .*0000000000-.*\.tna at offset \d+: record starting at block \d+/);
      expect(r.stderr).toMatch(/2 reads failed \(EIO\)/);
    }
  }, 120_000);

  it('--writable: writes are visible to clients, kept in an overlay that goes away; the archives are unchanged', async () => {
    const chainDir = join(store, readdirSync(store).find((d) => !d.startsWith('.'))!);
    const archives = readdirSync(chainDir).filter((n) => n.endsWith('.tna')).map((n) => join(chainDir, n));
    const before = await Promise.all(archives.map((a) => sha256(a)));
    const overlayDir = tmp.join('overlays');
    cpSync(tmp.join('vol.img'), tmp.join('scratch.img'));
    await import('node:fs/promises').then((fs) => fs.mkdir(overlayDir));
    const s = await startServe([store, '--at', '1', '--writable', '--overlay-dir', overlayDir], tmp.join('rw.sock'));
    try {
      const info = JSON.parse(await tool('nbdinfo', ['--json', s.uri()])) as { exports: { is_read_only: boolean; can_trim: boolean; can_zero: boolean }[] };
      expect(info.exports[0]).toMatchObject({ is_read_only: false, can_trim: true, can_zero: true });
      // unaligned write, aligned write, zeroing of a data range
      await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 1000 5000', '-c', 'write -P 0xcd 4194304 131072', '-c', 'write -z 6291456 65536', s.uri()]);
      expect(readdirSync(overlayDir)).toHaveLength(1);
      const expected = readFileSync(images[1]);
      expected.fill(0xab, 1000, 6000);
      expected.fill(0xcd, 4194304, 4194304 + 131072);
      expected.fill(0, 6291456, 6291456 + 65536);
      const out = tmp.join('rw-copy.img');
      await tool('nbdcopy', [s.uri(), out]);
      expect(readFileSync(out).equals(expected)).toBe(true);
      // another point of the same server is not changed by writes to point 1
      const other = tmp.join('rw-other.img');
      await tool('nbdcopy', [s.uri('2'), other]);
      expect(await sha256(other)).toBe(hashes[2]);
      const map = JSON.parse(await tool('nbdinfo', ['--map', '--json', s.uri()])) as { offset: number; length: number; type: number }[];
      const at = (o: number): number => map.find((x) => x.offset <= o && o < x.offset + x.length)!.type;
      expect(at(4194304) & 1).toBe(0);
      expect(at(6291456) & 1).toBe(1);
    } finally {
      const r = await s.stop();
      expect(r.code, show(r)).toBe(0);
    }
    expect(readdirSync(overlayDir)).toEqual([]);
    expect(await Promise.all(archives.map((a) => sha256(a)))).toEqual(before);
    const again = tmp.join('after-rw.img');
    await runOk(['restore', store, '--at', '1', '--to', again, '--create']);
    expect(await sha256(again)).toBe(hashes[1]);
    expect(existsSync(tmp.join('rw.sock'))).toBe(false);
  }, 120_000);

  it('bad invocations fail with one line and a documented exit code', async () => {
    const none = await run(['serve', store]);
    expect(none.code, show(none)).toBe(2);
    expect(none.stderr.trim().split('\n')).toHaveLength(1);
    const both = await run(['serve', store, '--socket', tmp.join('x.sock'), '--listen', '127.0.0.1:0']);
    expect(both.code, show(both)).toBe(2);
    const badListen = await run(['serve', store, '--listen', 'nowhere']);
    expect(badListen.code, show(badListen)).toBe(2);
    const badAt = await run(['serve', store, '--at', '77', '--socket', tmp.join('y.sock')]);
    expect(badAt.code, show(badAt)).toBe(2);
    expect(badAt.stderr).toMatch(/no archive with sequence 77/);
    const inUse = await run(['serve', store, '--socket', served.socket]);
    expect(inUse.code, show(inUse)).toBe(1);
    expect(inUse.stderr).toMatch(/^thinarchive: cannot listen on .*another server is listening there\n$/);
  }, 60_000);

  it('stops cleanly on SIGTERM with the socket removed and a summary', async () => {
    const s = await startServe([store], tmp.join('term.sock'));
    await tool('nbdinfo', [s.uri()]);
    const r = await s.stop();
    expect(r.code, show(r)).toBe(0);
    expect(r.stderr).toMatch(/stopped serving unix:.*term\.sock: \d+ connections/);
    expect(existsSync(tmp.join('term.sock'))).toBe(false);
  });

  it('--listen serves on TCP (loopback, a port picked with 0); --json prints the summary at the end', async () => {
    const child = spawnCli(['serve', store, '--at', '2', '--listen', ':0', '--json']);
    let err = '';
    child.stderr!.on('data', (b: Buffer) => { err += b.toString(); });
    const done = collect(child);
    const uri = await waitFor(() => /at (nbd:\/\/127\.0\.0\.1:\d+);/.exec(err)?.[1], 30_000);
    const out = tmp.join('tcp.img');
    await tool('nbdcopy', [uri, out]);
    expect(await sha256(out)).toBe(hashes[2]);
    child.kill('SIGINT');
    const r = await done;
    expect(r.code, show(r)).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ address: expect.stringMatching(/^127\.0\.0\.1:\d+$/), readErrors: 0, protocolErrors: 0 });
  });
});
