/**
 * A chain in a store: resolved by parent links from the newest archive back to a full one (a merged
 * archive, docs/FORMAT.md "Merged archives", supersedes the originals it replaces while they still
 * exist), the point an `--at` names, and the verification record kept beside a directory chain.
 */
import { FormatError, UsageError } from '../errors.js';
import type { ArchiveFile } from '../archive/reader.js';
import type { ArchiveHeader } from '../format/types.js';
import { writeFileAtomic } from '../fsutil.js';
import { DirectoryStore } from '../store/dir.js';
import { openStore, type StoreOptions } from '../store/open.js';
import { openStored } from '../store/refs.js';
import type { ArchiveStore, ChainListing, StoredArchive } from '../store/types.js';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';

export interface MergedInfo {
  /** Sequence of the first archive merged (the merged archive's own sequence). */
  fromSequence: number;
  /** Sequence of the last archive merged: the state the merged archive holds. */
  toSequence: number;
  /** How many original archives it stands for. */
  archives: number;
}

export function mergedInfo(h: ArchiveHeader): MergedInfo | undefined {
  const m = h.meta.merged as MergedInfo | undefined;
  if (!m || typeof m !== 'object' || !Number.isSafeInteger(m.fromSequence) || !Number.isSafeInteger(m.toSequence)) return undefined;
  return m;
}

/** The sequence number of the state an archive holds (a merged archive: its last merged sequence). */
export function pointOf(h: ArchiveHeader): number {
  return mergedInfo(h)?.toSequence ?? h.sequence;
}

export interface ChainArchive {
  stored: StoredArchive;
  file: ArchiveFile;
  header: ArchiveHeader;
  /** The point (sequence of the state it holds). */
  point: number;
}

export interface OpenedChain {
  store: ArchiveStore;
  /** Where new archives of this chain are written (the store; for a chain directory, its parent). */
  writeStore: ArchiveStore;
  chainId: string;
  dir: string;
  /** The chain, oldest first: a full archive, then each archive's child up to the newest. */
  archives: ChainArchive[];
  /** Archives of the chain directory that are not on the path (replaced by a merged archive). */
  superseded: StoredArchive[];
  close(): Promise<void>;
}

/**
 * Open the one chain of a store (a directory, a chain directory or a URL) and resolve its path.
 */
export async function openChain(ref: string, storeOptions?: StoreOptions): Promise<OpenedChain> {
  const store = await openStore(ref, storeOptions);
  const opened: ArchiveFile[] = [];
  try {
    const listing = await store.onlyChain();
    let writeStore: ArchiveStore = store;
    if (store instanceof DirectoryStore && resolve(listing.dir) === resolve(store.root)) writeStore = new DirectoryStore(dirname(resolve(store.root)));
    const res = await resolveChain(store, listing, opened, storeOptions);
    return {
      store, writeStore, chainId: listing.chainId, dir: listing.dir, ...res,
      close: async () => {
        for (const f of opened) await f.close().catch(() => {});
        await store.close();
      },
    };
  } catch (e) {
    for (const f of opened) await f.close().catch(() => {});
    await store.close();
    throw e;
  }
}

async function resolveChain(store: ArchiveStore, listing: ChainListing, opened: ArchiveFile[], storeOptions?: StoreOptions): Promise<{ archives: ChainArchive[]; superseded: StoredArchive[] }> {
  const all: ChainArchive[] = [];
  for (const a of listing.archives) {
    const file = await openStored(store, a, storeOptions);
    opened.push(file);
    const h = file.header;
    if (h.archiveId !== a.archiveId || h.sequence !== a.sequence || h.chainId !== listing.chainId) {
      throw new FormatError('MISNAMED', `the header (archive ${h.archiveId}, sequence ${h.sequence}) does not match the file name`, undefined, a.path);
    }
    all.push({ stored: a, file, header: h, point: pointOf(h) });
  }
  if (all.length === 0) throw new UsageError(`no archives in ${listing.dir}`);
  // Several archives may carry one id: a merged archive and the last original it replaces. The
  // merged one (lowest sequence) is preferred: its parent lies outside what it replaces.
  const byId = new Map<string, ChainArchive>();
  for (const a of all) {
    const have = byId.get(a.header.archiveId);
    if (!have || a.header.sequence < have.header.sequence) byId.set(a.header.archiveId, a);
  }
  const newest = all.reduce((x, y) => (pointOf(y.header) > pointOf(x.header) || (pointOf(y.header) === pointOf(x.header) && y.header.sequence < x.header.sequence) ? y : x));
  const path: ChainArchive[] = [];
  let cur: ChainArchive | undefined = byId.get(newest.header.archiveId)!;
  const seen = new Set<string>();
  while (cur) {
    if (seen.has(cur.header.archiveId)) throw new FormatError('BROKEN_LINK', `the chain's parent links loop at archive ${cur.header.archiveId}`, undefined, cur.stored.path);
    seen.add(cur.header.archiveId);
    path.push(cur);
    const parent: string | null = cur.header.parentId;
    if (parent === null) break;
    const next = byId.get(parent);
    if (!next) {
      throw new FormatError('MISSING_ARCHIVE', `archive ${cur.header.archiveId} (sequence ${cur.header.sequence}) needs its parent ${parent}, which is not in ${listing.dir}`, undefined, cur.stored.path);
    }
    cur = next;
  }
  path.reverse();
  if (!path[0].header.full) throw new FormatError('MISSING_ARCHIVE', `the chain does not start with a full archive (first: sequence ${path[0].header.sequence})`, undefined, path[0].stored.path);
  for (const a of path) {
    if (a.header.blockSize !== path[0].header.blockSize || a.header.volumeUuid !== path[0].header.volumeUuid) {
      throw new FormatError('BROKEN_LINK', `archive ${a.header.archiveId} has another block size or volume than the chain's full archive`, undefined, a.stored.path);
    }
  }
  const onPath = new Set(path);
  const superseded = all.filter((a) => !onPath.has(a)).map((a) => a.stored);
  return { archives: path, superseded };
}

/**
 * Pick the point `at` names: a sequence number (the state after that archive), an archive id, or a
 * time (the newest archive created at or before it). Returns the index into `archives`.
 */
export function selectPoint(archives: ChainArchive[], at: string | undefined): number {
  if (at === undefined) return archives.length - 1;
  if (/^\d+$/.test(at)) {
    const seq = Number(at);
    const i = archives.findIndex((a) => a.point === seq);
    if (i < 0) {
      const m = archives.find((a) => { const mi = mergedInfo(a.header); return mi && seq >= mi.fromSequence && seq < mi.toSequence; });
      if (m) throw new UsageError(`sequence ${seq} was merged into archive ${m.header.archiveId} (sequence ${mergedInfo(m.header)!.fromSequence}..${m.point}); its own state is gone`);
      throw new UsageError(`no archive with sequence ${seq} in the chain (points: ${archives.map((a) => a.point).join(', ')})`);
    }
    return i;
  }
  if (/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(at)) {
    const i = archives.findIndex((a) => a.header.archiveId === at.toLowerCase());
    if (i < 0) throw new UsageError(`archive ${at} is not in the chain`);
    return i;
  }
  const t = Date.parse(at);
  if (Number.isNaN(t)) throw new UsageError(`--at ${JSON.stringify(at)}: want a sequence number, an archive id or a time (ISO 8601)`);
  let best = -1;
  archives.forEach((a, i) => { if (a.header.createdMs <= t) best = i; });
  if (best < 0) throw new UsageError(`no archive of the chain was created at or before ${new Date(t).toISOString()}`);
  return best;
}

// ---------------------------------------------------------------------------------------------
// The last verification of a chain, kept beside its archives (directory stores only)

/** What `verify --against` last found, in `<chain dir>/.thinarchive-verify.json`. */
export interface VerificationRecord {
  at: string;
  target: string;
  mode: string;
  ok: boolean;
  archiveId: string;
  sequence: number;
  blocksChecked: number;
  mismatchedBlocks: number;
}

export const VERIFY_SIDECAR = '.thinarchive-verify.json';

/** Record a verification beside a local chain's archives; best effort (a read-only store is fine). */
export async function recordVerification(chain: OpenedChain, rec: VerificationRecord): Promise<boolean> {
  if (!(chain.store instanceof DirectoryStore)) return false;
  try {
    await writeFileAtomic(join(chain.dir, VERIFY_SIDECAR), JSON.stringify(rec, null, 2) + '\n');
    return true;
  } catch {
    return false;
  }
}

/** The last verification recorded for a chain directory, if any. */
export async function readVerification(chainDir: string): Promise<VerificationRecord | null> {
  try {
    const r = JSON.parse(await readFile(join(chainDir, VERIFY_SIDECAR), 'utf8')) as VerificationRecord;
    return typeof r.ok === 'boolean' && typeof r.at === 'string' ? r : null;
  } catch {
    return null;
  }
}
