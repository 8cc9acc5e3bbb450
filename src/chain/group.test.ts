// Group points from what a store holds: complete when every member's archive is there and reads;
// missing, unreadable or moved members make the point incomplete; points sorted by freeze time.
import { describe, expect, it } from 'vitest';
import type { GroupMeta } from '../format/group.js';
import type { Finding } from './findings.js';
import { groupPoints, planGroupRetention, verifyGroupPoints, type GroupArchiveSeen, type GroupChainArchive } from './group.js';

const C = ['c0000000-0000-4000-8000-000000000000', 'c1111111-0000-4000-8000-000000000000'];
const uuid = (i: number): string => `${String(i).padStart(8, '0')}-0000-4000-8000-000000000000`;
function point(i: number, at: string): GroupMeta {
  return {
    id: uuid(100 + i), name: 'vm',
    members: C.map((chainId, m) => ({ volume: `vg/${m}`, chainId, archiveId: uuid(10 * i + m), sequence: i })),
    quiesce: { method: 'dm-suspend', targets: ['stripe'], frozenAt: at, freezeMs: 5 },
  };
}
function seen(g: GroupMeta, m: number, status = 'complete'): GroupArchiveSeen {
  const x = g.members[m]!;
  return { chainId: x.chainId, chainDir: `/s/${x.chainId}`, archiveId: x.archiveId, sequence: x.sequence, status, group: g };
}

describe('groupPoints', () => {
  it('complete and incomplete points, oldest first', () => {
    const p1 = point(1, '2026-01-01T00:00:01Z');
    const p2 = point(2, '2026-01-01T00:00:02Z');
    const p3 = point(3, '2026-01-01T00:00:03Z');
    const pts = groupPoints([seen(p3, 0), seen(p2, 1, 'unreadable: bad'), seen(p1, 0), seen(p1, 1), seen(p2, 0)]);
    expect(pts.map((p) => [p.id, p.complete])).toEqual([[p1.id, true], [p2.id, false], [p3.id, false]]);
    expect(pts[1]!.members.map((m) => m.status)).toEqual(['complete', 'unreadable: bad']);
    expect(pts[2]!.members.map((m) => m.status)).toEqual(['complete', 'missing']);
    expect(pts[2]!.members[1]!.chainDir).toBe(`/s/${C[1]}`);
  });
  it('an archive at another sequence or chain than the group says is missing; archives without a group are ignored', () => {
    const p = point(1, '2026-01-01T00:00:01Z');
    const moved = { ...seen(p, 1), sequence: 9 };
    const pts = groupPoints([seen(p, 0), moved, { ...seen(p, 0), archiveId: uuid(999), group: null }]);
    expect(pts).toHaveLength(1);
    expect(pts[0]!.members.map((m) => m.status)).toEqual(['complete', 'missing']);
  });
  it('a merged archive (seen at the point it holds) counts; of an id seen twice, the complete archive wins', () => {
    const p = point(2, '2026-01-01T00:00:02Z');
    // member 0 merged with its predecessor (the merged archive keeps the id and the header of the point it holds)
    const merged = seen(p, 0);
    const original = { ...seen(p, 0), status: 'superseded by a merged archive (the next prune deletes it)' };
    expect(groupPoints([merged, original, seen(p, 1)])[0]!.complete).toBe(true);
    expect(groupPoints([original, merged, seen(p, 1)])[0]!.complete).toBe(true);
    expect(groupPoints([original, seen(p, 1)])[0]!.complete).toBe(false);
  });
});

describe('planGroupRetention', () => {
  const at = (i: number): string => `2026-01-01T00:00:0${i}Z`;
  const now = Date.parse('2026-01-01T01:00:00Z');
  const ps = [1, 2, 3, 4].map((i) => point(i, at(i)));
  // point 4 lost member 1; another group's point and a send without a group share chain 0
  const other: GroupMeta = { ...point(5, at(5)), name: 'db' };
  const store = [...ps.flatMap((p, i) => (i === 3 ? [seen(p, 0)] : [seen(p, 0), seen(p, 1)])), seen(other, 0), seen(other, 1), { ...seen(other, 0), archiveId: uuid(777), group: null }];

  it('keeps whole complete points by the rules; drops the others, the incomplete one included, in every member chain, and nothing else', () => {
    const plan = planGroupRetention(store, 'vm', { last: 2 }, now);
    expect(plan.kept.map((p) => p.id)).toEqual([ps[1]!.id, ps[2]!.id]);
    expect(plan.dropped.map((p) => [p.id, p.complete])).toEqual([[ps[0]!.id, true], [ps[3]!.id, false]]);
    expect([...plan.drop.keys()].sort()).toEqual([...C].sort());
    expect([...plan.drop.get(C[0]!)!].sort()).toEqual([ps[0]!.members[0]!.archiveId, ps[3]!.members[0]!.archiveId].sort());
    expect([...plan.drop.get(C[1]!)!]).toEqual([ps[0]!.members[1]!.archiveId]);
  });

  it('the newest complete point is always kept; the rules count complete points only; another group is its own', () => {
    expect(planGroupRetention(store, 'vm', { within: 1000 }, now).kept.map((p) => p.id)).toEqual([ps[2]!.id]);
    expect(planGroupRetention(store, 'vm', { last: 3 }, now).kept).toHaveLength(3);
    const db = planGroupRetention(store, 'db', { last: 1 }, now);
    expect(db.kept.map((p) => p.id)).toEqual([other.id]);
    expect(db.dropped).toEqual([]);
    expect(db.drop.size).toBe(0);
  });

  it('no complete point: nothing kept (prune --group refuses then); an unknown group: no point at all', () => {
    const broken = store.filter((a) => a.group?.name !== 'vm' || a.group.members[1]!.archiveId !== a.archiveId);
    const plan = planGroupRetention(broken, 'vm', { last: 9 }, now);
    expect(plan.kept).toEqual([]);
    expect(plan.dropped).toHaveLength(4);
    expect(planGroupRetention(store, 'nope', { last: 1 }, now)).toEqual({ kept: [], dropped: [], drop: new Map() });
  });
});

describe('verifyGroupPoints', () => {
  const ps = [1, 2, 3, 4].map((i) => point(i, `2026-01-01T00:00:0${i}Z`));
  // each chain holds the points' archives at sequences 1-4; chain 0's sequences 1-2 merged into one archive
  const archives: GroupChainArchive[] = [
    { chainId: C[0]!, label: '/s/c0/m12', from: 1 }, { chainId: C[0]!, label: '/s/c0/a3', from: 3 }, { chainId: C[0]!, label: '/s/c0/a4', from: 4 },
    ...[1, 2, 3, 4].map((i) => ({ chainId: C[1]!, label: `/s/c1/a${i}`, from: i })),
  ];
  const finding = (archive: string): Finding => ({ code: 'PAYLOAD_CORRUPT', detail: 'BLOCK_CHECKSUM', archive, message: 'x' });
  const points = groupPoints(ps.flatMap((p) => [seen(p, 0), seen(p, 1)]));
  const oks = (fs: Finding[], pts = points): boolean[] => verifyGroupPoints(pts, archives, fs).map((p) => p.ok);

  it('no finding: every complete point ok', () => {
    expect(oks([])).toEqual([true, true, true, true]);
  });
  it('a damaged archive damages its point and every later point of its chain, and only the member in that chain', () => {
    expect(oks([finding('/s/c1/a3')])).toEqual([true, true, false, false]);
    const v = verifyGroupPoints(points, archives, [finding('/s/c1/a3')]);
    expect(v[2]!.members.map((m) => [m.ok, m.findings.length])).toEqual([[true, 0], [false, 1]]);
    expect(v[2]!.complete).toBe(true);
  });
  it('a merged archive is read by every point from its first sequence on', () => {
    expect(oks([finding('/s/c0/m12')])).toEqual([false, false, false, false]);
    expect(oks([finding('/s/c0/a4')])).toEqual([true, true, true, false]);
  });
  it('an incomplete point is never ok; a finding tied to no archive of the member chains damages every point', () => {
    const incomplete = groupPoints(ps.flatMap((p, i) => (i === 1 ? [seen(p, 0)] : [seen(p, 0), seen(p, 1)])));
    expect(oks([], incomplete)).toEqual([true, false, true, true]);
    expect(oks([finding('/s')])).toEqual([false, false, false, false]);
  });
});
