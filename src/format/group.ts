/**
 * `meta.group` (format 1.1, docs/FORMAT.md §2.3.1): the consistency group an archive was taken in.
 * Every member's archive carries the whole group: its id and name, every member (volume, chain,
 * archive, sequence) and how the group was quiesced. Pure: no I/O.
 */

/** `lvm`: a group of one volume without a freeze method: LVM's own suspend of the origin around its snapshot. */
export type QuiesceMethod = 'fsfreeze' | 'command' | 'virsh' | 'dm-suspend' | 'lvm';
export const QUIESCE_METHODS: readonly QuiesceMethod[] = ['fsfreeze', 'command', 'virsh', 'dm-suspend', 'lvm'];

export interface GroupMember {
  /** `VG/LV` */
  volume: string;
  lvUuid?: string;
  chainId: string;
  archiveId: string;
  sequence: number;
}

export interface GroupMeta {
  /** random UUID of this group point (one send of the group) */
  id: string;
  /** the group's name (`--group`), the same for every point of the group */
  name: string;
  /** every member, sorted by volume */
  members: GroupMember[];
  quiesce: {
    method: QuiesceMethod;
    /** what was quiesced: mountpoints (fsfreeze), the freeze command (command), the domain (virsh), dm device names (dm-suspend) */
    targets: string[];
    /** ISO 8601 time the quiesce started */
    frozenAt: string;
    /** milliseconds from the start of the freeze to the end of the thaw */
    freezeMs: number;
  };
}

export const MAX_GROUP_MEMBERS = 64;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** A group name: what a store and a CLI argument can carry safely. */
export const GROUP_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$/;

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isStr = (v: unknown): v is string => typeof v === 'string';

/** Why `g` is not a valid `meta.group` of archive `archiveId` (it must list that archive), or null. */
export function groupMetaProblem(g: unknown, archiveId?: string): string | null {
  if (!isObj(g)) return 'is not an object';
  if (!isStr(g.id) || !UUID_RE.test(g.id)) return 'id is not a UUID';
  if (!isStr(g.name) || !GROUP_NAME_RE.test(g.name)) return 'name is not a group name';
  if (!Array.isArray(g.members) || g.members.length < 1 || g.members.length > MAX_GROUP_MEMBERS) return `members is not a list of 1 to ${MAX_GROUP_MEMBERS}`;
  const seen = new Set<string>();
  for (const m of g.members as unknown[]) {
    if (!isObj(m) || !isStr(m.volume) || !m.volume || !isStr(m.chainId) || !UUID_RE.test(m.chainId) || !isStr(m.archiveId) || !UUID_RE.test(m.archiveId)
      || typeof m.sequence !== 'number' || !Number.isSafeInteger(m.sequence) || m.sequence < 0 || (m.lvUuid !== undefined && !isStr(m.lvUuid))) {
      return 'has a member without volume, chainId, archiveId and sequence';
    }
    if (seen.has(m.chainId)) return `lists chain ${m.chainId} twice`;
    seen.add(m.chainId);
  }
  if (archiveId !== undefined && !(g.members as GroupMember[]).some((m) => m.archiveId === archiveId)) return 'does not list this archive';
  const q = g.quiesce;
  if (!isObj(q) || !QUIESCE_METHODS.includes(q.method as QuiesceMethod) || !Array.isArray(q.targets) || !q.targets.every(isStr)
    || !isStr(q.frozenAt) || Number.isNaN(Date.parse(q.frozenAt)) || typeof q.freezeMs !== 'number' || !(q.freezeMs >= 0)) {
    return 'quiesce is not {method, targets, frozenAt, freezeMs}';
  }
  return null;
}

/** The group of a header's meta, or null (none, or not valid: a 1.0 reader's view). */
export function groupOf(meta: object, archiveId?: string): GroupMeta | null {
  const g = (meta as { group?: unknown }).group;
  return g !== undefined && groupMetaProblem(g, archiveId) === null ? (g as GroupMeta) : null;
}
