/**
 * The tags an LV target carries: its state (TargetState as `ta_*` tags), the target snapshots and the
 * rollback snapshot. A persisted format: docs/LVM-METADATA.md specifies it.
 */
import { UnsafeError } from '../errors.js';
import type { LvInfo } from '../lvm/report.js';
import type { TargetState } from './state.js';

export const TAG_PREFIX = 'ta_';
export const TAG_CREATED = 'ta_created';
export const TAG_SNAP = 'ta_snap';
/** The rollback snapshot of a thin LV target while an archive is applied (see "Rollback snapshots"). */
export const TAG_ROLLBACK = 'ta_rollback';
const TAG_FMT = 'ta_fmt_1';
const SAFE = /^[A-Za-z0-9_+.-]+$/;
const STATE_KEYS = new Set([
  'fmt', 'state', 'volume', 'chainid', 'archive', 'seq', 'bs', 'size', 'updated',
  'applying', 'applyingseq', 'applyingchain', 'applyingparent', 'applyingsince',
]);

export const snapOfTag = (lvUuid: string): string => tag('snapof', lvUuid);
export const rollbackOfTag = (lvUuid: string): string => tag('rollbackof', lvUuid);

export function tag(key: string, value: string | number): string {
  const t = `${TAG_PREFIX}${key}_${value}`;
  if (!SAFE.test(t) || t.length > 1024) throw new UnsafeError('TAG_VALUE', `cannot record ${key}=${JSON.stringify(value)} in an LV tag (only A-Z a-z 0-9 _ + . - are used)`);
  return t;
}

/** `ta_<key>_<value>` -> [key, value]; null for other tags (also ta_created, ta_snap). */
export function splitTag(t: string): [string, string] | null {
  const m = /^ta_([a-z]+)_(.+)$/.exec(t);
  return m ? [m[1]!, m[2]!] : null;
}

/** The tags of `tags` that belong to the target state scheme. */
export function stateTags(tags: readonly string[]): string[] {
  return tags.filter((t) => {
    const kv = splitTag(t);
    return kv !== null && STATE_KEYS.has(kv[0]);
  });
}

const ms = (iso: string): number => {
  const n = Date.parse(iso);
  return Number.isFinite(n) ? n : Date.now();
};

/** The tags that record `s` (see the module comment). */
export function stateToTags(s: TargetState): string[] {
  const tags = [TAG_FMT, tag('state', s.status), tag('volume', s.volumeUuid), tag('chainid', s.chainId), tag('bs', s.blockSize), tag('size', s.volumeSize), tag('updated', ms(s.updatedAt))];
  if (s.archiveId !== '') tags.push(tag('archive', s.archiveId), tag('seq', s.sequence));
  if (s.status === 'applying') {
    const a = s.applying;
    if (!a) throw new UnsafeError('TARGET_STATE', 'an "applying" state without the archive being applied');
    tags.push(tag('applying', a.archiveId), tag('applyingseq', a.sequence), tag('applyingchain', a.chainId), tag('applyingsince', ms(a.startedAt)));
    if (a.parentId !== null) tags.push(tag('applyingparent', a.parentId));
  }
  return tags;
}

/** Parse the state tags of an LV; null when it carries none. UnsafeError TARGET_STATE_CORRUPT when inconsistent. */
export function tagsToState(tags: readonly string[], where: string): TargetState | null {
  const mine = stateTags(tags);
  if (mine.length === 0) return null;
  const bad = (why: string): UnsafeError =>
    new UnsafeError('TARGET_STATE_CORRUPT', `the state tags of ${where} are inconsistent (${why}); refusing to guess the target's state. Tags: ${mine.join(',')}`);
  const kv = new Map<string, string>();
  for (const t of mine) {
    const [k, v] = splitTag(t)!;
    if (kv.has(k)) throw bad(`two ta_${k}_ tags`);
    kv.set(k, v);
  }
  const get = (k: string): string => {
    const v = kv.get(k);
    if (v === undefined) throw bad(`no ta_${k}_ tag`);
    return v;
  };
  const int = (k: string): number => {
    const v = get(k);
    if (!/^[0-9]+$/.test(v) || !Number.isSafeInteger(Number(v))) throw bad(`ta_${k}_${v} is not a number`);
    return Number(v);
  };
  if (get('fmt') !== '1') throw bad(`tag scheme ta_fmt_${get('fmt')} is not known to this version`);
  const status = get('state');
  if (status !== 'clean' && status !== 'applying') throw bad(`unknown state ${status}`);
  const hasArchive = kv.has('archive');
  if (hasArchive !== kv.has('seq')) throw bad('ta_archive_ and ta_seq_ go together');
  if (status === 'clean' && !hasArchive) throw bad('a clean state without ta_archive_');
  const iso = (k: string): string => new Date(int(k)).toISOString();
  const s: TargetState = {
    version: 1,
    volumeUuid: get('volume'),
    chainId: get('chainid'),
    blockSize: int('bs'),
    volumeSize: int('size'),
    archiveId: hasArchive ? get('archive') : '',
    sequence: hasArchive ? int('seq') : -1,
    status,
    updatedAt: iso('updated'),
  };
  const applyingKeys = ['applying', 'applyingseq', 'applyingchain', 'applyingparent', 'applyingsince'].filter((k) => kv.has(k));
  if (status === 'applying') {
    s.applying = { archiveId: get('applying'), parentId: kv.get('applyingparent') ?? null, sequence: int('applyingseq'), chainId: get('applyingchain'), startedAt: iso('applyingsince') };
  } else if (applyingKeys.length > 0) {
    throw bad(`a clean state with ta_${applyingKeys[0]}_`);
  }
  return s;
}

export interface TargetSnapshot {
  name: string;
  uuid: string;
  archiveId: string;
  sequence: number;
  chainId: string;
  takenAt: string;
}

/** Our snapshots of the target LV with this uuid (ta_snap and ta_snapof_<uuid>), newest first. */
export function ourSnapshots(all: readonly LvInfo[], lvUuid: string): TargetSnapshot[] {
  const of = snapOfTag(lvUuid);
  const out: (TargetSnapshot & { t: number })[] = [];
  for (const l of all) {
    if (!l.tags.includes(TAG_SNAP) || !l.tags.includes(of)) continue;
    const kv = new Map(l.tags.map(splitTag).filter((x): x is [string, string] => x !== null));
    const t = Number(kv.get('taken') ?? 0);
    out.push({ name: l.name, uuid: l.uuid, archiveId: kv.get('archive') ?? '', sequence: Number(kv.get('seq') ?? -1), chainId: kv.get('chainid') ?? '', takenAt: new Date(t).toISOString(), t });
  }
  out.sort((a, b) => b.t - a.t || b.sequence - a.sequence);
  return out.map(({ t: _t, ...rest }) => rest);
}

