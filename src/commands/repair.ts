/**
 * apply --repair: bring a target that diverged from a chain (edited by mistake, a partial restore,
 * no common state) to the chain's newest state by rewriting only the blocks whose checksums differ.
 *
 * The target is read once (holes of a sparse image are not read: they are zeroes); each block's
 * xxh64 is compared with the chain's expected state (chain/segments.ts). A block that must hold data is
 * fetched from the newest archive holding it (its record read and checked once, cached while
 * nearby blocks need it); a block that must read as zeroes is zeroed. Before the first write the
 * target is marked "applying" a repair marker, and "clean at the newest archive" after the data is
 * flushed, so later applies continue from it.
 */
import { UsageError } from '../errors.js';
import { payloadBuffer, payloadCorrupt, withPool } from '../archive/pool.js';
import { FRAME_CHECK_SIZE, FRAME_HEAD_SIZE } from '../format/constants.js';
import { blockLength, type IndexEntry } from '../format/types.js';
import type { Logger } from '../log.js';
import type { StoreOptions } from '../store/open.js';
import type { ZeroStats } from '../target/file-target.js';
import { markRebuilding, type TargetKind } from '../target/state.js';
import { cleanState, Target } from '../target/target.js';
import { openChain } from '../chain/chain.js';
import { chainSegments } from '../chain/segments.js';
import { scanTarget } from '../chain/scan.js';

export interface RepairOptions {
  /** A store or chain directory (one chain). */
  dir: string;
  to: string;
  stateDir?: string;
  /** another process holds the target: wait for it instead of being refused (TARGET_LOCKED) */
  wait?: boolean;
  signal?: AbortSignal;
  log?: Logger;
  storeOptions?: StoreOptions;
}

export interface RepairResult {
  target: string;
  targetKind: TargetKind;
  chainId: string;
  archiveId: string;
  sequence: number;
  blocks: number;
  /** blocks compared */
  blocksChecked: number;
  /** blocks that differed */
  badBlocks: number;
  /** blocks rewritten with data, and blocks zeroed */
  blocksWritten: number;
  blocksZeroed: number;
  bytesWritten: number;
  /** bytes read from the target (once) */
  targetBytesRead: number;
  /** archive bytes read: record frames and payloads of the records that held bad blocks */
  archiveBytesRead: number;
  records: number;
  zeroing: ZeroStats;
  seconds: number;
}

export function repairMarker(archiveId: string): string {
  return `repair-${archiveId}`;
}

const RECORD_CACHE = 8;

export async function repair(opts: RepairOptions): Promise<RepairResult> {
  const started = performance.now();
  const chain = await openChain(opts.dir, opts.storeOptions);
  try {
    const files = chain.archives.map((a) => a.file);
    for (const f of files) await f.preflight();
    const h = files[files.length - 1].header;
    const target = await Target.open(opts.to, { neededSize: h.volumeSize, blockSize: h.blockSize, stateDir: opts.stateDir, log: opts.log, command: 'repair', wait: opts.wait, signal: opts.signal });
    try {
      const state = await target.readState();
      await target.ensureSize(h.volumeSize);
      await markRebuilding(target, state, h, repairMarker(h.archiveId));
      const bs = h.blockSize;
      const size = h.volumeSize;
      const res = {
        blocksWritten: 0, blocksZeroed: 0, bytesWritten: 0, archiveBytesRead: 0, records: 0,
      };
      // A scanning reader over the target (the same file handle: reads and repairs interleave).
      const source = {
        size: target.size,
        read: (b: Uint8Array, o: number, l: number, p: number) => target.read(b, o, l, p),
      };
      const totals = await withPool(async (pool) => {
        const cache = new Map<string, Promise<Uint8Array>>();
        const recordBytes = (archive: number, entry: IndexEntry): Promise<Uint8Array> => {
          const offset = entry.offset;
          const k = `${archive}:${offset}`;
          let p = cache.get(k);
          if (!p) {
            const f = files[archive];
            p = (async () => {
              const r = await f.readRecordAt(offset, undefined, entry);
              const d = r.data!;
              res.records++;
              res.archiveBytesRead += d.storedLen + FRAME_HEAD_SIZE + FRAME_CHECK_SIZE + 32 + d.blockCount * 8;
              const pl = r.payload!;
              const out = await pool.decode(payloadBuffer(pl), d, bs, true);
              if (!out.ok) throw payloadCorrupt(out, d.firstBlock, offset, f.path);
              return new Uint8Array(out.raw!);
            })();
            p.catch(() => {});
            cache.set(k, p);
            if (cache.size > RECORD_CACHE) cache.delete(cache.keys().next().value!);
          }
          return p;
        };
        return scanTarget({
          files, segments: chainSegments(files, { hashes: true }), source, pool, blockSize: bs, volumeSize: size, signal: opts.signal,
          onBad: async (e) => {
            const len = blockLength(e.block, size, bs);
            if (e.zero) {
              await target.zero(e.block * bs, len);
              res.blocksZeroed++;
              return;
            }
            const rec = e.seg.record!;
            const raw = await recordBytes(e.seg.archive, rec);
            const from = (e.block - rec.firstBlock) * bs;
            await target.write(raw.subarray(from, from + len), e.block * bs);
            res.blocksWritten++;
            res.bytesWritten += len;
          },
        });
      });
      await target.sync();
      await target.writeState(cleanState(h));
      return {
        target: opts.to, targetKind: target.kind, chainId: h.chainId, archiveId: h.archiveId, sequence: h.sequence,
        blocks: Math.ceil(size / bs), blocksChecked: totals.blocksChecked, badBlocks: totals.bad, ...res,
        targetBytesRead: totals.bytesRead, zeroing: target.zeroStats, seconds: (performance.now() - started) / 1000,
      };
    } finally {
      await target.close();
    }
  } finally {
    await chain.close();
  }
}

export function repairInputs(inputs: string[]): string {
  if (inputs.length !== 1 || inputs[0] === '-') throw new UsageError('apply --repair takes one store or chain directory');
  return inputs[0];
}
