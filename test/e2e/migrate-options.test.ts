/**
 * The options of `migrate` that are refused before anything runs (its rounds need a thin LV:
 * test/lab/migrate.test.ts; its round logic: src/commands/migrate.test.ts).
 */
import { describe, expect, it } from 'vitest';
import { expectFailure, run } from '../helpers/cli.js';

describe('migrate options', () => {
  it('are refused with one line before anything runs', async () => {
    expect(expectFailure(await run(['migrate', 'vg/vm']), 2)).toMatch(/name the target: --to TARGET or --apply-remote/);
    expect(expectFailure(await run(['migrate', 'vg/vm', '--to', 'x', '--pool', 'vg/pool']), 2)).toMatch(/--pool goes with --create/);
    expect(expectFailure(await run(['migrate', 'vg/vm', '--to', 'x', '--max-downtime', 'soon']), 2)).toMatch(/--max-downtime: cannot read duration "soon"/);
    expect(expectFailure(await run(['migrate', 'vg/vm', '--to', 'x', '--max-rounds', '1']), 2)).toMatch(/--max-rounds/);
    expect(expectFailure(await run(['migrate', '/tmp/disk.img', '--to', 'x']), 2)).toMatch(/migrate moves a thin LV: VG\/LV/);
  });
});
