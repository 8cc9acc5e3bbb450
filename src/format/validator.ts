/**
 * The structural rules of archive format v1 that span frames (docs/FORMAT.md, "Invariants"), checked
 * in one forward pass with bounded memory. Pure: it is told each decoded frame in archive order and
 * throws FormatError on the first violation.
 */
import { createHash, type Hash } from 'node:crypto';
import { FormatError, type FormatCode } from '../errors.js';
import { ExtentKind, FrameType, MAX_INDEX_ENTRIES, MAX_RECORD_RAW } from './constants.js';
import { xxh64Parts } from './hash.js';
import type { ArchiveHeader, DataRecordHead, IndexEntry, IndexFrame, MapEnd, MapExtent, Trailer, ZeroRecord } from './types.js';
import { rangeBytes, volumeBlocks } from './types.js';

/**
 * Folds a sequence of ascending block runs into a digest of its canonical form (adjacent runs merged),
 * so two differently-split descriptions of the same block set compare equal in O(1) memory.
 */
class RunDigest {
  private start = -1;
  private end = -1;
  private acc = 0n;
  private runs = 0;
  add(first: number, count: number): void {
    if (first === this.end) {
      this.end += count;
      return;
    }
    this.flush();
    this.start = first;
    this.end = first + count;
  }
  private flush(): void {
    if (this.start < 0) return;
    const b = new Uint8Array(24);
    const dv = new DataView(b.buffer);
    dv.setBigUint64(0, this.acc, true);
    dv.setFloat64(8, this.start, true);
    dv.setFloat64(16, this.end, true);
    this.acc = xxh64Parts(b);
    this.runs++;
  }
  result(): string {
    this.flush();
    this.start = -1;
    return `${this.runs}:${this.acc}`;
  }
}

type Phase = 'header' | 'map' | 'records' | 'trailer' | 'done';

export class ArchiveValidator {
  private phase: Phase = 'header';
  header: ArchiveHeader | undefined;
  private blocks = 0;
  private readonly file: string | undefined;
  private readonly digest: Hash = createHash('sha256');

  // map state
  private mapNext = 0;
  private mapExtents = 0;
  private mapCounts = { data: 0, zero: 0, unmap: 0 };
  private mapDataRuns = new RunDigest();
  /** Canonical digest of the map's DATA blocks, set by onMapEnd (compared with the records' coverage). */
  mapDataDigest = '';
  mapEnd: MapEnd | undefined;
  /**
   * The map's DATA blocks as merged runs [start, end), kept so that every record is checked against
   * the map as it arrives: a record outside the DATA extents is refused before anyone acts on it.
   */
  private dataRuns: number[] = [];
  /** Where the next record must start: index into dataRuns (a run's start) and the block in it. */
  private runAt = 0;
  private runNext = -1;

  // record state
  private recordNext = 0;
  private recordRuns = new RunDigest();
  private pendingIndex: IndexEntry[] = [];
  private lastIndexOffset = 0;
  private indexCount = 0;
  readonly totals = { recordCount: 0, dataBlocks: 0, zeroBlocks: 0, rawBytes: 0, storedBytes: 0 };

  constructor(file?: string) {
    this.file = file;
  }

  private fail(code: FormatCode, message: string, offset: number): never {
    throw new FormatError(code, message, offset, this.file);
  }

  private expect(phases: Phase[], what: string, offset: number): void {
    if (!phases.includes(this.phase)) this.fail('BAD_STRUCTURE', `unexpected ${what} frame (while reading ${this.phase})`, offset);
  }

  /** Feed every byte that the digest covers: the preamble and each frame (head, body, check) except the trailer. */
  digestUpdate(bytes: Uint8Array): void {
    this.digest.update(bytes);
  }

  onHeader(h: ArchiveHeader, offset: number): void {
    this.expect(['header'], 'header', offset);
    this.header = h;
    this.blocks = volumeBlocks(h.volumeSize, h.blockSize);
    this.phase = 'map';
  }

  onMap(extents: MapExtent[], offset: number): void {
    this.expect(['map'], 'map', offset);
    const h = this.header!;
    for (const e of extents) {
      if (e.firstBlock < this.mapNext) this.fail('BAD_MAP', `map extents overlap or are out of order at block ${e.firstBlock}`, offset);
      if (h.full && e.firstBlock !== this.mapNext) this.fail('BAD_MAP', `full archive map has a gap at block ${this.mapNext}`, offset);
      if (e.firstBlock + e.blockCount > this.blocks) {
        this.fail('BAD_MAP', `extent ${e.firstBlock}+${e.blockCount} runs past the end of the volume (${this.blocks} blocks)`, offset);
      }
      this.mapNext = e.firstBlock + e.blockCount;
      this.mapExtents++;
      if (e.kind === ExtentKind.DATA) {
        this.mapCounts.data += e.blockCount;
        this.mapDataRuns.add(e.firstBlock, e.blockCount);
        const n = this.dataRuns.length;
        if (n > 0 && this.dataRuns[n - 1] === e.firstBlock) this.dataRuns[n - 1] = e.firstBlock + e.blockCount;
        else this.dataRuns.push(e.firstBlock, e.firstBlock + e.blockCount);
      } else if (e.kind === ExtentKind.ZERO) this.mapCounts.zero += e.blockCount;
      else this.mapCounts.unmap += e.blockCount;
    }
  }

  onMapEnd(m: MapEnd, offset: number): void {
    this.expect(['map'], 'map end', offset);
    if (m.extentCount !== this.mapExtents || m.dataBlocks !== this.mapCounts.data || m.zeroBlocks !== this.mapCounts.zero
      || m.unmapBlocks !== this.mapCounts.unmap) {
      this.fail('BAD_MAP', 'map end totals do not match the map', offset);
    }
    if (this.header!.full && this.mapNext !== this.blocks) this.fail('BAD_MAP', 'full archive map does not cover the whole volume', offset);
    this.mapEnd = m;
    this.mapDataDigest = this.mapDataRuns.result();
    this.runNext = this.dataRuns.length > 0 ? this.dataRuns[0] : -1;
    this.phase = 'records';
  }

  private onRecord(type: number, firstBlock: number, blockCount: number, offset: number): void {
    this.expect(['records'], type === FrameType.DATA ? 'data' : 'zero', offset);
    if (firstBlock < this.recordNext) this.fail('BAD_RECORD', `records overlap or are out of order at block ${firstBlock}`, offset);
    if (firstBlock + blockCount > this.blocks) this.fail('BAD_RECORD', `record runs past the end of the volume`, offset);
    // Records cover the map's DATA extents exactly and in order: each starts where the last one ended
    // (or at the next DATA run) and stays inside its run.
    if (this.runAt < this.dataRuns.length && this.runNext === this.dataRuns[this.runAt + 1]) {
      this.runAt += 2;
      this.runNext = this.runAt < this.dataRuns.length ? this.dataRuns[this.runAt] : -1;
    }
    if (this.runAt >= this.dataRuns.length) this.fail('BAD_RECORD', `record at block ${firstBlock} lies after the map's last DATA extent`, offset);
    if (firstBlock !== this.runNext) {
      this.fail('BAD_RECORD', `record at block ${firstBlock} does not match the map (the next DATA block is ${this.runNext})`, offset);
    }
    if (firstBlock + blockCount > this.dataRuns[this.runAt + 1]) {
      this.fail('BAD_RECORD', `record ${firstBlock}+${blockCount} runs past the map's DATA extent ending at block ${this.dataRuns[this.runAt + 1]}`, offset);
    }
    this.runNext = firstBlock + blockCount;
    this.recordNext = firstBlock + blockCount;
    this.recordRuns.add(firstBlock, blockCount);
    this.totals.recordCount++;
    this.pendingIndex.push({ offset, firstBlock, blockCount, type });
    if (this.pendingIndex.length > MAX_INDEX_ENTRIES) this.fail('BAD_INDEX', `more than ${MAX_INDEX_ENTRIES} records without an index frame`, offset);
  }

  onData(r: DataRecordHead, offset: number): void {
    const h = this.header!;
    this.onRecord(FrameType.DATA, r.firstBlock, r.blockCount, offset);
    const want = rangeBytes(r.firstBlock, r.blockCount, h.volumeSize, h.blockSize);
    if (r.rawLen !== want || want > MAX_RECORD_RAW) this.fail('BAD_RECORD', `record raw length ${r.rawLen} does not match its ${r.blockCount} blocks`, offset);
    this.totals.dataBlocks += r.blockCount;
    this.totals.rawBytes += r.rawLen;
    this.totals.storedBytes += r.storedLen;
  }

  onZero(z: ZeroRecord, offset: number): void {
    this.onRecord(FrameType.ZERO, z.firstBlock, z.blockCount, offset);
    this.totals.zeroBlocks += z.blockCount;
  }

  onIndex(ix: IndexFrame, offset: number): void {
    this.expect(['records'], 'index', offset);
    if (ix.prevIndexOffset !== this.lastIndexOffset) this.fail('BAD_INDEX', 'index frame does not point to the previous index', offset);
    if (ix.entries.length !== this.pendingIndex.length) this.fail('BAD_INDEX', 'index frame does not list the records before it', offset);
    for (let i = 0; i < ix.entries.length; i++) {
      const a = ix.entries[i];
      const b = this.pendingIndex[i];
      if (a.offset !== b.offset || a.firstBlock !== b.firstBlock || a.blockCount !== b.blockCount || a.type !== b.type) {
        this.fail('BAD_INDEX', `index entry ${i} does not match the record at offset ${b.offset}`, offset);
      }
    }
    this.pendingIndex = [];
    this.lastIndexOffset = offset;
    this.indexCount++;
  }

  /** Checks the trailer against everything seen; returns the computed digest. */
  onTrailer(t: Trailer, offset: number): void {
    this.expect(['records'], 'trailer', offset);
    if (this.pendingIndex.length > 0) this.fail('BAD_INDEX', 'records after the last index frame', offset);
    if (this.recordRuns.result() !== this.mapDataDigest) {
      this.fail('BAD_RECORD', 'records do not cover exactly the DATA extents of the map', offset);
    }
    const tt = this.totals;
    if (t.recordCount !== tt.recordCount || t.dataBlocks !== tt.dataBlocks || t.zeroBlocks !== tt.zeroBlocks
      || t.rawBytes !== tt.rawBytes || t.storedBytes !== tt.storedBytes || t.lastIndexOffset !== this.lastIndexOffset
      || t.indexCount !== this.indexCount) {
      this.fail('BAD_TRAILER', 'trailer totals do not match the archive', offset);
    }
    const d = this.digest.digest();
    if (Buffer.compare(d, t.digest) !== 0) this.fail('DIGEST_MISMATCH', 'archive digest does not match its contents', offset);
    this.phase = 'trailer';
  }

  onTail(trailerOffset: number, expectedTrailerOffset: number, offset: number): void {
    this.expect(['trailer'], 'end marker', offset);
    if (trailerOffset !== expectedTrailerOffset) this.fail('BAD_TRAILER', 'end marker does not point to the trailer', offset);
    this.phase = 'done';
  }

  get complete(): boolean {
    return this.phase === 'done';
  }
}

/** Digest of the canonical DATA-block runs of a record/extent sequence; used by planners. */
export function canonicalRuns(): { add(first: number, count: number): void; result(): string } {
  return new RunDigest();
}
