/**
 * Group points in a store: the archives one group send wrote (one per member, each in its member's
 * chain, each carrying the whole group in `meta.group`, docs/FORMAT.md §2.3.1). A point is complete
 * when every member's archive is in the store and readable. Pure: built from what `list` read; the
 * retention of a group's points (`prune --group`) is planned here too, and what `verify --group`'s
 * findings mean for each point.
 */
import type { GroupMeta } from '../format/group.js';
import type { Finding } from './findings.js';
import { planRetention, type RetentionGrid } from './retention.js';

/** One archive as the store shows it: where it is, whether it reads, and the group its header names. */
export interface GroupArchiveSeen {
  chainId: string;
  chainDir: string;
  archiveId: string;
  /**
   * The point the archive holds: its sequence, or for a merged archive (merge, prune) the last
   * sequence it covers, whose id and header (with the group) it keeps.
   */
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
  // An id may be seen twice (an interrupted prune leaves the original beside the merged archive that
  // took its id): a complete one wins.
  const byArchive = new Map<string, GroupArchiveSeen>();
  for (const a of archives) {
    const had = byArchive.get(a.archiveId);
    if (!had || (had.status !== 'complete' && a.status === 'complete')) byArchive.set(a.archiveId, a);
  }
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

export interface GroupRetentionPlan {
  /** the complete points the rules keep, oldest first */
  kept: GroupPoint[];
  /** the points not kept: complete ones the rules drop, and every incomplete one (a point is kept whole or not at all) */
  dropped: GroupPoint[];
  /**
   * Per member chain (chain id): the archives to drop, by id: the dropped points' members. Nothing
   * else (another group's archives, sends without a group, archives written since the listing) is
   * dropped.
   */
  drop: Map<string, Set<string>>;
}

/**
 * `prune STORE --group NAME`: the retention rules applied to the group's complete points (by freeze
 * time; the newest complete point is always kept), and the member archives that drops in each chain.
 * `archives`: every archive of the store, as for groupPoints.
 */
export function planGroupRetention(archives: readonly GroupArchiveSeen[], name: string, grid: RetentionGrid, now: number): GroupRetentionPlan {
  const points = groupPoints(archives).filter((p) => p.name === name);
  const complete = points.filter((p) => p.complete);
  const rule = planRetention(complete.map((p) => Date.parse(p.frozenAt)), grid, now);
  const kept = complete.filter((_, i) => rule[i]);
  const keptIds = new Set(kept.map((p) => p.id));
  const dropped = points.filter((p) => !keptIds.has(p.id));
  const drop = new Map<string, Set<string>>();
  for (const p of dropped) {
    for (const m of p.members) {
      if (m.status === 'missing') continue;
      const ids = drop.get(m.chainId) ?? new Set<string>();
      ids.add(m.archiveId);
      drop.set(m.chainId, ids);
    }
  }
  return { kept, dropped, drop };
}

/** An archive of a member chain as `verify --group` relates findings to points: its label and the first sequence it holds. */
export interface GroupChainArchive {
  chainId: string;
  /** the archive's path or URL: what a verify finding names */
  label: string;
  /** the first sequence it covers (a merged archive's fromSequence): every point at or after it needs it */
  from: number;
}

/** What `verify --group` found of one member of a point. */
export interface VerifiedGroupMember extends GroupPointMember {
  /** the member's archive is there and nothing its restore reads (the chain up to it) was found damaged */
  ok: boolean;
  /** the findings on archives the member's restore reads */
  findings: Finding[];
}

export interface VerifiedGroupPoint {
  id: string;
  frozenAt: string;
  complete: boolean;
  /** complete, and every member ok */
  ok: boolean;
  members: VerifiedGroupMember[];
}

/**
 * verify --group: each point whole. A finding on an archive of a member chain damages every point
 * whose member in that chain is at or after the archive's first sequence (its restore reads it); a
 * finding verify could not tie to an archive of a member chain (a store it could not read) damages
 * every point. A point is ok when it is complete and no member is damaged.
 */
export function verifyGroupPoints(points: readonly GroupPoint[], archives: readonly GroupChainArchive[], findings: readonly Finding[]): VerifiedGroupPoint[] {
  const byLabel = new Map(archives.map((a) => [a.label, a]));
  return points.map((p) => {
    const members = p.members.map((m): VerifiedGroupMember => {
      const mine = findings.filter((f) => {
        const a = byLabel.get(f.archive);
        return !a || (a.chainId === m.chainId && a.from <= m.sequence);
      });
      return { ...m, ok: m.status === 'complete' && mine.length === 0, findings: mine };
    });
    return { id: p.id, frozenAt: p.frozenAt, complete: p.complete, ok: p.complete && members.every((m) => m.ok), members };
  });
}
