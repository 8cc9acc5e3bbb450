/**
 * merge DIR --from SEQ --to SEQ: consolidate consecutive archives of a chain into one equivalent
 * archive. Later versions of a block win; ZERO and UNMAP are kept as such; merging from the full
 * archive gives a synthetic full archive.
 *
 * Chain identity (docs/FORMAT.md, "Merged archives"): the merged archive holds exactly the state the
 * last merged archive holds, so it takes that archive's id (targets record states by archive id:
 * one that holds it holds the merged one, and later incrementals, whose parent is that id, apply on
 * top of it). It takes the first merged archive's parent and sequence (so its file name
 * `<sequence>-<id>` differs from every original's, and both can exist at once while originals are
 * deleted), and records `meta.merged` {fromSequence, toSequence, archives}. Readers resolve a chain by
 * parent links from the newest archive and prefer the merged archive where an id appears twice.
 *
 * The merged archive is written through the store (temporary name, fsync, link) and is durable
 * before any original is deleted: an interrupted merge leaves a valid chain.
 */
import { ThinarchiveError, UsageError } from '../errors.js';
import { withPool } from '../archive/pool.js';
import { writeArchive, type NewArchive } from '../archive/writer.js';
import { ExtentKind } from '../format/constants.js';
import type { MapExtent } from '../format/types.js';
import { openStore, type StoreOptions } from '../store/open.js';
import type { ArchiveStore, StoredArchive } from '../store/types.js';
import { TOOL_VERSION } from '../version.js';
import { ChainReader, chainSegments, mergedInfo, openChain, type ChainArchive } from './chain-state.js';

export interface MergeOptions {
  dir: string;
  /** sequence of the first archive to merge */
  from: number;
  /** sequence of the last archive to merge (its point: for a merged archive, its last sequence) */
  to: number;
  /** another store to write the merged archive to (the originals are then kept) */
  out?: string;
  /** keep the originals in the store (the chain then lists both; readers use the merged one) */
  keepOriginals?: boolean;
  level?: number;
  signal?: AbortSignal;
  storeOptions?: StoreOptions;
}

export interface MergeResult {
  chainId: string;
  archiveId: string;
  sequence: number;
  full: boolean;
  parentId: string | null;
  merged: { fromSequence: number; toSequence: number; archives: number };
  path: string;
  archiveBytes: number;
  rawBytes: number;
  /** archive payload bytes read */
  bytesRead: number;
  deleted: string[];
  seconds: number;
}

/** Merge `group` (consecutive archives of the opened chain) into one archive written to `store`. */
export async function mergeGroup(
  group: ChainArchive[], store: ArchiveStore, opts: { level?: number; signal?: AbortSignal },
): Promise<Omit<MergeResult, 'deleted' | 'seconds'>> {
  const first = group[0].header;
  const last = group[group.length - 1].header;
  const count = group.reduce((n, a) => n + (mergedInfo(a.header)?.archives ?? 1), 0);
  const merged = { fromSequence: first.sequence, toSequence: group[group.length - 1].point, archives: count };
  const header: NewArchive = {
    full: first.full, blockSize: last.blockSize, archiveId: last.archiveId, parentId: first.parentId, chainId: last.chainId,
    sequence: first.sequence, volumeUuid: last.volumeUuid, volumeSize: last.volumeSize, createdMs: last.createdMs,
    sourceChunkSize: last.sourceChunkSize,
    meta: { ...last.meta, tool: `thinarchive ${TOOL_VERSION}`, merged },
  };
  // The merged archive starts from the first merged archive's base.
  if (first.meta.base) header.meta.base = first.meta.base;
  else delete header.meta.base;
  const files = group.map((a) => a.file);
  async function* extents(): AsyncGenerator<MapExtent> {
    for await (const s of chainSegments(files)) {
      const kind = s.kind === 'data' ? ExtentKind.DATA : s.kind === 'zero' ? ExtentKind.ZERO : ExtentKind.UNMAP;
      yield { firstBlock: s.first, blockCount: s.count, kind };
    }
  }
  // It takes a sequence its originals hold: no exclusive claim (store/types.ts).
  const pending = await store.createArchive(header.chainId, header.sequence, header.archiveId!, { replaces: true });
  try {
    const { res, bytesRead } = await withPool(async (pool) => {
      const reader = new ChainReader(files, pool);
      try {
        const r = await writeArchive({
          header, extents: extents(), source: reader, sink: pending.sink, pool,
          level: opts.level, signal: opts.signal,
        });
        return { res: r, bytesRead: reader.stats.reduce((n, s) => n + s.bytesRead, 0) };
      } finally {
        await reader.close();
      }
    });
    opts.signal?.throwIfAborted();
    await pending.commit();
    return {
      chainId: header.chainId, archiveId: header.archiveId!, sequence: header.sequence, full: header.full, parentId: header.parentId, merged,
      path: pending.path, archiveBytes: res.bytesWritten, rawBytes: res.trailer.rawBytes, bytesRead,
    };
  } catch (e) {
    await pending.abort().catch(() => {});
    throw e;
  }
}

/**
 * Before merge or prune writes anything: every archive it will delete must be deletable (object-lock
 * retention, a read-only directory); otherwise it is refused with nothing changed.
 */
export async function refuseUndeletable(store: ArchiveStore, archives: StoredArchive[], what: string): Promise<void> {
  try {
    await store.checkDeletable(archives);
  } catch (e) {
    if (e instanceof ThinarchiveError) throw new ThinarchiveError(e.code, `${what} refused, nothing changed: ${e.message}`, e.exitClass, { cause: e });
    throw e;
  }
}

/** Which archives of the chain `--from`/`--to` name (indexes into chain.archives). */
export function mergeRange(archives: ChainArchive[], from: number, to: number): [number, number] {
  const i = archives.findIndex((a) => a.header.sequence === from);
  const j = archives.findIndex((a) => a.point === to);
  if (i < 0) throw new UsageError(`no archive with sequence ${from} starts a step of the chain (sequences: ${archives.map((a) => a.header.sequence).join(', ')})`);
  if (j < 0) throw new UsageError(`no archive holds the state of sequence ${to} (points: ${archives.map((a) => a.point).join(', ')})`);
  if (j <= i) throw new UsageError(`--from ${from} --to ${to}: nothing to merge (give at least two consecutive archives, --from before --to)`);
  return [i, j];
}

export async function merge(opts: MergeOptions): Promise<MergeResult> {
  const started = performance.now();
  const chain = await openChain(opts.dir, opts.storeOptions);
  try {
    const [i, j] = mergeRange(chain.archives, opts.from, opts.to);
    const group = chain.archives.slice(i, j + 1);
    for (const a of group) await a.file.preflight();
    const deleting = opts.out === undefined && !opts.keepOriginals;
    if (deleting) await refuseUndeletable(chain.store, group.map((a) => a.stored), 'merge');
    const outStore = opts.out !== undefined ? await openStore(opts.out, opts.storeOptions) : chain.writeStore;
    try {
      const r = await mergeGroup(group, outStore, opts);
      const deleted: string[] = [];
      if (deleting) {
        // The merged archive is durable: the originals can go (the one sharing its id last).
        for (const a of group) {
          await chain.store.deleteArchive(a.stored);
          deleted.push(a.stored.path);
        }
      }
      return { ...r, deleted, seconds: (performance.now() - started) / 1000 };
    } finally {
      if (opts.out !== undefined) await outStore.close();
    }
  } finally {
    await chain.close();
  }
}
