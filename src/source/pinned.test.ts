import { describe, expect, it } from 'vitest';
import type { LvInfo } from '../lvm/report.js';
import { baseSnapshotsIn } from './pinned.js';
import { snapshotTags } from './snapshot-chain.js';

function lv(name: string, o: Partial<LvInfo> = {}): LvInfo {
  return {
    vg: 'vg', name, hidden: false, uuid: `u-${name}`, thinId: 1, pool: 'pool', origin: null, sizeBytes: 1 << 30, chunkSizeBytes: 0, dataPercent: null,
    metadataPercent: null, attr: 'Vwi-a-t---', tags: [], active: true, isThinPool: false, isThinVolume: true, readOnly: false, activationSkip: false, health: '-', ...o,
  };
}

const tags = (chain: string, seq: number, pending: boolean): string[] => snapshotTags({
  originUuid: 'u-vol', chain, chainId: '11111111-2222-4333-8444-555555555555', archiveId: `aaaaaaaa-bbbb-4ccc-8ddd-${String(seq).padStart(12, '0')}`, sequence: seq,
  createdAt: '2026-05-01T12:00:00Z',
}, pending);

describe('baseSnapshotsIn', () => {
  it("thinarchive's base snapshots of one pool (not pending ones, not the user's, not another pool's), with their origin", () => {
    const lvs = [
      lv('vol', { thinId: 1 }),
      lv('vol_ta_j_3', { thinId: 4, origin: 'vol', tags: tags('j', 3, false) }),
      lv('vol_ta_j_4', { thinId: 5, origin: 'vol', tags: tags('j', 4, true) }),
      lv('vol_ta_off_1', { thinId: 6, origin: 'vol', tags: tags('off', 1, false) }),
      lv('mine', { thinId: 7, origin: 'vol', tags: ['backup'] }),
      lv('orphan_ta_j_2', { thinId: 8, origin: null, tags: tags('j', 2, false) }),
      lv('other_ta_j_1', { thinId: 2, pool: 'pool2', origin: 'vol', tags: tags('j', 1, false) }),
      lv('pool', { thinId: null, pool: null, isThinPool: true, isThinVolume: false }),
    ];
    expect(baseSnapshotsIn(lvs, 'pool')).toEqual([
      { vg: 'vg', name: 'orphan_ta_j_2', thinId: 8, chain: 'j', origin: null },
      { vg: 'vg', name: 'vol_ta_j_3', thinId: 4, chain: 'j', origin: { name: 'vol', thinId: 1 } },
      { vg: 'vg', name: 'vol_ta_off_1', thinId: 6, chain: 'off', origin: { name: 'vol', thinId: 1 } },
    ]);
    expect(baseSnapshotsIn(lvs, 'nopool')).toEqual([]);
  });
});
