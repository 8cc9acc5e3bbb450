// A worker pool whose worker dies: every job in flight or queued fails with WORKER_FAILED, and the
// jobs nobody awaits (a pipeline stops at its first failure) do not end the process; the pool the
// daemon's operations share.
import { afterEach, describe, expect, it } from 'vitest';
import { collectSharedWorkers, shareWorkers, withPool, WorkerPool } from './pool.js';

describe('worker pool failure', () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown): void => { unhandled.push(e); };
  afterEach(() => { process.off('unhandledRejection', onUnhandled); });

  it('rejects every job when a worker dies; the jobs not awaited are no unhandled rejection', async () => {
    process.on('unhandledRejection', onUnhandled);
    const pool = new WorkerPool(1);
    try {
      const jobs = Array.from({ length: 4 }, () => pool.hash(new ArrayBuffer(1 << 20), 1 << 20, 4096));
      // the worker ends under the pool (as when it cannot load its module, or crashes)
      await (pool as unknown as { workers: { terminate(): Promise<number> }[] }).workers[0]!.terminate();
      // only the first job is awaited, as a pipeline does
      await expect(jobs[0]).rejects.toMatchObject({ code: 'WORKER_FAILED' });
      await expect(pool.hash(new ArrayBuffer(4096), 4096, 4096)).rejects.toMatchObject({ code: 'WORKER_FAILED' });
      await new Promise((r) => setTimeout(r, 50));
      expect(unhandled).toEqual([]);
    } finally {
      await pool.close();
    }
  });
});

describe('shared worker pool (shareWorkers: the daemon)', () => {
  afterEach(async () => { await shareWorkers(undefined); });
  const hashOnce = (pool: WorkerPool): Promise<unknown> => pool.hash(new ArrayBuffer(4096), 4096, 4096);

  it('lends one pool to operations at once and after each other, closes it when idle, and starts a new one after', async () => {
    await shareWorkers(200);
    const seen: WorkerPool[] = [];
    await Promise.all([1, 2, 3].map(() => withPool(async (pool) => { seen.push(pool); await hashOnce(pool); })));
    await withPool(async (pool) => { seen.push(pool); await hashOnce(pool); });
    expect(new Set(seen).size).toBe(1);
    expect(seen[0]!.spent).toBe(false); // kept between operations
    await collectSharedWorkers(); // (a collection in each idle worker: they go on working)
    await withPool(async (pool) => { expect(pool).toBe(seen[0]); await hashOnce(pool); });
    await new Promise((r) => setTimeout(r, 400));
    expect(seen[0]!.spent).toBe(true); // closed after 200 ms without a user
    await withPool(async (pool) => { expect(pool).not.toBe(seen[0]); await hashOnce(pool); });
  });

  it('replaces a pool whose worker died; without sharing every operation has its own pool, closed after it', async () => {
    await shareWorkers(60_000);
    let first: WorkerPool | undefined;
    await withPool(async (pool) => {
      first = pool;
      await (pool as unknown as { workers: { terminate(): Promise<number> }[] }).workers[0]!.terminate();
      await expect(hashOnce(pool)).rejects.toMatchObject({ code: 'WORKER_FAILED' });
    });
    await withPool(async (pool) => { expect(pool).not.toBe(first); await hashOnce(pool); });
    await shareWorkers(undefined);
    const own: WorkerPool[] = [];
    await Promise.all([1, 2].map(() => withPool(async (pool) => { own.push(pool); await hashOnce(pool); })));
    expect(own[0]).not.toBe(own[1]);
    expect(own.every((p) => p.spent)).toBe(true);
  });
});

describe('inline jobs (a lazy pool: withPool of one operation)', () => {
  type Inside = { workers: unknown[]; online: number };
  const inside = (p: WorkerPool): Inside => p as unknown as Inside;
  /** 1 MiB of blocks: zeroes, text, random */
  function sample(): ArrayBuffer {
    const b = Buffer.alloc(1 << 20);
    b.fill('a line of text that repeats\n', 4 << 16, 10 << 16);
    for (let i = 10 << 16; i < b.length; i++) b[i] = (i * 2654435761) >>> 24;
    return b.buffer.slice(b.byteOffset, b.byteOffset + b.length);
  }
  const strip = (r: { runs: unknown[] }): string => JSON.stringify(r.runs, (_k, v) => (typeof v === 'bigint' ? v.toString() : v instanceof ArrayBuffer ? Buffer.from(v).toString('base64') : v));

  it('runs its jobs in this thread without starting a worker, with the workers\' results', async () => {
    const lazy = new WorkerPool(2, { inlineBytes: 4 << 20 });
    const eager = new WorkerPool(2);
    try {
      const a = await lazy.encode(sample(), 1 << 20, 0, 65536, 3, new ArrayBuffer(1 << 20));
      const b = await eager.encode(sample(), 1 << 20, 0, 65536, 3, new ArrayBuffer(1 << 20));
      expect(a.runs.map((r) => r.zero)).toEqual([true, false]);
      expect(strip(a)).toBe(strip(b));
      const h = await lazy.hash(sample(), 1 << 20, 65536);
      expect(h).toEqual(await eager.hash(sample(), 1 << 20, 65536));
      await lazy.collect(); // (a collection is for workers: none runs here, none starts)
      expect(inside(lazy).workers).toHaveLength(0);
    } finally {
      await Promise.all([lazy.close(), eager.close()]);
    }
  });

  it('starts the workers once the budget is spent, runs jobs here until one is ready, then on the workers', async () => {
    const pool = new WorkerPool(2, { inlineBytes: 2 << 20 });
    try {
      await pool.hash(sample(), 1 << 20, 65536);
      expect(inside(pool).workers).toHaveLength(0);
      await pool.hash(sample(), 1 << 20, 65536); // the budget is spent: the workers start
      expect(inside(pool).workers).toHaveLength(2);
      const t = Date.now();
      while (inside(pool).online < 2 && Date.now() - t < 20_000) {
        await pool.hash(sample(), 1 << 20, 65536); // meanwhile here, and answered
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(inside(pool).online).toBe(2);
      // on a worker now: a job that kills its worker fails the pool, as any worker's failure does
      await (pool as unknown as { workers: { terminate(): Promise<number> }[] }).workers[0]!.terminate();
      await expect(pool.hash(sample(), 1 << 20, 65536)).rejects.toMatchObject({ code: 'WORKER_FAILED' });
    } finally {
      await pool.close();
    }
  });

  it('a compression above level 5 always goes to a worker (it would hold the thread off signals)', async () => {
    const pool = new WorkerPool(1, { inlineBytes: 64 << 20 });
    try {
      await pool.encode(sample(), 1 << 20, 0, 65536, 3, new ArrayBuffer(1 << 20));
      expect(inside(pool).workers).toHaveLength(0);
      const r = await pool.encode(sample(), 1 << 20, 0, 65536, 19, new ArrayBuffer(1 << 20));
      expect(r.runs.map((x) => x.zero)).toEqual([true, false]);
      expect(inside(pool).workers).toHaveLength(1);
      expect(inside(pool).online).toBe(1); // (it ran there: the worker had loaded to answer it)
    } finally {
      await pool.close();
    }
  });

  it('a job that fails here is WORKER_FAILED, as on a worker', async () => {
    const pool = new WorkerPool(1, { inlineBytes: 1 << 20 });
    try {
      await expect(pool.hash(new ArrayBuffer(16), 4096, 4096)).rejects.toMatchObject({ code: 'WORKER_FAILED' });
    } finally {
      await pool.close();
    }
  });
});
