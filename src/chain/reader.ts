/**
 * ChainReader: the volume as of a chain's newest archive, read segment by segment with each record
 * read and checked once (restore, merge).
 */
import { payloadBuffer, payloadCorrupt, RecordBuffers, type WorkerPool } from '../archive/pool.js';
import { ArchiveFile } from '../archive/reader.js';
import type { VolumeSource } from '../archive/writer.js';
import { Codec, FRAME_CHECK_SIZE, FRAME_HEAD_SIZE } from '../format/constants.js';
import type { IndexEntry } from '../format/types.js';
import { chainSegments, type Segment } from './segments.js';

// ---------------------------------------------------------------------------------------------
// Reading one record

/**
 * Read the DATA record `entry` of `f` and decode it on the worker pool: stored hash checked,
 * decompressed into exactly rawLen bytes, every block's xxh64 checked. The bytes are in a buffer of
 * `buffers` (give it back when done with them). A record that fails its checks is PAYLOAD_CORRUPT.
 * The one record decoder of the chain readers (restore, merge, serve).
 */
export async function decodeRecord(f: ArchiveFile, entry: IndexEntry, pool: WorkerPool, buffers: RecordBuffers, st?: ArchiveReadStats): Promise<Uint8Array> {
  const into = buffers.take();
  const r = await f.readRecordAt(entry.offset, into, entry).catch((e: unknown) => {
    buffers.give(into);
    throw e;
  });
  const d = r.data!;
  if (st) {
    st.records++;
    st.bytesRead += d.storedLen + FRAME_HEAD_SIZE + FRAME_CHECK_SIZE + 32 + d.blockCount * 8;
  }
  const p = r.payload!;
  // The payload is the start of `into`, or (a source without positional reads) a buffer of its own.
  let buf: ArrayBuffer;
  if (p.buffer === into) buf = into;
  else {
    buffers.give(into);
    buf = payloadBuffer(p);
  }
  const out = d.codec === Codec.ZSTD ? buffers.take() : undefined;
  const res = await pool.decodeRecycled(buf, p.length, d, f.header.blockSize, true, out);
  for (const b of res.spare) buffers.give(b);
  if (!res.ok) {
    buffers.give(res.raw);
    throw payloadCorrupt(res, d.firstBlock, entry.offset, f.path);
  }
  return new Uint8Array(res.raw!, 0, d.rawLen);
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
    // Encrypted archives open the chunks each read needs on the pool (encrypted.ts), until close().
    for (const f of files) f.src.usePool?.(pool, true);
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
    const raw = decodeRecord(f, s.record!, this.pool, this.buffers, st);
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
    for (const f of this.files) f.src.usePool?.(undefined);
  }
}
