// Group points from what a store holds: complete when every member's archive is there and reads;
// missing, unreadable or moved members make the point incomplete; points sorted by freeze time.
import { describe, expect, it } from 'vitest';
import type { GroupMeta } from '../format/group.js';
import { groupPoints, type GroupArchiveSeen } from './group.js';

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
});
