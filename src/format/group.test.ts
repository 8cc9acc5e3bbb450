// meta.group (format 1.1): what the validator accepts and rejects, the minor version an archive with a
// group gets, and that a reader of any 1.x accepts it (decodePreamble takes every minor of major 1).
import { describe, expect, it } from 'vitest';
import { FormatError } from '../errors.js';
import { FORMAT_MAJOR, minorFor } from './constants.js';
import { decodeHeaderBody, decodePreamble, encodeHeaderBody, encodePreamble } from './frames.js';
import { groupMetaProblem, groupOf, type GroupMeta } from './group.js';
import type { ArchiveHeader } from './types.js';

const A1 = '01234567-89ab-cdef-0123-456789abcdef';
const A2 = '11234567-89ab-cdef-0123-456789abcdef';
const C1 = 'fedcba98-7654-3210-fedc-ba9876543210';
const C2 = 'aedcba98-7654-3210-fedc-ba9876543210';

function group(over: Partial<GroupMeta> = {}): GroupMeta {
  return {
    id: '22222222-3333-4444-5555-666666666666', name: 'vm-101',
    members: [{ volume: 'vg/a', lvUuid: 'x', chainId: C1, archiveId: A1, sequence: 3 }, { volume: 'vg/b', chainId: C2, archiveId: A2, sequence: 0 }],
    quiesce: { method: 'fsfreeze', targets: ['/mnt/a'], frozenAt: '2026-12-05T17:00:00.000Z', freezeMs: 412 },
    ...over,
  };
}

function header(meta: ArchiveHeader['meta']): ArchiveHeader {
  return {
    major: FORMAT_MAJOR, minor: minorFor(meta), full: true, blockSize: 65536, archiveId: A1, parentId: null, chainId: C1, sequence: 3,
    volumeUuid: '11111111-2222-3333-4444-555555555555', volumeSize: 2 ** 30, createdMs: 1_700_000_000_123, compression: 1, hash: 1, digest: 1,
    sourceChunkSize: 65536, meta,
  };
}

describe('meta.group (format 1.1)', () => {
  it('an archive with a group is written as 1.1, one without as 1.0; both decode', () => {
    const meta = { volume: { name: 'vg/a' }, tool: 't', group: group() };
    expect(minorFor(meta)).toBe(1);
    expect(minorFor({ volume: { name: 'vg/a' }, tool: 't' })).toBe(0);
    expect(decodePreamble(encodePreamble(1))).toEqual({ major: 1, minor: 1 });
    const h = header(meta);
    expect(decodeHeaderBody(encodeHeaderBody(h), 0, { major: 1, minor: 1 })).toEqual(h);
    expect(groupOf(h.meta, A1)).toEqual(group());
  });

  it('rejects a malformed group, and one that does not list the archive it is in', () => {
    const bad: [unknown, RegExp][] = [
      ['x', /not an object/],
      [group({ id: 'nope' }), /id/],
      [group({ name: 'a/b' }), /name/],
      [group({ members: [] }), /members/],
      [group({ members: [{ volume: 'vg/a', chainId: C1, archiveId: A1, sequence: -1 }] }), /member/],
      [group({ members: [{ volume: 'vg/a', chainId: C1, archiveId: A1, sequence: 1 }, { volume: 'vg/b', chainId: C1, archiveId: A2, sequence: 1 }] }), /twice/],
      [group({ quiesce: { method: 'magic' as 'lvm', targets: [], frozenAt: '2026-12-05T17:00:00Z', freezeMs: 1 } }), /quiesce/],
      [group({ quiesce: { method: 'lvm', targets: [], frozenAt: 'yesterday', freezeMs: 1 } }), /quiesce/],
    ];
    for (const [g, why] of bad) {
      expect(groupMetaProblem(g, A1)).toMatch(why);
      const body = encodeHeaderBody(header({ volume: { name: 'vg/a' }, tool: 't', group: g }));
      expect(() => decodeHeaderBody(body, 0, { major: 1, minor: 1 })).toThrow(FormatError);
    }
    const other = group({ members: [{ volume: 'vg/b', chainId: C2, archiveId: A2, sequence: 0 }] });
    expect(groupMetaProblem(other, A1)).toMatch(/does not list this archive/);
    expect(() => decodeHeaderBody(encodeHeaderBody(header({ volume: { name: 'vg/a' }, tool: 't', group: other })), 0, { major: 1, minor: 1 })).toThrow(/does not list/);
    expect(groupOf({ group: other }, A1)).toBeNull();
  });

  it('a 1.0 reader accepts 1.1 (any minor of major 1) and ignores the key', () => {
    const b = encodePreamble(1);
    expect(decodePreamble(b).major).toBe(1);
    expect(() => encodePreamble(2)).toThrow(RangeError);
  });
});
