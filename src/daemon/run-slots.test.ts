import { describe, expect, it } from 'vitest';
import { RunSlots } from './run-slots.js';

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('RunSlots', () => {
  it('lets at most the limit run, serves waiters in order, and takes a new limit at once', async () => {
    const slots = new RunSlots(2);
    const never = new AbortController().signal;
    expect(await slots.acquire(never)).toBe(true);
    expect(await slots.acquire(never)).toBe(true);
    const order: string[] = [];
    const c = slots.acquire(never).then((ok) => order.push(`c ${ok}`));
    const d = slots.acquire(never).then((ok) => order.push(`d ${ok}`));
    const e = slots.acquire(never).then((ok) => order.push(`e ${ok}`));
    await tick();
    expect([slots.running, slots.queued, order]).toEqual([2, 3, []]);
    slots.release();
    await c;
    expect([slots.running, slots.queued, order]).toEqual([2, 2, ['c true']]);
    slots.limit = 4; // a reload raising the limit serves both waiters
    await Promise.all([d, e]);
    expect([slots.running, slots.queued, order]).toEqual([4, 0, ['c true', 'd true', 'e true']]);
    slots.limit = 1; // lowering it lets the running ones finish; the next waits until one is left
    for (let i = 0; i < 3; i++) slots.release();
    let got = false;
    const f = slots.acquire(never).then((ok) => { got = ok; });
    await tick();
    expect(got).toBe(false);
    slots.release();
    await f;
    expect([got, slots.running]).toEqual([true, 1]);
  });

  it('an aborted waiter leaves the queue without a slot; a newcomer does not overtake waiters', async () => {
    const slots = new RunSlots(1);
    const never = new AbortController().signal;
    expect(await slots.acquire(never)).toBe(true);
    const stop = new AbortController();
    const a = slots.acquire(stop.signal);
    const b = slots.acquire(never);
    await tick();
    stop.abort();
    expect(await a).toBe(false);
    expect(slots.queued).toBe(1);
    slots.release();
    expect(await b).toBe(true);
    expect(slots.running).toBe(1);
    const aborted = new AbortController();
    aborted.abort();
    expect(await slots.acquire(aborted.signal)).toBe(false);
    expect([slots.running, slots.queued]).toEqual([1, 0]);
  });
});
