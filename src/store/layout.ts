/**
 * The store layout every store shares (src/store/types.ts):
 * `<root>/<chain-id>/<sequence, 10 digits>-<archive-id>.tna`. Names, their order, and the choice of
 * the one chain of a store, in one place for the directory, ssh:// and s3:// stores.
 */
import { UnsafeError, UsageError } from '../errors.js';
import { ARCHIVE_EXTENSION, ENCRYPTED_SUFFIX } from '../format/constants.js';
import type { ChainListing, StoredArchive } from './types.js';

/** A chain directory's name: the chain id (a UUID). */
export const CHAIN_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** An archive's file name; groups: sequence, archive id, `.age` for an encrypted archive (FORMAT.md §3.4). */
export const NAME_RE = /^(\d{10})-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.tna(\.age)?$/;

/** `<sequence>-<archive-id>.tna`, or `.tna.age` for an encrypted archive. */
export function archiveFileName(sequence: number, archiveId: string, encrypted = false): string {
  return `${String(sequence).padStart(10, '0')}-${archiveId}${ARCHIVE_EXTENSION}${encrypted ? ENCRYPTED_SUFFIX : ''}`;
}

/** True when a stored archive is encrypted: its name ends in `.tna.age`. */
export function isEncrypted(a: { name: string }): boolean {
  return a.name.endsWith(`${ARCHIVE_EXTENSION}${ENCRYPTED_SUFFIX}`);
}

/**
 * The claim of a sequence (FORMAT.md §5, "Publishing"): `<chain-id>/.<sequence, 10 digits>.seq`, created
 * exclusively (never replaced) right before an archive of that sequence becomes visible; it holds the
 * archive id that owns the sequence and its writer (store/claims.ts). Claims are never removed by merge
 * or prune: a sequence of a chain is published once.
 */
export function claimFileName(sequence: number): string {
  return `.${String(sequence).padStart(10, '0')}.seq`;
}

/** A marker's name (types.ts): hidden, one path component, nothing a shell or a URL must quote. */
export const MARKER_RE = /^\.[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/** UsageError unless `chainId` is a valid chain id and `name` a valid marker name. */
export function checkMarker(chainId: string, name: string): void {
  checkChainId(chainId);
  if (!MARKER_RE.test(name)) throw new UsageError(`invalid marker name ${JSON.stringify(name)}`);
}

/**
 * The error of a writer that lost the race for a sequence: `holder` is the archive id the claim names
 * ('' when unreadable), `published` whether that archive is listed in the store, `owner` why the
 * claim's writer may still publish it (store/claims.ts).
 */
export function sequenceTaken(store: string, chainId: string, sequence: number, holder: string, claim: string, published: boolean, owner?: string): UnsafeError {
  const by = holder ? `archive ${holder}` : 'another archive';
  const stale = published ? ''
    : owner ? ` (it is not in the store yet: its writer, ${owner}, may still publish it; if that writer is stuck, stop it and send again: the claim of a writer that is gone is removed by the next send)`
      : ` (it is not in the store yet, and the claim does not say who made it; if no send of this chain is running, remove ${claim} and send again)`;
  return new UnsafeError('CHAIN_FORK', `sequence ${sequence} of chain ${chainId} in ${store} is already taken by ${by}${stale}; `
    + 'this archive would fork the chain (send from the newest archive, or start a new chain with a full send)');
}

/** UsageError unless `chainId` is a valid chain id. */
export function checkChainId(chainId: string): void {
  if (!CHAIN_RE.test(chainId)) throw new UsageError(`invalid chain id ${chainId}`);
}

/** A chain's archives in order: by sequence, then by name. Sorts in place. */
export function sortArchives(archives: StoredArchive[]): StoredArchive[] {
  return archives.sort((a, b) => a.sequence - b.sequence || a.name.localeCompare(b.name));
}

/** The one chain with archives among `chains` of store `url`; UsageError when there are none or several. */
export function onlyChainOf(url: string, chains: ChainListing[]): ChainListing {
  const withArchives = chains.filter((c) => c.archives.length > 0);
  if (withArchives.length === 0) throw new UsageError(`no archives in ${url}`);
  if (withArchives.length > 1) {
    throw new UsageError(`${url} holds ${withArchives.length} chains; name one: ${withArchives.map((c) => c.dir).join(', ')}`);
  }
  return withArchives[0];
}

/**
 * A chain's archives without those a merged archive stands in for, from the names alone (FORMAT.md
 * §3.1): a merged archive takes the sequence of the first archive it replaces and the archive id of
 * the last, so when several archives carry one id, the one with the lowest sequence covers every
 * sequence from its own up to the highest carrying that id. Archives inside a covered range are left
 * by `merge --keep-originals` or an interrupted prune; readers take the merged one. Input in sequence
 * order; output in the same order.
 */
export function withoutSuperseded(archives: StoredArchive[]): StoredArchive[] {
  const span = new Map<string, { from: number; to: number; by: StoredArchive }>();
  for (const a of archives) {
    const s = span.get(a.archiveId);
    if (!s) span.set(a.archiveId, { from: a.sequence, to: a.sequence, by: a });
    else {
      if (a.sequence < s.from) Object.assign(s, { from: a.sequence, by: a });
      s.to = Math.max(s.to, a.sequence);
    }
  }
  const covering = [...span.values()].filter((s) => s.to > s.from);
  return archives.filter((a) => !covering.some((c) => c.by !== a && a.sequence >= c.from && a.sequence <= c.to));
}
