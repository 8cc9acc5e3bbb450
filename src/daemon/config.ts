/**
 * The daemon's configuration (docs/DAEMON.md, "Configuration"): YAML, validated against a JSON Schema
 * with ajv, then checked for what a schema cannot say (durations, volume names, unique job names).
 * Every problem carries the line it is on; `checkConfig` returns them all, `loadConfig` throws one
 * CONFIG_INVALID error listing them.
 *
 * Why ajv + JSON Schema (not zod): the schema is plain data that can be published for editors, ajv
 * reports every error at once with its instance path (which we map back to a YAML line through the
 * document's source ranges), and `additionalProperties: false` names the unknown key.
 */
import { readFile } from 'node:fs/promises';
import { Ajv, type ErrorObject } from 'ajv';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { DEFAULT_LEASE_TTL_MS, GROUP_NAME_RE, MAX_GROUP_MEMBERS, MIN_LEASE_TTL_MS, quiesceSpecOf, resolveThresholds, type PoolWatchSettings, type QuiesceSpec } from '../api/index.js';
import { ThinarchiveError } from '../errors.js';
import { defaultStateDir } from '../fsutil.js';
import { parseDuration } from '../units.js';
import { nominalMs, parseCalendar, type Schedule } from './schedule.js';
import { DEFAULT_CONFIG } from './config-path.js';

export { DEFAULT_CONFIG };
/** How often the daemon samples its pools when `pool_sample_every` is not set. */
export const DEFAULT_POOL_SAMPLE_MS = 60_000;
/** How many units run at once when `max_concurrent_runs` is not set. */
export const DEFAULT_MAX_CONCURRENT_RUNS = 4;

export interface KeepRules {
  /** milliseconds */
  within?: number;
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
}

/** The placeholders of `apply_to.target`: a volume's VG and LV, and its name (the LV, or an image's file name). */
export const TARGET_PLACEHOLDERS = ['vg', 'lv', 'name'];

/** The target of one volume: `apply_to.target` with {vg}, {lv}, {name} filled in. */
export function targetOf(template: string, volume: string): string {
  const image = volume.startsWith('/');
  const [vg, lv] = image ? ['', ''] : volume.split('/');
  const name = image ? volume.slice(volume.lastIndexOf('/') + 1) : lv!;
  return template.replace(/\{(vg|lv|name)\}/g, (_, k: string) => (k === 'vg' ? vg! : k === 'lv' ? lv! : name));
}

export interface ApplyTo {
  /** ssh://[user@]host[:port]: replicate through a remote apply; absent: apply to a local target from the store */
  host?: string;
  target: string;
  command?: string;
  args: string[];
  /** local targets: `verify --against --changed-only` after each apply (default true) */
  verify: boolean;
}

/** One source of a job: a thin LV (or a pattern of them) or an image file. */
export type SourceSpec = { kind: 'volume'; pattern: string } | { kind: 'image'; path: string };

/**
 * A group job (`group:`): every run is one group send of all the job's volumes (one consistency-group
 * point, docs/LVM.md section 9), retention over whole points (`prune --group`), scheduled verification
 * of whole points (`verify --group`).
 */
export interface GroupJob {
  /** the group's name in the store (default: the job's name) */
  name: string;
  /** the members, VG/LV each, in the configured order */
  volumes: string[];
  /** how to quiesce; absent: the device-mapper devices stacked on the members are suspended */
  quiesce?: Exclude<QuiesceSpec, { method: 'dm-suspend' }>;
  /** milliseconds: the watchdog's bound on the quiesce window (send --freeze-timeout) */
  freezeTimeoutMs?: number;
}

/** The one unit of a group job: its volume label in status, metrics and the state file (the members joined by "+"). */
export function groupUnitVolume(g: GroupJob): string {
  return g.volumes.join('+');
}

/** A job's scheduled verification (`verify:`). */
export interface VerifySchedule {
  /** milliseconds */
  every: number;
  /** undefined: full */
  samplePercent?: number;
}

export interface JobConfig {
  name: string;
  sources: SourceSpec[];
  /** `every`: an interval or a calendar (schedule.ts) */
  schedule: Schedule;
  /** milliseconds: the interval, or a calendar's longest gap between fire times (lag thresholds scale with it) */
  every: number;
  to?: string;
  keep?: KeepRules;
  applyTo?: ApplyTo;
  verify?: VerifySchedule;
  /** a group job: one unit, a group send of all the volumes each run */
  group?: GroupJob;
  level?: number;
  retry: { attempts: number; initialMs: number; maxMs: number };
  /** milliseconds: lag_warning and lag_critical alerts (docs/ALERTS.md); default 3 and 10 times `every` */
  lagWarningMs: number;
  lagCriticalMs: number;
  /** the line of the job in the file */
  line: number;
}

/** `alerts` (docs/ALERTS.md): the channels and the reminder interval. */
export interface AlertsConfig {
  email?: { to: string[]; from: string; smtp: string };
  webhook?: { url: string; timeoutMs: number };
  /** an absolute path, run without a shell */
  exec?: string;
  ping?: { start?: string; success?: string; fail?: string };
  /** milliseconds: a condition that still holds is sent again after this long */
  repeatAfterMs: number;
}

export interface DaemonConfig {
  path: string;
  /** at least one of the two */
  metrics?: { listen?: string; textfile?: string };
  alerts?: AlertsConfig;
  stateDir?: string;
  sshOptions: string[];
  s3Endpoint?: string;
  /** Encrypted archives (README "Encrypted archives"): keys by file only, read at each run. */
  keys: { encryptTo: string[]; recipientsFiles: string[]; identityFiles: string[]; passphraseFile?: string };
  /** The ttl of the chain leases the daemon holds (milliseconds; renewed every third of it). */
  leaseTtlMs: number;
  /** the pool watch and guard, per pool ("VG/POOL") and "default" (check, send, the daemon's pool sampling) */
  pools: Record<string, PoolWatchSettings>;
  /** How often the daemon samples its pools (milliseconds; `pool_sample_every`, default 1 minute). */
  poolSampleMs: number;
  /** How many units may run at once (`max_concurrent_runs`, default 4); the others wait their turn. */
  maxConcurrentRuns: number;
  jobs: JobConfig[];
}

export interface ConfigProblem {
  line: number;
  message: string;
}

const DURATION_RE = /^\s*\d+\s*[smhdwSMHDW]\s*$/;
const duration = { type: 'string', pattern: DURATION_RE.source };
/** `every`: a duration, or what may be a calendar (a macro, five fields); schedule.ts checks the calendar itself. */
const scheduleText = { type: 'string', pattern: '^\\s*(\\d+\\s*[smhdwSMHDW]|@[a-z]+|\\S+(\\s+\\S+){4})\\s*$' };
const count = { type: 'integer', minimum: 0 };
const httpUrl = { type: 'string', pattern: '^https?://[^\\s/?#]+' };
const percent = { type: 'number', minimum: 0, maximum: 100 };
const usagePair = { type: 'object', additionalProperties: false, minProperties: 1, properties: { data: percent, metadata: percent } };
/** `default` or VG/POOL (LVM names). */
const POOL_KEY = '^(default|[A-Za-z0-9+_.][A-Za-z0-9+_.-]*/[A-Za-z0-9+_.][A-Za-z0-9+_.-]*)$';
const SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['jobs'],
  properties: {
    state_dir: { type: 'string', minLength: 1 },
    ssh_options: { type: 'array', items: { type: 'string' } },
    s3_endpoint: { type: 'string', minLength: 1 },
    encrypt_to: { type: 'array', items: { type: 'string', pattern: '^age1[02-9ac-hj-np-z]+$' } },
    recipients_files: { type: 'array', items: { type: 'string', pattern: '^/' } },
    identity_files: { type: 'array', items: { type: 'string', pattern: '^/' } },
    passphrase_file: { type: 'string', pattern: '^/' },
    lease_ttl: duration,
    pool_sample_every: duration,
    max_concurrent_runs: { type: 'integer', minimum: 1 },
    pools: {
      type: 'object',
      propertyNames: { pattern: POOL_KEY },
      additionalProperties: {
        type: 'object', additionalProperties: false,
        properties: { warn: usagePair, crit: usagePair, require_autoextend: { type: 'boolean' }, held_metadata_snapshot: duration },
      },
    },
    metrics: {
      type: 'object', additionalProperties: false, minProperties: 1,
      properties: {
        listen: { type: 'string', pattern: '^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9.-]+):\\d{1,5}$' },
        textfile: { type: 'string', pattern: '^/.*[^/]\\.prom$' },
      },
    },
    alerts: {
      type: 'object', additionalProperties: false,
      properties: {
        email: {
          type: 'object', additionalProperties: false, required: ['to', 'from', 'smtp'],
          properties: {
            to: { oneOf: [{ type: 'string', minLength: 3 }, { type: 'array', minItems: 1, items: { type: 'string', minLength: 3 } }] },
            from: { type: 'string', minLength: 3 },
            smtp: { type: 'string', pattern: '^smtps?://[^\\s/?#]+' },
          },
        },
        webhook: { type: 'object', additionalProperties: false, required: ['url'], properties: { url: httpUrl, timeout: duration } },
        exec: { type: 'string', pattern: '^/' },
        ping: { type: 'object', additionalProperties: false, minProperties: 1, properties: { start: httpUrl, success: httpUrl, fail: httpUrl } },
        repeat_after: duration,
      },
    },
    jobs: {
      type: 'array', minItems: 1,
      items: {
        type: 'object', additionalProperties: false, required: ['name', 'volumes', 'every'],
        properties: {
          name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$' },
          volumes: {
            type: 'array', minItems: 1,
            items: {
              oneOf: [
                { type: 'string', pattern: '^[A-Za-z0-9_.+*?\\[\\]-]+/[A-Za-z0-9_.+*?\\[\\]-]+$' },
                { type: 'object', additionalProperties: false, required: ['image'], properties: { image: { type: 'string', pattern: '^/' } } },
              ],
            },
          },
          every: scheduleText,
          to: { type: 'string', minLength: 1 },
          level: { type: 'integer', minimum: 1, maximum: 19 },
          keep: {
            type: 'object', additionalProperties: false, minProperties: 1,
            properties: { within: duration, last: count, hourly: count, daily: count, weekly: count, monthly: count, yearly: count },
          },
          apply_to: {
            type: 'object', additionalProperties: false, required: ['target'],
            properties: {
              host: { type: 'string', pattern: '^ssh://' },
              target: { type: 'string', minLength: 1 },
              command: { type: 'string', minLength: 1 },
              args: { type: 'array', items: { type: 'string' } },
              verify: { type: 'boolean' },
            },
          },
          verify: {
            type: 'object', additionalProperties: false, required: ['every'],
            properties: { every: duration, sample: { type: 'string', pattern: '^\\s*(full|\\d+(\\.\\d+)?\\s*%)\\s*$' } },
          },
          retry: {
            type: 'object', additionalProperties: false,
            properties: { attempts: { type: 'integer', minimum: 1, maximum: 100 }, initial: duration, max: duration },
          },
          lag_warning: duration,
          lag_critical: duration,
          group: {
            type: 'object', additionalProperties: false,
            properties: {
              name: { type: 'string', pattern: GROUP_NAME_RE.source },
              freeze: { type: 'array', minItems: 1, items: { type: 'string', pattern: '^/' } },
              freeze_cmd: { type: 'string', minLength: 1 },
              thaw_cmd: { type: 'string', minLength: 1 },
              virsh_domain: { type: 'string', minLength: 1 },
              freeze_timeout: duration,
            },
          },
        },
      },
    },
  },
} as const;

const ajv = new Ajv({ allErrors: true, strict: true });
const validate = ajv.compile(SCHEMA);

/** The line (1-based) of the node at `path` (its key for `key`), or of the nearest ancestor that exists. */
function lineOf(doc: Document, lc: LineCounter, path: (string | number)[], key?: string): number {
  let node: unknown = doc.contents;
  let at: number | undefined = (node as Node | null)?.range?.[0];
  const steps = key === undefined ? path : [...path, key];
  for (let i = 0; i < steps.length; i++) {
    const step = steps[i];
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(step));
      if (!pair) break;
      // For the unknown key itself, point at the key.
      at = (i === steps.length - 1 && key !== undefined ? (pair.key as Node).range?.[0] : ((pair.value as Node | null)?.range?.[0] ?? (pair.key as Node).range?.[0])) ?? at;
      node = pair.value;
    } else if (isSeq(node)) {
      const item = node.items[Number(step)] as Node | undefined;
      if (!item) break;
      at = item.range?.[0] ?? at;
      node = item;
    } else break;
  }
  return at === undefined ? 1 : lc.linePos(at).line;
}

function pathOf(instancePath: string): (string | number)[] {
  return instancePath.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~')).map((s) => (/^\d+$/.test(s) ? Number(s) : s));
}

function describe(e: ErrorObject, path: (string | number)[]): string {
  const where = path.length ? path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${p}`)).join('').replace(/^\./, '') : 'the file';
  switch (e.keyword) {
    case 'propertyNames': return `${where}: ${JSON.stringify((e.params as { propertyName: string }).propertyName)} is neither "default" nor VG/POOL`;
    case 'additionalProperties': return `unknown key "${(e.params as { additionalProperty: string }).additionalProperty}"${path.length ? ` in ${where}` : ''}`;
    case 'required': return `${where}: missing key "${(e.params as { missingProperty: string }).missingProperty}"`;
    case 'pattern': {
      const pattern = (e.params as { pattern: string }).pattern;
      if (path[path.length - 1] === 'sample') return `${where}: "full" or a percentage (examples: full, 5%, 0.5%)`;
      if (path[path.length - 1] === 'textfile') return `${where}: an absolute path ending in .prom (node_exporter's textfile collector reads *.prom)`;
      if (pattern === duration.pattern) return `${where}: not a duration (examples: 30s, 5m, 1h, 1d)`;
      if (pattern === scheduleText.pattern) return `${where}: neither a duration (examples: 30s, 5m, 1h, 1d) nor a calendar (a cron expression such as "30 2 * * *", or @hourly, @daily, @weekly, @monthly)`;
      if (path.includes('volumes')) return `${where}: not VG/LV (patterns allowed: vg0/vm-*)`;
      if (pattern === httpUrl.pattern) return `${where}: not an http:// or https:// URL`;
      if (pattern.startsWith('^smtps?')) return `${where}: not an smtp:// or smtps:// URL (smtp://[user:pass@]host[:port])`;
      if (pattern === '^/') return `${where}: not an absolute path`;
      if (pattern === GROUP_NAME_RE.source) return `${where}: a group name is 1 to 64 letters, digits and _ . + - (starting with a letter or digit)`;
      return `${where}: ${e.message}`;
    }
    case 'oneOf': return `${where}: an address, or a list of addresses`;
    default: return `${where}: ${e.message}`;
  }
}

/** Every problem of the YAML text, with its line; an empty list when it is valid. */
export function checkConfigText(text: string): { problems: ConfigProblem[]; config?: Omit<DaemonConfig, 'path'> } {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const problems: ConfigProblem[] = [];
  for (const e of [...doc.errors, ...doc.warnings]) problems.push({ line: lc.linePos(e.pos[0]).line, message: e.message.split('\n')[0] });
  if (doc.errors.length) return { problems };
  const data = doc.toJS() as unknown;
  if (!validate(data)) {
    // oneOf failures repeat the errors of each branch: report the branch errors of a string item only once.
    const seen = new Set<string>();
    for (const e of validate.errors ?? []) {
      const path = pathOf(e.instancePath);
      const emailTo = path[0] === 'alerts' && path[1] === 'email' && path[2] === 'to';
      if (emailTo ? e.keyword !== 'oneOf' : e.keyword === 'oneOf' || (path.includes('volumes') && e.keyword === 'type')) continue;
      if ((e as ErrorObject & { propertyName?: string }).propertyName !== undefined && e.keyword !== 'propertyNames') continue; // said by its propertyNames error
      const key = e.keyword === 'additionalProperties' ? (e.params as { additionalProperty: string }).additionalProperty
        : e.keyword === 'propertyNames' ? (e.params as { propertyName: string }).propertyName : undefined;
      const p = { line: lineOf(doc, lc, path, key), message: describe(e, path) };
      const id = `${p.line}\0${p.message}`;
      if (!seen.has(id)) problems.push(p);
      seen.add(id);
    }
    problems.sort((a, b) => a.line - b.line);
    return { problems };
  }
  const raw = data as Record<string, any>;
  const names = new Map<string, number>();
  const jobs: JobConfig[] = [];
  const ms = (path: (string | number)[], v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = parseDuration(v);
    if (n <= 0) problems.push({ line: lineOf(doc, lc, path), message: `${path.join('.')}: must be more than 0` });
    return n;
  };
  raw.jobs.forEach((j: Record<string, any>, i: number) => {
    const line = lineOf(doc, lc, ['jobs', i]);
    if (names.has(j.name)) problems.push({ line: lineOf(doc, lc, ['jobs', i, 'name']), message: `job name "${j.name}" is used twice (also on line ${names.get(j.name)})` });
    names.set(j.name, lineOf(doc, lc, ['jobs', i, 'name']));
    const sources: SourceSpec[] = j.volumes.map((v: string | { image: string }) => (typeof v === 'string' ? { kind: 'volume', pattern: v } : { kind: 'image', path: v.image }));
    const applyTo: ApplyTo | undefined = j.apply_to
      ? { host: j.apply_to.host, target: j.apply_to.target, command: j.apply_to.command, args: j.apply_to.args ?? [], verify: j.apply_to.verify ?? true }
      : undefined;
    if (j.to === undefined && !applyTo) problems.push({ line, message: `jobs[${i}] (${j.name}): say where points go: "to" (a store) and/or "apply_to"` });
    if (applyTo && !applyTo.host && j.to === undefined) problems.push({ line: lineOf(doc, lc, ['jobs', i, 'apply_to']), message: `jobs[${i}].apply_to: a local target (no host) is applied from the job's store: add "to"` });
    if (applyTo?.host && j.to !== undefined) problems.push({ line: lineOf(doc, lc, ['jobs', i, 'apply_to', 'host']), message: `jobs[${i}].apply_to.host: a job sends either to a store or into a remote apply; make two jobs (each keeps its own snapshot chain)` });
    if (applyTo?.host && sources.some((s) => s.kind === 'image')) problems.push({ line: lineOf(doc, lc, ['jobs', i, 'volumes']), message: `jobs[${i}]: image sources need a store ("to"), not apply_to.host` });
    if (applyTo) {
      const tline = lineOf(doc, lc, ['jobs', i, 'apply_to', 'target']);
      const unknown = [...applyTo.target.matchAll(/\{([^}]*)\}/g)].map((m) => m[1]).filter((x) => !TARGET_PLACEHOLDERS.includes(x!));
      if (unknown.length) problems.push({ line: tline, message: `jobs[${i}].apply_to.target: unknown placeholder {${unknown[0]}} (there are {vg}, {lv}, {name})` });
      const many = sources.length > 1 || sources.some((s) => s.kind === 'volume' && /[*?[]/.test(s.pattern));
      if (many && !/\{(lv|name)\}/.test(applyTo.target)) problems.push({ line: tline, message: `jobs[${i}].apply_to.target: the job has several volumes: name each one's target with {lv} or {name}, e.g. vg2/{lv}` });
      if (/\{(vg|lv)\}/.test(applyTo.target) && sources.some((s) => s.kind === 'image')) problems.push({ line: tline, message: `jobs[${i}].apply_to.target: {vg} and {lv} are for VG/LV volumes; use {name} for images` });
    }
    if (j.keep && j.to === undefined) problems.push({ line: lineOf(doc, lc, ['jobs', i, 'keep']), message: `jobs[${i}].keep: retention applies to a store: add "to"` });
    const keep: KeepRules | undefined = j.keep ? {
      within: ms(['jobs', i, 'keep', 'within'], j.keep.within), last: j.keep.last, hourly: j.keep.hourly, daily: j.keep.daily,
      weekly: j.keep.weekly, monthly: j.keep.monthly, yearly: j.keep.yearly,
    } : undefined;
    let schedule: Schedule = { kind: 'interval', ms: 60_000 };
    if (DURATION_RE.test(j.every)) schedule = { kind: 'interval', ms: ms(['jobs', i, 'every'], j.every)! };
    else {
      const c = parseCalendar(j.every);
      if (c.schedule) schedule = c.schedule;
      else problems.push({ line: lineOf(doc, lc, ['jobs', i, 'every']), message: `jobs[${i}].every: "${j.every}" is neither a duration (30s, 5m, 1h) nor a calendar (a cron expression such as "30 2 * * *", or @hourly, @daily, @weekly, @monthly): ${c.error}` });
    }
    const every = nominalMs(schedule);
    let verify: VerifySchedule | undefined;
    if (j.verify) {
      if (j.to === undefined && !j.apply_to?.host) problems.push({ line: lineOf(doc, lc, ['jobs', i, 'verify']), message: `jobs[${i}].verify: scheduled verification checks the job's store (and its local replica) or its remote replica (apply_to.host): add "to" or "apply_to"` });
      const sample = String(j.verify.sample ?? 'full').trim();
      const pct = sample === 'full' ? undefined : Number(sample.replace(/%$/, '').trim());
      if (pct !== undefined && !(pct > 0 && pct <= 100)) problems.push({ line: lineOf(doc, lc, ['jobs', i, 'verify', 'sample']), message: `jobs[${i}].verify.sample: a percentage above 0 and at most 100` });
      verify = { every: ms(['jobs', i, 'verify', 'every'], j.verify.every)!, ...(pct !== undefined ? { samplePercent: pct } : {}) };
    }
    const retry = {
      attempts: j.retry?.attempts ?? 5,
      initialMs: ms(['jobs', i, 'retry', 'initial'], j.retry?.initial) ?? 1000,
      maxMs: ms(['jobs', i, 'retry', 'max'], j.retry?.max) ?? 60_000,
    };
    const lagWarningMs = ms(['jobs', i, 'lag_warning'], j.lag_warning) ?? 3 * every;
    const lagCriticalMs = ms(['jobs', i, 'lag_critical'], j.lag_critical) ?? 10 * every;
    if (lagWarningMs >= lagCriticalMs && (j.lag_warning !== undefined || j.lag_critical !== undefined)) {
      problems.push({ line: lineOf(doc, lc, ['jobs', i, j.lag_critical !== undefined ? 'lag_critical' : 'lag_warning']), message: `jobs[${i}]: lag_warning (${j.lag_warning ?? '3 x every'}) must be less than lag_critical (${j.lag_critical ?? '10 x every'})` });
    }
    let group: GroupJob | undefined;
    if (j.group) {
      const g = j.group as Record<string, any>;
      const gline = lineOf(doc, lc, ['jobs', i, 'group']);
      const say = (message: string, key?: string): void => { problems.push({ line: key ? lineOf(doc, lc, ['jobs', i, 'group', key]) : gline, message: `jobs[${i}].group: ${message}` }); };
      const volumes = sources.flatMap((s) => (s.kind === 'volume' ? [s.pattern] : []));
      if (sources.some((s) => s.kind === 'image') || volumes.some((v) => /[*?[]/.test(v))) say('the members are thin LVs named one by one (VG/LV; no images, no patterns)');
      if (new Set(volumes).size !== volumes.length) say('a volume is named twice');
      if (volumes.length > MAX_GROUP_MEMBERS) say(`at most ${MAX_GROUP_MEMBERS} volumes`);
      if (j.to === undefined) say('a group job sends to a store: add "to"');
      if (j.apply_to) say('apply_to does not go with a group job (restore --group replicates a point)');
      const methods = [g.freeze !== undefined, g.freeze_cmd !== undefined || g.thaw_cmd !== undefined, g.virsh_domain !== undefined].filter(Boolean).length;
      if (methods > 1) say('one freeze method: freeze (mountpoints), freeze_cmd with thaw_cmd, or virsh_domain');
      if ((g.freeze_cmd === undefined) !== (g.thaw_cmd === undefined)) say('freeze_cmd and thaw_cmd go together', g.freeze_cmd === undefined ? 'thaw_cmd' : 'freeze_cmd');
      const freezeTimeoutMs = ms(['jobs', i, 'group', 'freeze_timeout'], g.freeze_timeout);
      if (freezeTimeoutMs !== undefined && freezeTimeoutMs > 3_600_000) say('freeze_timeout: at most 1h', 'freeze_timeout');
      const quiesce = quiesceSpecOf({ mountpoints: g.freeze, freezeCmd: g.freeze_cmd, thawCmd: g.thaw_cmd, virshDomain: g.virsh_domain });
      group = { name: g.name ?? j.name, volumes, ...(quiesce ? { quiesce } : {}), ...(freezeTimeoutMs !== undefined ? { freezeTimeoutMs } : {}) };
    }
    jobs.push({ name: j.name, sources, schedule, every, to: j.to, keep, applyTo, verify, ...(group ? { group } : {}), level: j.level, retry, lagWarningMs, lagCriticalMs, line });
  });
  const leaseTtlMs = raw.lease_ttl === undefined ? DEFAULT_LEASE_TTL_MS : parseDuration(raw.lease_ttl);
  if (leaseTtlMs < MIN_LEASE_TTL_MS) problems.push({ line: lineOf(doc, lc, ['lease_ttl']), message: `lease_ttl: must be at least ${MIN_LEASE_TTL_MS / 1000}s` });
  const poolSampleMs = raw.pool_sample_every === undefined ? DEFAULT_POOL_SAMPLE_MS : parseDuration(raw.pool_sample_every);
  if (poolSampleMs < 1000) problems.push({ line: lineOf(doc, lc, ['pool_sample_every']), message: 'pool_sample_every: must be at least 1s' });
  let alerts: AlertsConfig | undefined;
  if (raw.alerts) {
    const a = raw.alerts as Record<string, any>;
    alerts = {
      email: a.email ? { to: typeof a.email.to === 'string' ? [a.email.to] : a.email.to, from: a.email.from, smtp: a.email.smtp } : undefined,
      webhook: a.webhook ? { url: a.webhook.url, timeoutMs: ms(['alerts', 'webhook', 'timeout'], a.webhook.timeout) ?? 10_000 } : undefined,
      exec: a.exec,
      ping: a.ping ? { start: a.ping.start, success: a.ping.success, fail: a.ping.fail } : undefined,
      repeatAfterMs: ms(['alerts', 'repeat_after'], a.repeat_after) ?? 3_600_000,
    };
    for (const [path, url] of [[['alerts', 'email', 'smtp'], a.email?.smtp], [['alerts', 'webhook', 'url'], a.webhook?.url], ...['start', 'success', 'fail'].map((k) => [['alerts', 'ping', k], a.ping?.[k]])] as [string[], string | undefined][]) {
      if (url !== undefined && !URL.canParse(url)) problems.push({ line: lineOf(doc, lc, path), message: `${path.join('.')}: not a valid URL` });
    }
  }
  const pools: Record<string, PoolWatchSettings> = {};
  for (const [key, p] of Object.entries((raw.pools ?? {}) as Record<string, Record<string, any>>)) {
    pools[key] = {
      ...(p.warn ? { warn: p.warn } : {}), ...(p.crit ? { crit: p.crit } : {}),
      ...(p.require_autoextend !== undefined ? { requireAutoextend: p.require_autoextend } : {}),
      ...(p.held_metadata_snapshot !== undefined ? { heldMetadataSnapshotMs: ms(['pools', key, 'held_metadata_snapshot'], p.held_metadata_snapshot) } : {}),
    };
  }
  for (const key of Object.keys(pools)) {
    try {
      resolveThresholds(key, pools);
    } catch (e) {
      problems.push({ line: lineOf(doc, lc, ['pools', key]), message: `pools.${key}: ${(e as Error).message.replace(/^[^:]*: /, '')}` });
    }
  }
  problems.sort((a, b) => a.line - b.line);
  if (problems.length) return { problems };
  return {
    problems,
    config: { metrics: raw.metrics, alerts, stateDir: raw.state_dir, sshOptions: raw.ssh_options ?? [], s3Endpoint: raw.s3_endpoint, leaseTtlMs,
      keys: { encryptTo: raw.encrypt_to ?? [], recipientsFiles: raw.recipients_files ?? [], identityFiles: raw.identity_files ?? [], ...(raw.passphrase_file ? { passphraseFile: raw.passphrase_file } : {}) }, pools, poolSampleMs,
      maxConcurrentRuns: raw.max_concurrent_runs ?? DEFAULT_MAX_CONCURRENT_RUNS, jobs },
  };
}

export class ConfigError extends ThinarchiveError {
  readonly problems: ConfigProblem[];
  readonly file: string;
  constructor(file: string, problems: ConfigProblem[]) {
    super('CONFIG_INVALID', `${file}: ${problems.map((p) => `line ${p.line}: ${p.message}`).join('; ')}`, 'usage');
    this.name = 'ConfigError';
    this.file = file;
    this.problems = problems;
  }
}

/** Read and check `path`; every problem, or the config. A missing or unreadable file is one problem on line 0. */
export async function checkConfig(path = DEFAULT_CONFIG): Promise<{ problems: ConfigProblem[]; config?: DaemonConfig }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return { problems: [{ line: 0, message: code === 'ENOENT' ? 'no such file' : `cannot read: ${code ?? (e as Error).message}` }] };
  }
  const r = checkConfigText(text);
  return { problems: r.problems, config: r.config ? { ...r.config, path } : undefined };
}

/** The state directory an invalid file names (its `state_dir` when that is a string), for `status` to find a running daemon. */
export async function stateDirHint(path: string): Promise<string | undefined> {
  try {
    const data = parseDocument(await readFile(path, 'utf8')).toJS() as { state_dir?: unknown } | null;
    return typeof data?.state_dir === 'string' ? data.state_dir : defaultStateDir();
  } catch {
    return undefined;
  }
}

/** The config at `path`, or a ConfigError (code CONFIG_INVALID, exit 2) listing every problem. */
export async function loadConfig(path = DEFAULT_CONFIG): Promise<DaemonConfig> {
  const r = await checkConfig(path);
  if (!r.config) throw new ConfigError(path, r.problems);
  return r.config;
}
