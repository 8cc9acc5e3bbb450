/**
 * Sequence claims and their owners (FORMAT.md §3.2): what a claim holds, and how a writer that meets a
 * claim without its archive (its writer was killed between the claim and the publish) decides whether
 * that writer is provably gone, removes the orphan claim safely and claims the sequence itself.
 *
 * A claim names its owner: host, machine id, boot id, pid, the chain lease's token and when it was
 * made. The owner is gone when
 * - it ran on this host (same machine id, or same host name when either lacks one) and its pid no
 *   longer runs, or the host has rebooted since (another boot id);
 * - it ran on another host and the chain's lease is no longer the one it held (taken over, released,
 *   discarded) or has expired.
 * Otherwise (and for a claim that names no owner: an older writer's, or a merge's from another host)
 * the writer is refused with CHAIN_FORK naming the owner.
 *
 * Removal is safe against other writers judging the same orphan: the remover first creates the
 * marker `.<N>.seq.orphan-<archive-id of the orphan>` with the exclusive-create primitive; only the one
 * that created it deletes the claim, and as archive ids are never reused, no later claim of that
 * sequence can be taken for that orphan. The marker stays as the record of the removal. A writer that
 * was merely stalled (not dead) between its claim and its publish, and whose claim was removed, finds
 * at its publish that the claim is no longer its own and withdraws its archive (CHAIN_FORK).
 */
import { readFileSync } from 'node:fs';
import { UnsafeError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { pidExists } from '../process.js';
import { claimFileName, sequenceTaken } from './layout.js';
import { currentLease, leaseState, localIdentity, type LeaseIdentity } from './lease.js';
import type { ArchiveStore } from './types.js';

export const CLAIM_VERSION = 1;

/** Who made a claim (the JSON line of a claim, FORMAT.md §3.2). */
export interface ClaimOwner {
  version: number;
  archiveId: string;
  host: string;
  machineId: string | null;
  /** /proc/sys/kernel/random/boot_id of the owner's host (null when unreadable). */
  bootId: string | null;
  pid: number;
  /** The token of the chain lease the owner held (null: it held none). */
  leaseToken: string | null;
  /** When the claim was made (ISO 8601). */
  claimed: string;
}

/** A claim as read: its archive id (first line) and owner (null when it names none or is unreadable). */
export interface Claim {
  archiveId: string;
  owner: ClaimOwner | null;
}

let bootCache: string | null | undefined;

/** This host's boot id; null when unreadable. */
export function localBootId(): string | null {
  if (bootCache === undefined) {
    try {
      bootCache = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || null;
    } catch {
      bootCache = null;
    }
  }
  return bootCache;
}

/** Test-only hooks (crash tests; the CLI sets them from THINARCHIVE_TEST_SIGNAL_AFTER_CLAIM). */
export const claimHooks: { afterClaim?: () => void | Promise<void> } = {};

/** What a claim holds: the archive id on the first line, then its owner as one JSON line. */
export function claimText(archiveId: string, leaseToken: string | null, me: LeaseIdentity = localIdentity()): string {
  const owner: ClaimOwner = {
    version: CLAIM_VERSION, archiveId, host: me.host, machineId: me.machineId, bootId: localBootId(), pid: me.pid, leaseToken,
    claimed: new Date().toISOString(),
  };
  return `${archiveId}\n${JSON.stringify(owner)}\n`;
}

export function parseClaim(text: string): Claim {
  const [first, second] = text.split('\n');
  const archiveId = (first ?? '').trim();
  let owner: ClaimOwner | null = null;
  try {
    const o = JSON.parse(second ?? '') as ClaimOwner;
    const strOrNull = (v: unknown): boolean => v === null || typeof v === 'string';
    if (o && o.version === CLAIM_VERSION && o.archiveId === archiveId && typeof o.host === 'string' && Number.isInteger(o.pid)
      && strOrNull(o.machineId) && strOrNull(o.bootId) && strOrNull(o.leaseToken) && typeof o.claimed === 'string') owner = o;
  } catch {
    // an older claim (the archive id alone) or a damaged one: no owner
  }
  return { archiveId, owner };
}

/**
 * The error of a writer that published but then found its claim gone (it stalled between its claim and
 * its publish for so long that another writer removed the claim as an orphan): it withdraws its archive.
 */
export function claimLost(store: string, chainId: string, sequence: number, holder: string): UnsafeError {
  return new UnsafeError('CHAIN_FORK', `sequence ${sequence} of chain ${chainId} in ${store} is no longer claimed by this send `
    + `(${holder ? `now archive ${holder}` : 'the claim is gone'}): it stalled between its claim and its publish until another send removed the claim as an orphan; `
    + 'its archive is withdrawn (send from the newest archive)');
}

/** The name of the record of an orphan claim's removal. */
export function orphanMarkerName(sequence: number, archiveId: string): string {
  return `${claimFileName(sequence)}.orphan-${archiveId}`;
}

function describeOwner(o: ClaimOwner): string {
  return `host ${o.host} pid ${o.pid} (claimed ${o.claimed})`;
}

/** Whether a claim's owner is provably gone, and why (for the log, the refusal and the removal record). */
export async function claimOwnerGone(store: ArchiveStore, chainId: string, owner: ClaimOwner | null, me: LeaseIdentity = localIdentity()): Promise<{ gone: boolean; why: string }> {
  if (!owner) return { gone: false, why: 'the claim does not name its owner' };
  const same = owner.machineId && me.machineId ? owner.machineId === me.machineId : owner.host === me.host;
  if (same) {
    const boot = localBootId();
    if (owner.bootId && boot && owner.bootId !== boot) return { gone: true, why: `${describeOwner(owner)} ran before this host rebooted` };
    if (owner.pid !== me.pid && !pidExists(owner.pid)) return { gone: true, why: `${describeOwner(owner)} no longer runs` };
    return { gone: false, why: `${describeOwner(owner)} of this host still runs` };
  }
  const cur = await currentLease(store, chainId);
  if (!cur) return { gone: true, why: `${describeOwner(owner)}: the chain has no lease any more` };
  if (!cur.record) return { gone: false, why: `${describeOwner(owner)} is on another host and the chain's lease cannot be read` };
  if (!owner.leaseToken) return { gone: false, why: `${describeOwner(owner)} is on another host and held no lease` };
  if (cur.record.token !== owner.leaseToken) return { gone: true, why: `${describeOwner(owner)} lost the chain's lease (now held by host ${cur.record.host} pid ${cur.record.pid})` };
  const state = leaseState(cur.record, Date.now(), me);
  if (state === 'expired' || state === 'released') return { gone: true, why: `${describeOwner(owner)}: its lease of the chain is ${state}` };
  return { gone: false, why: `${describeOwner(owner)} on another host still holds the chain's lease (until ${cur.record.expires})` };
}

export interface ClaimConflict {
  store: ArchiveStore;
  chainId: string;
  sequence: number;
  archiveId: string;
  /** The claim's location, for messages. */
  where: string;
  log?: Logger;
}

/**
 * A writer's claim of `sequence` found one already there: 'mine' when it names this archive (a retried
 * request), 'retry' when it has just gone (removed here as an orphan, or by its owner, or by another
 * writer that judged it so); throws CHAIN_FORK when the sequence is published or its owner may still
 * publish it (naming the owner).
 */
export async function resolveClaimConflict(c: ClaimConflict): Promise<'mine' | 'retry'> {
  const { store, chainId, sequence } = c;
  const name = claimFileName(sequence);
  // Not readable yet (an S3 PUT in flight) counts as there: look again.
  const text = await store.readMarker(chainId, name).catch(() => '');
  if (text === undefined) {
    // Gone, or not visible yet (an S3 PUT of it in flight answers 409, then 404 for a moment).
    await new Promise((r) => setTimeout(r, 50));
    return 'retry';
  }
  const claim = parseClaim(text);
  if (claim.archiveId === c.archiveId) return 'mine';
  const published = claim.archiveId !== '' && (await store.chainArchives(chainId).catch(() => [])).some((a) => a.sequence === sequence && a.archiveId === claim.archiveId);
  // A claim that names no owner (an older writer's, or damaged) is never removed here.
  if (published || !claim.owner) throw sequenceTaken(store.url, chainId, sequence, claim.archiveId, c.where, published);
  const verdict = await claimOwnerGone(store, chainId, claim.owner);
  if (!verdict.gone) throw sequenceTaken(store.url, chainId, sequence, claim.archiveId, c.where, false, verdict.why);
  const record = { removed: new Date().toISOString(), by: { ...localIdentity() }, why: verdict.why, claim: text };
  if (await store.createMarker(chainId, orphanMarkerName(sequence, claim.archiveId), `${JSON.stringify(record)}\n`)) {
    await store.deleteMarker(chainId, name);
    (c.log ?? silentLogger).warn({ chainId, store: store.url, sequence, orphan: claim.archiveId }, `removed the orphan claim of sequence ${sequence}: ${verdict.why}`);
  } else {
    // Another writer judged the same orphan and is removing it.
    await new Promise((r) => setTimeout(r, 100));
  }
  return 'retry';
}

/**
 * Claim `sequence` with `create` (the store's exclusive create of the claim): true when this call made
 * the claim, false when it already named this archive (or, with `replaces`, any archive); orphan claims
 * of gone writers are removed on the way (resolveClaimConflict).
 */
export async function claimSequence(c: ClaimConflict & { replaces: boolean; create: () => Promise<boolean> }): Promise<boolean> {
  for (let attempt = 0; attempt < 5; attempt++) {
    if (await c.create()) {
      await claimHooks.afterClaim?.();
      return true;
    }
    if (c.replaces) return false;
    if ((await resolveClaimConflict(c)) === 'mine') return false;
  }
  throw sequenceTaken(c.store.url, c.chainId, c.sequence, '', c.where, false, 'another send claiming it at this moment');
}
