// list({ chainId }): one chain of a store, without opening the other chains' archives (what a daemon
// run reads after each send, however many chains the store holds).
import { truncateSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { list, send } from '../../src/api/index.js';
import { tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes } from '../helpers/volume-model.js';

describe('list of one chain', () => {
  let work: TempDir;
  afterAll(() => work?.remove());

  it('lists only that chain: an unreadable archive of another chain is no part of it', async () => {
    work = await tempDir('list-chain');
    const store = work.join('store');
    const sent = [];
    for (const n of ['a', 'b']) {
      writeFileSync(work.join(`${n}.img`), noiseBytes(1 << 20));
      sent.push(await send({ image: work.join(`${n}.img`), to: store }));
    }
    const [a, b] = sent;
    // b's archive cut short: the full listing reports it unreadable
    truncateSync(b!.path!, 100);
    const all = await list({ dir: store });
    expect(all.map((c) => c.chainId).sort()).toEqual([a!.chainId, b!.chainId].sort());
    expect(all.find((c) => c.chainId === b!.chainId)!.archives[0]!.status).toMatch(/^unreadable/);
    // a's chain alone, complete
    const one = await list({ dir: store, chainId: a!.chainId });
    expect(one).toHaveLength(1);
    expect(one[0]!.archives.map((x) => [x.archiveId, x.status])).toEqual([[a!.archiveId, 'complete']]);
    expect(await list({ dir: store, chainId: '00000000-0000-4000-8000-000000000000' })).toEqual([]);
  });
});
