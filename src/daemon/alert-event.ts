/**
 * The alert event (docs/ALERTS.md, "Events"): the names, their severities and families, the JSON every
 * channel receives, and how it is rendered for e-mail and for an exec hook's environment.
 */
export const EVENT_VERSION = 1;

export type Severity = 'info' | 'ok' | 'warning' | 'critical';
/** A kind of condition: one condition per family, subject (and key) at a time. */
export type Family = 'run' | 'lag' | 'pool' | 'metadata_snapshot';

/**
 * Every event: its default severity, and for the events of a condition its family (one condition per
 * family and subject) and whether it is the family's "resolved" event.
 */
export const EVENTS = {
  run_failed: { severity: 'warning', family: 'run' },
  verify_mismatch: { severity: 'critical', family: 'run' },
  chain_broken: { severity: 'critical', family: 'run' },
  run_recovered: { severity: 'ok', family: 'run', resolves: true },
  lag_warning: { severity: 'warning', family: 'lag' },
  lag_critical: { severity: 'critical', family: 'lag' },
  lag_ok: { severity: 'ok', family: 'lag', resolves: true },
  pool_warning: { severity: 'warning', family: 'pool' },
  pool_critical: { severity: 'critical', family: 'pool' },
  pool_ok: { severity: 'ok', family: 'pool', resolves: true },
  metadata_snapshot_stuck: { severity: 'warning', family: 'metadata_snapshot' },
  metadata_snapshot_released: { severity: 'ok', family: 'metadata_snapshot', resolves: true },
  daemon_started: { severity: 'info' },
  daemon_stopped: { severity: 'info' },
  test: { severity: 'info' },
} as const satisfies Record<string, { severity: Severity; family?: Family; resolves?: true }>;

export type EventName = keyof typeof EVENTS;
/** The events of a condition (a family), resolved events included. */
export type ConditionEvent = { [K in EventName]: (typeof EVENTS)[K] extends { family: string } ? K : never }[EventName];
/** The events `emit` takes: every event that does not resolve a condition. */
export type OneOffEvent = { [K in EventName]: (typeof EVENTS)[K] extends { resolves: true } ? never : K }[EventName];

/** Events sent every time (not limited to one per repeat_after). */
export const UNLIMITED: ReadonlySet<EventName> = new Set(['daemon_started', 'daemon_stopped', 'test']);

export const RESOLVED: Record<Family, ConditionEvent> = { run: 'run_recovered', lag: 'lag_ok', pool: 'pool_ok', metadata_snapshot: 'metadata_snapshot_released' };

export interface AlertSubject {
  job?: string;
  volume?: string;
  /** VG/POOL */
  pool?: string;
}

export type AlertValues = Record<string, number | string | boolean | null>;

/** One alert as every channel receives it (the webhook body; docs/ALERTS.md "Event"). */
export interface AlertEvent {
  version: number;
  id: string;
  event: EventName;
  severity: Severity;
  /** firing: a condition started, changed level, or still holds (reminder); resolved: it ended; event: a one-off */
  status: 'firing' | 'resolved' | 'event';
  reminder: boolean;
  /** when the condition started (null for a one-off) */
  since: string | null;
  time: string;
  host: string;
  job: string | null;
  volume: string | null;
  pool: string | null;
  values: AlertValues;
  message: string;
  /** one-offs: how many of the same event and subject were held back since the last one sent */
  suppressed: number;
}


/** The one line naming an event's subject: "vms vg0/vm1", "pool vg0/pool0". */
export function subjectText(e: Pick<AlertEvent, 'job' | 'volume' | 'pool'>): string {
  return [e.job, e.volume, e.pool ? `pool ${e.pool}` : null].filter((x) => x).join(' ');
}


const SEVERITY_WORD: Record<Severity, string> = { info: 'INFO', ok: 'OK', warning: 'WARNING', critical: 'CRITICAL' };

/** "[thinarchive] WARNING lag_warning (reminder): vms vg0/vm1 on backup1" */
export function emailSubject(e: AlertEvent): string {
  const what = subjectText(e);
  return `[thinarchive] ${SEVERITY_WORD[e.severity]} ${e.event}${e.reminder ? ' (reminder)' : ''}: ${what ? `${what} on ` : ''}${e.host}`;
}

/** The message, then one "field: value" line per field and measured value. */
export function emailText(e: AlertEvent): string {
  const rows: [string, string][] = [
    ['event', e.event], ['severity', e.severity], ['status', `${e.status}${e.reminder ? ' (reminder)' : ''}`], ['host', e.host],
    ...(['job', 'volume', 'pool'] as const).filter((k) => e[k] !== null).map((k) => [k, e[k]!] as [string, string]),
    ...(e.since ? [['since', e.since] as [string, string]] : []), ['time', e.time],
    ...Object.entries(e.values).map(([k, v]) => [k, String(v)] as [string, string]),
    ...(e.suppressed ? [['suppressed', String(e.suppressed)] as [string, string]] : []), ['id', e.id],
  ];
  const w = Math.max(...rows.map(([k]) => k.length)) + 1;
  return `${e.message}\n\n${rows.map(([k, v]) => `${`${k}:`.padEnd(w)} ${v}`).join('\n')}\n`;
}

/** lagSeconds -> LAG_SECONDS */
export function envName(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/[^A-Za-z0-9]+/g, '_').replace(/^_|_$/g, '').toUpperCase();
}

/** The environment of an exec hook: THINARCHIVE_EVENT, _SEVERITY, _MESSAGE, ... and THINARCHIVE_VALUE_<NAME> per value. */
export function eventEnv(e: AlertEvent): Record<string, string> {
  const env: Record<string, string> = {
    THINARCHIVE_EVENT: e.event, THINARCHIVE_SEVERITY: e.severity, THINARCHIVE_STATUS: e.status, THINARCHIVE_REMINDER: e.reminder ? '1' : '0',
    THINARCHIVE_MESSAGE: e.message, THINARCHIVE_HOST: e.host, THINARCHIVE_TIME: e.time, THINARCHIVE_SINCE: e.since ?? '',
    THINARCHIVE_JOB: e.job ?? '', THINARCHIVE_VOLUME: e.volume ?? '', THINARCHIVE_POOL: e.pool ?? '', THINARCHIVE_ID: e.id,
    THINARCHIVE_SUPPRESSED: String(e.suppressed), THINARCHIVE_VALUES: JSON.stringify(e.values), THINARCHIVE_EVENT_JSON: JSON.stringify(e),
  };
  for (const [k, v] of Object.entries(e.values)) env[`THINARCHIVE_VALUE_${envName(k)}`] = v === null ? '' : String(v);
  return env;
}
