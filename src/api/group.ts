/**
 * Consistency groups at the API level: the group points of a store; `restore --group`, which
 * restores every member of one point (each through `restore`) only when the point is complete;
 * `prune --group`, which applies retention rules to whole points (each member chain through `prune`);
 * and `verify --group`, which checks the member chains (through `verify`) and reports each point whole.
 */
import { ThinarchiveError, UsageError } from '../errors.js';
import { planGroupRetention, verifyGroupPoints, type GroupPoint, type VerifiedGroupPoint } from '../chain/group.js';
import { GROUP_NAME_RE } from '../format/group.js';
import { groupArchivesSeen, list, listGroups } from '../commands/list.js';
import { NO_RETENTION_RULE, prune, retentionGridOf, type PruneOptions, type PruneResult } from '../commands/prune.js';
import { restore, type RestoreOptions, type RestoreResult } from '../commands/restore.js';
import { verify, type VerifyOptions, type VerifyResult } from '../commands/verify.js';
import { assertLvmName } from '../lvm/names.js';
import type { StoreOptions } from '../store/open.js';

export interface GroupPointsOptions {
  /** the store */
  dir: string;
  /** only this group's points */
  group?: string;
  storeOptions?: StoreOptions;
}

/** The group points of a store, oldest first, each with whether every member's archive is there. */
export async function groupPointsOf(o: GroupPointsOptions): Promise<GroupPoint[]> {
  return listGroups(await list({ dir: o.dir, ...(o.storeOptions ? { storeOptions: o.storeOptions } : {}) }), o.group);
}

export interface RestoreGroupOptions extends Omit<RestoreOptions, 'dir' | 'to' | 'at'> {
  /** the store */
  dir: string;
  group: string;
  /** a group point: its id (or a unique prefix of it), or a time (the newest point frozen at or before it); default the newest complete point */
  at?: string;
  /** the VG each member is restored into, as VG/<the member's LV name> */
  toVg: string;
}

export interface RestoreGroupResult {
  group: string;
  point: GroupPoint;
  members: (RestoreResult & { volume: string })[];
  seconds: number;
}

function selectGroupPoint(points: readonly GroupPoint[], group: string, at: string | undefined): GroupPoint {
  if (!points.length) throw new UsageError(`the store holds no point of group "${group}"`, 'GROUP_NOT_FOUND');
  if (at === undefined) {
    const p = [...points].reverse().find((x) => x.complete);
    if (!p) {
      throw new ThinarchiveError('GROUP_INCOMPLETE', `no point of group "${group}" is complete (${points.length} point${points.length > 1 ? 's' : ''}, each missing a member's archive)`, 'verify');
    }
    return p;
  }
  const byId = points.filter((p) => p.id.startsWith(at.toLowerCase()));
  if (byId.length === 1) return byId[0]!;
  if (byId.length > 1) throw new UsageError(`--at ${at} matches ${byId.length} points of group "${group}": give more of the id`);
  const t = Date.parse(at);
  if (Number.isNaN(t)) throw new UsageError(`--at ${at} is neither the id of a point of group "${group}" nor a time`, 'GROUP_NOT_FOUND');
  const p = [...points].reverse().find((x) => Date.parse(x.frozenAt) <= t);
  if (!p) throw new UsageError(`group "${group}" has no point at or before ${at}`, 'GROUP_NOT_FOUND');
  return p;
}

/** Restore every member of a group point into `toVg`; refused (GROUP_INCOMPLETE) before any write when a member's archive is missing. */
export async function restoreGroup(o: RestoreGroupOptions): Promise<RestoreGroupResult> {
  const started = performance.now();
  if (!GROUP_NAME_RE.test(o.group)) throw new UsageError(`--group ${JSON.stringify(o.group)} is not a group name`);
  assertLvmName(o.toVg, 'VG');
  const point = selectGroupPoint(await groupPointsOf({ dir: o.dir, group: o.group, ...(o.storeOptions ? { storeOptions: o.storeOptions } : {}) }), o.group, o.at);
  const bad = point.members.filter((m) => m.status !== 'complete');
  if (bad.length) {
    throw new ThinarchiveError('GROUP_INCOMPLETE', `point ${point.id} of group "${o.group}" (${point.frozenAt}) is incomplete: `
      + `${bad.map((m) => `${m.volume} archive ${m.archiveId} (sequence ${m.sequence}) ${m.status}`).join('; ')}; restore another point (list shows which are complete)`, 'verify');
  }
  const lvNames = point.members.map((m) => m.volume.split('/')[1] ?? '');
  if (new Set(lvNames).size !== lvNames.length) {
    throw new UsageError(`the members of group "${o.group}" share LV names across VGs (${point.members.map((m) => m.volume).join(', ')}): they cannot all go into one --to-vg`);
  }
  for (const n of lvNames) assertLvmName(n, 'LV');
  const members: RestoreGroupResult['members'] = [];
  for (const [i, m] of point.members.entries()) {
    const { group: _g, toVg: _v, at: _a, dir: _d, ...rest } = o;
    const r = await restore({ ...rest, dir: m.chainDir!, at: m.archiveId, to: `${o.toVg}/${lvNames[i]}` });
    members.push({ ...r, volume: m.volume });
  }
  return { group: o.group, point, members, seconds: (performance.now() - started) / 1000 };
}

export interface PruneGroupOptions extends Omit<PruneOptions, 'dir' | 'dropArchiveIds'> {
  /** the store */
  dir: string;
  group: string;
}

/** A group point as prune --group reports it. */
export interface PrunedGroupPoint {
  id: string;
  frozenAt: string;
  complete: boolean;
}

export interface PruneGroupResult {
  dryRun: boolean;
  group: string;
  /** the complete points the rules keep (every member's archive stays restorable), oldest first */
  kept: PrunedGroupPoint[];
  /** the points dropped: complete ones the rules do not keep, and every incomplete one */
  dropped: PrunedGroupPoint[];
  /** what prune did (or, in a dry run, would do) in each member's chain, in chain id order */
  chains: PruneResult[];
  seconds: number;
}

/**
 * prune STORE --group NAME --keep…: the rules pick whole points of the group (by freeze time; the
 * newest complete point always), and every member chain drops exactly the archives of the points not
 * kept, each merged into the next archive kept (prune's own merges: a kept point stays restorable
 * and identical). A point is kept whole or not at all; an incomplete point is never kept. Archives
 * of other groups, of sends without a group, and any written since the listing stay. Chains are
 * pruned one after the other: interrupted, a kept point is still whole, and a dropped one may be left
 * incomplete for the next prune --group to finish. Refused (GROUP_INCOMPLETE) when no point of the
 * group is complete: nothing is changed then.
 */
export async function pruneGroup(o: PruneGroupOptions): Promise<PruneGroupResult> {
  const started = performance.now();
  if (!GROUP_NAME_RE.test(o.group)) throw new UsageError(`--group ${JSON.stringify(o.group)} is not a group name`);
  const grid = retentionGridOf(o);
  if (!grid) throw new UsageError(NO_RETENTION_RULE);
  const so = o.storeOptions ? { storeOptions: o.storeOptions } : {};
  const chains = await list({ dir: o.dir, ...so });
  const plan = planGroupRetention(groupArchivesSeen(chains), o.group, grid, o.now ?? Date.now());
  if (!plan.kept.length) {
    if (!plan.dropped.length) throw new UsageError(`the store holds no point of group "${o.group}"`, 'GROUP_NOT_FOUND');
    throw new ThinarchiveError('GROUP_INCOMPLETE', `no point of group "${o.group}" is complete (${plan.dropped.length} point${plan.dropped.length > 1 ? 's' : ''}, each missing a member's archive): nothing pruned`, 'verify');
  }
  const { group: _g, dir: _d, keep: _k, keepWithin: _w, keepHourly: _h, keepDaily: _dd, keepWeekly: _ww, keepMonthly: _m, keepYearly: _y, ...rest } = o;
  const results: PruneResult[] = [];
  for (const [chainId, drop] of [...plan.drop].sort(([a], [b]) => a.localeCompare(b))) {
    const dir = chains.find((c) => c.chainId === chainId)?.dir;
    if (!dir) continue;
    o.signal?.throwIfAborted();
    results.push(await prune({ ...rest, dir, dropArchiveIds: drop }));
  }
  const brief = (p: GroupPoint): PrunedGroupPoint => ({ id: p.id, frozenAt: p.frozenAt, complete: p.complete });
  return { dryRun: !!o.dryRun, group: o.group, kept: plan.kept.map(brief), dropped: plan.dropped.map(brief), chains: results, seconds: (performance.now() - started) / 1000 };
}

export interface VerifyGroupOptions extends Pick<VerifyOptions, 'onProgress' | 'signal' | 'storeOptions' | 'samplePercent' | 'random'> {
  /** the store */
  dir: string;
  group: string;
  /** one point (its id or a unique prefix of it, or a time: the newest point frozen at or before it); default every point of the group */
  at?: string;
}

export interface VerifyGroupResult {
  /** every point checked is complete and undamaged */
  ok: boolean;
  group: string;
  mode: 'full' | 'sample';
  samplePercent?: number;
  /** the points checked, oldest first, each whole: complete, and ok only when every member is */
  points: VerifiedGroupPoint[];
  /** archives read (of the member chains) */
  archives: number;
  /** every finding of the member chains, as verify reports them */
  findings: VerifyResult['findings'];
  bytesRead: number;
  seconds: number;
}

/**
 * verify STORE --group NAME [--at POINT] [--sample P]: every archive of the group's member chains
 * checked (fully, or a sample of each archive's records), then each point reported whole: ok only when
 * every member's archive is there and nothing its restore reads was found damaged. GROUP_NOT_FOUND
 * (usage) when the store holds no point of the group; an incomplete or damaged point makes `ok` false
 * (the CLI's exit 3), it is not an error.
 */
export async function verifyGroup(o: VerifyGroupOptions): Promise<VerifyGroupResult> {
  const started = performance.now();
  if (!GROUP_NAME_RE.test(o.group)) throw new UsageError(`--group ${JSON.stringify(o.group)} is not a group name`);
  const so = o.storeOptions ? { storeOptions: o.storeOptions } : {};
  const chains = await list({ dir: o.dir, ...so });
  const all = listGroups(chains, o.group);
  if (!all.length) throw new UsageError(`the store holds no point of group "${o.group}"`, 'GROUP_NOT_FOUND');
  const points = o.at === undefined ? all : [selectGroupPoint(all, o.group, o.at)];
  const memberChains = [...new Set(points.flatMap((p) => p.members.map((m) => m.chainId)))].filter((id) => chains.some((c) => c.chainId === id)).sort();
  o.signal?.throwIfAborted();
  const v = memberChains.length ? await verify({ ...so, inputs: [o.dir], chains: memberChains, samplePercent: o.samplePercent, onProgress: o.onProgress, signal: o.signal, random: o.random })
    : { ok: true, mode: o.samplePercent === undefined ? 'full' as const : 'sample' as const, archives: [], findings: [], bytesRead: 0 };
  const archives = chains.filter((c) => memberChains.includes(c.chainId))
    .flatMap((c) => c.archives.map((a) => ({ chainId: c.chainId, label: a.path, from: Math.min(a.sequence, a.merged?.fromSequence ?? a.sequence) })));
  const verified = verifyGroupPoints(points, archives, v.findings);
  return {
    ok: verified.every((p) => p.ok), group: o.group, mode: v.mode === 'sample' ? 'sample' : 'full', ...(o.samplePercent !== undefined ? { samplePercent: o.samplePercent } : {}),
    points: verified, archives: v.archives.length, findings: v.findings, bytesRead: v.bytesRead, seconds: (performance.now() - started) / 1000,
  };
}
