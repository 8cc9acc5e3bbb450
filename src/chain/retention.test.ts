// The retention grid (planRetention, mergeGroups) over a simulated year of 30 s runs with an injected
// clock: retention applied after every run, as the daemon does, keeps exactly what the rules say
// (checked against an independent reference computed from every point ever made), and every dropped
// point is merged into a kept one (nothing a kept point needs is deleted).
import { describe, expect, it } from 'vitest';
import { mergeGroups, planRetention, type RetentionGrid } from './retention.js';

const S = 1000;
const H = 3600 * S;
const D = 24 * H;

/** Independent reference: the set of times the rules keep among `all` (oldest first) at `now`. */
function reference(all: number[], g: RetentionGrid, now: number): Set<number> {
  const keep = new Set<number>();
  if (!all.length) return keep;
  keep.add(all[all.length - 1]);
  if (g.last) for (const t of all.slice(-g.last)) keep.add(t);
  if (g.within !== undefined) for (const t of all) if (t >= now - g.within) keep.add(t);
  // One pass: each point's calendar fields from a Date (ISO weeks from the Monday before), the newest per period.
  const rules = ['hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;
  const newest = rules.map(() => new Map<number, number>());
  for (const t of all) {
    const d = new Date(t);
    const y = d.getUTCFullYear(); const m = d.getUTCMonth(); const day = d.getUTCDate();
    const monday = Date.UTC(y, m, day - ((d.getUTCDay() + 6) % 7));
    const keys = [Date.UTC(y, m, day, d.getUTCHours()), Date.UTC(y, m, day), monday, y * 100 + m, y];
    keys.forEach((k, r) => { if ((newest[r].get(k) ?? -Infinity) < t) newest[r].set(k, t); });
  }
  rules.forEach((rule, r) => {
    const n = g[rule] ?? 0;
    for (const t of [...newest[r].values()].sort((a, b) => b - a).slice(0, n)) keep.add(t);
  });
  return keep;
}

describe('retention grid', () => {
  it('a year of 30 s runs, pruned after every run, keeps exactly what the rules say; dropped points merge into kept ones', () => {
    const grid: RetentionGrid = { within: 10 * 60 * S, last: 3, hourly: 24, daily: 30, weekly: 8, monthly: 12, yearly: 2 };
    // 2025-12-20 (a year boundary and odd week boundaries inside), 30 s apart, with one gap (an outage of 3 h).
    const start = Date.UTC(2025, 11, 20, 7, 3, 11);
    const all: number[] = [];
    let chain: number[] = [];
    const checks = new Set([2880, 200_000, 525_600, 800_000, 1_051_199].map((i) => start + i * 30 * S));
    let checked = 0;
    let maxLen = 0;
    for (let i = 0; i < 365 * 2880; i++) {
      const now = start + i * 30 * S;
      if (i >= 100_000 && i < 100_360) continue; // outage: no run
      all.push(now);
      chain.push(now);
      const kept = planRetention(chain, grid, now);
      if (!kept[kept.length - 1]) throw new Error('the newest point is not kept');
      const groups = mergeGroups(chain, kept);
      // Every dropped point is in exactly one group (consecutive, in order), and each group ends at a kept point.
      const keptSet = new Set(chain.filter((_, j) => kept[j]));
      let covered = 0;
      for (const gr of groups) {
        if (!keptSet.has(gr[gr.length - 1])) throw new Error('a merge group does not end at a kept point');
        for (let k = 0; k < gr.length - 1; k++) if (keptSet.has(gr[k]) || gr[k] >= gr[k + 1]) throw new Error('a merge group is not a run of dropped points before a kept one');
        covered += gr.length - 1;
      }
      chain = chain.filter((_, j) => kept[j]);
      if (covered !== kept.length - chain.length) throw new Error(`dropped ${kept.length - chain.length} points but merged ${covered}`);
      maxLen = Math.max(maxLen, chain.length);
      if (checks.has(now)) {
        expect(new Set(chain)).toEqual(reference(all, grid, now));
        checked++;
      }
    }
    expect(checked).toBe(5);
    // Bounded: within 10 min (20) + last 3 + 24 + 30 + 8 + 12 + 2, with overlaps.
    expect(maxLen).toBeLessThanOrEqual(20 + 3 + 24 + 30 + 8 + 12 + 2 + 1);
    expect(chain.length).toBeGreaterThan(60);
  });

  it('periods without a point do not use a slot; zero counts keep nothing; an empty chain keeps nothing', () => {
    const t0 = Date.UTC(2026, 0, 1);
    const times = [t0, t0 + 10 * D, t0 + 10 * D + H, t0 + 40 * D];
    expect(planRetention(times, { daily: 2 }, t0 + 41 * D)).toEqual([false, false, true, true]);
    expect(planRetention(times, { daily: 3 }, t0 + 41 * D)).toEqual([true, false, true, true]);
    expect(planRetention(times, { hourly: 0 }, t0 + 41 * D)).toEqual([false, false, false, true]);
    expect(planRetention([], { last: 3 }, t0)).toEqual([]);
    // ISO weeks start on Monday: 2026-01-04 is a Sunday, 2026-01-05 a Monday.
    const sun = Date.UTC(2026, 0, 4, 12);
    expect(planRetention([sun - H, sun, sun + D], { weekly: 1 }, sun + D)).toEqual([false, false, true]);
    expect(planRetention([sun - H, sun, sun + D], { weekly: 2 }, sun + D)).toEqual([false, true, true]);
  });
});
