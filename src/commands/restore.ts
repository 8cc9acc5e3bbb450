/**
 * restore DIR --at POINT --to TARGET: build the volume as of any archive of a chain, reading each
 * block once from the newest archive (at or before the point) that holds it, instead of replaying
 * every archive. Zeroed and unmapped blocks become holes (images) or are zeroed/discarded (devices,
 * LVs); on a new image they are left as the holes they already are.
 *
 * Safety: every archive up to the point is pre-flighted (header, map, index, trailer) before the
 * first write. The target must be new (--create), empty (an image with nothing allocated), or hold a
 * state of the same chain; anything else needs --force. The target's state is marked "applying" a
 * restore marker (which apply refuses to continue from) before the first write, and recorded as
 * "clean at the point's archive" once all data is flushed, so apply of the next incremental works.
 */
import { UnsafeError } from '../errors.js';
import { withPool } from '../archive/pool.js';
import { rangeBytes } from '../format/types.js';
import type { Logger } from '../log.js';
import type { StoreOptions } from '../store/open.js';
import type { ZeroStats } from '../target/file-target.js';
import { markRebuilding, type TargetKind, type TargetState } from '../target/state.js';
import { checkTargetOptions, cleanState, Target } from '../target/target.js';
import { openChain, selectPoint, type ChainArchive } from '../chain/chain.js';
import { ChainReader, type ArchiveReadStats } from '../chain/reader.js';
import { type Segment } from '../chain/segments.js';

export interface RestoreOptions {
  dir: string;
  /** sequence, archive id or time; default: the newest archive */
  at?: string;
  to: string;
  create?: boolean;
  /** LV targets with --create: the thin pool */
  pool?: string;
  force?: boolean;
  stateDir?: string;
  /** another process holds the target: wait for it instead of being refused (TARGET_LOCKED) */
  wait?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: { bytesDone: number; bytesTotal: number }) => void;
  log?: Logger;
  storeOptions?: StoreOptions;
}

export interface RestoreResult {
  target: string;
  targetKind: TargetKind;
  chainId: string;
  archiveId: string;
  sequence: number;
  volumeSize: number;
  /** Bytes written as data. */
  dataBytes: number;
  /** Bytes made to read as zeroes (zero and unmapped blocks). */
  zeroBytes: number;
  /** Archive payload bytes read, in total and per archive (each record once). */
  bytesRead: number;
  archives: ArchiveReadStats[];
  zeroing: ZeroStats;
  seconds: number;
}

/** Marker in a target's "applying" state while a restore runs: apply cannot mistake it for an archive. */
export function restoreMarker(archiveId: string): string {
  return `restore-${archiveId}`;
}

/** Is the target allowed to be overwritten with this chain? Throws UnsafeError when not. */
export async function checkRestoreTarget(
  target: Target, state: TargetState | null, chainId: string, volumeUuid: string, opts: { force: boolean; verb: string },
): Promise<void> {
  if (target.created || opts.force) return;
  if (state) {
    if (state.chainId === chainId && state.volumeUuid === volumeUuid) return;
    throw new UnsafeError('CHAIN_MISMATCH', `${target.spec} holds archive ${state.archiveId || '(none)'} of chain ${state.chainId}, not of chain ${chainId}; use --force to ${opts.verb} over it`);
  }
  if (!(await target.mayHoldData())) return; // an image with nothing allocated: empty
  throw new UnsafeError('TARGET_NOT_EMPTY', `${target.spec} has no thinarchive state and may hold data; use --force to ${opts.verb} over it`);
}

export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now();
  // Every option is checked before the chain is read (it may be remote).
  await checkTargetOptions(opts.to, opts);
  const chain = await openChain(opts.dir, opts.storeOptions);
  try {
    const at = selectPoint(chain.archives, opts.at);
    const used: ChainArchive[] = chain.archives.slice(0, at + 1);
    for (const a of used) await a.file.preflight();
    const h = used[used.length - 1].header;

    const target = await Target.open(opts.to, {
      create: opts.create, pool: opts.pool, createSize: h.volumeSize, neededSize: h.volumeSize, blockSize: h.blockSize, stateDir: opts.stateDir, log: opts.log,
      command: 'restore', wait: opts.wait, signal: opts.signal,
    });
    try {
      const state = target.created ? null : await target.readState();
      await checkRestoreTarget(target, state, h.chainId, h.volumeUuid, { force: !!opts.force, verb: 'restore' });
      await target.ensureSize(h.volumeSize);
      await markRebuilding(target, state, h, restoreMarker(h.archiveId));
      const bs = h.blockSize;
      const size = h.volumeSize;
      let dataBytes = 0;
      let zeroBytes = 0;
      const stats = await withPool(async (pool) => {
        const reader = new ChainReader(used.map((a) => a.file), pool);
        // Writes in flight, each with its segment: a segment is done (its record's buffer reusable)
        // only once its write has finished.
        const writes: { w: Promise<void>; seg: Segment }[] = [];
        const finishOldest = async (): Promise<void> => {
          const { w, seg } = writes.shift()!;
          await w;
          reader.done(seg);
        };
        try {
          for (;;) {
            opts.signal?.throwIfAborted();
            const seg = await reader.next();
            if (!seg) break;
            if (seg.kind === 'data') {
              const bytes = await reader.bytesOf(seg);
              const w = target.write(bytes, seg.first * bs);
              w.catch(() => {});
              writes.push({ w, seg });
              dataBytes += bytes.length;
              if (writes.length > 2) await finishOldest();
            } else {
              const n = rangeBytes(seg.first, seg.count, size, bs);
              zeroBytes += n;
              // A target made by this run reads as zeroes already.
              if (!target.created) await target.zero(seg.first * bs, n);
              reader.done(seg);
            }
            opts.onProgress?.({ bytesDone: dataBytes + zeroBytes, bytesTotal: size });
          }
          while (writes.length > 0) await finishOldest();
        } finally {
          await Promise.allSettled(writes.map((x) => x.w));
          await reader.close();
        }
        return reader.stats;
      });
      await target.sync();
      await target.writeState(cleanState(h));
      return {
        target: opts.to, targetKind: target.kind, chainId: h.chainId, archiveId: h.archiveId, sequence: h.sequence, volumeSize: size,
        dataBytes, zeroBytes, bytesRead: stats.reduce((n, s) => n + s.bytesRead, 0), archives: stats, zeroing: target.zeroStats,
        seconds: (performance.now() - started) / 1000,
      };
    } finally {
      await target.close();
    }
  } finally {
    await chain.close();
  }
}
