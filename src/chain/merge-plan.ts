/**
 * Merging consecutive archives of a chain into one equivalent archive (merge, prune): later versions
 * of a block win; the result takes the last archive's id and the first's parent and sequence
 * (docs/FORMAT.md, "Merged archives").
 */
import { AgeEncryptor } from '../archive/encrypted.js';
import { withPool } from '../archive/pool.js';
import { recipientOf } from '../crypto/age.js';
import { isEncrypted } from '../store/layout.js';
import type { StoreOptions } from '../store/open.js';
import { writeArchive, type NewArchive } from '../archive/writer.js';
import { ThinarchiveError } from '../errors.js';
import { ExtentKind } from '../format/constants.js';
import type { MapExtent } from '../format/types.js';
import type { ArchiveStore, StoredArchive } from '../store/types.js';
import { TOOL_VERSION } from '../version.js';
import { mergedInfo, type ChainArchive } from './chain.js';
import { ChainReader } from './reader.js';
import { chainSegments } from './segments.js';

/** The archive a merge wrote. */
export interface MergedArchive {
  chainId: string;
  archiveId: string;
  sequence: number;
  full: boolean;
  parentId: string | null;
  merged: { fromSequence: number; toSequence: number; archives: number };
  path: string;
  archiveBytes: number;
  rawBytes: number;
  /** archive payload bytes read */
  bytesRead: number;
}

/** Merge `group` (consecutive archives of the opened chain) into one archive written to `store`. */
export async function mergeGroup(
  group: ChainArchive[], store: ArchiveStore, opts: { level?: number; signal?: AbortSignal; storeOptions?: StoreOptions },
): Promise<MergedArchive> {
  // A merged archive of an encrypted chain is encrypted too (FORMAT.md §3.4): to the recipients given,
  // else to those of the identities that read the chain.
  const encrypted = isEncrypted(group[0].stored);
  const recipients = encrypted ? (opts.storeOptions?.recipients?.length ? opts.storeOptions.recipients : (opts.storeOptions?.identities ?? []).map(recipientOf)) : undefined;
  const first = group[0].header;
  const last = group[group.length - 1].header;
  const count = group.reduce((n, a) => n + (mergedInfo(a.header)?.archives ?? 1), 0);
  const merged = { fromSequence: first.sequence, toSequence: group[group.length - 1].point, archives: count };
  const header: NewArchive = {
    full: first.full, blockSize: last.blockSize, archiveId: last.archiveId, parentId: first.parentId, chainId: last.chainId,
    sequence: first.sequence, volumeUuid: last.volumeUuid, volumeSize: last.volumeSize, createdMs: last.createdMs,
    sourceChunkSize: last.sourceChunkSize,
    meta: { ...last.meta, tool: `thinarchive ${TOOL_VERSION}`, merged },
  };
  // The merged archive starts from the first merged archive's base.
  if (first.meta.base) header.meta.base = first.meta.base;
  else delete header.meta.base;
  const files = group.map((a) => a.file);
  async function* extents(): AsyncGenerator<MapExtent> {
    for await (const s of chainSegments(files)) {
      const kind = s.kind === 'data' ? ExtentKind.DATA : s.kind === 'zero' ? ExtentKind.ZERO : ExtentKind.UNMAP;
      yield { firstBlock: s.first, blockCount: s.count, kind };
    }
  }
  // It takes a sequence its originals hold: no exclusive claim (store/types.ts).
  const pending = await store.createArchive(header.chainId, header.sequence, header.archiveId!, { replaces: true, encrypted });
  try {
    const enc = recipients ? new AgeEncryptor(recipients, (b) => pending.sink.write(b)) : undefined;
    const sink = enc ? { write: (c: Uint8Array) => enc.write(c) } : pending.sink;
    const { res, bytesRead } = await withPool(async (pool) => {
      const reader = new ChainReader(files, pool);
      try {
        const r = await writeArchive({
          header, extents: extents(), source: reader, sink, pool,
          level: opts.level, signal: opts.signal,
        });
        return { res: r, bytesRead: reader.stats.reduce((n, s) => n + s.bytesRead, 0) };
      } finally {
        await reader.close();
      }
    });
    opts.signal?.throwIfAborted();
    await enc?.finish();
    await pending.commit();
    return {
      chainId: header.chainId, archiveId: header.archiveId!, sequence: header.sequence, full: header.full, parentId: header.parentId, merged,
      path: pending.path, archiveBytes: res.bytesWritten, rawBytes: res.trailer.rawBytes, bytesRead,
    };
  } catch (e) {
    await pending.abort().catch(() => {});
    throw e;
  }
}

/**
 * Before merge or prune writes anything: every archive it will delete must be deletable (object-lock
 * retention, a read-only directory); otherwise it is refused with nothing changed.
 */
export async function refuseUndeletable(store: ArchiveStore, archives: StoredArchive[], what: string): Promise<void> {
  try {
    await store.checkDeletable(archives);
  } catch (e) {
    if (e instanceof ThinarchiveError) throw ThinarchiveError.prefixed(e, `${what} refused, nothing changed: `);
    throw e;
  }
}

/**
 * Retention rules of a grid (prune --keep-*, the daemon's `keep:`): a point is kept when any rule
 * keeps it, and the newest point is always kept.
 * - `last`: the newest N points; `within` (ms): every point created within that time before `now`;
 * - `hourly` / `daily` / `weekly` / `monthly` / `yearly`: N buckets: the newest point of each of the
 *   N most recent periods (UTC hours, days, ISO weeks from Monday, months, years) that hold a point
 *   (as PBS and sanoid count them: periods without a point do not use up a slot).
 */
export interface RetentionGrid {
  last?: number;
  within?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
}

const PERIODS = ['hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;

/** The period of time `t` (ms) for a rule, as a number equal for points in the same period (UTC). */
export function periodOf(rule: (typeof PERIODS)[number], t: number): number {
  switch (rule) {
    case 'hourly': return Math.floor(t / 3_600_000);
    case 'daily': return Math.floor(t / 86_400_000);
    // 1970-01-01 was a Thursday: ISO weeks start 3 days before it, on a Monday.
    case 'weekly': return Math.floor((Math.floor(t / 86_400_000) + 3) / 7);
    case 'monthly': {
      const { y, m } = civil(Math.floor(t / 86_400_000));
      return y * 12 + m;
    }
    case 'yearly': return civil(Math.floor(t / 86_400_000)).y;
  }
}

/** Year and month (0-11) of a day number (days since 1970-01-01, UTC), by arithmetic (H. Hinnant's civil_from_days). */
function civil(z: number): { y: number; m: number } {
  z += 719_468;
  const era = Math.floor(z / 146_097);
  const doe = z - era * 146_097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36_524) - Math.floor(doe / 146_096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const m = mp < 10 ? mp + 2 : mp - 10;
  return { y: yoe + era * 400 + (m <= 1 ? 1 : 0), m };
}

/** Which of `times` (creation times in ms, oldest first) a grid keeps at `now`. The newest always. */
export function planRetention(times: number[], grid: RetentionGrid, now: number): boolean[] {
  const n = times.length;
  const kept = times.map((t, i) => (grid.last !== undefined && i >= n - grid.last) || (grid.within !== undefined && t >= now - grid.within));
  for (const rule of PERIODS) {
    let left = grid[rule] ?? 0;
    let last: number | undefined;
    for (let i = n - 1; i >= 0 && left > 0; i--) {
      const p = periodOf(rule, times[i]);
      if (p === last) continue;
      last = p;
      kept[i] = true;
      left--;
    }
  }
  if (n) kept[n - 1] = true;
  return kept;
}

/** The groups to merge so that exactly the kept archives stay restorable: each ends at a kept archive. */
export function mergeGroups<T>(archives: T[], kept: boolean[]): T[][] {
  const groups: T[][] = [];
  let start = 0;
  for (let i = 0; i < archives.length; i++) {
    if (!kept[i]) continue;
    if (i > start) groups.push(archives.slice(start, i + 1));
    start = i + 1;
  }
  return groups;
}

/** Which archives of the path are kept, and the groups (ending at a kept archive) to merge. */
export function planPrune(archives: ChainArchive[], grid: RetentionGrid, now: number): { kept: boolean[]; groups: ChainArchive[][] } {
  const kept = planRetention(archives.map((a) => a.header.createdMs), grid, now);
  return { kept, groups: mergeGroups(archives, kept) };
}
