/**
 * When a job's units run (`every:` in the configuration, docs/DAEMON.md "Schedules"): an interval
 * (`30s`, `5m`, `1h`) or a calendar, as a five-field cron expression (`30 2 * * *`, `*\/15 * * * 1-5`)
 * or a macro (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`), in the daemon's local time
 * zone (TZ). Parsing and the calendar arithmetic are cron-parser's.
 */
import { CronExpressionParser } from 'cron-parser';

export type Schedule = { kind: 'interval'; ms: number } | { kind: 'calendar'; expr: string };

const MACROS = new Set(['@yearly', '@annually', '@monthly', '@weekly', '@daily', '@hourly']);
/** How many fire times the nominal interval of a calendar looks at (a week of a weekday schedule and more). */
const NOMINAL_LOOKAHEAD = 32;
/** Slots counted as skipped after one long run at most (a run longer than this many slots is counted as this many). */
const MAX_MISSED = 100_000;

/** The calendar form, or an error message (what cron-parser says is wrong). */
export function parseCalendar(text: string): { schedule?: Schedule; error?: string } {
  const expr = text.trim().replace(/\s+/g, ' ');
  if (expr.startsWith('@')) {
    if (!MACROS.has(expr)) return { error: `unknown macro ${expr} (use @hourly, @daily, @weekly, @monthly or @yearly)` };
  } else if (expr.split(' ').length !== 5) {
    return { error: `a calendar has five fields (minute hour day-of-month month day-of-week), not ${expr.split(' ').length}` };
  }
  try {
    CronExpressionParser.parse(expr).next();
  } catch (e) {
    return { error: (e as Error).message };
  }
  return { schedule: { kind: 'calendar', expr } };
}

function fireAfter(expr: string, t: number): number {
  return CronExpressionParser.parse(expr, { currentDate: new Date(t) }).next().getTime();
}

function fireAtOrBefore(expr: string, t: number): number {
  // prev() is strictly before its current date: from t + 1 ms, a fire time at t itself counts
  return CronExpressionParser.parse(expr, { currentDate: new Date(t + 1) }).prev().getTime();
}

/** The interval of an interval; of a calendar, the longest gap between its next fire times (lag thresholds scale with it). */
export function nominalMs(s: Schedule, now = Date.now()): number {
  if (s.kind === 'interval') return s.ms;
  const it = CronExpressionParser.parse(s.expr, { currentDate: new Date(now) });
  let prev = it.next().getTime();
  let gap = 0;
  for (let i = 0; i < NOMINAL_LOOKAHEAD; i++) {
    const t = it.next().getTime();
    gap = Math.max(gap, t - prev);
    prev = t;
  }
  return gap;
}

/** Its identity, to tell whether a reload changed it. */
export function scheduleKey(s: Schedule): string {
  return s.kind === 'interval' ? `${s.ms}ms` : s.expr;
}

/**
 * After a run of the slot `slot`: the next slot after `now`, and how many slots the run passed over
 * (they are skipped and counted, never queued).
 */
export function nextSlot(slot: number, s: Schedule, now: number): { next: number; missed: number } {
  if (s.kind === 'interval') {
    let next = slot + s.ms;
    let missed = 0;
    if (now > next) {
      missed = Math.ceil((now - next) / s.ms);
      next += missed * s.ms;
    }
    return { next, missed };
  }
  let next = fireAfter(s.expr, slot);
  if (now <= next) return { next, missed: 0 };
  // the fire times the run passed over: counted one by one up to a bound, then the next after now
  let missed = 0;
  while (next < now && missed < MAX_MISSED) {
    missed++;
    next = fireAfter(s.expr, next);
  }
  if (next < now) next = fireAfter(s.expr, now);
  return { next, missed };
}

/**
 * The first run of a unit (at a start or a reload that changed its schedule), from its last attempt:
 * never run, at once (the chain starts). An interval: `ms` after the last attempt began (at once when
 * that has passed). A calendar: at once when a fire time passed since the last attempt (a start
 * after a stop catches up with one run, not one per missed time), else at the next fire time.
 */
export function rescheduled(lastAttemptMs: number | undefined, s: Schedule, now: number): number {
  if (lastAttemptMs === undefined) return now;
  if (s.kind === 'interval') return Math.max(now, lastAttemptMs + s.ms);
  return fireAtOrBefore(s.expr, now) > lastAttemptMs ? now : fireAfter(s.expr, now);
}
