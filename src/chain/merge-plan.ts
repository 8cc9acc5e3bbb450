/**
 * Merging consecutive archives of a chain into one equivalent archive (merge, prune): later versions
 * of a block win; the result takes the last archive's id and the first's parent and sequence
 * (docs/FORMAT.md, "Merged archives").
 */
import { AgeEncryptor } from '../archive/encrypted.js';
import { withPool } from '../archive/pool.js';
import { recipientOf } from '../crypto/age.js';
import { isEncrypted } from '../store/layout.js';
import type { StoreOptions } from '../store/open.js';
import { writeArchive, type NewArchive } from '../archive/writer.js';
import { ThinarchiveError } from '../errors.js';
import { ExtentKind } from '../format/constants.js';
import type { MapExtent } from '../format/types.js';
import type { ArchiveStore, StoredArchive } from '../store/types.js';
import { TOOL_VERSION } from '../version.js';
import { mergedInfo, type ChainArchive } from './chain.js';
import { ChainReader } from './reader.js';
import { chainSegments } from './segments.js';
import { mergeGroups, planRetention, type RetentionGrid } from './retention.js';

/** The archive a merge wrote. */
export interface MergedArchive {
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
}

/** Merge `group` (consecutive archives of the opened chain) into one archive written to `store`. */
export async function mergeGroup(
  group: ChainArchive[], store: ArchiveStore, opts: { level?: number; signal?: AbortSignal; storeOptions?: StoreOptions },
): Promise<MergedArchive> {
  // A merged archive of an encrypted chain is encrypted too (FORMAT.md §3.4): to the recipients given,
  // else to those of the identities that read the chain.
  const encrypted = isEncrypted(group[0].stored);
  const recipients = encrypted ? (opts.storeOptions?.recipients?.length ? opts.storeOptions.recipients : (opts.storeOptions?.identities ?? []).map(recipientOf)) : undefined;
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
  const pending = await store.createArchive(header.chainId, header.sequence, header.archiveId!, { replaces: true, encrypted });
  try {
    const enc = recipients ? new AgeEncryptor(recipients, (b) => pending.sink.write(b)) : undefined;
    const sink = enc ? { write: (c: Uint8Array) => enc.write(c) } : pending.sink;
    const { res, bytesRead } = await withPool(async (pool) => {
      const reader = new ChainReader(files, pool);
      try {
        const r = await writeArchive({
          header, extents: extents(), source: reader, sink, pool,
          level: opts.level, signal: opts.signal,
        });
        return { res: r, bytesRead: reader.stats.reduce((n, s) => n + s.bytesRead, 0) };
      } finally {
        await reader.close();
      }
    });
    opts.signal?.throwIfAborted();
    await enc?.finish();
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
    if (e instanceof ThinarchiveError) throw ThinarchiveError.prefixed(e, `${what} refused, nothing changed: `);
    throw e;
  }
}

/**
 * Which archives of the path are kept, and the groups (ending at a kept archive) to merge: by the
 * grid's rules at `now`, or all but the archives named (prune --group). The newest always.
 */
export function planPrune(archives: ChainArchive[], rule: { grid: RetentionGrid; now: number } | { drop: ReadonlySet<string> }): { kept: boolean[]; groups: ChainArchive[][] } {
  let kept: boolean[];
  if ('grid' in rule) kept = planRetention(archives.map((a) => a.header.createdMs), rule.grid, rule.now);
  else {
    kept = archives.map((a) => !rule.drop.has(a.header.archiveId));
    if (kept.length) kept[kept.length - 1] = true;
  }
  return { kept, groups: mergeGroups(archives, kept) };
}
