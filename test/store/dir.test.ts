/** The directory store passes the store conformance suite, and cleans up after a killed writer. */
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DirectoryStore } from '../../src/store/dir.js';
import { REPO } from '../helpers/cli.js';
import { deadPid } from '../helpers/host.js';
import { CLAIM, describeStoreConformance, makeArchive, storeAndCommit } from './conformance.js';

describeStoreConformance('directory', async () => {
  const root = await mkdtemp(join(tmpdir(), 'ta-store-dir-'));
  return {
    store: new DirectoryStore(root),
    cleanup: () => rm(root, { recursive: true, force: true }),
    async leftovers() {
      const out: string[] = [];
      for (const d of await readdir(root)) for (const n of await readdir(join(root, d))) if (n.startsWith('.') && !CLAIM.test(n)) out.push(`${d}/${n}`);
      return out;
    },
    async plantDeadWriter(chainId: string) {
      await writeFile(join(root, chainId, `.0000000001-${randomUUID()}.tna.tmp-${deadPid()}-mf3k2a`), 'half an archive');
    },
  };
});

describe('directory store: a writer killed mid-way', () => {
  it('leaves only a hidden temporary file, never a listed archive; the next writer removes it', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ta-store-dir-kill-'));
    try {
      const chain = randomUUID();
      // A separate process writes half an archive through the store and is killed (SIGKILL) mid-write.
      const script = `
        const { DirectoryStore } = await import(${JSON.stringify(join(REPO, 'dist/store/dir.js'))});
        const p = await new DirectoryStore(process.argv[1]).createArchive(process.argv[2], 0, '${randomUUID()}');
        await p.sink.write(Buffer.alloc(1 << 20, 7));
        process.kill(process.pid, 'SIGKILL');`;
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, root, chain]);
      expect(r.signal).toBe('SIGKILL');
      const store = new DirectoryStore(root);
      expect(await store.chainArchives(chain)).toEqual([]);
      const left = (await readdir(join(root, chain))).filter((n) => n.startsWith('.'));
      expect(left).toHaveLength(1);
      const next = await makeArchive(chain, 0, 2);
      await storeAndCommit(store, chain, 0, next);
      expect((await readdir(join(root, chain))).sort()).toEqual(['.0000000000.seq', `0000000000-${next.archiveId}.tna`]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
