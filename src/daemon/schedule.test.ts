// Calendars are in the daemon's local time zone: this file pins it.
process.env.TZ = 'UTC';
import { describe, expect, it } from 'vitest';
import { nextSlot, nominalMs, parseCalendar, rescheduled, scheduleKey, type Schedule } from './schedule.js';

const T = (iso: string): number => Date.parse(iso);
const every = (ms: number): Schedule => ({ kind: 'interval', ms });
const cal = (expr: string): Schedule => {
  const c = parseCalendar(expr);
  if (!c.schedule) throw new Error(c.error);
  return c.schedule;
};

describe('interval schedules', () => {
  it('a run longer than its interval skips the slots it passed (counted), and never queues them', () => {
    expect(nextSlot(0, every(30_000), 10_000)).toEqual({ next: 30_000, missed: 0 });
    expect(nextSlot(0, every(30_000), 30_000)).toEqual({ next: 30_000, missed: 0 });
    expect(nextSlot(0, every(30_000), 30_001)).toEqual({ next: 60_000, missed: 1 });
    expect(nextSlot(0, every(30_000), 95_000)).toEqual({ next: 120_000, missed: 3 });
  });
  it('a start or a reload that changes the interval: the next run counts from the last attempt (at once when passed)', () => {
    const T0 = T('2026-05-01T12:00:00Z');
    expect(rescheduled(undefined, every(60_000), T0)).toBe(T0);
    expect(rescheduled(T0 - 10_000, every(60_000), T0)).toBe(T0 + 50_000);
    expect(rescheduled(T0 - 3_600_000, every(60_000), T0)).toBe(T0);
  });
});

describe('calendar schedules', () => {
  it('parses five-field expressions and macros; anything else says why', () => {
    expect(cal(' 30  2 * * * ')).toEqual({ kind: 'calendar', expr: '30 2 * * *' });
    expect(cal('@daily').kind).toBe('calendar');
    expect(parseCalendar('61 * * * *').error).toMatch(/61/);
    expect(parseCalendar('*/5 * * * * *').error).toBe('a calendar has five fields (minute hour day-of-month month day-of-week), not 6');
    expect(parseCalendar('@sometimes').error).toMatch(/^unknown macro @sometimes/);
    expect(scheduleKey(cal('0 * * * *'))).not.toBe(scheduleKey(cal('30 * * * *')));
    expect(scheduleKey(every(5000))).toBe('5000ms');
  });
  it('the next slot is the next fire time; fire times a long run passed over are skipped and counted', () => {
    const daily = cal('30 2 * * *');
    // a run of the 02:30 slot that took 10 minutes: next is tomorrow 02:30
    expect(nextSlot(T('2026-12-05T02:30:00Z'), daily, T('2026-12-05T02:40:00Z'))).toEqual({ next: T('2026-12-06T02:30:00Z'), missed: 0 });
    // a run of the 02:30 slot that went on past two more fire times
    expect(nextSlot(T('2026-12-05T02:30:00Z'), daily, T('2026-12-07T03:00:00Z'))).toEqual({ next: T('2026-12-08T02:30:00Z'), missed: 2 });
    const quarter = cal('*/15 * * * 1-5');
    // Friday 23:45 -> Monday 00:00 (weekdays only)
    expect(nextSlot(T('2026-12-04T23:45:00Z'), quarter, T('2026-12-04T23:46:00Z'))).toEqual({ next: T('2026-12-07T00:00:00Z'), missed: 0 });
  });
  it('a start: never run, at once; a fire time missed while stopped, one catch-up run at once; else the next fire time', () => {
    const daily = cal('@daily');
    const now = T('2026-12-05T14:00:00Z');
    expect(rescheduled(undefined, daily, now)).toBe(now);
    expect(rescheduled(T('2026-12-04T23:00:00Z'), daily, now)).toBe(now);
    expect(rescheduled(T('2026-12-05T00:00:00Z'), daily, now)).toBe(T('2026-12-06T00:00:00Z'));
    expect(rescheduled(T('2026-12-05T09:00:00Z'), daily, now)).toBe(T('2026-12-06T00:00:00Z'));
  });
  it('the nominal interval (lag thresholds) is the longest gap between fire times', () => {
    expect(nominalMs(cal('@hourly'), T('2026-12-05T14:00:00Z'))).toBe(3_600_000);
    // weekdays at 02:30: Friday to Monday is three days
    expect(nominalMs(cal('30 2 * * 1-5'), T('2026-12-05T14:00:00Z'))).toBe(3 * 86_400_000);
    expect(nominalMs(every(30_000))).toBe(30_000);
  });
});
