/**
 * send of an image file or block device: a full archive of every allocated block, or an incremental of
 * the ranges a thin_delta XML document lists, on top of a parent archive.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { basename } from 'node:path';
import { checkLevel, type NewArchive, type WriteProgress } from '../archive/writer.js';
import { dryRunResult, leaseUseOf, openDestination, writeAndCommit, type SendDestination, type SendLeaseOptions, type SendResult } from '../chain/publish.js';
import { UsageError } from '../errors.js';
import { isValidBlockSize } from '../format/frames.js';
import type { ArchiveHeader, MapExtent } from '../format/types.js';
import { deltaFileExtents } from '../source/extents.js';
import { FileVolume } from '../source/volume.js';
import type { StoreOptions } from '../store/open.js';
import { namedArchiveRef, openArchiveRef } from '../store/refs.js';
import { readSentRecord, writeSentRecord } from '../source/sent-record.js';
import { defaultStateDir } from '../fsutil.js';
import { TOOL_VERSION } from '../version.js';

export type { SendDestination, SendResult } from '../chain/publish.js';

export interface SendOptions extends SendLeaseOptions {
  image: string;
  /** thin_delta XML describing what changed since the parent. */
  changes?: string;
  /** Parent archive (file or URL) or a store (directory or URL: its newest archive). */
  parent?: string;
  /** Store (directory, ssh:// or s3:// URL), or a sink for a pipe (then `label` names it). */
  to: SendDestination;
  /** Options for remote stores (ssh options, S3 endpoint, ...). */
  storeOptions?: StoreOptions;
  blockSize?: number;
  level?: number;
  name?: string;
  volumeUuid?: string;
  /** The new archive's id (default: a random UUID): a caller that records which archive holds what before it is published (the daemon's image hashes) chooses it. */
  archiveId?: string;
  /** Where an encrypted send records what its next incremental needs (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive). */
  stateDir?: string;
  dryRun?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: WriteProgress) => void;
}

/** What an incremental takes of its parent. */
interface ParentInfo {
  archiveId: string;
  chainId: string;
  sequence: number;
  volumeUuid: string;
  blockSize: number;
  volumeName: string;
}

/**
 * The parent an incremental continues: from its header, or, for an encrypted parent this host cannot
 * read (no identity: a write-only host), from the store's names and the state directory's record of
 * the last archive this host sent of that chain (source/sent-record.ts).
 */
async function parentOf(ref: string, storeOptions: StoreOptions | undefined, stateDir: string): Promise<ParentInfo> {
  const named = storeOptions?.identities?.length ? undefined : await namedArchiveRef(ref, storeOptions);
  if (named?.encrypted) {
    const rec = await readSentRecord(stateDir, named.chainId);
    if (!rec || rec.archiveId !== named.archiveId || rec.sequence !== named.sequence) {
      throw new UsageError(`the parent ${ref} (archive ${named.archiveId}, sequence ${named.sequence} of chain ${named.chainId}) is encrypted and this host `
        + `${rec ? `last sent archive ${rec.archiveId} (sequence ${rec.sequence}) of that chain` : 'has no record of sending it'} (${stateDir}/sent/${named.chainId}.json); `
        + 'give --identity to read the parent, or send from the host that wrote the chain', 'AGE_NO_IDENTITY');
    }
    return { archiveId: rec.archiveId, chainId: rec.chainId, sequence: rec.sequence, volumeUuid: rec.volumeUuid, blockSize: rec.blockSize, volumeName: rec.volumeName };
  }
  const pf = await openArchiveRef(ref, storeOptions);
  const h: ArchiveHeader = pf.header;
  await pf.close();
  return { archiveId: h.archiveId, chainId: h.chainId, sequence: h.sequence, volumeUuid: h.volumeUuid, blockSize: h.blockSize, volumeName: h.meta.volume.name };
}

export async function send(opts: SendOptions): Promise<SendResult> {
  const started = performance.now();
  if ((opts.changes === undefined) !== (opts.parent === undefined)) {
    throw new UsageError('an incremental send needs both --changes and --parent');
  }
  checkLevel(opts.level);
  const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  if (opts.volumeUuid !== undefined && !uuid.test(opts.volumeUuid)) {
    throw new UsageError(`--volume-uuid must be a UUID (like 0f8fad5b-d9cb-469f-a165-70867728950e), got ${JSON.stringify(opts.volumeUuid)}`);
  }
  if (opts.archiveId !== undefined && !uuid.test(opts.archiveId)) throw new UsageError(`archiveId must be a UUID, got ${JSON.stringify(opts.archiveId)}`);
  const source = await FileVolume.open(opts.image);
  try {
    const stateDir = opts.stateDir ?? defaultStateDir();
    const parent = opts.parent !== undefined ? await parentOf(opts.parent, opts.storeOptions, stateDir) : undefined;
    const blockSize = parent?.blockSize ?? opts.blockSize ?? 64 * 1024;
    if (!isValidBlockSize(blockSize)) throw new UsageError(`invalid block size ${blockSize}: a power of two from 4 KiB to 4 MiB`);
    if (parent && opts.blockSize !== undefined && opts.blockSize !== parent.blockSize) {
      throw new UsageError(`--block-size ${opts.blockSize} differs from the chain's block size ${parent.blockSize}`);
    }
    const full = parent === undefined;
    const header: NewArchive = {
      full,
      blockSize,
      archiveId: opts.archiveId ?? randomUUID(),
      parentId: parent?.archiveId ?? null,
      chainId: parent?.chainId ?? randomUUID(),
      sequence: parent ? parent.sequence + 1 : 0,
      volumeUuid: parent?.volumeUuid ?? opts.volumeUuid ?? randomUUID(),
      volumeSize: source.size,
      sourceChunkSize: blockSize,
      meta: {
        volume: { name: opts.name ?? parent?.volumeName ?? basename(opts.image) },
        source: { kind: source.isBlockDevice ? 'blockdev' : 'image', path: opts.image, host: hostname() },
        tool: `thinarchive ${TOOL_VERSION}`,
      },
    };
    const extents = (): AsyncIterable<MapExtent> => (full ? source.allocatedExtents(blockSize) : deltaFileExtents(opts.changes!, blockSize, source.size));
    if (opts.dryRun) return await dryRunResult(header, extents(), started);
    const dest = await openDestination(opts.to, header, opts.storeOptions, leaseUseOf(opts));
    const r = await writeAndCommit(dest, { header, extents: extents(), source, level: opts.level, signal: opts.signal, onProgress: opts.onProgress, started });
    if (opts.storeOptions?.recipients?.length) {
      // What the next incremental needs of this archive, for a host that cannot read it (write-only).
      await writeSentRecord(stateDir, {
        version: 1, chainId: header.chainId, archiveId: header.archiveId!, sequence: header.sequence, volumeUuid: header.volumeUuid,
        blockSize, volumeName: header.meta.volume.name, encrypted: true,
      });
    }
    return r;
  } finally {
    await source.close();
  }
}
