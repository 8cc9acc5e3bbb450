// Image sources keep a block-hash file naming the archive that holds what was hashed (docs/DAEMON.md,
// "State file"). The new hashes are written as HASHFILE.new before the archive is published and renamed
// over HASHFILE after: whatever moment a daemon is killed at, the next run continues the same chain.
// The states a kill leaves are built here directly (a SIGKILL in that window is a matter of luck; the
// daemon test kills at random and once caught a new chain started after a kill in it).
import { randomBytes, randomUUID } from 'node:crypto';
import { copyFile, open, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { run, runOk, sha256, show, tempDir, type TempDir } from '../helpers/cli.js';
import type { StatusReport as Status, UnitStatus as Unit } from '../../src/daemon/daemon.js';

describe('image hashes across a kill', () => {
  let t: TempDir;
  afterAll(async () => { await t?.remove(); });

  it('a kill between publish and rename, or between prepare and publish, continues the chain', async () => {
    t = await tempDir('image-hashes');
    const img = t.join('a.img');
    await writeFile(img, randomBytes(4 << 20));
    const cfg = t.join('thinarchive.yml');
    const state = t.join('state');
    await writeFile(cfg, `state_dir: ${state}\njobs:\n  - name: imgs\n    volumes: [{image: ${img}}]\n    every: 1h\n    to: ${t.join('store')}\n`);
    const scribble = async (): Promise<void> => {
      const fh = await open(img, 'r+');
      try { await fh.write(randomBytes(8192), 0, 8192, Math.floor(Math.random() * 500) * 8192); } finally { await fh.close(); }
    };
    const once = async (): Promise<Unit> => {
      const r = await run(['run', 'imgs', '--config', cfg]);
      expect(r.code, show(r)).toBe(0);
      const s = JSON.parse((await runOk(['status', '--config', cfg, '--json'])).stdout) as Status;
      return s.units[0]!;
    };
    const hashFile = async (): Promise<string> => join(state, (await readdir(state)).find((n) => n.endsWith('.hashes'))!);

    const first = await once();
    expect(first.chainLength).toBe(1);
    await scribble();
    expect((await once()).chainLength).toBe(2);
    const hf = await hashFile();
    await copyFile(hf, t.join('hashes-at-1'));
    await scribble();
    expect((await once()).chainLength).toBe(3);

    // Killed after the archive (sequence 2) was published, before its hashes were renamed: both files.
    await rename(hf, `${hf}.new`);
    await copyFile(t.join('hashes-at-1'), hf);
    await scribble();
    const afterPublishKill = await once();
    expect(afterPublishKill.chainId).toBe(first.chainId);
    expect(afterPublishKill.chainLength).toBe(4);

    // Killed after the hashes were prepared, before the archive was published: .new names no archive.
    const current = await readFile(hf);
    const junk = Buffer.from(current);
    junk.write(randomUUID(), current.length - 36, 'latin1');
    await writeFile(`${hf}.new`, junk);
    await scribble();
    const afterPrepareKill = await once();
    expect(afterPrepareKill.chainId).toBe(first.chainId);
    expect(afterPrepareKill.chainLength).toBe(5);

    // Every point was an incremental of the right base: the newest restores to the image.
    await runOk(['restore', join(t.join('store'), first.chainId!), '--to', t.join('restored.img'), '--create']);
    expect(await sha256(t.join('restored.img'))).toBe(await sha256(img));
  }, 240_000);
});
