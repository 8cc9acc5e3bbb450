/**
 * An apply interrupted mid-archive whose sender then gave that archive up (a replication stopped by
 * SIGTERM or SIGKILL between the remote apply's first write and its commit: the sender's snapshot is
 * discarded, its next run sends a new archive with the same parent). The next apply of an archive
 * that continues the state before the interrupted one rolls the interrupted apply back by itself and
 * applies (found by the daemon's lab test: the replica stayed stuck on TARGET_MID_APPLY); an archive
 * that does not continue either state is still refused, the target untouched.
 */
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { run, runOk, sha256, show, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';

const KiB = 1024;
const SIZE = 4 * 1024 * KiB;

describe('an interrupted apply whose archive was given up', () => {
  let dir: TempDir;
  afterAll(async () => { await dir?.remove(); });

  it('is rolled back by the next apply that continues the state before it; anything else is refused', async () => {
    dir = await tempDir('abandoned');
    const rand = prng(7);
    const src = dir.join('src.img');
    const m = new VolumeModel(src, SIZE);
    for (let i = 0; i < 40; i++) m.write(Math.floor(rand() * (SIZE / (4 * KiB) - 16)) * 4 * KiB, noiseBytes(8 * KiB));
    m.snapshotDelta();
    const send = async (store: string, extra: string[]): Promise<{ path: string; archiveId: string }> =>
      JSON.parse((await runOk(['send', '--image', src, '--to', store, '--json', '--level', '1', '--block-size', '4K', ...extra])).stdout) as { path: string; archiveId: string };
    const a0 = await send(dir.join('store'), []);
    const sha0 = await sha256(src);
    const target = dir.join('target.img');
    await runOk(['apply', a0.path, '--to', target, '--create']);
    // the same parent in a second store: the archive sent after the first was given up goes there
    cpSync(dir.join('store'), dir.join('store2'), { recursive: true });
    for (let i = 0; i < 200; i++) m.write(Math.floor(rand() * (SIZE / (4 * KiB) - 16)) * 4 * KiB, textBytes(rand, 8 * KiB));
    const delta = dir.join('delta.xml');
    writeFileSync(delta, m.snapshotDelta());
    m.close();
    const x = await send(dir.join('store'), ['--changes', delta, '--parent', a0.path]);
    const y = await send(dir.join('store2'), ['--changes', delta, '--parent', a0.path]);
    expect(y.archiveId).not.toBe(x.archiveId);
    const sha1 = await sha256(src);

    // x's apply killed after a few writes: the target is mid-apply of x
    const killed = await run(['apply', x.path, '--to', target], { env: { ...process.env, THINARCHIVE_TEST_KILL_AFTER_WRITES: '5' } });
    expect(killed.code, show(killed)).not.toBe(0);
    const state = (): { status: string; archiveId: string; applying?: { archiveId: string } } => JSON.parse(readFileSync(`${target}.thinarchive.json`, 'utf8'));
    expect(state()).toMatchObject({ status: 'applying', archiveId: a0.archiveId, applying: { archiveId: x.archiveId } });
    const midSha = await sha256(target);
    expect(midSha).not.toBe(sha0);

    // an archive that continues neither state (another volume's full, no --force): refused, untouched
    const other = dir.join('other.img');
    writeFileSync(other, noiseBytes(SIZE));
    const full = JSON.parse((await runOk(['send', '--image', other, '--to', dir.join('store3'), '--json', '--level', '1'])).stdout) as { path: string };
    const refused = await run(['apply', full.path, '--to', target]);
    expect(refused.code, show(refused)).toBe(4);
    expect(refused.stderr).toMatch(/the target is in the middle of applying archive/);
    expect(state()).toMatchObject({ status: 'applying', applying: { archiveId: x.archiveId } });
    expect(await sha256(target)).toBe(midSha);
    // the parent alone (nothing to apply after it) does not roll x back either
    expect((await run(['apply', a0.path, '--to', target])).code).toBe(4);
    expect(state()).toMatchObject({ status: 'applying', applying: { archiveId: x.archiveId } });

    // y continues a0, the state before x: x is rolled back, y applied
    const r = await run(['apply', y.path, '--to', target, '--json']);
    expect(r.code, show(r)).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ recovered: { action: 'rolled-back', interrupted: { archiveId: x.archiveId } }, applied: [expect.objectContaining({ archiveId: y.archiveId })] });
    expect(state()).toMatchObject({ status: 'clean', archiveId: y.archiveId });
    expect(await sha256(target)).toBe(sha1);
  });
});
