/**
 * Retention rules (prune --keep-*, the daemon's `keep:`, prune --group): which points of a time
 * series a grid keeps, and the runs of archives to merge so that exactly the kept ones stay
 * restorable. Pure.
 */

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
