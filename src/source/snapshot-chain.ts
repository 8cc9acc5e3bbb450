/**
 * The managed snapshot chain of a thin LV (`send VG/LV`): names and tags of the snapshots thinarchive
 * creates (a persisted format: docs/LVM-METADATA.md), which of them is the chain's base, and their
 * lifecycle: lock the chain, settle what interrupted runs left, create a pending snapshot, then
 * promote it to base (archive committed) or discard it (anything else). Only LVs tagged `thinarchive`
 * are ever removed.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { ThinarchiveError, UnsafeError } from '../errors.js';
import type { Logger } from '../log.js';
import { dmName } from '../lvm/names.js';
import { acquirePoolLock, type PoolLock } from '../lvm/pool-lock.js';
import type { LvInfo } from '../lvm/report.js';
import { createThinSnapshot, delTag, listLvs, removeLv, type ToolOptions } from '../lvm/tools.js';

export { checkChainName, DEFAULT_CHAIN } from './chain-name.js';

export const TAG_OURS = 'thinarchive';

export const TAG_PENDING = 'ta_pending';

const P = {
  origin: 'ta_origin_',
  chain: 'ta_chain_',
  chainId: 'ta_chainid_',
  archive: 'ta_archive_',
  seq: 'ta_seq_',
  time: 'ta_time_',
} as const;

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface ChainTags {
  originUuid: string;
  chain: string;
  chainId: string;
  archiveId: string;
  sequence: number;
  createdAt?: string;
}

/** The tags of a managed snapshot (the pending ones include `ta_pending`). */
export function snapshotTags(t: ChainTags & { createdAt: string }, pending: boolean): string[] {
  const time = t.createdAt.replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  const tags = [
    TAG_OURS, `${P.origin}${t.originUuid}`, `${P.chain}${t.chain}`, `${P.chainId}${t.chainId}`, `${P.archive}${t.archiveId}`,
    `${P.seq}${t.sequence}`, `${P.time}${time}`,
  ];
  if (pending) tags.push(TAG_PENDING);
  return tags;
}

/** Read the chain tags of a snapshot; null when a required one is missing or malformed. */
export function parseSnapshotTags(tags: readonly string[]): (ChainTags & { pending: boolean }) | null {
  const one = (prefix: string): string | undefined => {
    const found = tags.filter((t) => t.startsWith(prefix)).map((t) => t.slice(prefix.length));
    return found.length === 1 ? found[0] : undefined;
  };
  const originUuid = one(P.origin);
  const chain = one(P.chain);
  const chainId = one(P.chainId);
  const archiveId = one(P.archive);
  const seq = one(P.seq);
  if (!tags.includes(TAG_OURS) || !originUuid || !chain || !chainId || !archiveId || seq === undefined) return null;
  if (!UUID.test(chainId) || !UUID.test(archiveId) || !/^(0|[1-9][0-9]{0,15})$/.test(seq)) return null;
  const time = one(P.time);
  const m = time === undefined ? null : /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/.exec(time);
  return {
    originUuid, chain, chainId, archiveId, sequence: Number(seq), pending: tags.includes(TAG_PENDING),
    ...(m ? { createdAt: `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}Z` } : {}),
  };
}

/** The name of a managed snapshot. */
export function snapshotName(lv: string, chain: string, sequence: number, archiveId: string): string {
  const name = `${lv}_ta_${chain}_${sequence}`;
  return name.length <= 127 ? name : `ta_${archiveId.slice(0, 8)}_${sequence}`;
}

/** RFC 4122 namespace of the name-based volume UUIDs derived from LVM lv_uuids. */
const LV_UUID_NAMESPACE = '6ee59e3a-e697-47c6-bcae-5db023b20d7a';

/**
 * The archive's volume UUID for an LV. An lv_uuid (32 characters of a 64-letter alphabet) does not fit
 * the header's 16 bytes, so the header gets the name-based (version 5, SHA-1) UUID of the lv_uuid:
 * stable for the LV's life, whatever it is renamed to. The lv_uuid itself is in meta.volume.lvUuid.
 */
export function volumeUuidForLv(lvUuid: string): string {
  const h = createHash('sha1').update(Buffer.from(LV_UUID_NAMESPACE.replace(/-/g, ''), 'hex')).update(lvUuid, 'utf8').digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

/** What a chain's managed snapshots say: the base, pending snapshots of dead runs, older bases. */
export interface ChainSnapshots {
  base: { lv: LvInfo; tags: ChainTags } | null;
  pending: { lv: LvInfo; tags: ChainTags }[];
  olderBases: LvInfo[];
}

/** Sort a chain's managed snapshots (those tagged ours, with this origin and chain name). */
export function classifyChainSnapshots(lvs: readonly LvInfo[], originUuid: string, chain: string): ChainSnapshots {
  const out: ChainSnapshots = { base: null, pending: [], olderBases: [] };
  const bases: { lv: LvInfo; tags: ChainTags }[] = [];
  for (const lv of lvs) {
    if (!lv.tags.includes(TAG_OURS) || !lv.tags.includes(`${P.origin}${originUuid}`) || !lv.tags.includes(`${P.chain}${chain}`)) continue;
    // This scheme has no version tag; a later one adds ta_fmt_<n> (docs/LVM-METADATA.md): never use or remove such a snapshot.
    const fmt = lv.tags.find((t) => t.startsWith('ta_fmt_'));
    if (fmt) throw new UnsafeError('BAD_CHAIN_TAGS', `${lv.vg}/${lv.name} is a thinarchive snapshot of chain ${chain} in tag scheme ${fmt}, which this version does not know; use a newer thinarchive`);
    const tags = parseSnapshotTags(lv.tags);
    if (!tags) {
      if (lv.tags.includes(TAG_PENDING)) {
        // Created by a run that died before its tags were all readable: still ours and pending.
        out.pending.push({ lv, tags: { originUuid, chain, chainId: '', archiveId: '', sequence: -1 } });
        continue;
      }
      throw new UnsafeError('BAD_CHAIN_TAGS', `${lv.vg}/${lv.name} is tagged as a thinarchive snapshot of chain ${chain} but its tags (${lv.tags.join(',')}) are incomplete; `
        + 'fix or remove it (lvremove) before sending this chain');
    }
    if (tags.pending) out.pending.push({ lv, tags });
    else bases.push({ lv, tags });
  }
  bases.sort((a, b) => b.tags.sequence - a.tags.sequence);
  if (bases.length > 0) {
    const ids = new Set(bases.map((b) => b.tags.chainId));
    if (ids.size > 1) {
      throw new UnsafeError('CHAIN_CONFUSED', `chain ${chain} has base snapshots of different archive chains: `
        + `${bases.map((b) => `${b.lv.name} (chain ${b.tags.chainId}, sequence ${b.tags.sequence})`).join(', ')}; remove the wrong ones (lvremove)`);
    }
    out.base = bases[0];
    out.olderBases = bases.slice(1).map((b) => b.lv);
  }
  return out;
}

export interface LifecycleOptions {
  tools: ToolOptions;
  log: Logger;
}

/**
 * One send per volume and chain at a time: a second one would take the first's new snapshot for the
 * pending snapshot of a dead run. (Keyed by name: the uuid is not known before lvs.)
 */
export async function lockSnapshotChain(lockDir: string, vg: string, lv: string, chain: string, log: Logger): Promise<PoolLock> {
  try {
    return await acquirePoolLock(join(lockDir, `send-${dmName(vg, lv)}-${chain}.lock`), { timeoutMs: 0, logger: log, what: `${vg}/${lv} chain ${chain}` });
  } catch (e) {
    if (e instanceof ThinarchiveError && e.code === 'POOL_LOCKED') {
      throw new ThinarchiveError('SEND_IN_PROGRESS', `another send of ${vg}/${lv} chain ${chain} is running: ${e.message}`);
    }
    throw e;
  }
}

/**
 * What interrupted runs left: a pending snapshot whose archive `committed` says is in the destination
 * (and is newer than the base) becomes the base (the run died between commit and promotion); every
 * other pending snapshot is removed, and of several bases (a promotion cut short) the newest stays.
 */
export async function settleInterrupted(
  vg: string, origin: LvInfo, lvs: LvInfo[], chain: string, committed: (t: ChainTags) => Promise<boolean>, o: LifecycleOptions,
): Promise<{ lvs: LvInfo[]; snaps: ChainSnapshots; removed: string[]; recovered: string[] }> {
  const removed: string[] = [];
  const recovered: string[] = [];
  let snaps = classifyChainSnapshots(lvs, origin.uuid, chain);
  let changed = false;
  for (const p of snaps.pending) {
    if (p.tags.archiveId && (await committed(p.tags))
      && (!snaps.base || (p.tags.chainId === snaps.base.tags.chainId && p.tags.sequence > snaps.base.tags.sequence))) {
      o.log.warn({ snapshot: `${vg}/${p.lv.name}`, archiveId: p.tags.archiveId }, 'a run died after committing its archive: making its snapshot the base');
      await delTag(vg, p.lv.name, TAG_PENDING, o.tools);
      recovered.push(p.lv.name);
    } else {
      o.log.warn({ snapshot: `${vg}/${p.lv.name}` }, 'removing the pending snapshot of an interrupted send');
      await removeLv(vg, p.lv.name, { ...o.tools, requireTag: TAG_OURS });
      removed.push(p.lv.name);
    }
    changed = true;
  }
  if (changed) {
    lvs = await listLvs(vg, o.tools);
    snaps = classifyChainSnapshots(lvs, origin.uuid, chain);
  }
  for (const old of snaps.olderBases) {
    o.log.warn({ snapshot: `${vg}/${old.name}` }, 'removing an older base snapshot left by an interrupted send');
    await removeLv(vg, old.name, { ...o.tools, requireTag: TAG_OURS });
    removed.push(old.name);
  }
  return { lvs, snaps, removed, recovered };
}

/** Create the new snapshot of `lv`, tagged ours and pending (snapshotTags), read-only and active: ready to be read. */
export async function createPendingSnapshot(vg: string, lv: string, name: string, tags: string[], o: LifecycleOptions): Promise<LvInfo> {
  const snap = await createThinSnapshot(vg, lv, name, tags, o.tools, true);
  o.log.info({ snapshot: `${vg}/${name}`, thinId: snap.thinId }, 'created the snapshot');
  return snap;
}

/**
 * Remove a pending snapshot whose archive was not committed (only if it carries our tag; when its
 * creation was not seen to finish, only if it is listed as pending). True when it was removed; a
 * failure is logged, and the next send removes it.
 */
export async function discardPendingSnapshot(vg: string, name: string, created: LvInfo | undefined, o: LifecycleOptions): Promise<boolean> {
  try {
    const exists = created !== undefined || (await listLvs(vg, o.tools)).some((l) => l.name === name && l.tags.includes(TAG_PENDING));
    if (!exists) return false;
    // `created`: the report lvcreate's caller read back (its tags need no second lvs)
    await removeLv(vg, name, { ...o.tools, requireTag: TAG_OURS, ...(created ? { known: created } : {}) });
    return true;
  } catch (e) {
    o.log.warn({ snapshot: `${vg}/${name}`, err: (e as Error).message }, 'could not remove the new snapshot; the next send removes it');
    return false;
  }
}

/**
 * The archive of pending snapshot `name` is durable: it becomes the base (ta_pending removed) and the
 * old base goes. Failures are returned as warnings: the next send completes them.
 */
export async function promoteSnapshot(vg: string, name: string, oldBase: LvInfo | null, o: LifecycleOptions): Promise<{ removed: string[]; warnings: string[] }> {
  const removed: string[] = [];
  const warnings: string[] = [];
  try {
    await delTag(vg, name, TAG_PENDING, o.tools);
  } catch (e) {
    warnings.push(`the archive is committed but ${vg}/${name} could not be made the base (${(e as Error).message}); the next send to this store completes that`);
  }
  if (oldBase !== null && warnings.length === 0) {
    try {
      // the base as listed under the chain lock: its tags need no second lvs
      await removeLv(vg, oldBase.name, { ...o.tools, requireTag: TAG_OURS, known: oldBase });
      removed.push(oldBase.name);
    } catch (e) {
      warnings.push(`could not remove the old base ${vg}/${oldBase.name} (${(e as Error).message}); the next send removes it`);
    }
  }
  return { removed, warnings };
}
