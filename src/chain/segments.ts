/**
 * The expected state of a chain, as ascending run-length segments: for every block, which archive and
 * record hold its latest version (with the block's xxh64), or that it reads as zeroes or is unmapped.
 * One sweep over all archives' map extents and index entries in block order: nothing is held per
 * block, so memory is bounded whatever the volume size.
 */
import { ArchiveFile } from '../archive/reader.js';
import { ExtentKind, FrameType } from '../format/constants.js';
import { FormatError } from '../errors.js';
import { decodeDataBody, decodeIndexBody } from '../format/frames.js';
import type { IndexEntry, MapExtent } from '../format/types.js';
import { volumeBlocks } from '../format/types.js';

// ---------------------------------------------------------------------------------------------
// Raw frame reads (map, index and record heads; never payloads)

/** Bytes of frames read (index frames and record heads) per archive, for reporting. */
export interface ReadStats {
  metaBytes: number;
}

async function readFrameBody(f: ArchiveFile, offset: number, expect: number, stats?: ReadStats): Promise<Uint8Array> {
  const frame = await f.frameAt(offset, expect);
  if (stats) stats.metaBytes += frame.head.length + frame.body.length + frame.check.length;
  return frame.body;
}

/** Every index entry of an archive, in order, one index frame in memory at a time. */
async function* indexEntries(f: ArchiveFile, stats?: ReadStats): AsyncGenerator<IndexEntry> {
  for (const s of await f.loadIndexes()) {
    const body = await readFrameBody(f, s.offset, FrameType.INDEX, stats);
    yield* decodeIndexBody(body, s.offset).entries;
  }
}

/** The per-block hashes of the DATA record at `offset`. */
export async function recordHashes(f: ArchiveFile, offset: number, stats?: ReadStats): Promise<BigUint64Array> {
  const body = await readFrameBody(f, offset, FrameType.DATA, stats);
  return decodeDataBody(body, offset).hashes;
}

// ---------------------------------------------------------------------------------------------
// The sweep

export type SegmentKind = 'data' | 'zero' | 'unmap';

export interface Segment {
  first: number;
  count: number;
  kind: SegmentKind;
  /** Index (into the archives given) of the archive that defines these blocks. */
  archive: number;
  /** kind 'data': the record holding the blocks. */
  record?: IndexEntry;
  /** kind 'data' with `hashes`: the xxh64 of each block of the segment. */
  hashes?: BigUint64Array;
}

interface Run { first: number; end: number; kind: number }

class ExtentCursor {
  cur: Run | null = null;
  private done = false;
  private readonly it: AsyncIterator<MapExtent>;
  constructor(src: AsyncIterable<MapExtent>, private readonly limit: number) {
    this.it = src[Symbol.asyncIterator]();
  }
  /** Make `cur` the first extent that ends after `pos` (null when there is none). */
  async seek(pos: number): Promise<void> {
    while (!this.done && (this.cur === null || this.cur.end <= pos)) {
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        this.cur = null;
        return;
      }
      const e = r.value;
      const end = Math.min(e.firstBlock + e.blockCount, this.limit);
      if (end <= e.firstBlock) continue;
      this.cur = { first: e.firstBlock, end, kind: e.kind };
    }
    if (this.cur && this.cur.end <= pos) this.cur = null;
  }
}

async function* withTail(f: ArchiveFile, limit: number): AsyncGenerator<MapExtent> {
  yield* f.mapExtents();
  // Past its own size an archive leaves the volume unmapped (a shrunk volume grown again reads zeroes).
  const own = volumeBlocks(f.header.volumeSize, f.header.blockSize);
  if (own < limit) yield { firstBlock: own, blockCount: limit - own, kind: ExtentKind.UNMAP };
}

class RecordCursor {
  cur: IndexEntry | null = null;
  private done = false;
  private readonly it: AsyncIterator<IndexEntry>;
  private headOffset = -1;
  private head: BigUint64Array | undefined;
  constructor(private readonly f: ArchiveFile, private readonly stats?: ReadStats) {
    this.it = indexEntries(f, stats)[Symbol.asyncIterator]();
  }
  async seek(block: number): Promise<void> {
    while (!this.done && (this.cur === null || this.cur.firstBlock + this.cur.blockCount <= block)) {
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        this.cur = null;
        return;
      }
      this.cur = r.value;
    }
  }
  async hashes(e: IndexEntry): Promise<BigUint64Array> {
    if (this.headOffset !== e.offset) {
      this.head = await recordHashes(this.f, e.offset, this.stats);
      this.headOffset = e.offset;
    }
    return this.head!;
  }
}

export interface SegmentOptions {
  /** Read each DATA record's head for its block hashes. */
  hashes?: boolean;
  /** Per-archive counters of frame bytes read (same order as the archives). */
  stats?: ReadStats[];
}

/**
 * The state the archives (in chain order, oldest first) leave, as ascending segments: the newest
 * archive that mentions a block decides it. Blocks none of them mentions are skipped (only possible
 * when the first archive is not full). Clipped to the newest archive's volume size.
 */
export async function* chainSegments(files: ArchiveFile[], opts: SegmentOptions = {}): AsyncGenerator<Segment> {
  const n = files.length;
  if (n === 0) return;
  const last = files[n - 1].header;
  const limit = volumeBlocks(last.volumeSize, last.blockSize);
  const ext = files.map((f) => new ExtentCursor(withTail(f, limit), limit));
  const rec = files.map((f, i) => new RecordCursor(f, opts.stats?.[i]));
  let pos = 0;
  while (pos < limit) {
    for (const c of ext) await c.seek(pos);
    let w = -1;
    for (let i = n - 1; i >= 0; i--) {
      const c = ext[i].cur;
      if (c && c.first <= pos) {
        w = i;
        break;
      }
    }
    if (w < 0) {
      let next = Infinity;
      for (const c of ext) if (c.cur) next = Math.min(next, c.cur.first);
      if (next === Infinity) return;
      pos = next;
      continue;
    }
    const c = ext[w].cur!;
    let end = c.end;
    for (let j = w + 1; j < n; j++) {
      const d = ext[j].cur;
      if (d) end = Math.min(end, d.first);
    }
    if (c.kind === ExtentKind.ZERO) yield { first: pos, count: end - pos, kind: 'zero', archive: w };
    else if (c.kind === ExtentKind.UNMAP) yield { first: pos, count: end - pos, kind: 'unmap', archive: w };
    else {
      const rc = rec[w];
      let s = pos;
      while (s < end) {
        await rc.seek(s);
        const e = rc.cur;
        if (!e || e.firstBlock > s) throw new FormatError('BAD_INDEX', `block ${s} of a DATA extent has no record`, undefined, files[w].path);
        const subEnd = Math.min(end, e.firstBlock + e.blockCount);
        if (e.type === FrameType.ZERO) yield { first: s, count: subEnd - s, kind: 'zero', archive: w };
        else {
          const seg: Segment = { first: s, count: subEnd - s, kind: 'data', archive: w, record: e };
          if (opts.hashes) seg.hashes = (await rc.hashes(e)).subarray(s - e.firstBlock, subEnd - e.firstBlock);
          yield seg;
        }
        s = subEnd;
      }
    }
    pos = end;
  }
}
