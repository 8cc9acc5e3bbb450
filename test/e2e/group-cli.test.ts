/**
 * Consistency groups at the CLI (the LVM side is in test/lab/group.test.ts): the freeze options'
 * usage errors, one line and exit 2 each, before anything touches LVM; list --groups, restore
 * --group, prune --group and verify --group on a store without group points.
 */
import { mkdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectFailure, run, runOk, tempDir, type TempDir } from '../helpers/cli.js';

let t: TempDir;
beforeAll(async () => {
  t = await tempDir('group');
  mkdirSync(t.join('store'));
});
afterAll(() => t.remove());

describe('group send and restore: usage', () => {
  it.each([
    [['send', 'vg/a', 'vg/b', '--to', 'S', '--freeze', '/mnt', '--virsh-domain', 'vm'], /one freeze method/],
    [['send', 'vg/a', 'vg/b', '--to', 'S', '--freeze-cmd', 'true'], /--freeze-cmd and --thaw-cmd go together/],
    [['send', 'vg/a', '--to', 'S', '--freeze', '/mnt'], /go(es)? with a group send/],
    [['send', 'vg/a', 'vg/b', '--to', '-'], /goes to a store/],
    [['send', 'vg/a', 'vg/b', '--to', 'S', '--snapshot', 'vg/s'], /--snapshot does not go with a group send/],
    [['send', 'vg/a', 'vg/a', '--to', 'S', '--group', 'g'], /named twice/],
    [['send', 'vg/a', 'vg/b', '--to', 'S', '--group', 'bad/name'], /group name/],
    [['send', 'vg/a', 'vg/b', '--to', 'S', '--freeze-timeout', 'soon'], /cannot read duration/],
    [['restore', 'S', '--group', 'g'], /--group and --to-vg go together/],
    [['restore', 'S', '--group', 'g', '--to-vg', 'vg', '--to', 'x.img'], /--to does not go with --group/],
    [['prune', 'S', '--group', 'g'], /say what to keep/],
    [['prune', 'S', '--group', 'bad/name', '--keep', '1'], /is not a group name/],
    [['prune', 'S', '--group', 'g', '--keep', '0'], /--keep/],
    [['verify', 'S', '--group', 'g', '--against', 'x.img'], /--against does not go with --group/],
    [['verify', 'S', '--group', 'g', '--structure-only'], /--structure-only does not go with --group/],
    [['verify', 'S', 'T', '--group', 'g'], /takes one store/],
    [['verify', 'S', '--at', '3'], /--at goes with --group/],
    [['verify', 'S', '--group', 'bad/name'], /is not a group name/],
  ])('%j', async (args, msg) => {
    expect(expectFailure(await run(args as string[], { cwd: t.path }), 2)).toMatch(msg);
  });

  it('a store without group points: list --groups says so; restore, prune and verify --group are GROUP_NOT_FOUND (exit 2)', async () => {
    expect((await runOk(['list', t.join('store'), '--groups'])).stdout.trim()).toBe('no group points');
    expect(JSON.parse((await runOk(['list', t.join('store'), '--groups', '--json'])).stdout)).toEqual([]);
    const r = await run(['restore', t.join('store'), '--group', 'g', '--to-vg', 'vg', '--json']);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout).error.code).toBe('GROUP_NOT_FOUND');
    const p = await run(['prune', t.join('store'), '--group', 'g', '--keep', '1', '--json']);
    expect(p.code).toBe(2);
    expect(JSON.parse(p.stdout).error.code).toBe('GROUP_NOT_FOUND');
    const v = await run(['verify', t.join('store'), '--group', 'g', '--json']);
    expect(v.code).toBe(2);
    expect(JSON.parse(v.stdout).error.code).toBe('GROUP_NOT_FOUND');
  });
});
