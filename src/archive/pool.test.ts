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
