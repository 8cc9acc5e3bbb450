/**
 * The expected state of a chain: for every block of the volume, which archive (and which record of
 * it) holds the block's latest version, with the block's xxh64 from that record, or that the block
 * reads as zeroes (ZERO extent or ZERO record) or is unmapped.
 *
 * Memory is bounded whatever the volume size: nothing is held per block. `chainSegments` is a sweep
 * over the archives' map extents and index entries, all streamed in ascending block order at once
 * (one pending extent, one index frame and one record head per archive), that yields the state as
 * ascending run-length segments. A 32 TiB volume that is mostly unmapped is a handful of segments;
 * data blocks come as segments of at most one record (4 MiB) with their hashes.
 *
 * Chains are resolved by parent links, not by sequence numbers alone: the chain is the path from
 * the newest archive back to a full one. A merged archive (merge, prune) carries the archive id of
 * the last archive it replaces and the sequence of the first; while the originals still exist (an
 * interrupted prune), the path goes through the merged archive and the originals are "superseded".
 * `ChainReader` reads the chain's volume as of its newest archive, each record once.
 */
import { FormatError, UsageError } from '../errors.js';
import { payloadBuffer, payloadCorrupt, RecordBuffers, type WorkerPool } from '../archive/pool.js';
import { ArchiveFile } from '../archive/reader.js';
import type { VolumeSource } from '../archive/writer.js';
import { Codec, ExtentKind, FRAME_CHECK_SIZE, FRAME_HEAD_SIZE, FrameType } from '../format/constants.js';
import { decodeDataBody, decodeIndexBody } from '../format/frames.js';
import type { ArchiveHeader, IndexEntry, MapExtent } from '../format/types.js';
import { volumeBlocks } from '../format/types.js';
import { DirectoryStore } from '../store/dir.js';
import { openStore, type StoreOptions } from '../store/open.js';
import type { ArchiveStore, ChainListing, StoredArchive } from '../store/types.js';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { writeFileAtomic } from '../fsutil.js';

/** What the header's `meta.merged` says about a merged archive (see docs/FORMAT.md "Merged archives"). */
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
    const res = await resolveChain(store, listing, opened);
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

async function resolveChain(store: ArchiveStore, listing: ChainListing, opened: ArchiveFile[]): Promise<{ archives: ChainArchive[]; superseded: StoredArchive[] }> {
  const all: ChainArchive[] = [];
  for (const a of listing.archives) {
    const file = await ArchiveFile.openSource(await store.openArchive(a));
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

// ---------------------------------------------------------------------------------------------
// Reading the chain's volume

export interface ArchiveReadStats {
  archiveId: string;
  sequence: number;
  /** Records whose payload was read. */
  records: number;
  /** Payload bytes (as stored) plus record frame bytes read. */
  bytesRead: number;
  /** Records read more than once (evicted from the small cache before their last use). */
  rereads: number;
}

interface Decoded { raw: Promise<Uint8Array>; refs: number }

const LOOKAHEAD_SEGMENTS = 256;

/**
 * The chain's volume as of its newest archive, read forward: each record is read and decoded (block
 * hashes checked, on the worker pool) once, a few ahead of use; every block comes from the newest
 * archive that holds it. Use either `next()`/`bytesOf()` (segment by segment) or `read()` (as a
 * VolumeSource, positions ascending). Decoded records live in buffers that are reused once every
 * segment of the record is `done` (so bytes from `bytesOf` must not be used after `done`): nothing
 * record-sized is allocated per record.
 */
export class ChainReader implements VolumeSource {
  readonly size: number;
  readonly blockSize: number;
  readonly stats: ArchiveReadStats[];
  private readonly it: AsyncIterator<Segment>;
  private readonly queue: Segment[] = [];
  private readonly decoded = new Map<string, Decoded>();
  private readonly seenRecords = new Set<string>();
  private ended = false;
  private readonly maxDecodes: number;
  private readonly buffers = new RecordBuffers();

  constructor(private readonly files: ArchiveFile[], private readonly pool: WorkerPool, segments?: AsyncIterable<Segment>) {
    const h = files[files.length - 1].header;
    this.size = h.volumeSize;
    this.blockSize = h.blockSize;
    this.stats = files.map((f) => ({ archiveId: f.header.archiveId, sequence: f.header.sequence, records: 0, bytesRead: 0, rereads: 0 }));
    this.it = (segments ?? chainSegments(files))[Symbol.asyncIterator]();
    this.maxDecodes = pool.size * 2 + 2;
  }

  private key(s: Segment): string {
    return `${s.archive}:${s.record!.offset}`;
  }

  private startDecode(s: Segment): void {
    const k = this.key(s);
    const have = this.decoded.get(k);
    if (have) {
      have.refs++;
      return;
    }
    const f = this.files[s.archive];
    const st = this.stats[s.archive];
    if (this.seenRecords.has(k)) st.rereads++;
    else this.seenRecords.add(k);
    const bs = this.blockSize;
    const raw = (async () => {
      const into = this.buffers.take();
      const r = await f.readRecordAt(s.record!.offset, into).catch((e: unknown) => {
        this.buffers.give(into);
        throw e;
      });
      const d = r.data!;
      st.records++;
      st.bytesRead += d.storedLen + FRAME_HEAD_SIZE + FRAME_CHECK_SIZE + 32 + d.blockCount * 8;
      const p = r.payload!;
      // The payload is the start of `into`, or (a source without positional reads) a buffer of its own.
      let buf: ArrayBuffer;
      if (p.buffer === into) buf = into;
      else {
        this.buffers.give(into);
        buf = payloadBuffer(p);
      }
      const out = d.codec === Codec.ZSTD ? this.buffers.take() : undefined;
      const res = await this.pool.decodeRecycled(buf, p.length, d, bs, true, out);
      for (const b of res.spare) this.buffers.give(b);
      if (!res.ok) throw payloadCorrupt(res, d.firstBlock, s.record!.offset, f.path);
      return new Uint8Array(res.raw!, 0, d.rawLen);
    })();
    raw.catch(() => {}); // awaited when used
    this.decoded.set(k, { raw, refs: 1 });
  }

  private release(s: Segment): void {
    if (s.kind !== 'data') return;
    const k = this.key(s);
    const d = this.decoded.get(k);
    if (d && --d.refs <= 0) {
      this.decoded.delete(k);
      // Nobody reads this record any more: its buffer is decoded into again.
      d.raw.then((raw) => this.buffers.give(raw.buffer as ArrayBuffer), () => {});
    }
  }

  private async fill(): Promise<void> {
    while (!this.ended && this.queue.length < LOOKAHEAD_SEGMENTS && (this.queue.length === 0 || this.decoded.size < this.maxDecodes)) {
      const r = await this.it.next();
      if (r.done) {
        this.ended = true;
        break;
      }
      if (r.value.kind === 'data') this.startDecode(r.value);
      this.queue.push(r.value);
    }
  }

  /** The next segment of the chain's state, or undefined at the end. Call `done(seg)` after using it. */
  async next(): Promise<Segment | undefined> {
    await this.fill();
    return this.queue.shift();
  }

  /** Finished with a segment from next(). */
  done(s: Segment): void {
    this.release(s);
  }

  /** The bytes of a data segment (a view into its decoded record). */
  async bytesOf(s: Segment): Promise<Uint8Array> {
    const d = this.decoded.get(this.key(s));
    if (!d) throw new Error('segment is not being read');
    const raw = await d.raw;
    const bs = this.blockSize;
    const from = (s.first - s.record!.firstBlock) * bs;
    return raw.subarray(from, Math.min(raw.length, from + s.count * bs));
  }

  /** VolumeSource: reads at ascending positions only. */
  async read(buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    const bs = this.blockSize;
    const end = Math.min(position + length, this.size);
    let p = position;
    while (p < end) {
      await this.fill();
      while (this.queue.length > 0 && Math.min((this.queue[0].first + this.queue[0].count) * bs, this.size) <= p) {
        this.release(this.queue.shift()!);
        await this.fill();
      }
      const s = this.queue[0];
      if (!s || s.first * bs > p) {
        // Not mentioned by the archives (a merge of incrementals only reads what they mention).
        const stop = s ? Math.min(end, s.first * bs) : end;
        buf.fill(0, offset + p - position, offset + stop - position);
        p = stop;
        continue;
      }
      const segEnd = Math.min(end, (s.first + s.count) * bs);
      if (s.kind === 'data') {
        const bytes = await this.bytesOf(s);
        const from = p - s.first * bs;
        const n = Math.min(segEnd - p, bytes.length - from);
        buf.set(bytes.subarray(from, from + n), offset + p - position);
        if (n < segEnd - p) buf.fill(0, offset + p - position + n, offset + segEnd - position);
      } else {
        buf.fill(0, offset + p - position, offset + segEnd - position);
      }
      p = segEnd;
    }
    return end - position;
  }

  /** Let outstanding decodes settle (after an error). */
  async close(): Promise<void> {
    await Promise.allSettled([...this.decoded.values()].map((d) => d.raw));
    this.decoded.clear();
    await this.it.return?.();
  }
}
