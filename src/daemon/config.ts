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
import { resolveThresholds, type PoolWatchSettings } from '../api/index.js';
import { ThinarchiveError } from '../errors.js';
import { parseDuration } from '../units.js';

export const DEFAULT_CONFIG = '/etc/thinarchive/thinarchive.yml';

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

export interface JobConfig {
  name: string;
  sources: SourceSpec[];
  /** milliseconds */
  every: number;
  to?: string;
  keep?: KeepRules;
  applyTo?: ApplyTo;
  level?: number;
  retry: { attempts: number; initialMs: number; maxMs: number };
  /** the line of the job in the file */
  line: number;
}

export interface DaemonConfig {
  path: string;
  metrics?: { listen: string };
  stateDir?: string;
  sshOptions: string[];
  s3Endpoint?: string;
  /** the pool watch and guard, per pool ("VG/POOL") and "default" (check, send, the daemon's pool sampling) */
  pools: Record<string, PoolWatchSettings>;
  jobs: JobConfig[];
}

export interface ConfigProblem {
  line: number;
  message: string;
}

const duration = { type: 'string', pattern: '^\\s*\\d+\\s*[smhdwSMHDW]\\s*$' };
const count = { type: 'integer', minimum: 0 };
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
    pools: {
      type: 'object',
      propertyNames: { pattern: POOL_KEY },
      additionalProperties: {
        type: 'object', additionalProperties: false,
        properties: { warn: usagePair, crit: usagePair, require_autoextend: { type: 'boolean' }, held_metadata_snapshot: duration },
      },
    },
    metrics: {
      type: 'object', additionalProperties: false, required: ['listen'],
      properties: { listen: { type: 'string', pattern: '^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9.-]+):\\d{1,5}$' } },
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
          every: duration,
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
          retry: {
            type: 'object', additionalProperties: false,
            properties: { attempts: { type: 'integer', minimum: 1, maximum: 100 }, initial: duration, max: duration },
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
    case 'pattern':
      if (path[path.length - 1] === 'every' || path.includes('keep') || path.includes('retry') || path[path.length - 1] === 'held_metadata_snapshot') return `${where}: not a duration (examples: 30s, 5m, 1h, 1d)`;
      if (path.includes('volumes')) return `${where}: not VG/LV (patterns allowed: vg0/vm-*)`;
      return `${where}: ${e.message}`;
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
      if (e.keyword === 'oneOf' || (path.includes('volumes') && e.keyword === 'type')) continue;
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
    const every = ms(['jobs', i, 'every'], j.every)!;
    const retry = {
      attempts: j.retry?.attempts ?? 5,
      initialMs: ms(['jobs', i, 'retry', 'initial'], j.retry?.initial) ?? 1000,
      maxMs: ms(['jobs', i, 'retry', 'max'], j.retry?.max) ?? 60_000,
    };
    jobs.push({ name: j.name, sources, every, to: j.to, keep, applyTo, level: j.level, retry, line });
  });
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
    config: { metrics: raw.metrics, stateDir: raw.state_dir, sshOptions: raw.ssh_options ?? [], s3Endpoint: raw.s3_endpoint, pools, jobs },
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

/** The config at `path`, or a ConfigError (code CONFIG_INVALID, exit 2) listing every problem. */
export async function loadConfig(path = DEFAULT_CONFIG): Promise<DaemonConfig> {
  const r = await checkConfig(path);
  if (!r.config) throw new ConfigError(path, r.problems);
  return r.config;
}
