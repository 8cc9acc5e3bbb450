import { closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { open } from 'node:fs/promises';
import { DirectFile, SequentialWriter, STAGE_BYTES } from './direct-io.js';
import { DIRECT_ALIGN, thinio } from './native.js';
import { packagePath } from './paths.js';
import { FileVolume } from './source/volume.js';
import { FileTarget } from './target/file-target.js';

/** A directory on a file system that takes O_DIRECT: os.tmpdir() unless it is a tmpfs, else build/. */
function directDir(): string {
  for (const base of [tmpdir(), packagePath('build')]) {
    const d = mkdtempSync(join(base, 'ta-direct-'));
    try {
      closeSync(openSync(join(d, 'probe'), constants.O_CREAT | constants.O_WRONLY | constants.O_DIRECT));
      return d;
    } catch {
      rmSync(d, { recursive: true, force: true });
    }
  }
  throw new Error('no directory here takes O_DIRECT');
}

const dirs: string[] = [];
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

/** Bytes that differ at every position (so a misplaced piece shows). */
function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >>> 12)) & 0xff;
  return b;
}

async function writeAndReadBack(dir: string): Promise<{ direct: boolean; descriptors: number }> {
  const path = join(dir, 'img');
  const size = 16 << 20;
  const t = await FileTarget.open(path, { create: true, createSize: size, stateDir: join(dir, 'state') });
  const expected = new Uint8Array(size);
  const put = async (b: Uint8Array, at: number): Promise<void> => {
    await t.write(b, at);
    expected.set(b, at);
  };
  try {
    // aligned start, unaligned length: the aligned part direct, the last 100 bytes through the page cache
    await put(pattern(3 * 1048576 + 3 * DIRECT_ALIGN + 100, 1), 0);
    // unaligned start: all through the page cache, in the page after the tail above
    await put(pattern(5000, 2), 3 * 1048576 + 4 * DIRECT_ALIGN + 512);
    // larger than the native side's 4 MiB piece, two in flight at once (as apply does)
    await Promise.all([put(pattern(9 << 20, 3), 4 << 20), put(pattern(2 * DIRECT_ALIGN, 4), 14 << 20)]);
    // an overwrite of bytes written through the page cache a moment ago, direct this time
    await put(pattern(DIRECT_ALIGN, 5), 3 * 1048576 + 3 * DIRECT_ALIGN);
    // a subarray that starts inside its buffer (its memory is not aligned)
    await put(pattern(DIRECT_ALIGN * 2 + 7, 6).subarray(7), 15 << 20);
    await t.sync();
  } finally {
    await t.close();
  }
  expect(Buffer.compare(readFileSync(path), expected)).toBe(0);
  return { direct: t.directWrites, descriptors: t.descriptors };
}

describe('FileTarget direct writes', () => {
  it('writes the aligned part of each write with O_DIRECT, the rest through the page cache, and reads back exactly', async () => {
    const d = directDir();
    dirs.push(d);
    expect(await writeAndReadBack(d)).toEqual({ direct: true, descriptors: 2 });
  });

  it('falls back to the page cache on a file system that refuses O_DIRECT (tmpfs)', async () => {
    if (!existsSync('/dev/shm')) throw new Error('no /dev/shm on this machine');
    const d = mkdtempSync(join('/dev/shm', 'ta-direct-'));
    dirs.push(d);
    let refused = false;
    try {
      closeSync(openSync(join(d, 'probe'), constants.O_CREAT | constants.O_WRONLY | constants.O_DIRECT));
    } catch {
      refused = true;
    }
    expect(await writeAndReadBack(d)).toEqual({ direct: !refused, descriptors: refused ? 1 : 2 });
  });

  it('a refusal of direct writes (EINVAL) is logged once, though writes in flight together are each refused, and every byte still lands', async () => {
    const d = directDir();
    dirs.push(d);
    const path = join(d, 'img');
    const t = await FileTarget.open(path, { create: true, createSize: 1 << 20, stateDir: join(d, 'state') });
    const warnings: string[] = [];
    t.log = { debug: () => {}, info: () => {}, warn: (_o: object, msg?: string) => void warnings.push(msg ?? '') };
    // As DirectFile answers the kernel's EINVAL (an alignment beyond 4096): false after the call
    // settles, and nothing more goes direct. Only the refusal is simulated; the writes are real.
    const direct = (t as unknown as { direct: DirectFile }).direct;
    let refusedCalls = 0;
    direct.write = async function refuse(this: DirectFile): Promise<boolean> {
      await new Promise((r) => setImmediate(r));
      refusedCalls++;
      (this as unknown as { refused: boolean }).refused = true;
      return false;
    };
    const a = pattern(2 * DIRECT_ALIGN, 8);
    const b = pattern(3 * DIRECT_ALIGN, 9);
    try {
      await Promise.all([t.write(a, 0), t.write(b, 64 * 1024)]);
      await t.write(pattern(DIRECT_ALIGN, 10), 128 * 1024);
      await t.sync();
    } finally {
      await t.close();
    }
    expect(refusedCalls).toBe(2);
    expect(warnings).toEqual(['direct writes refused; writing through the page cache']);
    expect(t.directWrites).toBe(false);
    const back = readFileSync(path);
    expect(Buffer.compare(back.subarray(0, a.length), a)).toBe(0);
    expect(Buffer.compare(back.subarray(64 * 1024, 64 * 1024 + b.length), b)).toBe(0);
    expect(Buffer.compare(back.subarray(128 * 1024, 128 * 1024 + DIRECT_ALIGN), pattern(DIRECT_ALIGN, 10))).toBe(0);
  });

  it('pwriteDirect and preadDirect refuse an unaligned position or length before writing anything', async () => {
    const d = directDir();
    dirs.push(d);
    const fd = openSync(join(d, 'f'), constants.O_CREAT | constants.O_WRONLY | constants.O_DIRECT);
    try {
      expect(() => thinio().pwriteDirect(fd, new Uint8Array(DIRECT_ALIGN), 512)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
      expect(() => thinio().pwriteDirect(fd, new Uint8Array(DIRECT_ALIGN + 1), 0)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
      expect(() => thinio().preadDirect(fd, new Uint8Array(DIRECT_ALIGN), 512)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
      await thinio().pwriteDirect(fd, pattern(DIRECT_ALIGN, 9), DIRECT_ALIGN);
      await expect(thinio().pwriteDirect(99999, new Uint8Array(DIRECT_ALIGN), 0)).rejects.toMatchObject({ code: 'EBADF' });
    } finally {
      closeSync(fd);
    }
    expect(Buffer.compare(readFileSync(join(d, 'f')).subarray(DIRECT_ALIGN), pattern(DIRECT_ALIGN, 9))).toBe(0);
  });
});

async function readPieces(path: string): Promise<{ direct: boolean }> {
  const want = readFileSync(path);
  const v = await FileVolume.open(path);
  try {
    const size = want.length;
    const cases: [number, number][] = [
      [0, 4 * 1048576 + 2 * DIRECT_ALIGN], // direct, larger than the native side's 4 MiB piece
      [3 * DIRECT_ALIGN, 1048576], // direct
      [100, 5000], // unaligned: the page cache
      [DIRECT_ALIGN, DIRECT_ALIGN + 300], // a direct prefix, the last 300 bytes through the page cache
      [size - (size % DIRECT_ALIGN), 2 * DIRECT_ALIGN], // the tail: short
      [size - (size % DIRECT_ALIGN) - DIRECT_ALIGN, DIRECT_ALIGN + (size % DIRECT_ALIGN)], // a whole block, then the unaligned tail
      [size + DIRECT_ALIGN * 2, DIRECT_ALIGN], // past the end: nothing
    ];
    for (const [pos, len] of cases) {
      const buf = new Uint8Array(len + 64).fill(0xee);
      const n = await v.read(buf, 64, len, pos);
      const expected = want.subarray(Math.min(pos, size), Math.min(pos + len, size));
      expect({ pos, len, n }).toEqual({ pos, len, n: expected.length });
      expect(Buffer.compare(buf.subarray(64, 64 + n), expected)).toBe(0);
      expect(buf.subarray(0, 64).every((b) => b === 0xee)).toBe(true); // nothing before the offset
    }
    return { direct: v.directReads };
  } finally {
    await v.close();
  }
}

describe('FileVolume direct reads', () => {
  const SIZE = 5 * 1048576 + 1234;

  it('reads the aligned part of each read with O_DIRECT, the rest and the unaligned tail through the page cache', async () => {
    const d = directDir();
    dirs.push(d);
    writeFileSync(join(d, 'vol'), pattern(SIZE, 11));
    expect(await readPieces(join(d, 'vol'))).toEqual({ direct: true });
  });

  it('reads through the page cache where O_DIRECT cannot be opened (tmpfs)', async () => {
    const d = mkdtempSync(join('/dev/shm', 'ta-direct-'));
    dirs.push(d);
    writeFileSync(join(d, 'vol'), pattern(SIZE, 12));
    let refused = false;
    try {
      closeSync(openSync(join(d, 'vol'), constants.O_RDONLY | constants.O_DIRECT));
    } catch {
      refused = true;
    }
    expect(await readPieces(join(d, 'vol'))).toEqual({ direct: !refused });
  });
});

describe('SequentialWriter', () => {
  async function writeFile(dir: string, sizes: number[], direct: boolean): Promise<{ usedDirect: boolean }> {
    const path = join(dir, `seq-${direct}`);
    const fh = await open(path, 'wx');
    const d = direct ? await DirectFile.open(path, 'write') : undefined;
    const w = new SequentialWriter(fh, d);
    const parts: Uint8Array[] = [];
    try {
      for (const [i, n] of sizes.entries()) {
        const b = pattern(n, i);
        parts.push(b);
        await w.write(b);
        expect(w.position).toBe(parts.reduce((a, p) => a + p.length, 0));
      }
      await w.finish();
      await fh.sync();
    } finally {
      await w.close();
      await fh.close();
    }
    expect(Buffer.compare(readFileSync(path), Buffer.concat(parts))).toBe(0);
    return { usedDirect: d?.active ?? false };
  }
  // small frames, one chunk larger than two pieces, frames that end exactly on a piece, an odd tail
  const SIZES = [100, 4096, 3 * 1048576 + 5, 2 * STAGE_BYTES + 77, STAGE_BYTES - 77 - 100 - 4096 - (3 * 1048576 + 5) % STAGE_BYTES + STAGE_BYTES, 1, 65536, 12345];

  it('writes whole 4 MiB pieces direct (two in flight) and the rest through the page cache, byte for byte', async () => {
    const d = directDir();
    dirs.push(d);
    expect(await writeFile(d, SIZES, true)).toEqual({ usedDirect: true });
  });

  it('without a direct descriptor writes everything through the page cache', async () => {
    const d = directDir();
    dirs.push(d);
    expect(await writeFile(d, SIZES, false)).toEqual({ usedDirect: false });
  });

  it('close() waits for the writes in flight (an abort) before closing the direct descriptor', async () => {
    const d = directDir();
    dirs.push(d);
    const path = join(d, 'abort');
    const fh = await open(path, 'wx');
    const w = new SequentialWriter(fh, await DirectFile.open(path, 'write'));
    await w.write(pattern(2 * STAGE_BYTES, 1)); // two pieces in flight, not awaited
    await w.close();
    await fh.close();
    expect(readFileSync(path).length).toBe(2 * STAGE_BYTES);
  });
});
