/**
 * apply --verify: every block an archive wrote, zeroed or unmapped is read back and compared with the
 * archive's checksums before the new state is recorded — from a store and from a stream (`apply -`,
 * what a remote apply runs). A block that reads back wrong fails the apply with REPLICA_MISMATCH and
 * leaves the target mid-apply; the next apply rolls it back and applies again.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { apply, ThinarchiveError } from '../../src/api/index.js';
import { run, runOk, sha256, show, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';

const KiB = 1024;
const SIZE = 8 * 1024 * KiB;
const BS = 4 * KiB;

interface Verify { blocksChecked: number; blocksRead: number; mismatchedBlocks: number; bytesRead: number }
interface Applied { archiveId: string; dataBytes: number; zeroBytes: number; verify?: Verify }

describe('apply --verify', () => {
  let dir: TempDir;
  afterAll(async () => { await dir?.remove(); });

  it('reads back what each archive wrote and zeroed, from a store and from standard input; a block read back wrong is refused and rolled back next time', async () => {
    dir = await tempDir('apply-verify');
    const rand = prng(11);
    const src = dir.join('src.img');
    const m = new VolumeModel(src, SIZE);
    for (let i = 0; i < 60; i++) m.write(Math.floor(rand() * (SIZE / BS - 16)) * BS, noiseBytes(16 * KiB));
    m.snapshotDelta();
    const store = dir.join('store');
    const send = async (extra: string[]): Promise<{ path: string; archiveId: string }> =>
      JSON.parse((await runOk(['send', '--image', src, '--to', store, '--json', '--level', '1', '--block-size', '4K', ...extra])).stdout) as { path: string; archiveId: string };
    const a0 = await send([]);
    const sha0 = await sha256(src);
    // an incremental with data, zeroed and discarded ranges
    for (let i = 0; i < 30; i++) m.write(Math.floor(rand() * (SIZE / BS - 16)) * BS, textBytes(rand, 8 * KiB));
    m.write(0, Buffer.alloc(64 * KiB));
    m.punch(SIZE / 2, 256 * KiB);
    const delta = dir.join('delta.xml');
    writeFileSync(delta, m.snapshotDelta());
    m.close();
    const a1 = await send(['--changes', delta, '--parent', a0.path]);
    const sha1 = await sha256(src);

    // 1. from the store: both archives read back
    const t1 = dir.join('t1.img');
    const r1 = await runOk(['apply', store, '--to', t1, '--create', '--verify', '--json']);
    const res1 = JSON.parse(r1.stdout) as { applied: Applied[] };
    expect(res1.applied.map((a) => a.archiveId)).toEqual([a0.archiveId, a1.archiveId]);
    for (const a of res1.applied) {
      expect(a.verify, JSON.stringify(a)).toBeDefined();
      expect(a.verify!.mismatchedBlocks).toBe(0);
      // every data block written was checked (zeroed ranges on top)
      expect(a.verify!.blocksChecked * BS).toBeGreaterThanOrEqual(a.dataBytes);
    }
    expect(res1.applied[1]!.verify!.blocksChecked).toBeLessThan(res1.applied[0]!.verify!.blocksChecked);
    expect(await sha256(t1)).toBe(sha1);
    // the human line says so
    const t1b = dir.join('t1b.img');
    const h = await runOk(['apply', a0.path, '--to', t1b, '--create', '--verify']);
    expect(h.stderr).toMatch(/read back \d+ blocks .* all as written/);

    // 2. from standard input (a remote apply's stream)
    const t2 = dir.join('t2.img');
    await runOk(['apply', a0.path, '--to', t2, '--create']);
    const r2 = await runOk(['apply', '-', '--to', t2, '--verify', '--json'], { input: readFileSync(a1.path) });
    const res2 = JSON.parse(r2.stdout) as { applied: Applied[] };
    expect(res2.applied).toHaveLength(1);
    expect(res2.applied[0]!.verify).toMatchObject({ mismatchedBlocks: 0 });
    expect(res2.applied[0]!.verify!.blocksChecked).toBe(res1.applied[1]!.verify!.blocksChecked);
    expect(await sha256(t2)).toBe(sha1);

    // 3. a block that reads back wrong (the target changed under the apply, after its flush): refused,
    // the state not recorded; the next apply rolls the target back and applies again
    const t3 = dir.join('t3.img');
    await runOk(['apply', a0.path, '--to', t3, '--create']);
    expect(await sha256(t3)).toBe(sha0);
    const err = await apply({
      inputs: [a1.path], to: t3, verify: true,
      beforeVerify: async () => {
        const f = await open(t3, 'r+');
        try {
          const b = Buffer.alloc(BS);
          await f.read(b, 0, BS, 0); // block 0 was zeroed by a1
          b[100] ^= 0xff;
          await f.write(b, 0, BS, 0);
        } finally {
          await f.close();
        }
      },
    }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(ThinarchiveError);
    expect((err as ThinarchiveError).code).toBe('REPLICA_MISMATCH');
    expect((err as Error).message).toMatch(/1 of the \d+ blocks archive .* read back wrong \(block 0, byte 0: expected zeroes, read xxh64 [0-9a-f]{16}\)/);
    const state = JSON.parse(readFileSync(`${t3}.thinarchive.json`, 'utf8')) as { status: string; applying?: { archiveId: string } };
    expect(state).toMatchObject({ status: 'applying', applying: { archiveId: a1.archiveId } });
    // the next apply (through the CLI, with the check) rolls it back and applies again
    const again = await run(['apply', a1.path, '--to', t3, '--verify', '--json']);
    expect(again.code, show(again)).toBe(0);
    const res3 = JSON.parse(again.stdout) as { applied: Applied[]; recovered?: unknown };
    expect(res3.recovered).toBeDefined();
    expect(res3.applied[0]!.verify!.mismatchedBlocks).toBe(0);
    expect(await sha256(t3)).toBe(sha1);

    // 4. --repair reads the whole target already: the two together are a usage error
    const both = await run(['apply', store, '--to', t1, '--repair', '--verify']);
    expect(both.code, show(both)).toBe(2);
  });
});
