/**
 * Parsers for `lvs` / `vgs` JSON reports (pure). Both lvm's `json` and `json_std` forms; sizes in bytes
 * (`--units b --nosuffix`). The report format and lv_attr: docs/LVM.md section 2.
 */
import { FormatError } from '../errors.js';

/** The fields listLvs asks for; parseLvsReport needs lv_name, vg_name, lv_uuid and lv_attr at least. */
export const LVS_FIELDS = [
  'lv_name', 'vg_name', 'lv_uuid', 'thin_id', 'pool_lv', 'origin', 'lv_size', 'chunk_size',
  'data_percent', 'metadata_percent', 'lv_attr', 'lv_tags', 'lv_active',
] as const;

export const VGS_FIELDS = ['vg_name', 'vg_uuid', 'vg_size', 'vg_free', 'vg_extent_size', 'vg_attr', 'vg_tags'] as const;

export interface LvInfo {
  vg: string;
  /** without the brackets lvs puts around hidden LVs (`[pool_tmeta]` -> `pool_tmeta`) */
  name: string;
  /** the brackets were there: an internal LV (shown by `lvs -a` only) */
  hidden: boolean;
  uuid: string;
  /** thin device id inside the pool (thin volumes only); reused after deletion */
  thinId: number | null;
  /** the thin pool of a thin volume */
  pool: string | null;
  /** the origin of a snapshot */
  origin: string | null;
  sizeBytes: number;
  /** a pool's chunk (data block) size; 0 for thin volumes */
  chunkSizeBytes: number;
  dataPercent: number | null;
  metadataPercent: number | null;
  attr: string;
  tags: string[];
  active: boolean;
  isThinPool: boolean;
  isThinVolume: boolean;
  /** lv_attr[0] is 's': a classic (copy-on-write) snapshot */
  isClassicSnapshot: boolean;
  /** lv_attr[0] is '-', 'o', 'r' or 'm': a classic LV (linear, striped, raid, mirror; 'o': an origin of classic snapshots) */
  isClassicVolume: boolean;
  /** lv_attr[4] is 'I' or 'S': a classic snapshot that overflowed or was invalidated */
  snapshotInvalid: boolean;
  /** lv_attr[1] is 'r' or 'R' */
  readOnly: boolean;
  /** lv_attr[9] is 'k': skipped by plain activation, needs `-K` */
  activationSkip: boolean;
  /** lv_attr[8]: '-' when healthy, 'D' out of data space, 'M' metadata read-only, 'F' failed, ... */
  health: string;
}

export interface VgInfo {
  name: string;
  uuid: string;
  sizeBytes: number;
  freeBytes: number;
  extentSizeBytes: number;
  attr: string;
  tags: string[];
}

type Row = Record<string, unknown>;

function reportError(what: string, detail: string): FormatError {
  return new FormatError(what === 'vgs' ? 'VGS_REPORT' : 'LVS_REPORT', `${what} report: ${detail}`);
}

/** The rows of section `key` ("lv" / "vg") of every report object in an lvs/vgs JSON document. */
function rows(input: string | unknown, key: 'lv' | 'vg', what: string): Row[] {
  let doc: unknown = input;
  if (typeof input === 'string') {
    try {
      doc = JSON.parse(input);
    } catch (e) {
      throw reportError(what, `not JSON: ${(e as Error).message}`);
    }
  }
  const report = (doc as { report?: unknown } | null)?.report;
  if (!Array.isArray(report)) throw reportError(what, 'no "report" array');
  const out: Row[] = [];
  for (const r of report) {
    const section = (r as Record<string, unknown> | null)?.[key];
    if (section === undefined) continue; // e.g. another report type in a combined report
    if (!Array.isArray(section)) throw reportError(what, `"${key}" is not an array`);
    for (const row of section) {
      if (row === null || typeof row !== 'object' || Array.isArray(row)) throw reportError(what, `a "${key}" entry is not an object`);
      out.push(row as Row);
    }
  }
  return out;
}

function str(row: Row, field: string, what: string, required = true): string {
  const v = row[field];
  if (typeof v === 'string') return v;
  if (v === undefined || v === null) {
    if (required) throw reportError(what, `field ${field} missing (ask for it with -o)`);
    return '';
  }
  if (typeof v === 'number') return String(v);
  throw reportError(what, `field ${field} is ${JSON.stringify(v)}, not a string`);
}

/** A numeric field: a number, a decimal string, or (when `nullable`) "" / null / absent. */
function num(row: Row, field: string, what: string, opts: { nullable: true; integer?: boolean }): number | null;
function num(row: Row, field: string, what: string, opts: { nullable: false; integer?: boolean }): number;
function num(row: Row, field: string, what: string, opts: { nullable: boolean; integer?: boolean }): number | null {
  const v = row[field];
  const bad = (): FormatError =>
    reportError(what, `field ${field} is ${JSON.stringify(v)}, want ${opts.integer ? 'an integer' : 'a number'}${field.endsWith('size') || field.endsWith('free') ? ' of bytes (run with --units b --nosuffix)' : ''}`);
  if (v === undefined || v === null || v === '') {
    if (opts.nullable) return null;
    if (v === undefined) throw reportError(what, `field ${field} missing (ask for it with -o)`);
    throw bad();
  }
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && (opts.integer ? /^[0-9]+$/ : /^[0-9]+(\.[0-9]+)?$/).test(v)) n = Number(v);
  else throw bad();
  if (!Number.isFinite(n) || n < 0 || (opts.integer && !Number.isSafeInteger(n))) throw bad();
  return n;
}

function tagList(row: Row, field: string, what: string): string[] {
  const v = row[field];
  if (v === undefined || v === null || v === '') return [];
  if (Array.isArray(v)) {
    if (!v.every((t) => typeof t === 'string')) throw reportError(what, `field ${field} has a non-string entry`);
    return (v as string[]).filter((t) => t !== '');
  }
  if (typeof v === 'string') return v.split(',').filter((t) => t !== '');
  throw reportError(what, `field ${field} is ${JSON.stringify(v)}`);
}

/** Parse an `lvs --reportformat json|json_std --units b --nosuffix -o ...` document. */
export function parseLvsReport(input: string | unknown): LvInfo[] {
  const W = 'lvs';
  return rows(input, 'lv', W).map((row) => {
    const rawName = str(row, 'lv_name', W);
    const hidden = rawName.startsWith('[') && rawName.endsWith(']');
    const name = hidden ? rawName.slice(1, -1) : rawName;
    const attr = str(row, 'lv_attr', W);
    if (attr.length < 10) throw reportError(W, `lv ${rawName}: lv_attr ${JSON.stringify(attr)} is not 10 characters`);
    const uuid = str(row, 'lv_uuid', W);
    if (uuid === '') throw reportError(W, `lv ${rawName}: empty lv_uuid`);
    const activeField = row['lv_active'];
    // lv_active is "active" or "" (older and clustered set-ups print "local exclusive" and the
    // like: any non-empty value); without the field, lv_attr's state character decides.
    const active = typeof activeField === 'string' ? activeField !== '' : attr[4] === 'a';
    const opt = (f: string): string | null => {
      const s = str(row, f, W, false);
      return s === '' ? null : s;
    };
    return {
      vg: str(row, 'vg_name', W),
      name,
      hidden,
      uuid,
      thinId: num(row, 'thin_id', W, { nullable: true, integer: true }),
      pool: opt('pool_lv'),
      origin: opt('origin'),
      sizeBytes: num(row, 'lv_size', W, { nullable: false, integer: true }),
      chunkSizeBytes: num(row, 'chunk_size', W, { nullable: true, integer: true }) ?? 0,
      dataPercent: num(row, 'data_percent', W, { nullable: true }),
      metadataPercent: num(row, 'metadata_percent', W, { nullable: true }),
      attr,
      tags: tagList(row, 'lv_tags', W),
      active,
      isThinPool: attr[0] === 't',
      isThinVolume: attr[0] === 'V',
      isClassicSnapshot: attr[0] === 's',
      isClassicVolume: attr[0] === '-' || attr[0] === 'o' || attr[0] === 'r' || attr[0] === 'm',
      snapshotInvalid: attr[4] === 'I' || attr[4] === 'S',
      readOnly: attr[1] === 'r' || attr[1] === 'R',
      activationSkip: attr[9] === 'k',
      health: attr[8]!,
    };
  });
}

/** Index LVs by lv_uuid (the stable identity); a duplicate uuid is a malformed report. */
export function lvsByUuid(lvs: readonly LvInfo[]): Map<string, LvInfo> {
  const m = new Map<string, LvInfo>();
  for (const lv of lvs) {
    if (m.has(lv.uuid)) throw reportError('lvs', `lv_uuid ${lv.uuid} appears twice`);
    m.set(lv.uuid, lv);
  }
  return m;
}

/** Parse a `vgs --reportformat json|json_std --units b --nosuffix -o <VGS_FIELDS>` document. */
export function parseVgsReport(input: string | unknown): VgInfo[] {
  const W = 'vgs';
  return rows(input, 'vg', W).map((row) => ({
    name: str(row, 'vg_name', W),
    uuid: str(row, 'vg_uuid', W),
    sizeBytes: num(row, 'vg_size', W, { nullable: false, integer: true }),
    freeBytes: num(row, 'vg_free', W, { nullable: false, integer: true }),
    extentSizeBytes: num(row, 'vg_extent_size', W, { nullable: false, integer: true }),
    attr: str(row, 'vg_attr', W),
    tags: tagList(row, 'vg_tags', W),
  }));
}

/** The `discards` and `zero` settings of a thin pool from `lvs --reportformat json -o lv_name,discards,zero` (2.03.16: "passdown"/"nopassdown"/"ignore"; zero: "zero" or ""). */
export function parsePoolSettings(out: string, what: string): { discards: string; zero: boolean } {
  let row: Record<string, unknown> | undefined;
  try {
    row = (JSON.parse(out) as { report: { lv: Record<string, unknown>[] }[] }).report[0]?.lv[0];
  } catch {
    row = undefined;
  }
  if (!row) throw new FormatError('LVS_REPORT', `${what}: unexpected output`);
  const discards = String(row['discards'] ?? '');
  const z = row['zero'];
  const zero = z === 'zero' || z === 1 || z === '1' || z === true;
  return { discards, zero };
}

/** The fields readPoolFacts asks lvs for, about one thin pool (`lvs ... VG/POOL`). */
export const POOL_FIELDS = [
  'lv_name', 'vg_name', 'lv_attr', 'lv_size', 'lv_metadata_size', 'chunk_size', 'lv_when_full', 'seg_monitor', 'lv_profile', 'vg_profile',
  'vg_free', 'vg_extent_size',
] as const;

/** What lvs says about a thin pool's settings and its VG (docs/LVM.md section 8). */
export interface PoolReportRow {
  vg: string;
  name: string;
  attr: string;
  isThinPool: boolean;
  /** the data space (lv_size of the pool) */
  dataBytes: number;
  metadataBytes: number;
  chunkBytes: number;
  /** lv_when_full: what a write does when the data space is full; null when lvs prints nothing */
  whenFull: 'queue' | 'error' | null;
  /** seg_monitor: "monitored", "not monitored", "" (monitoring off in lvm.conf), ... as printed */
  monitor: string;
  /** the metadata profile in effect (the LV's, else the VG's), null for none */
  profile: string | null;
  vgFreeBytes: number;
  vgExtentBytes: number;
}

/** Parse `lvs --reportformat json --units b --nosuffix -o <POOL_FIELDS> VG/POOL` (one row). */
export function parsePoolReport(input: string | unknown): PoolReportRow {
  const W = 'lvs';
  const all = rows(input, 'lv', W);
  if (all.length !== 1) throw reportError(W, `${all.length} rows, want the one thin pool asked for`);
  const row = all[0]!;
  const attr = str(row, 'lv_attr', W);
  const wf = str(row, 'lv_when_full', W, false);
  if (wf !== '' && wf !== 'queue' && wf !== 'error') throw reportError(W, `field lv_when_full is ${JSON.stringify(wf)}, want queue or error`);
  const lvProfile = str(row, 'lv_profile', W, false);
  const vgProfile = str(row, 'vg_profile', W, false);
  return {
    vg: str(row, 'vg_name', W),
    name: str(row, 'lv_name', W),
    attr,
    isThinPool: attr[0] === 't',
    dataBytes: num(row, 'lv_size', W, { nullable: false, integer: true }),
    metadataBytes: num(row, 'lv_metadata_size', W, { nullable: true, integer: true }) ?? 0,
    chunkBytes: num(row, 'chunk_size', W, { nullable: true, integer: true }) ?? 0,
    whenFull: wf === '' ? null : wf,
    monitor: str(row, 'seg_monitor', W, false),
    profile: lvProfile || vgProfile || null,
    vgFreeBytes: num(row, 'vg_free', W, { nullable: false, integer: true }),
    vgExtentBytes: num(row, 'vg_extent_size', W, { nullable: false, integer: true }),
  };
}
