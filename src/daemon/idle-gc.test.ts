// The daemon's idle collection: a full GC once no run is in progress, never while one is, at most once per gap.
import { describe, expect, it } from 'vitest';
import { IdleCollector } from './idle-gc.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('IdleCollector', () => {
  it('collects once idle, not while a run is in progress, and not again within the gap', async () => {
    let busy = true;
    const c = new IdleCollector(() => busy, 50, 400);
    try {
      c.poke();
      await sleep(120);
      expect(c.collections).toBe(0); // a run was in progress when the delay ended
      busy = false;
      c.poke();
      await sleep(120);
      expect(c.collections).toBe(1);
      c.poke();
      await sleep(120);
      expect(c.collections).toBe(1); // within the gap: waits for it
      await sleep(350);
      expect(c.collections).toBe(2);
    } finally {
      c.close();
    }
  });

  it('a collection frees what nothing references (the collector is V8\'s own)', async () => {
    const c = new IdleCollector(() => false, 10, 0);
    let ref: WeakRef<object>;
    (() => { ref = new WeakRef({ big: new Array(1000).fill(0) }); })();
    await sleep(0); // (a WeakRef's target stays for the rest of the job that made it)
    c.poke();
    await sleep(100);
    expect(c.collections).toBe(1);
    expect(ref!.deref()).toBeUndefined();
  });
});
