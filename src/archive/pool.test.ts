// A worker pool whose worker dies: every job in flight or queued fails with WORKER_FAILED, and the
// jobs nobody awaits (a pipeline stops at its first failure) do not end the process.
import { afterEach, describe, expect, it } from 'vitest';
import { WorkerPool } from './pool.js';

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
