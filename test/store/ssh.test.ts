/** The ssh:// store against a private sshd on 127.0.0.1: the conformance suite, with a path that needs quoting. */
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { openStore } from '../../src/store/open.js';
import { tempHost } from '../../src/store/ssh.js';
import type { PendingArchive } from '../../src/store/types.js';
import { deadPid } from '../helpers/host.js';
import { startSshd, sshdAvailable, ciSet, type Sshd } from '../servers/sshd.js';
import { CLAIM, describeStoreConformance, makeArchive, storeAndCommit } from './conformance.js';


const avail = sshdAvailable();
if (!avail.ok && ciSet()) throw new Error(`sshd is not available under CI: ${avail.reason}`);

let sshd: Sshd | undefined;
const started = avail.ok ? startSshd().then((s) => (sshd = s)) : undefined;
afterAll(async () => { await sshd?.stop(); });

describe.skipIf(!avail.ok)('ssh store', () => {
  describeStoreConformance('ssh://', async () => {
    const s = await started!;
    // Spaces, quotes and a dollar sign in the path: every remote path must be quoted.
    const root = `${s.dir}/store it's "$HOME" here`;
    await mkdir(root, { recursive: true });
    return {
      store: await openStore(s.url(root), { sshOptions: s.sshOptions }),
      cleanup: () => rm(root, { recursive: true, force: true }),
      async dropWriter(p: PendingArchive) {
        process.kill((p as unknown as { writerPid: number }).writerPid, 'SIGKILL');
        await new Promise((r) => setTimeout(r, 200));
      },
      async leftovers() {
        const out: string[] = [];
        for (const d of await readdir(root)) for (const n of await readdir(`${root}/${d}`)) if (n.startsWith('.') && !CLAIM.test(n)) out.push(`${d}/${n}`);
        return out;
      },
      async plantDeadWriter(chainId: string) {
        // This host's name as the store writes it into temporary names, and a pid no process has.
        await writeFile(`${root}/${chainId}/.0000000001-${randomUUID()}.tna.tmp-${tempHost()}-${deadPid()}-mf3k2a`, 'half an archive');
      },
    };
  });

  it('30 ranged reads at once (more than the 10 sessions sshd allows per connection) all return the right bytes', async () => {
    const s = await started!;
    const root = `${s.dir}/parallel`;
    await mkdir(root, { recursive: true });
    const store = await openStore(s.url(root), { sshOptions: s.sshOptions });
    try {
      const chain = randomUUID();
      const a = await makeArchive(chain, 0, 400);
      await storeAndCommit(store, chain, 0, a);
      const [stored] = await store.chainArchives(chain);
      const src = await store.openArchive(stored);
      // Ranges more than a cache window (256 KiB) apart, so each is a remote read of its own.
      const offsets = Array.from({ length: 30 }, (_, i) => i * 50_000 + 17);
      const got = await Promise.all(offsets.map((off) => src.read(off, 300_000)));
      offsets.forEach((off, i) => expect(Buffer.from(got[i]).equals(a.bytes.subarray(off, off + 300_000)), `at ${off}`).toBe(true));
      await src.close();
    } finally {
      await store.close();
    }
  });
});
