import { describe, expect, it } from 'vitest';
import { ExtentSpool, HashSpool } from './spool.js';

describe('spools', () => {
  it('give back in order what was added, in memory and spilled to a file', async () => {
    for (const limit of [8 << 20, 0, 100_000]) {
      const e = new ExtentSpool(limit);
      const h = new HashSpool(limit);
      const n = 20_000;
      for (let i = 0; i < n; i++) {
        await e.add({ firstBlock: i * 3 + 2 ** 40, blockCount: i % 7 + 1, kind: ((i % 3) + 1) as 1 | 2 | 3 });
        await h.add(new BigUint64Array(Array.from({ length: i % 5 }, (_, k) => BigInt(i) * 1_000_003n + BigInt(k) + 2n ** 63n)));
      }
      let i = 0;
      for await (const x of e.read()) {
        expect(x).toEqual({ firstBlock: i * 3 + 2 ** 40, blockCount: i % 7 + 1, kind: (i % 3) + 1 });
        const got = await h.take(i % 5);
        expect([...got]).toEqual(Array.from({ length: i % 5 }, (_, k) => BigInt(i) * 1_000_003n + BigInt(k) + 2n ** 63n));
        i++;
      }
      expect(i).toBe(n);
      await expect(h.take(1)).rejects.toThrow(/hashes left/);
      await e.close();
      await h.close();
    }
  });
});
