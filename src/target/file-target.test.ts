import { closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DIRECT_ALIGN, thinio } from '../native.js';
import { packagePath } from '../paths.js';
import { FileTarget } from './file-target.js';

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

async function writeAndReadBack(dir: string): Promise<{ direct: boolean }> {
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
  return { direct: t.directWrites };
}

describe('FileTarget direct writes', () => {
  it('writes the aligned part of each write with O_DIRECT, the rest through the page cache, and reads back exactly', async () => {
    const d = directDir();
    dirs.push(d);
    expect(await writeAndReadBack(d)).toEqual({ direct: true });
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
    expect(await writeAndReadBack(d)).toEqual({ direct: !refused });
  });

  it('pwriteDirect refuses an unaligned position or length before writing anything', async () => {
    const d = directDir();
    dirs.push(d);
    const fd = openSync(join(d, 'f'), constants.O_CREAT | constants.O_WRONLY | constants.O_DIRECT);
    try {
      expect(() => thinio().pwriteDirect(fd, new Uint8Array(DIRECT_ALIGN), 512)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
      expect(() => thinio().pwriteDirect(fd, new Uint8Array(DIRECT_ALIGN + 1), 0)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
      await thinio().pwriteDirect(fd, pattern(DIRECT_ALIGN, 9), DIRECT_ALIGN);
      await expect(thinio().pwriteDirect(99999, new Uint8Array(DIRECT_ALIGN), 0)).rejects.toMatchObject({ code: 'EBADF' });
    } finally {
      closeSync(fd);
    }
    expect(Buffer.compare(readFileSync(join(d, 'f')).subarray(DIRECT_ALIGN), pattern(DIRECT_ALIGN, 9))).toBe(0);
  });
});
