/**
 * prune DIR --keep N [--keep-within DURATION] [--keep-hourly/daily/weekly/monthly/yearly N]: shorten a
 * chain to the points worth keeping.
 *
 * Kept: the newest N points, every point created within DURATION, the newest point of each of the
 * last N hours/days/weeks/months/years that have one (chain/retention.ts, planRetention), and always the newest. Every kept
 * point must stay restorable and identical, so nothing a kept point needs is deleted: the archives
 * between two kept points (and those up to the first kept point, starting from the full) are merged
 * into one archive holding the kept point's state (chain/merge-plan.ts), and only then are the originals
 * deleted. Each merged archive is durable before any original goes, so a prune that is interrupted
 * at any moment leaves a valid chain (the path by parent links goes through the merged archive); the
 * next prune deletes the leftovers, and the temporary files of writers that are gone (ArchiveStore.sweep).
 * `--dry-run` prints the plan and changes nothing.
 */
import { UsageError } from '../errors.js';
import type { StoreOptions } from '../store/open.js';
import { mergeGroup, planPrune, refuseUndeletable } from '../chain/merge-plan.js';
import type { RetentionGrid } from '../chain/retention.js';
import { openChain } from '../chain/chain.js';

export interface PruneOptions {
  dir: string;
  keep?: number;
  /** milliseconds */
  keepWithin?: number;
  /** The newest point of each of the last N hours / days / ISO weeks / months / years (UTC) that have one. */
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  /**
   * Instead of the rules above: drop exactly these archives (by id; never the newest), each merged
   * into the next kept one (`prune --group`, api/group.ts)
   */
  dropArchiveIds?: ReadonlySet<string>;
  dryRun?: boolean;
  level?: number;
  now?: number;
  signal?: AbortSignal;
  storeOptions?: StoreOptions;
}

export interface PrunePlanMerge {
  /** sequences (points) of the archives merged, oldest first */
  points: number[];
  archiveIds: string[];
  /** the point the merged archive holds (kept) */
  keeps: number;
  /** written by this run (not in a dry run) */
  path?: string;
  archiveBytes?: number;
}

export interface PruneResult {
  dryRun: boolean;
  chainId: string;
  kept: { sequence: number; archiveId: string; created: string }[];
  /** points that are no longer restorable afterwards */
  dropped: number[];
  merges: PrunePlanMerge[];
  /** archive files deleted (or, in a dry run, to delete) */
  deletes: string[];
  /** leftovers of an interrupted prune or merge (superseded archives), deleted first */
  leftovers: string[];
  /** temporary files and stale uploads of writers that are gone, removed (none in a dry run; ArchiveStore.sweep) */
  swept: string[];
  seconds: number;
}


/** The retention rules of prune's options, checked; undefined when none is given. */
export function retentionGridOf(opts: Pick<PruneOptions, 'keep' | 'keepWithin' | 'keepHourly' | 'keepDaily' | 'keepWeekly' | 'keepMonthly' | 'keepYearly'>): RetentionGrid | undefined {
  const grid: RetentionGrid = {
    last: opts.keep, within: opts.keepWithin, hourly: opts.keepHourly, daily: opts.keepDaily, weekly: opts.keepWeekly, monthly: opts.keepMonthly, yearly: opts.keepYearly,
  };
  if (Object.values(grid).every((v) => v === undefined)) return undefined;
  if (opts.keep !== undefined && (!Number.isInteger(opts.keep) || opts.keep < 1)) throw new UsageError('--keep must be an integer of at least 1');
  for (const k of ['hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const) {
    const v = grid[k];
    if (v !== undefined && (!Number.isInteger(v) || v < 0)) throw new UsageError(`--keep-${k} must be an integer of at least 0`);
  }
  return grid;
}

/** What to keep was not said (prune, prune --group). */
export const NO_RETENTION_RULE = 'say what to keep: --keep N, --keep-within DURATION and/or --keep-hourly/daily/weekly/monthly/yearly N';

export async function prune(opts: PruneOptions): Promise<PruneResult> {
  const started = performance.now();
  const grid = retentionGridOf(opts);
  if (opts.dropArchiveIds && grid) throw new UsageError('drop either the archives named or by rules (--keep, --keep-*), not both');
  const rule = opts.dropArchiveIds ? { drop: opts.dropArchiveIds } : grid ? { grid, now: opts.now ?? Date.now() } : undefined;
  if (!rule) throw new UsageError(NO_RETENTION_RULE);
  const chain = await openChain(opts.dir, opts.storeOptions);
  try {
    const { kept, groups } = planPrune(chain.archives, rule);
    const result: PruneResult = {
      dryRun: !!opts.dryRun, chainId: chain.chainId,
      kept: chain.archives.filter((_, i) => kept[i]).map((a) => ({ sequence: a.point, archiveId: a.header.archiveId, created: new Date(a.header.createdMs).toISOString() })),
      dropped: chain.archives.filter((_, i) => !kept[i]).map((a) => a.point),
      merges: groups.map((g) => ({ points: g.map((a) => a.point), archiveIds: g.map((a) => a.header.archiveId), keeps: g[g.length - 1].point })),
      deletes: groups.flatMap((g) => g.map((a) => a.stored.path)),
      leftovers: chain.superseded.map((a) => a.path),
      swept: [],
      seconds: 0,
    };
    if (opts.dryRun) {
      result.seconds = (performance.now() - started) / 1000;
      return result;
    }
    await refuseUndeletable(chain.store, [...chain.superseded, ...groups.flatMap((g) => g.map((a) => a.stored))], 'prune');
    // Leftovers first: the chain's path does not go through them.
    for (const a of chain.superseded) {
      opts.signal?.throwIfAborted();
      await chain.store.deleteArchive(a);
    }
    // What a killed writer left: a merge killed after its archive became visible writes nothing more
    // here, so no later writer of this chain would sweep it.
    result.swept = await chain.writeStore.sweep(chain.chainId);
    for (let g = 0; g < groups.length; g++) {
      const group = groups[g];
      for (const a of group) await a.file.preflight();
      opts.signal?.throwIfAborted();
      const r = await mergeGroup(group, chain.writeStore, { level: opts.level, signal: opts.signal, storeOptions: opts.storeOptions });
      result.merges[g].path = r.path;
      result.merges[g].archiveBytes = r.archiveBytes;
      // Durable now: delete what it replaces (the original sharing its id last).
      for (const a of group) await chain.store.deleteArchive(a.stored);
    }
    result.seconds = (performance.now() - started) / 1000;
    return result;
  } finally {
    await chain.close();
  }
}
