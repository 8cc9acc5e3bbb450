/**
 * The streaming archive writer: one forward pass, so it works into a pipe, an SSH channel or a
 * multipart upload. Reads the DATA extents of the source, detects all-zero blocks, hashes and
 * compresses on worker threads, and writes frames in block order. Memory is bounded: a fixed window of
 * jobs in flight, the map spooled (to disk when large), and at most 1024 index entries pending.
 */
import { createHash, randomUUID } from 'node:crypto';
import { ThinarchiveError, UsageError } from '../errors.js';
import {
  Codec, CompressionAlg, DigestAlg, ExtentKind, FORMAT_MAJOR, minorFor, FrameType, HashAlg, MAX_EXTENT_BLOCKS,
  MAX_INDEX_ENTRIES, MAX_MAP_ENTRIES_PER_FRAME, MAX_RECORD_RAW,
} from '../format/constants.js';
import {
  encodeDataBody, encodeFrame, encodeHeaderBody, encodeIndexBody, encodeMapBody, encodeMapEndBody, encodePreamble,
  encodeTail, encodeTrailerBody, encodeZeroBody, isValidBlockSize,
} from '../format/frames.js';
import { initHash } from '../format/hash.js';
import type { ArchiveHeader, ArchiveMeta, IndexEntry, MapEnd, MapExtent, Trailer } from '../format/types.js';
import { rangeBytes, volumeBlocks } from '../format/types.js';
import type { EncodeResult, EncodeRun, WorkerPool } from './pool.js';
import { ExtentSpool } from './spool.js';

/**
 * Where archive bytes go. `write` resolves when the sink accepted the chunk (backpressure) and no
 * longer refers to it: the writer reuses the chunk's memory right after (recycled buffers). A sink
 * that keeps bytes past that must copy them.
 */
export interface ArchiveSink {
  write(chunk: Uint8Array): Promise<void>;
}

/** Random-access reads of the volume being archived (an image file, a block device, a snapshot). */
export interface VolumeSource {
  readonly size: number;
  /** Read up to `length` bytes at `position` into `buf` at `offset`; returns bytes read (0 at end). */
  read(buf: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  /**
   * Reads may run at once (positional reads of a file): writeArchive keeps READS_AHEAD of them in
   * flight. Otherwise (a ChainReader, which reads forward from where it is) one at a time.
   */
  readonly concurrentReads?: boolean;
}

export interface NewArchive {
  full: boolean;
  blockSize: number;
  archiveId?: string;
  parentId: string | null;
  chainId: string;
  sequence: number;
  volumeUuid: string;
  volumeSize: number;
  createdMs?: number;
  sourceChunkSize: number;
  meta: ArchiveMeta;
}

export interface WriteProgress {
  bytesRead: number;
  bytesTotal: number;
  bytesWritten: number;
}

export interface WriteResult {
  header: ArchiveHeader;
  mapEnd: MapEnd;
  trailer: Trailer;
  bytesWritten: number;
}

export interface WriteOptions {
  header: NewArchive;
  /** Extents in ascending block order, non-overlapping. Gaps in a full archive become UNMAP. */
  extents: AsyncIterable<MapExtent>;
  source: VolumeSource;
  sink: ArchiveSink;
  pool: WorkerPool;
  level?: number;
  onProgress?: (p: WriteProgress) => void;
  signal?: AbortSignal;
}

const OUT_BUFFER = 1 << 20;
/** Source reads in flight ahead of the job being handed to a worker (each up to MAX_RECORD_RAW). */
const READS_AHEAD = 3;
/** Chunks from this size on are written as they are; smaller ones are gathered (copied) first. */
const DIRECT_WRITE = OUT_BUFFER / 4;

/** Coalesces adjacent extents of one kind and splits runs longer than a u32 block count. */
export async function* normalizeExtents(src: AsyncIterable<MapExtent>, blocks: number, full: boolean): AsyncGenerator<MapExtent> {
  let cur: MapExtent | undefined;
  let next = 0;
  function* emit(e: MapExtent): Generator<MapExtent> {
    let { firstBlock, blockCount } = e;
    while (blockCount > 0) {
      const n = Math.min(blockCount, MAX_EXTENT_BLOCKS);
      yield { firstBlock, blockCount: n, kind: e.kind };
      firstBlock += n;
      blockCount -= n;
    }
  }
  function* add(e: MapExtent): Generator<MapExtent> {
    if (cur && cur.kind === e.kind && cur.firstBlock + cur.blockCount === e.firstBlock) {
      cur = { ...cur, blockCount: cur.blockCount + e.blockCount };
      return;
    }
    if (cur) yield* emit(cur);
    cur = { ...e };
  }
  for await (const e of src) {
    if (!Number.isSafeInteger(e.firstBlock) || !Number.isSafeInteger(e.blockCount) || e.blockCount <= 0 || e.firstBlock < next) {
      throw new ThinarchiveError('BAD_EXTENTS', `extent ${e.firstBlock}+${e.blockCount} is empty, out of order or overlapping`);
    }
    if (e.firstBlock + e.blockCount > blocks) {
      throw new ThinarchiveError('BAD_EXTENTS', `extent ${e.firstBlock}+${e.blockCount} runs past the end of the volume (${blocks} blocks)`);
    }
    if (full && e.firstBlock > next) yield* add({ firstBlock: next, blockCount: e.firstBlock - next, kind: ExtentKind.UNMAP });
    yield* add(e);
    next = e.firstBlock + e.blockCount;
  }
  if (full && next < blocks) yield* add({ firstBlock: next, blockCount: blocks - next, kind: ExtentKind.UNMAP });
  if (cur) yield* emit(cur);
}

export async function writeArchive(opts: WriteOptions): Promise<WriteResult> {
  await initHash();
  const h0 = opts.header;
  if (!isValidBlockSize(h0.blockSize)) throw new UsageError(`invalid block size ${h0.blockSize}: a power of two from 4 KiB to 4 MiB`);
  if (!(h0.volumeSize > 0)) throw new UsageError('volume size must be positive');
  const header: ArchiveHeader = {
    major: FORMAT_MAJOR,
    minor: minorFor(h0.meta),
    full: h0.full,
    blockSize: h0.blockSize,
    archiveId: h0.archiveId ?? randomUUID(),
    parentId: h0.parentId,
    chainId: h0.chainId,
    sequence: h0.sequence,
    volumeUuid: h0.volumeUuid,
    volumeSize: h0.volumeSize,
    createdMs: h0.createdMs ?? Date.now(),
    compression: CompressionAlg.ZSTD,
    hash: HashAlg.XXH64,
    digest: DigestAlg.SHA256,
    sourceChunkSize: h0.sourceChunkSize,
    meta: h0.meta,
  };
  const { sink, pool, source, signal } = opts;
  const level = opts.level ?? 3;
  const blockSize = header.blockSize;
  const blocks = volumeBlocks(header.volumeSize, blockSize);
  const digest = createHash('sha256');

  // Output: frames and small payloads are copied into one reused buffer; large payloads go straight
  // through. `put` keeps no reference to `b` once it resolves (the caller may reuse its memory).
  let pos = 0;
  const gather = Buffer.allocUnsafeSlow(OUT_BUFFER);
  let gathered = 0;
  const flush = async (): Promise<void> => {
    if (gathered === 0) return;
    const n = gathered;
    gathered = 0;
    await sink.write(gather.subarray(0, n));
  };
  const put = async (b: Uint8Array, digested: boolean): Promise<void> => {
    if (digested) digest.update(b);
    pos += b.length;
    if (b.length >= DIRECT_WRITE) {
      await flush();
      await sink.write(b);
      return;
    }
    if (gathered + b.length > OUT_BUFFER) await flush();
    gather.set(b, gathered);
    gathered += b.length;
  };
  const frame = (type: number, body: Uint8Array): Promise<void> => put(encodeFrame(type, body), true);

  await put(encodePreamble(header.minor), true);
  await frame(FrameType.HEADER, encodeHeaderBody(header));

  // Map: written as it streams in, and spooled for the payload pass.
  const spool = new ExtentSpool();
  try {
    const mapEnd: MapEnd = { extentCount: 0, dataBlocks: 0, zeroBlocks: 0, unmapBlocks: 0 };
    let batch: MapExtent[] = [];
    for await (const e of normalizeExtents(opts.extents, blocks, header.full)) {
      signal?.throwIfAborted();
      await spool.add(e);
      mapEnd.extentCount++;
      if (e.kind === ExtentKind.DATA) mapEnd.dataBlocks += e.blockCount;
      else if (e.kind === ExtentKind.ZERO) mapEnd.zeroBlocks += e.blockCount;
      else mapEnd.unmapBlocks += e.blockCount;
      batch.push(e);
      if (batch.length === MAX_MAP_ENTRIES_PER_FRAME) {
        await frame(FrameType.MAP, encodeMapBody(batch));
        batch = [];
      }
    }
    if (batch.length > 0) await frame(FrameType.MAP, encodeMapBody(batch));
    await frame(FrameType.MAP_END, encodeMapEndBody(mapEnd));

    // Records.
    const totals = { recordCount: 0, dataBlocks: 0, zeroBlocks: 0, rawBytes: 0, storedBytes: 0 };
    let pendingIndex: IndexEntry[] = [];
    let lastIndexOffset = 0;
    let indexCount = 0;
    const writeIndex = async (): Promise<void> => {
      if (pendingIndex.length === 0) return;
      const at = pos;
      await frame(FrameType.INDEX, encodeIndexBody({ prevIndexOffset: lastIndexOffset, entries: pendingIndex }));
      lastIndexOffset = at;
      indexCount++;
      pendingIndex = [];
    };
    const noteRecord = async (type: number, firstBlock: number, blockCount: number, at: number): Promise<void> => {
      totals.recordCount++;
      pendingIndex.push({ offset: at, firstBlock, blockCount, type });
      if (pendingIndex.length === MAX_INDEX_ENTRIES) await writeIndex();
    };
    // Consecutive zero runs (also across jobs) are merged into one ZERO record.
    let zeroRun: { first: number; count: number } | undefined;
    const flushZero = async (): Promise<void> => {
      if (!zeroRun) return;
      const at = pos;
      await frame(FrameType.ZERO, encodeZeroBody({ firstBlock: zeroRun.first, blockCount: zeroRun.count }));
      totals.zeroBlocks += zeroRun.count;
      const z = zeroRun;
      zeroRun = undefined;
      await noteRecord(FrameType.ZERO, z.first, z.count, at);
    };
    const emitRun = async (r: EncodeRun, job: EncodeResult): Promise<void> => {
      if (r.zero) {
        if (zeroRun && zeroRun.first + zeroRun.count === r.first && zeroRun.count + r.count <= MAX_EXTENT_BLOCKS) {
          zeroRun.count += r.count;
        } else {
          await flushZero();
          zeroRun = { first: r.first, count: r.count };
        }
        return;
      }
      await flushZero();
      const stored = r.stored ? new Uint8Array(r.stored) : new Uint8Array(r.in === 'out' ? job.out! : job.buf, r.at!, r.len!);
      const at = pos;
      await frame(FrameType.DATA, encodeDataBody({
        firstBlock: r.first, blockCount: r.count, codec: r.codec === Codec.ZSTD ? Codec.ZSTD : Codec.NONE,
        rawLen: r.rawLen!, storedLen: stored.length, storedHash: r.storedHash!, hashes: new BigUint64Array(r.hashes!),
      }));
      await put(stored, false);
      totals.dataBlocks += r.count;
      totals.rawBytes += r.rawLen!;
      totals.storedBytes += stored.length;
      await noteRecord(FrameType.DATA, r.first, r.count, at);
    };

    // An estimate: every DATA block counted full (only the volume's last block can be shorter).
    const progress: WriteProgress = { bytesRead: 0, bytesTotal: mapEnd.dataBlocks * blockSize, bytesWritten: 0 };
    const blocksPerJob = Math.max(1, Math.floor(MAX_RECORD_RAW / blockSize));
    const jobBytes = blocksPerJob * blockSize;
    const window = pool.size + 2;
    // Input and output buffers of finished jobs, reused: nothing large is allocated per job.
    const free: ArrayBuffer[] = [];
    const freeOut: ArrayBuffer[] = [];
    const inflight: Promise<EncodeResult>[] = [];
    const drainOne = async (): Promise<void> => {
      signal?.throwIfAborted();
      const res = await inflight.shift()!;
      for (const r of res.runs) await emitRun(r, res);
      // Written (or copied) by now: the buffers can be filled again.
      free.push(res.buf);
      if (res.out) freeOut.push(res.out);
      progress.bytesWritten = pos;
      opts.onProgress?.(progress);
    };
    // The next READS_AHEAD jobs' reads are in flight while the oldest one is handed to a worker (a
    // source whose reads may run at once: a file, read past the page cache, src/direct-io.ts, with
    // no kernel read-ahead to hide each read's latency). Any other source: one read at a time.
    async function* jobs(): AsyncGenerator<{ b: number; len: number }> {
      for await (const e of spool.read()) {
        if (e.kind !== ExtentKind.DATA) continue;
        for (let b = e.firstBlock; b < e.firstBlock + e.blockCount; b += blocksPerJob) {
          yield { b, len: rangeBytes(b, Math.min(blocksPerJob, e.firstBlock + e.blockCount - b), header.volumeSize, blockSize) };
        }
      }
    }
    const readJob = async (b: number, len: number, buf: ArrayBuffer): Promise<void> => {
      const view = new Uint8Array(buf, 0, len);
      let got = 0;
      while (got < len) {
        const k = await source.read(view, got, len - got, b * blockSize + got);
        if (k === 0) throw new ThinarchiveError('SOURCE_SHORT', `source ended at byte ${b * blockSize + got}, before the volume size ${header.volumeSize}`);
        got += k;
      }
    };
    const reads: { b: number; len: number; buf: ArrayBuffer; done: Promise<void> }[] = [];
    try {
      const next = jobs();
      for (;;) {
        while (reads.length < (source.concurrentReads ? READS_AHEAD : 1)) {
          const j = await next.next();
          if (j.done) break;
          const buf = free.pop() ?? new ArrayBuffer(jobBytes);
          const done = readJob(j.value.b, j.value.len, buf);
          done.catch(() => {}); // thrown when awaited below
          reads.push({ ...j.value, buf, done });
        }
        const r = reads.shift();
        if (!r) break;
        signal?.throwIfAborted();
        await r.done;
        progress.bytesRead += r.len;
        inflight.push(pool.encode(r.buf, r.len, r.b, blockSize, level, freeOut.pop() ?? new ArrayBuffer(jobBytes)));
        if (inflight.length >= window) await drainOne();
      }
      while (inflight.length > 0) await drainOne();
    } finally {
      // On error, let outstanding jobs and reads settle so none lands after we return.
      await Promise.allSettled([...inflight, ...reads.map((r) => r.done)]);
    }
    await flushZero();
    await writeIndex();
    signal?.throwIfAborted();

    const trailer: Trailer = { ...totals, lastIndexOffset, indexCount, digest: digest.digest() };
    const trailerAt = pos;
    await put(encodeFrame(FrameType.TRAILER, encodeTrailerBody(trailer)), false);
    await put(encodeTail(trailerAt), false);
    await flush();
    progress.bytesWritten = pos;
    opts.onProgress?.(progress);
    return { header, mapEnd, trailer, bytesWritten: pos };
  } finally {
    await spool.close();
  }
}

/** The zstd level option: an integer from 1 to 19 (or unset: the default). */
export function checkLevel(level: number | undefined): void {
  if (level !== undefined && (!Number.isInteger(level) || level < 1 || level > 19)) {
    throw new UsageError('--level must be an integer from 1 to 19');
  }
}
