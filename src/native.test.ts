import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { initHash, xxh64 } from './format/hash.js';
import { thinio } from './native.js';

describe('native xxh64 (the worker threads\' hash)', () => {
  it('equals xxhash-wasm on every length from 0 to 300 and on large buffers, and the known value of ""', async () => {
    await initHash();
    expect(thinio().xxh64(new Uint8Array(0))).toBe(0xef46db3751d8e999n);
    const data = randomBytes(1 << 20);
    for (let n = 0; n <= 300; n++) expect(thinio().xxh64(data.subarray(0, n))).toBe(xxh64(data.subarray(0, n)));
    for (const n of [4095, 4096, 65536, 65537, 1 << 20]) expect(thinio().xxh64(data.subarray(1, n))).toBe(xxh64(data.subarray(1, n)));
  });

  it('xxh64Blocks hashes each block (the last one short) like xxhash-wasm, and refuses an output too small', async () => {
    await initHash();
    const data = randomBytes(5 * 65536 + 1000);
    for (const bs of [4096, 65536, 1 << 20]) {
      const count = Math.ceil(data.length / bs);
      const out = new BigUint64Array(count);
      thinio().xxh64Blocks(data, bs, out);
      const want = Array.from({ length: count }, (_, i) => xxh64(data.subarray(i * bs, Math.min(data.length, (i + 1) * bs))));
      expect([...out]).toEqual(want);
    }
    expect(() => thinio().xxh64Blocks(data, 65536, new BigUint64Array(5))).toThrow(/room for fewer/);
    const none = new BigUint64Array(0);
    thinio().xxh64Blocks(new Uint8Array(0), 65536, none);
    expect(none.length).toBe(0);
  });
});
