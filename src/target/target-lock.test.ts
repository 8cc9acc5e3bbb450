import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { lockHolder, lockTarget, targetLockFile } from './target-lock.js';
import { recover } from './recover.js';
import { Target } from './target.js';

const dir = mkdtempSync(join(tmpdir(), 'thinarchive-target-lock-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('target lock', () => {
  it('lives beside an image, and in the state directory for an LV', async () => {
    expect(await targetLockFile(join(dir, 'a.img'), '/st')).toBe(join(dir, 'a.img.thinarchive.lock'));
    expect(await targetLockFile('vgx/lvy', '/st')).toBe('/st/lv/vgx/lvy.lock');
  });

  it('a second holder is refused with TARGET_LOCKED naming the first; release lets the next in', async () => {
    const img = join(dir, 'b.img');
    const first = await lockTarget(img, { command: 'apply' });
    expect(await lockHolder(img)).toMatchObject({ pid: process.pid, command: 'apply' });
    const err = await lockTarget(img, { command: 'restore' }).catch((e) => e);
    expect(err.code).toBe('TARGET_LOCKED');
    expect(err.exitClass).toBe('unsafe');
    expect(err.message).toMatch(new RegExp(`in use by thinarchive apply \\(pid ${process.pid}, since \\d{4}-`));
    await first.release();
    await first.release(); // idempotent
    expect(readFileSync(first.path, 'utf8')).toBe('');
    const second = await lockTarget(img, { command: 'restore' });
    await second.release();
    expect(existsSync(first.path)).toBe(true); // never removed
  });

  it('wait: waits for the holder; a cancelled wait rejects with ABORTED', async () => {
    const img = join(dir, 'c.img');
    const first = await lockTarget(img, { command: 'apply' });
    let got = false;
    const waiting = lockTarget(img, { command: 'recover', wait: true }).then((l) => {
      got = true;
      return l;
    });
    await new Promise((r) => setTimeout(r, 100));
    expect(got).toBe(false);
    await first.release();
    const l = await waiting;
    expect(await lockHolder(img)).toMatchObject({ command: 'recover' });
    const ac = new AbortController();
    const cancelled = lockTarget(img, { command: 'apply', wait: true, signal: ac.signal }).catch((e) => e);
    setTimeout(() => ac.abort(), 50);
    expect((await cancelled).code).toBe('ABORTED');
    await l.release();
  });

  it('open and recover touch nothing while another holds the target', async () => {
    const img = join(dir, 'd.img');
    const held = await lockTarget(img, { command: 'apply' });
    const e1 = await Target.open(img, { create: true, createSize: 4096, neededSize: 4096, blockSize: 4096, command: 'restore' }).catch((e) => e);
    expect(e1.code).toBe('TARGET_LOCKED');
    expect(existsSync(img)).toBe(false);
    // a journal and an "applying" state that would be rolled back if the holder were dead
    writeFileSync(`${img}.thinarchive.undo`, 'not read while held');
    const e2 = await recover({ target: img }).catch((e) => e);
    expect(e2.code).toBe('TARGET_LOCKED');
    expect(readFileSync(`${img}.thinarchive.undo`, 'utf8')).toBe('not read while held');
    await held.release();
  });
});
