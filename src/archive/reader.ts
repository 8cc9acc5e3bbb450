/**
 * Reading archives.
 *
 * `readArchive` is the streaming reader: one forward pass over any byte source (file, pipe, socket),
 * validating every frame check, every structural invariant, the trailer totals and the digest, and
 * yielding typed events. Payload bytes are handed out unverified: the consumer decompresses them and
 * checks the block hashes (on worker threads).
 *
 * `ArchiveFile` is random access to an archive in a seekable file: header and trailer without reading
 * the middle, a pre-flight check of map and index (no payload bytes), and any record by offset.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { FormatError, ioError } from '../errors.js';
import {
  FRAME_CHECK_SIZE, FRAME_HEAD_SIZE, FrameType, PREAMBLE_SIZE, TAIL_SIZE, TRAILER_BODY_SIZE,
} from '../format/constants.js';
import {
  decodeDataBody, decodeFrameHead, decodeHeaderBody, decodeIndexBody, decodeMapBody, decodeMapEndBody, decodePreamble,
  decodeTail, decodeTrailerBody, decodeZeroBody, verifyFrameCheck,
} from '../format/frames.js';
import { initHash } from '../format/hash.js';
import type { ArchiveHeader, DataRecordHead, IndexEntry, MapEnd, MapExtent, Trailer, ZeroRecord } from '../format/types.js';
import { ArchiveValidator, canonicalRuns } from '../format/validator.js';
import { ByteReader, PositionalReader, type ArchiveByteReader, type PayloadSlot, type PositionalSource } from './byte-reader.js';
import type { WorkerPool } from './pool.js';

export type { PayloadSlot, PositionalSource } from './byte-reader.js';

export type ArchiveEvent =
  | { type: 'header'; header: ArchiveHeader; offset: number }
  | { type: 'map'; extents: MapExtent[]; offset: number }
  | { type: 'map-end'; mapEnd: MapEnd; offset: number }
  | { type: 'data'; record: DataRecordHead; payload: Uint8Array; offset: number }
  | { type: 'zero'; record: ZeroRecord; offset: number }
  | { type: 'trailer'; trailer: Trailer; offset: number; size: number };

export interface RawFrame {
  type: number;
  head: Uint8Array;
  body: Uint8Array;
  check: Uint8Array;
  offset: number;
}

async function readFrame(r: ArchiveByteReader, file: string | undefined): Promise<RawFrame> {
  const offset = r.offset;
  const head = await r.read(FRAME_HEAD_SIZE);
  let fh;
  try {
    fh = decodeFrameHead(head, offset);
  } catch (e) {
    if (e instanceof FormatError) e.setFile(file);
    throw e;
  }
  // Copy the head: the next read may reuse the chunk it came from.
  const headCopy = head.slice();
  const body = await r.read(fh.bodyLen);
  const check = await r.read(FRAME_CHECK_SIZE);
  return { type: fh.type, head: headCopy, body, check, offset };
}

function withFile<T>(file: string | undefined, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof FormatError && e.file === undefined) e.setFile(file);
    throw e;
  }
}

export interface ReadArchiveOptions {
  /** The archive's name in messages. */
  file?: string;
  /**
   * A buffer to read the next payload into (it must hold `n` bytes, else a new one is used). The
   * payload of a 'data' event is then the first storedLen bytes of it (or those at the slot's `at`).
   * Lets a consumer recycle payload buffers (for example, ones a worker hands back) instead of
   * allocating one per record, or gather several payloads in one buffer.
   */
  payloadBuffer?: (n: number, record: DataRecordHead) => ArrayBuffer | PayloadSlot | undefined;
}

function isPositional(s: AsyncIterable<Uint8Array> | PositionalSource): s is PositionalSource {
  return typeof (s as PositionalSource).readInto === 'function';
}

/**
 * Stream an archive, validating as it goes. Throws FormatError at the first problem; a stream that
 * ends before the end marker is TRUNCATED; bytes after the end marker are TRAILING_DATA. The source is
 * a stream of chunks, or positional reads of a file (read in one forward pass all the same).
 */
export async function* readArchive(source: AsyncIterable<Uint8Array> | PositionalSource, opts: ReadArchiveOptions = {}): AsyncGenerator<ArchiveEvent> {
  await initHash();
  const file = opts.file;
  const r: ArchiveByteReader = isPositional(source) ? new PositionalReader(source, file) : new ByteReader(source, file);
  const v = new ArchiveValidator(file);
  try {
    const pre = await r.read(PREAMBLE_SIZE);
    const version = withFile(file, () => decodePreamble(pre));
    v.digestUpdate(pre);
    for (;;) {
      const f = await readFrame(r, file);
      withFile(file, () => verifyFrameCheck(f.head, f.body, f.check, f.offset));
      if (f.type !== FrameType.TRAILER) {
        v.digestUpdate(f.head);
        v.digestUpdate(f.body);
        v.digestUpdate(f.check);
      }
      switch (f.type) {
        case FrameType.HEADER: {
          const header = withFile(file, () => decodeHeaderBody(f.body, f.offset, version));
          v.onHeader(header, f.offset);
          yield { type: 'header', header, offset: f.offset };
          break;
        }
        case FrameType.MAP: {
          const extents = withFile(file, () => decodeMapBody(f.body, f.offset));
          v.onMap(extents, f.offset);
          yield { type: 'map', extents, offset: f.offset };
          break;
        }
        case FrameType.MAP_END: {
          const mapEnd = withFile(file, () => decodeMapEndBody(f.body, f.offset));
          v.onMapEnd(mapEnd, f.offset);
          yield { type: 'map-end', mapEnd, offset: f.offset };
          break;
        }
        case FrameType.DATA: {
          const record = withFile(file, () => decodeDataBody(f.body, f.offset));
          v.onData(record, f.offset);
          const slot = opts.payloadBuffer?.(record.storedLen, record);
          const payload = slot instanceof ArrayBuffer || slot === undefined
            ? await r.readPayload(record.storedLen, slot)
            : await r.readPayload(record.storedLen, slot.buffer, slot.at);
          yield { type: 'data', record, payload, offset: f.offset };
          break;
        }
        case FrameType.ZERO: {
          const record = withFile(file, () => decodeZeroBody(f.body, f.offset));
          v.onZero(record, f.offset);
          yield { type: 'zero', record, offset: f.offset };
          break;
        }
        case FrameType.INDEX:
          v.onIndex(withFile(file, () => decodeIndexBody(f.body, f.offset)), f.offset);
          break;
        case FrameType.TRAILER: {
          const trailer = withFile(file, () => decodeTrailerBody(f.body, f.offset));
          v.onTrailer(trailer, f.offset);
          const tailAt = r.offset;
          const tail = await r.read(TAIL_SIZE);
          v.onTail(withFile(file, () => decodeTail(tail, tailAt)), f.offset, tailAt);
          if (!(await r.atEnd())) throw new FormatError('TRAILING_DATA', 'unexpected bytes after the end marker', r.offset, file);
          yield { type: 'trailer', trailer, offset: f.offset, size: r.offset };
          return;
        }
        default:
          throw new FormatError('UNKNOWN_FRAME', `unknown frame type ${f.type}`, f.offset, file);
      }
    }
  } finally {
    await r.close();
  }
}

/** Summary of one index frame, kept in memory by ArchiveFile (one per 1024 records). */
interface IndexSummary {
  offset: number;
  firstBlock: number;
  endBlock: number;
}

export interface RecordAt {
  type: 'data' | 'zero';
  offset: number;
  data?: DataRecordHead;
  zero?: ZeroRecord;
  payload?: Uint8Array;
}

/**
 * Random access to the bytes of one stored archive: a local file, or an object in a remote store
 * (ranged reads). `label` names it in messages (a path or a URL).
 */
export interface ByteSource {
  readonly label: string;
  readonly size: number;
  /** Up to `len` bytes at `offset`; fewer only at the end of the source. */
  read(offset: number, len: number): Promise<Uint8Array>;
  /** The bytes from `start` to the end, in order. */
  stream(start?: number): AsyncIterable<Uint8Array>;
  /** Positional reads into the caller's buffer (a local file): up to `length` bytes, 0 at the end. */
  readInto?(buf: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  /** Whole-archive reads should use `stream` even though `readInto` exists (an encrypted archive). */
  readonly streamPreferred?: boolean;
  /**
   * An encrypted archive's plaintext: authenticate every byte (encrypted.ts), on `pool`'s workers when
   * given; apply's pre-flight calls it.
   */
  authenticate?(pool?: WorkerPool): Promise<void>;
  /**
   * An encrypted archive's plaintext: decrypt on `pool` from now on (read ahead; with `random`, only
   * what each read needs); undefined detaches it.
   */
  usePool?(pool: WorkerPool | undefined, random?: boolean): void;
  close(): Promise<void>;
}

/** A ByteSource over a local regular file. */
export class FileByteSource implements ByteSource {
  private constructor(readonly label: string, private readonly fh: FileHandle, readonly size: number) {}

  static async open(path: string): Promise<FileByteSource> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      throw ioError(e, `cannot open archive ${path}`);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new FormatError('NOT_A_FILE', 'not a regular file', undefined, path);
      return new FileByteSource(path, fh, st.size);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async read(offset: number, len: number): Promise<Uint8Array> {
    const b = Buffer.allocUnsafe(len);
    let at = 0;
    while (at < len) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.fh.read(b, at, len - at, offset + at));
      } catch (e) {
        throw ioError(e, `cannot read archive ${this.label}`);
      }
      if (bytesRead === 0) break;
      at += bytesRead;
    }
    return at === len ? b : b.subarray(0, at);
  }

  stream(start = 0): AsyncIterable<Uint8Array> {
    return createReadStream(this.label, { start, highWaterMark: 1 << 20 });
  }

  async readInto(buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    try {
      return (await this.fh.read(buf, offset, length, position)).bytesRead;
    } catch (e) {
      throw ioError(e, `cannot read archive ${this.label}`);
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/**
 * A local archive file as a PositionalSource for readArchive, opened at the first read and closed
 * when reading ends.
 */
export function filePositionalSource(path: string): PositionalSource {
  let fh: Promise<FileHandle> | undefined;
  return {
    async readInto(buf, offset, length, position) {
      fh ??= open(path, 'r').catch((e: unknown) => {
        throw ioError(e, `cannot open archive ${path}`);
      });
      const h = await fh;
      try {
        return (await h.read(buf, offset, length, position)).bytesRead;
      } catch (e) {
        throw ioError(e, `cannot read archive ${path}`);
      }
    },
    async close() {
      const h = fh;
      fh = undefined;
      if (h) await h.then((x) => x.close(), () => {});
    },
  };
}

/** Random access to a stored archive (a local file or any ByteSource). */
export class ArchiveFile {
  /** The archive's name in messages: a path or a URL. */
  readonly path: string;
  readonly src: ByteSource;
  readonly size: number;
  header!: ArchiveHeader;
  trailer!: Trailer;
  trailerOffset = 0;
  /** Offset of the first map frame. */
  mapOffset = 0;
  private indexes: IndexSummary[] | undefined;

  private constructor(src: ByteSource) {
    this.path = src.label;
    this.src = src;
    this.size = src.size;
  }

  /** Open a local archive file and read the header and trailer. Does not read the map or any record. */
  static async open(path: string): Promise<ArchiveFile> {
    return ArchiveFile.openSource(await FileByteSource.open(path));
  }

  /** Read the header and trailer of an archive in `src`; closes `src` when that fails. */
  static async openSource(src: ByteSource): Promise<ArchiveFile> {
    await initHash();
    try {
      const a = new ArchiveFile(src);
      await a.readEnds();
      return a;
    } catch (e) {
      await src.close();
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.src.close();
  }

  private async pread(offset: number, len: number): Promise<Uint8Array> {
    if (offset < 0 || offset + len > this.size) {
      throw new FormatError('TRUNCATED', `archive is truncated: ${len} bytes at ${offset} lie past its end (${this.size} bytes)`, offset, this.path);
    }
    const b = await this.src.read(offset, len);
    if (b.length < len) throw new FormatError('TRUNCATED', 'archive is truncated', offset + b.length, this.path);
    return b;
  }

  /** Fill `buf` from `offset` with the source's positional reads (readInto). */
  private async preadInto(buf: Uint8Array, offset: number): Promise<Uint8Array> {
    if (offset < 0 || offset + buf.length > this.size) {
      throw new FormatError('TRUNCATED', `archive is truncated: ${buf.length} bytes at ${offset} lie past its end (${this.size} bytes)`, offset, this.path);
    }
    let got = 0;
    while (got < buf.length) {
      const n = await this.src.readInto!(buf, got, buf.length - got, offset + got);
      if (n === 0) throw new FormatError('TRUNCATED', 'archive is truncated', offset + got, this.path);
      got += n;
    }
    return buf;
  }

  /** The frame at `offset` (head decoded, check verified), of type `expectType` when given. Reads no payload. */
  async frameAt(offset: number, expectType?: number): Promise<RawFrame> {
    const head = await this.pread(offset, FRAME_HEAD_SIZE);
    const fh = withFile(this.path, () => decodeFrameHead(head, offset));
    if (expectType !== undefined && fh.type !== expectType) {
      throw new FormatError('BAD_STRUCTURE', `expected frame type ${expectType} at offset ${offset}, found ${fh.type}`, offset, this.path);
    }
    const rest = await this.pread(offset + FRAME_HEAD_SIZE, fh.bodyLen + FRAME_CHECK_SIZE);
    const body = rest.subarray(0, fh.bodyLen);
    const check = rest.subarray(fh.bodyLen);
    withFile(this.path, () => verifyFrameCheck(head, body, check, offset));
    return { type: fh.type, head, body, check, offset };
  }

  private async readEnds(): Promise<void> {
    const pre = await this.pread(0, PREAMBLE_SIZE);
    const version = withFile(this.path, () => decodePreamble(pre));
    const hf = await this.frameAt(PREAMBLE_SIZE, FrameType.HEADER);
    this.header = withFile(this.path, () => decodeHeaderBody(hf.body, hf.offset, version));
    this.mapOffset = PREAMBLE_SIZE + hf.head.length + hf.body.length + hf.check.length;
    if (this.size < this.mapOffset + TAIL_SIZE) throw new FormatError('TRUNCATED', 'archive is truncated (no end marker)', this.size, this.path);
    const tailAt = this.size - TAIL_SIZE;
    const tail = await this.pread(tailAt, TAIL_SIZE);
    const trailerOffset = withFile(this.path, () => decodeTail(tail, tailAt));
    if (trailerOffset + FRAME_HEAD_SIZE + TRAILER_BODY_SIZE + FRAME_CHECK_SIZE !== tailAt) {
      throw new FormatError('BAD_TRAILER', 'end marker does not point to the trailer', tailAt, this.path);
    }
    const tf = await this.frameAt(trailerOffset, FrameType.TRAILER);
    this.trailer = withFile(this.path, () => decodeTrailerBody(tf.body, tf.offset));
    this.trailerOffset = trailerOffset;
  }

  /** Stream the archive's bytes from `start` (default: all of it). */
  stream(start = 0): AsyncIterable<Uint8Array> {
    return this.src.stream(start);
  }

  /**
   * The whole archive for readArchive: positional reads when the source has them (a local file: no
   * per-chunk buffers, payloads read into recycled ones), else a stream. Closing it leaves `src` open.
   */
  readSource(): AsyncIterable<Uint8Array> | PositionalSource {
    const src = this.src;
    if (!src.readInto || src.streamPreferred) return src.stream(0);
    return { readInto: (buf, offset, length, position) => src.readInto!(buf, offset, length, position) };
  }

  /** Iterate the map frames (validated) without reading any record. */
  async *mapExtents(): AsyncGenerator<MapExtent> {
    let offset = this.mapOffset;
    for (;;) {
      const f = await this.frameAt(offset);
      offset += f.head.length + f.body.length + f.check.length;
      if (f.type === FrameType.MAP) {
        yield* withFile(this.path, () => decodeMapBody(f.body, f.offset));
      } else if (f.type === FrameType.MAP_END) {
        return;
      } else {
        throw new FormatError('BAD_STRUCTURE', 'map is not terminated by a map end frame', f.offset, this.path);
      }
    }
  }

  /**
   * Pre-flight check before anything is written to a target: header, every map frame and the map
   * invariants, the trailer, and the index chain, which must list records in ascending order that
   * cover exactly the DATA extents of the map. Reads no payload. Record frames themselves and the
   * digest are checked when the archive is streamed.
   */
  async preflight(): Promise<MapEnd> {
    const v = new ArchiveValidator(this.path);
    v.onHeader(this.header, PREAMBLE_SIZE);
    let offset = this.mapOffset;
    let mapEnd: MapEnd | undefined;
    while (!mapEnd) {
      if (offset >= this.trailerOffset) throw new FormatError('BAD_STRUCTURE', 'map is not terminated', offset, this.path);
      const f = await this.frameAt(offset);
      if (f.type === FrameType.MAP) v.onMap(withFile(this.path, () => decodeMapBody(f.body, f.offset)), f.offset);
      else if (f.type === FrameType.MAP_END) {
        mapEnd = withFile(this.path, () => decodeMapEndBody(f.body, f.offset));
        v.onMapEnd(mapEnd, f.offset);
      } else throw new FormatError('BAD_STRUCTURE', 'map is not terminated by a map end frame', f.offset, this.path);
      offset += f.head.length + f.body.length + f.check.length;
    }
    const recordsStart = offset;
    const idx = await this.loadIndexes();
    const recRuns = canonicalRuns();
    let records = 0;
    let nextBlock = 0;
    let lastOffset = recordsStart - 1;
    let dataBlocks = 0;
    let zeroBlocks = 0;
    for (const s of idx) {
      for (const e of await this.indexEntriesAt(s.offset)) {
        if (e.offset <= lastOffset || e.offset >= s.offset || e.firstBlock < nextBlock || e.blockCount === 0) {
          throw new FormatError('BAD_INDEX', 'index entries are out of order', s.offset, this.path);
        }
        lastOffset = e.offset;
        nextBlock = e.firstBlock + e.blockCount;
        recRuns.add(e.firstBlock, e.blockCount);
        if (e.type === FrameType.DATA) dataBlocks += e.blockCount;
        else zeroBlocks += e.blockCount;
        records++;
      }
      lastOffset = s.offset;
    }
    const t = this.trailer;
    if (records !== t.recordCount || dataBlocks !== t.dataBlocks || zeroBlocks !== t.zeroBlocks || idx.length !== t.indexCount) {
      throw new FormatError('BAD_TRAILER', 'trailer totals do not match the index', this.trailerOffset, this.path);
    }
    if (recRuns.result() !== v.mapDataDigest) {
      throw new FormatError('BAD_INDEX', 'records do not cover exactly the DATA extents of the map', this.trailerOffset, this.path);
    }
    return mapEnd;
  }

  /** The entries of the index frame at `offset` (one of loadIndexes()). Reads no payload. */
  async indexEntriesAt(offset: number): Promise<IndexEntry[]> {
    const f = await this.frameAt(offset, FrameType.INDEX);
    return withFile(this.path, () => decodeIndexBody(f.body, f.offset)).entries;
  }

  /** Index frames in archive order, with the block range each covers. */
  async loadIndexes(): Promise<IndexSummary[]> {
    if (this.indexes) return this.indexes;
    const out: IndexSummary[] = [];
    let at = this.trailer.lastIndexOffset;
    let bound = this.trailerOffset;
    while (at !== 0) {
      if (at < this.mapOffset || at >= bound) throw new FormatError('BAD_INDEX', 'index chain points outside the record area', at, this.path);
      if (out.length > this.trailer.indexCount) throw new FormatError('BAD_INDEX', 'index chain is longer than the trailer says', at, this.path);
      const f = await this.frameAt(at, FrameType.INDEX);
      const ix = withFile(this.path, () => decodeIndexBody(f.body, f.offset));
      const first = ix.entries[0];
      const last = ix.entries[ix.entries.length - 1];
      out.push({ offset: at, firstBlock: first.firstBlock, endBlock: last.firstBlock + last.blockCount });
      bound = at;
      at = ix.prevIndexOffset;
    }
    out.reverse();
    this.indexes = out;
    return out;
  }

  /** The record that holds `block`, or undefined when no record of this archive covers it. */
  async findRecord(block: number): Promise<IndexEntry | undefined> {
    const idx = await this.loadIndexes();
    let lo = 0;
    let hi = idx.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (block < idx[mid].firstBlock) hi = mid - 1;
      else if (block >= idx[mid].endBlock) lo = mid + 1;
      else {
        const entries = await this.indexEntriesAt(idx[mid].offset);
        return entries.find((e) => block >= e.firstBlock && block < e.firstBlock + e.blockCount);
      }
    }
    return undefined;
  }

  /**
   * Read one record (and its payload, unverified) at `offset`. With `into` (large enough, and a source
   * with positional reads into a buffer) the payload is read into its first storedLen bytes. With
   * `entry` (its index entry), a record whose blocks or type differ from it is BAD_INDEX.
   */
  async readRecordAt(offset: number, into?: ArrayBuffer, entry?: IndexEntry): Promise<RecordAt> {
    const f = await this.frameAt(offset);
    if (entry) {
      // The index (checked against the map by preflight) says where this record's blocks go: the
      // record must say the same, or its payload would land elsewhere.
      const r = f.type === FrameType.DATA || f.type === FrameType.ZERO ? new DataView(f.body.buffer, f.body.byteOffset, f.body.byteLength) : undefined;
      if (!r || f.type !== entry.type || f.body.length < 12 || r.getBigUint64(0, true) !== BigInt(entry.firstBlock) || r.getUint32(8, true) !== entry.blockCount) {
        throw new FormatError('BAD_INDEX', `the record at offset ${offset} does not match its index entry (blocks ${entry.firstBlock}+${entry.blockCount})`, offset, this.path);
      }
    }
    if (f.type === FrameType.DATA) {
      const data = withFile(this.path, () => decodeDataBody(f.body, f.offset));
      const at = offset + f.head.length + f.body.length + f.check.length;
      const payload = into && into.byteLength >= data.storedLen && this.src.readInto
        ? await this.preadInto(new Uint8Array(into, 0, data.storedLen), at)
        : await this.pread(at, data.storedLen);
      return { type: 'data', offset, data, payload };
    }
    if (f.type === FrameType.ZERO) return { type: 'zero', offset, zero: withFile(this.path, () => decodeZeroBody(f.body, f.offset)) };
    throw new FormatError('BAD_STRUCTURE', `no record at offset ${offset}`, offset, this.path);
  }
}
