/**
 * Group points in a store: the archives one group send wrote (one per member, each in its member's
 * chain, each carrying the whole group in `meta.group`, docs/FORMAT.md §2.3.1). A point is complete
 * when every member's archive is in the store and readable. Pure: built from what `list` read.
 */
import type { GroupMeta } from '../format/group.js';

/** One archive as the store shows it: where it is, whether it reads, and the group its header names. */
export interface GroupArchiveSeen {
  chainId: string;
  chainDir: string;
  archiveId: string;
  sequence: number;
  /** 'complete' when header and trailer read; otherwise why not */
  status: string;
  group: GroupMeta | null;
}

export interface GroupPointMember {
  volume: string;
  chainId: string;
  archiveId: string;
  sequence: number;
  /** the chain's directory in the store, when the chain is there */
  chainDir: string | null;
  /** 'complete', 'missing', or the archive's status (unreadable, superseded, ...) */
  status: string;
}

export interface GroupPoint {
  id: string;
  name: string;
  frozenAt: string;
  quiesce: GroupMeta['quiesce'];
  members: GroupPointMember[];
  /** every member's archive is in the store and complete */
  complete: boolean;
}

/** The group points of a store, oldest first (by freeze time), from every archive whose header names a group. */
export function groupPoints(archives: readonly GroupArchiveSeen[]): GroupPoint[] {
  const byArchive = new Map(archives.map((a) => [a.archiveId, a]));
  const chainDirs = new Map(archives.map((a) => [a.chainId, a.chainDir]));
  const points = new Map<string, GroupPoint>();
  for (const a of archives) {
    const g = a.group;
    if (!g || points.has(g.id)) continue;
    const members = g.members.map((m): GroupPointMember => {
      const seen = byArchive.get(m.archiveId);
      const status = !seen || seen.chainId !== m.chainId || seen.sequence !== m.sequence ? 'missing' : seen.status;
      return { volume: m.volume, chainId: m.chainId, archiveId: m.archiveId, sequence: m.sequence, chainDir: chainDirs.get(m.chainId) ?? null, status };
    });
    points.set(g.id, { id: g.id, name: g.name, frozenAt: g.quiesce.frozenAt, quiesce: g.quiesce, members, complete: members.every((m) => m.status === 'complete') });
  }
  return [...points.values()].sort((x, y) => x.frozenAt.localeCompare(y.frozenAt) || x.id.localeCompare(y.id));
}
