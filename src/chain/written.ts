/**
 * apply --verify: what an apply wrote, read back and compared before the new state is recorded.
 *
 * While an archive is applied, WrittenBlocks notes every range it zeroes or unmaps (the map's
 * non-DATA extents) and every record (DATA with its per-block xxh64, or ZERO), in spools that spill to
 * a temporary file (memory stays bounded whatever the archive). After the target is flushed,
 * `verifyWritten` reads those blocks back (one pass in ascending order, a sparse image's holes
 * skipped) and compares them by checksum with scanTarget (the comparison of verify --against): the
 * same check as `verify STORE --against TARGET --changed-only`, with no store to read, so it works on
 * a replica fed from a stream (`apply -`, a remote apply).
 *
 * Reads go through the page cache: they catch wrong offsets, lost or misdirected writes anywhere
 * between thinarchive and the cache, not media that fails later.
 */
import type { WorkerPool } from '../archive/pool.js';
import { ExtentSpool, HashSpool } from '../archive/spool.js';
import { ExtentKind } from '../format/constants.js';
import type { DataRecordHead, MapExtent, ZeroRecord } from '../format/types.js';
import { openScanTargetLocked, scanTarget, type Expect } from './scan.js';
import type { Segment } from './segments.js';

export class WrittenBlocks {
  /** records (DATA and ZERO), ascending */
  private readonly records = new ExtentSpool();
  /** the DATA records' block hashes, in the same order */
  private readonly hashes = new HashSpool();
  /** the map's ZERO and UNMAP extents, ascending */
  private readonly cleared = new ExtentSpool();

  async mapExtent(e: MapExtent): Promise<void> {
    if (e.kind !== ExtentKind.DATA) await this.cleared.add(e);
  }

  async dataRecord(r: DataRecordHead): Promise<void> {
    await this.records.add({ firstBlock: r.firstBlock, blockCount: r.blockCount, kind: ExtentKind.DATA });
    await this.hashes.add(r.hashes);
  }

  async zeroRecord(r: ZeroRecord): Promise<void> {
    await this.records.add({ firstBlock: r.firstBlock, blockCount: r.blockCount, kind: ExtentKind.ZERO });
  }

  /** Every range noted, ascending (the two spools merged; the archive's validator made them disjoint). */
  async *segments(): AsyncGenerator<Segment> {
    const a = this.records.read();
    const b = this.cleared.read();
    let x = await a.next();
    let y = await b.next();
    while (!x.done || !y.done) {
      if (!x.done && (y.done || x.value.firstBlock <= y.value.firstBlock)) {
        const e = x.value;
        if (e.kind === ExtentKind.DATA) yield { first: e.firstBlock, count: e.blockCount, kind: 'data', archive: 0, hashes: await this.hashes.take(e.blockCount) };
        else yield { first: e.firstBlock, count: e.blockCount, kind: 'zero', archive: 0 };
        x = await a.next();
      } else {
        const e = y.value!;
        yield { first: e.firstBlock, count: e.blockCount, kind: e.kind === ExtentKind.UNMAP ? 'unmap' : 'zero', archive: 0 };
        y = await b.next();
      }
    }
  }

  async close(): Promise<void> {
    await Promise.all([this.records.close(), this.hashes.close(), this.cleared.close()]);
  }
}

export interface WrittenCheck {
  blocksChecked: number;
  /** read from the target (the rest were holes of a sparse image) */
  blocksRead: number;
  bytesRead: number;
  mismatchedBlocks: number;
  /** the first block that differs: what it must be and what was read */
  first: { block: number; expected: string; actual: string } | null;
  seconds: number;
}

const hex = (h: bigint): string => h.toString(16).padStart(16, '0');

/**
 * Read back the blocks noted and compare them (the caller holds the target's lock and has flushed it).
 */
export async function verifyWritten(
  written: WrittenBlocks, o: { to: string; stateDir?: string; pool: WorkerPool; blockSize: number; volumeSize: number; signal?: AbortSignal },
): Promise<WrittenCheck> {
  const started = performance.now();
  const tgt = await openScanTargetLocked(o.to, o.stateDir);
  let first: WrittenCheck['first'] = null;
  let mismatched = 0;
  try {
    const totals = await scanTarget({
      files: [], segments: written.segments(), source: tgt.source, pool: o.pool, blockSize: o.blockSize, volumeSize: o.volumeSize, signal: o.signal,
      onBad: (e: Expect, actual) => {
        mismatched++;
        first ??= { block: e.block, expected: e.zero ? 'zeroes' : `xxh64 ${hex(e.hash)}`, actual: actual.zero ? 'zeroes' : `xxh64 ${hex(actual.hash!)}` };
      },
    });
    return { blocksChecked: totals.blocksChecked, blocksRead: totals.blocksRead, bytesRead: totals.bytesRead, mismatchedBlocks: mismatched, first, seconds: (performance.now() - started) / 1000 };
  } finally {
    await tgt.close();
  }
}
