import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { acquirePoolLock, currentBootId, identityFrom, isAlive, processStartTime, selfIdentity } from './pool-lock.js';
import { deadPid } from '../../test/helpers/host.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'thinarchive-lock-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('process identity', () => {
  it('self: pid, this boot, a start time', async () => {
    const me = await selfIdentity();
    expect(me.pid).toBe(process.pid);
    expect(me.bootId).toMatch(/^[0-9a-f-]{36}$/);
    expect(me.bootId).toBe(await currentBootId());
    expect(typeof me.startTime).toBe('number');
    expect(await isAlive(me)).toBe(true);
  });
  it('dead pid, other boot, reused pid (other start time) are not alive', async () => {
    const me = await selfIdentity();
    expect(await isAlive({ ...me, pid: deadPid() })).toBe(false);
    expect(await isAlive({ ...me, bootId: 'another-boot' })).toBe(false);
    expect(await isAlive({ ...me, startTime: (me.startTime ?? 0) + 1 })).toBe(false);
    expect(await isAlive({ ...me, startTime: null })).toBe(true);
    expect(await isAlive({ ...me, pid: 0 })).toBe(false);
    expect(await processStartTime(deadPid())).toBeNull();
  });
  it('identityFrom validates', () => {
    expect(identityFrom({ pid: 5, bootId: 'b', startTime: 7 })).toEqual({ pid: 5, bootId: 'b', startTime: 7 });
    expect(identityFrom({ pid: 5, bootId: 'b' })).toEqual({ pid: 5, bootId: 'b', startTime: null });
    for (const bad of [null, 1, {}, { pid: '5', bootId: 'b' }, { pid: 5 }, { pid: 1.5, bootId: '' }]) expect(identityFrom(bad)).toBeNull();
  });
});

describe('acquirePoolLock', () => {
  it('creates the lock file with our identity and removes it on release (only if still ours)', async () => {
    const path = join(dir, 'sub', 'p.lock');
    const lock = await acquirePoolLock(path, { what: 'vg/p' });
    const content = JSON.parse(await readFile(path, 'utf8'));
    expect(content).toMatchObject({ pid: process.pid, bootId: await currentBootId(), what: 'vg/p' });
    expect(content.token).toMatch(/^[0-9a-f]{16}$/);
    await lock.release();
    expect(existsSync(path)).toBe(false);
    await lock.release(); // idempotent

    const l2 = await acquirePoolLock(path);
    await writeFile(path, JSON.stringify({ ...content, token: 'someone-else' }));
    await l2.release();
    expect(existsSync(path)).toBe(true); // not ours any more: left alone
  });

  it('an unreadable lock file: waited for while fresh, broken when old', async () => {
    const path = join(dir, 'p.lock');
    await writeFile(path, '');
    await expect(acquirePoolLock(path, { timeoutMs: 200 })).rejects.toMatchObject({ code: 'POOL_LOCKED' });
    const old = new Date(Date.now() - 60_000);
    await utimes(path, old, old);
    const lock = await acquirePoolLock(path, { timeoutMs: 2000 });
    expect(JSON.parse(await readFile(path, 'utf8')).pid).toBe(process.pid);
    await lock.release();
  });

  it('a stale breaker file left by a dead process does not block', async () => {
    const path = join(dir, 'p.lock');
    const bootId = await currentBootId();
    const dead = { pid: deadPid(), bootId, startTime: null, token: 'x', time: 't', what: '' };
    await writeFile(path, JSON.stringify(dead));
    await writeFile(`${path}.break`, JSON.stringify(dead));
    const lock = await acquirePoolLock(path, { timeoutMs: 3000 });
    expect(existsSync(`${path}.break`)).toBe(false);
    await lock.release();
  });

  it('waiting can be aborted', async () => {
    const path = join(dir, 'p.lock');
    await writeFile(path, JSON.stringify({ pid: process.ppid, bootId: await currentBootId(), startTime: null, token: 'x', time: 't', what: '' }));
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await expect(acquirePoolLock(path, { timeoutMs: 10_000, signal: ac.signal })).rejects.toMatchObject({ code: 'INTERRUPTED' });
  });

  it('in-process callers queue without polling, in order, and time out while queued', async () => {
    const path = join(dir, 'p.lock');
    const order: number[] = [];
    const first = await acquirePoolLock(path);
    const waiters = [1, 2, 3].map((i) => acquirePoolLock(path).then(async (l) => {
      order.push(i);
      await l.release();
    }));
    await expect(acquirePoolLock(path, { timeoutMs: 50 })).rejects.toMatchObject({ code: 'POOL_LOCKED', message: expect.stringMatching(/another call in this process/) });
    await first.release();
    await Promise.all(waiters);
    expect(order).toEqual([1, 2, 3]);
  });
});
