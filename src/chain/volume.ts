/**
 * ChainVolume: the volume as of a point of a chain, readable at random (serve). One streaming pass of
 * `chainSegments` over the archives up to the point builds an interval index: sorted runs of blocks,
 * each either a hole (zero or unmapped) or the blocks of one DATA record of the newest archive that
 * holds them. Adjacent holes merge, so memory grows with the number of records and extents, never
 * with the number of blocks (a 16 TiB volume of few extents is a few runs).
 *
 * Reads decode whole records through `decodeRecord` (stored hash, decompression, every block's xxh64
 * checked before a byte is served) into a bounded LRU cache; sequential reads prefetch the next
 * records. A record that fails its checks fails the reads of its range (PAYLOAD_CORRUPT) and is
 * retried on the next read; other ranges read normally.
 */
import { RecordBuffers, type WorkerPool } from '../archive/pool.js';
import type { ArchiveFile } from '../archive/reader.js';
import { FrameType } from '../format/constants.js';
import type { IndexEntry } from '../format/types.js';
import { chainSegments, type Segment } from './segments.js';
import { decodeRecord } from './reader.js';

/** A run of the volume, in bytes: a hole (reads as zeroes) or data held by a record. */
export interface VolumeExtent {
  offset: number;
  length: number;
  hole: boolean;
}

/** A piece of a read: `data` (a view into a cached record), or `hole` bytes of zeroes. */
export type ReadPiece = { offset: number; data: Uint8Array } | { offset: number; hole: number };

/** A read's pieces; their data stays valid until `release()`, after which the buffers are reused. */
export interface VolumeRead {
  pieces: ReadPiece[];
  release(): void;
}

export interface ChainVolumeOptions {
  /** Decoded records kept (each up to 4 MiB). Default 8. */
  cacheRecords?: number;
  /** Records read ahead on sequential access. Default 3. */
  readahead?: number;
}

const HOLE = -1;
/** Records of at most this many bytes are cached in a buffer of their own size. */
const SMALL_RECORD = 1024 * 1024;

/** Growable columns of the run index (typed arrays: no object per run). */
class Runs {
  n = 0;
  first = new Float64Array(64);
  archive = new Int32Array(64); // HOLE for holes
  recOffset = new Float64Array(64);
  recFirst = new Float64Array(64);
  recCount = new Float64Array(64);

  private grow(): void {
    const g = <T extends Float64Array | Int32Array>(a: T): T => {
      const b = new (a.constructor as new (n: number) => T)(a.length * 2);
      b.set(a);
      return b;
    };
    this.first = g(this.first);
    this.archive = g(this.archive);
    this.recOffset = g(this.recOffset);
    this.recFirst = g(this.recFirst);
    this.recCount = g(this.recCount);
  }

  push(first: number, s: Segment | null): void {
    const a = s && s.kind === 'data' ? s.archive : HOLE;
    if (this.n > 0 && a === HOLE && this.archive[this.n - 1] === HOLE) return; // merge holes
    if (this.n > 0 && s && a !== HOLE && this.archive[this.n - 1] === a && this.recOffset[this.n - 1] === s.record!.offset) return;
    if (this.n === this.first.length) this.grow();
    const i = this.n++;
    this.first[i] = first;
    this.archive[i] = a;
    if (a !== HOLE) {
      this.recOffset[i] = s!.record!.offset;
      this.recFirst[i] = s!.record!.firstBlock;
      this.recCount[i] = s!.record!.blockCount;
    }
  }

  /** The run holding `block` (runs cover [0, blocks) without gaps). */
  find(block: number): number {
    let lo = 0;
    let hi = this.n - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.first[mid] <= block) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}

interface Cached {
  raw: Promise<Uint8Array>;
  buf?: Uint8Array;
  /** Reads whose pieces view this record and are not released yet. */
  pins: number;
  evicted: boolean;
}

export class ChainVolume {
  readonly size: number;
  readonly blockSize: number;
  private readonly blocks: number;
  private readonly runs = new Runs();
  private readonly cache = new Map<string, Cached>(); // insertion order = LRU order
  private readonly buffers: RecordBuffers;
  private readonly maxCache: number;
  private readonly readahead: number;
  /** Records decoded (a record decoded again after eviction counts again). */
  decodes = 0;
  private lastEnd = -1;
  private closed = false;
  private decoding = 0;
  private readonly decodeWaiters: (() => void)[] = [];
  private readonly maxDecodes: number;

  private constructor(private readonly files: ArchiveFile[], private readonly pool: WorkerPool, opts: ChainVolumeOptions) {
    const h = files[files.length - 1].header;
    this.size = h.volumeSize;
    this.blockSize = h.blockSize;
    this.blocks = Math.ceil(h.volumeSize / h.blockSize);
    this.readahead = opts.readahead ?? 3;
    this.maxCache = Math.max(2, opts.cacheRecords ?? 8, this.readahead + 2);
    this.maxDecodes = pool.size + 2;
    this.buffers = new RecordBuffers(this.maxDecodes * 2);
  }

  /** Index the archives (chain order, oldest first, ending at the point) in one pass. Reads no payload. */
  static async open(files: ArchiveFile[], pool: WorkerPool, opts: ChainVolumeOptions = {}): Promise<ChainVolume> {
    const v = new ChainVolume(files, pool, opts);
    let pos = 0;
    for await (const s of chainSegments(files)) {
      if (s.first > pos) v.runs.push(pos, null); // not mentioned by any archive: reads as zeroes
      v.runs.push(s.first, s);
      pos = s.first + s.count;
    }
    if (pos < v.blocks || v.runs.n === 0) v.runs.push(pos, null);
    return v;
  }

  /** Number of runs in the index (for reporting: memory is proportional to it). */
  get indexRuns(): number {
    return this.runs.n;
  }

  private runEnd(i: number): number {
    return i + 1 < this.runs.n ? this.runs.first[i + 1] : this.blocks;
  }

  /** The runs covering [offset, offset + length), clipped to it. */
  extents(offset: number, length: number): VolumeExtent[] {
    const out: VolumeExtent[] = [];
    const end = Math.min(offset + length, this.size);
    const bs = this.blockSize;
    let i = this.runs.find(Math.floor(offset / bs));
    let p = offset;
    while (p < end && i < this.runs.n) {
      const stop = Math.min(end, this.runEnd(i) * bs);
      const hole = this.runs.archive[i] === HOLE;
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += stop - p;
      else out.push({ offset: p, length: stop - p, hole });
      p = stop;
      i++;
    }
    return out;
  }

  private entry(i: number): IndexEntry {
    return { offset: this.runs.recOffset[i], firstBlock: this.runs.recFirst[i], blockCount: this.runs.recCount[i], type: FrameType.DATA };
  }

  private record(i: number): Cached {
    const a = this.runs.archive[i];
    const k = `${a}:${this.runs.recOffset[i]}`;
    const have = this.cache.get(k);
    if (have) {
      this.cache.delete(k);
      this.cache.set(k, have);
      return have;
    }
    this.decodes++;
    const c: Cached = { raw: this.limited(() => this.decode(a, i)), pins: 0, evicted: false };
    c.raw.then((b) => {
      c.buf = b;
      if (this.closed) this.recycle(c);
    }, () => {
      // A corrupt (or unreadable) record is not cached: the next read tries again and fails again.
      if (this.cache.get(k) === c) this.cache.delete(k);
    });
    this.cache.set(k, c);
    this.evict();
    return c;
  }

  /**
   * Decode a record. A small one (an incremental's few blocks) is copied out of its record-sized
   * buffer, which is reused at once: the cache holds what records hold, not 4 MiB per entry.
   */
  private async decode(a: number, i: number): Promise<Uint8Array> {
    const raw = await decodeRecord(this.files[a], this.entry(i), this.pool, this.buffers);
    if (raw.length > SMALL_RECORD) return raw;
    const copy = raw.slice();
    this.buffers.give(raw.buffer as ArrayBuffer);
    return copy;
  }

  /** An evicted record's buffer is decoded into again once no read views it. */
  private recycle(c: Cached): void {
    c.evicted = true;
    if (c.pins === 0 && c.buf) {
      this.buffers.give(c.buf.buffer as ArrayBuffer); // (a small record's copy is not record-sized: left to the GC)
      c.buf = undefined;
    }
  }

  /**
   * Run a decode when fewer than `maxDecodes` are running: however many clients ask at once, at most
   * that many records (two buffers each) are being read and decoded.
   */
  private async limited<T>(fn: () => Promise<T>): Promise<T> {
    while (this.decoding >= this.maxDecodes) await new Promise<void>((r) => this.decodeWaiters.push(r));
    this.decoding++;
    try {
      return await fn();
    } finally {
      this.decoding--;
      this.decodeWaiters.shift()?.();
    }
  }

  private evict(): void {
    for (const [k, c] of this.cache) {
      if (this.cache.size <= this.maxCache) break;
      // Only settled records are dropped (a read may still be waiting on a pending one); their
      // buffers are reused once the reads viewing them are released.
      if (!c.buf) continue;
      this.cache.delete(k);
      this.recycle(c);
    }
  }

  /** Start decoding the next data records after run `i` (sequential access). */
  private prefetch(i: number): void {
    let n = 0;
    for (let j = i + 1; j < this.runs.n && n < this.readahead; j++) {
      if (this.runs.archive[j] === HOLE) continue;
      n++;
      const k = `${this.runs.archive[j]}:${this.runs.recOffset[j]}`;
      if (!this.cache.has(k)) this.record(j).raw.catch(() => {});
    }
  }

  /**
   * The bytes of [offset, offset + length) (inside the volume) as pieces in order: data views of
   * decoded records, and holes; call `release()` once done with them. Fails (PAYLOAD_CORRUPT, or
   * the store's error) when a record the range needs cannot be read or fails its checks.
   */
  async read(offset: number, length: number): Promise<VolumeRead> {
    const end = Math.min(offset + length, this.size);
    const bs = this.blockSize;
    const sequential = offset === this.lastEnd;
    this.lastEnd = end;
    const out: ReadPiece[] = [];
    const pinned: Cached[] = [];
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      for (const c of pinned) if (--c.pins === 0 && c.evicted) this.recycle(c);
    };
    let i = this.runs.find(Math.floor(offset / bs));
    let p = offset;
    let lastData = -1;
    try {
      while (p < end && i < this.runs.n) {
        const stop = Math.min(end, this.runEnd(i) * bs);
        if (this.runs.archive[i] === HOLE) {
          const last = out[out.length - 1];
          if (last && 'hole' in last) last.hole += stop - p;
          else out.push({ offset: p, hole: stop - p });
        } else {
          lastData = i;
          const c = this.record(i);
          c.pins++;
          pinned.push(c);
          const raw = await c.raw;
          const from = p - this.runs.recFirst[i] * bs;
          out.push({ offset: p, data: raw.subarray(from, from + (stop - p)) });
        }
        p = stop;
        i++;
      }
    } catch (e) {
      release();
      throw e;
    }
    if (sequential && this.readahead > 0) this.prefetch(lastData >= 0 ? lastData : i - 1);
    return { pieces: out, release };
  }

  /** Let pending decodes settle; the archives are closed by their owner. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.cache.values()].map((c) => c.raw));
    this.cache.clear();
  }
}
