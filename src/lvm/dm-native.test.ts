import { describe, expect, it } from 'vitest';
import { type DmIoctl, formatDmStatus, nativeDmRunner, parseDmsetupArgs } from './dm-native.js';
import type { CommandRunner, RunnerOptions } from './exec.js';
import { createLvmExec } from './exec.js';
import { parsePoolStatus } from './pool-status.js';

const OPTS: RunnerOptions = { env: {} };
const errno = (code: string, message: string): Error => Object.assign(new Error(message), { code });

/** A fallback that records what reached it (the real dmsetup in production). */
function recordingFallback(): { runner: CommandRunner; calls: string[] } {
  const calls: string[] = [];
  return { calls, runner: async (file, args) => (calls.push([file, ...args].join(' ')), { exitCode: 0, stdout: 'from dmsetup\n', stderr: '' }) };
}

describe('parseDmsetupArgs', () => {
  it('takes exactly the three forms tools.ts runs', () => {
    expect(parseDmsetupArgs(['status', 'vg-pool-tpool'])).toEqual({ op: 'status', name: 'vg-pool-tpool' });
    expect(parseDmsetupArgs(['message', 'vg-pool-tpool', '0', 'reserve_metadata_snap'])).toEqual({ op: 'message', name: 'vg-pool-tpool', message: 'reserve_metadata_snap' });
    expect(parseDmsetupArgs(['info', '-c', '--noheadings', '-o', 'open', 'vg-pool_tmeta'])).toEqual({ op: 'info', name: 'vg-pool_tmeta' });
  });
  it('leaves everything else to dmsetup', () => {
    for (const a of [['status'], ['status', '--noflush', 'x'], ['status', 'a', 'b'], ['message', 'x', '8', 'm'], ['message', 'x', '0'],
      ['info', '-c', '--noheadings', '-o', 'blkdevname', 'x'], ['suspend', '--nolockfs', 'x'], ['resume', 'x'], ['table', 'x'], []]) {
      expect(parseDmsetupArgs(a), a.join(' ')).toBeNull();
    }
  });
});

describe('formatDmStatus', () => {
  it('prints what dmsetup prints, and the pool status parser reads it', () => {
    const text = formatDmStatus([{ start: 0, length: 16777216, type: 'thin-pool', params: '1 21/4096 9/131072 - rw discard_passdown queue_if_no_space - 1024' }]);
    expect(text).toBe('0 16777216 thin-pool 1 21/4096 9/131072 - rw discard_passdown queue_if_no_space - 1024\n');
    expect(parsePoolStatus(text)).toMatchObject({ state: 'ok', heldRoot: null, mode: 'rw', dataTotalBlocks: 131072 });
    expect(formatDmStatus([{ start: 0, length: 8, type: 'linear', params: '' }, { start: 8, length: 8, type: 'error', params: '' }])).toBe('0 8 linear \n8 8 error \n'); // (as dmsetup prints a linear target: lab)
  });
});

describe('nativeDmRunner', () => {
  it('answers the three forms in-process, with dmsetup\'s output', async () => {
    const seen: string[] = [];
    const dm: DmIoctl = async (op, name, message) => {
      seen.push([op, name, message].filter(Boolean).join(' '));
      return { openCount: 2, targets: op === 'status' ? [{ start: 0, length: 8, type: 'thin', params: '0 -' }] : [] };
    };
    const fb = recordingFallback();
    const run = nativeDmRunner(fb.runner, dm);
    expect(await run('dmsetup', ['status', 'vg-lv'], OPTS)).toEqual({ exitCode: 0, stdout: '0 8 thin 0 -\n', stderr: '', inProcess: true });
    expect(await run('dmsetup', ['info', '-c', '--noheadings', '-o', 'open', 'vg-lv'], OPTS)).toMatchObject({ exitCode: 0, stdout: '2\n' });
    expect(await run('dmsetup', ['message', 'vg-p-tpool', '0', 'release_metadata_snap'], OPTS)).toMatchObject({ exitCode: 0, stdout: '' });
    expect(seen).toEqual(['status vg-lv', 'info vg-lv', 'message vg-p-tpool release_metadata_snap']);
    expect(fb.calls).toEqual([]);
    // others go to dmsetup
    await run('dmsetup', ['suspend', '--nolockfs', 'x'], OPTS);
    await run('lvs', ['vg'], OPTS);
    expect(fb.calls).toEqual(['dmsetup suspend --nolockfs x', 'lvs vg']);
  });

  it('fails as dmsetup fails: a missing device, a refused message', async () => {
    const fb = recordingFallback();
    const missing = nativeDmRunner(fb.runner, async () => { throw errno('ENXIO', 'ioctl(DM_TABLE_STATUS) on x: No such device or address'); });
    expect(await missing('dmsetup', ['status', 'x'], OPTS)).toEqual({ exitCode: 1, stdout: '', stderr: 'Device does not exist.\nCommand failed.\n', inProcess: true });
    const busy = nativeDmRunner(fb.runner, async () => { throw errno('EBUSY', 'ioctl(DM_TARGET_MSG) on vg-p-tpool: Device or resource busy'); });
    const r = await busy('dmsetup', ['message', 'vg-p-tpool', '0', 'reserve_metadata_snap'], OPTS);
    expect(r).toMatchObject({ exitCode: 1, stderr: 'device-mapper: message ioctl on vg-p-tpool  failed: Device or resource busy\nCommand failed.\n' });
    // EINVAL from a message is the target's answer (release with none held), not a reason to ask dmsetup again
    const inval = nativeDmRunner(fb.runner, async () => { throw errno('EINVAL', 'ioctl(DM_TARGET_MSG) on vg-p-tpool: Invalid argument'); });
    expect(await inval('dmsetup', ['message', 'vg-p-tpool', '0', 'release_metadata_snap'], OPTS)).toMatchObject({ exitCode: 1, stderr: expect.stringContaining('failed: Invalid argument') });
    expect(fb.calls).toEqual([]);
    // ... and the CommandError is the one a real dmsetup failure gives
    const exec = createLvmExec({ runner: busy });
    await expect(exec(['dmsetup', 'message', 'vg-p-tpool', '0', 'reserve_metadata_snap'])).rejects.toMatchObject({
      code: 'LVM_COMMAND', exitCode: 1, message: expect.stringContaining('Device or resource busy'),
    });
  });

  it('asks the real dmsetup when this host\'s device-mapper cannot be reached, or the addon is missing', async () => {
    for (const code of ['ENOENT', 'EACCES', 'EPERM', 'ENODEV', 'ENOTTY', 'ADDON']) {
      const fb = recordingFallback();
      const run = nativeDmRunner(fb.runner, async () => { throw errno(code, `open(/dev/mapper/control): ${code}`); });
      expect(await run('dmsetup', ['status', 'x'], OPTS), code).toMatchObject({ exitCode: 0, stdout: 'from dmsetup\n' });
      expect(fb.calls).toEqual(['dmsetup status x']);
    }
    const fb = recordingFallback();
    await nativeDmRunner(fb.runner, async () => { throw errno('EINVAL', 'version'); })('dmsetup', ['status', 'x'], OPTS);
    expect(fb.calls).toEqual(['dmsetup status x']);
  });

  it('on this host (no device-mapper in this kernel, or no root) the default path still answers like dmsetup', async () => {
    const fb = recordingFallback();
    const r = await nativeDmRunner(fb.runner)('dmsetup', ['status', 'thinarchive-test-none'], OPTS);
    // either the addon reached a device-mapper that has no such device, or it could not and dmsetup answered
    if (fb.calls.length === 0) expect(r).toMatchObject({ exitCode: 1, stderr: expect.stringContaining('Device does not exist.') });
    else expect(fb.calls).toEqual(['dmsetup status thinarchive-test-none']);
  });
});
