// topHolders on a fake sysfs tree: the devices at the top of every stack over a device, dm names read
// from dm/name, non-dm holders (md) reported without one, nothing stacked -> [].
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dmResume, dmSuspend, lvKernelName, topHolders } from './holders.js';

const sysfs = mkdtempSync(join(tmpdir(), 'ta-sysfs-'));
afterAll(() => rmSync(sysfs, { recursive: true, force: true }));
function dev(name: string, holders: string[], dm?: string): void {
  mkdirSync(join(sysfs, 'block', name, 'holders'), { recursive: true });
  for (const h of holders) writeFileSync(join(sysfs, 'block', name, 'holders', h), '');
  if (dm) {
    mkdirSync(join(sysfs, 'block', name, 'dm'), { recursive: true });
    writeFileSync(join(sysfs, 'block', name, 'dm', 'name'), `${dm}\n`);
  }
}
// dm-1, dm-2: the members; dm-3: a stripe over both; dm-4: crypt over the stripe (the top);
// dm-5: used directly; dm-6 under md0
dev('dm-1', ['dm-3'], 'gv-a');
dev('dm-2', ['dm-3'], 'gv-b');
dev('dm-3', ['dm-4'], 'stripe');
dev('dm-4', [], 'crypt');
dev('dm-5', [], 'gv-c');
dev('dm-6', ['md0'], 'gv-d');
dev('md0', []);

describe('topHolders', () => {
  it('follows holders to the top of the stack', async () => {
    expect(await topHolders('dm-1', { sysfs })).toEqual([{ kernelName: 'dm-4', dmName: 'crypt' }]);
    expect(await topHolders('dm-3', { sysfs })).toEqual([{ kernelName: 'dm-4', dmName: 'crypt' }]);
  });
  it('nothing stacked: []; a non-dm holder has no dm name', async () => {
    expect(await topHolders('dm-5', { sysfs })).toEqual([]);
    expect(await topHolders('dm-9', { sysfs })).toEqual([]);
    expect(await topHolders('dm-6', { sysfs })).toEqual([{ kernelName: 'md0', dmName: null }]);
  });
  it('runs dmsetup as documented', async () => {
    const ran: string[] = [];
    const exec = async (argv: readonly string[]): Promise<string> => {
      ran.push(argv.join(' '));
      return 'dm-7\n';
    };
    expect(await lvKernelName('my-vg', 'lv', { exec })).toBe('dm-7');
    await dmSuspend('stripe', { exec });
    await dmResume('stripe', { exec });
    expect(ran).toEqual(['dmsetup info -c --noheadings -o blkdevname my--vg-lv', 'dmsetup suspend --nolockfs stripe', 'dmsetup resume stripe']);
  });
});
