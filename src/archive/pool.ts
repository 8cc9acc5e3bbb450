/**
 * A fixed pool of worker threads (worker.cjs) for zero detection, hashing, compression and
 * decompression. One job per worker at a time; extra jobs wait in a FIFO. Callers bound how many jobs
 * they keep in flight, so memory stays bounded. Buffers are transferred, not copied.
 * A pool may run its first jobs in the calling thread instead (`inlineBytes`): a small operation (an
 * incremental of a few MiB) then starts no worker at all.
 */
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { FormatError, ThinarchiveError } from '../errors.js';
import { MAX_RECORD_RAW } from '../format/constants.js';
import type { DataRecordHead } from '../format/types.js';
import type { PayloadSlot } from './byte-reader.js';
import { packagePath } from '../paths.js';

/**
 * Record-sized buffers (MAX_RECORD_RAW bytes), reused for a whole command: payloads are read into
 * them, decoded into them, written from them, and come back (the workers hand them back). Nothing
 * record-sized is allocated per record, which keeps three isolates' worth of GC slack out of the
 * peak RSS.
 */
export class RecordBuffers {
  private readonly free: ArrayBuffer[] = [];
  /** At most `maxFree` spare buffers are kept (the rest go to the GC). */
  constructor(private readonly maxFree = 64) {}
  take(): ArrayBuffer {
    return this.free.pop() ?? new ArrayBuffer(MAX_RECORD_RAW);
  }
  give(b: ArrayBuffer | undefined): void {
    // (a buffer of another size came from a fallback path: left to the GC)
    if (b && b.byteLength === MAX_RECORD_RAW && this.free.length < this.maxFree) this.free.push(b);
  }
}

/** Records whose payloads share one record buffer (PayloadBatcher), for one decodeBatch job. */
export interface PayloadBatch<T> {
  buf: ArrayBuffer;
  items: { rec: BatchRecord; tag: T }[];
  /** Their data bytes (each record's `outAt` is where its data would go in an output buffer). */
  raw: number;
}

/**
 * Gathers data records whose payloads go into one record buffer, to be decoded as one job
 * (WorkerPool.decodeBatch): readArchive reads each payload into the next slot (`slot`, its
 * payloadBuffer), `add` takes the record once its payload is there. A batch is ready (`takeReady`)
 * once it holds `maxRaw` bytes of data or the next record would not fit; `flush` makes the rest ready.
 * Records of a few hundred KiB (very compressible data) then cost one message per several MiB instead
 * of one each: a message to a worker and back costs more than decoding such a record, and every
 * buffer that crosses to another thread and back counts against V8's external memory, which drives
 * garbage collections.
 */
export class PayloadBatcher<T> {
  private cur: PayloadBatch<T> | undefined;
  /** Payload bytes in `cur`. */
  private used = 0;
  private ready: PayloadBatch<T>[] = [];

  /**
   * `maxRaw`: the data bytes of one batch at most (an apply's: what one output buffer holds). `solo`:
   * a record of this many data bytes or more is a batch of its own (apply decodes such a batch as a
   * single record: large records gain nothing from sharing a job, and each job's buffers would be
   * held longer).
   */
  constructor(private readonly buffers: RecordBuffers, private readonly maxRaw = BATCH_RAW, private readonly solo = Infinity) {}

  /** readArchive's payloadBuffer: the next free bytes of the batch (of a new one when the record does not fit). */
  readonly slot = (n: number, record?: Pick<DataRecordHead, 'rawLen'>): PayloadSlot | undefined => {
    if (n > MAX_RECORD_RAW) return undefined;
    const raw = record?.rawLen ?? 0;
    if (this.cur && (this.used + n > this.cur.buf.byteLength || this.cur.raw + raw > this.maxRaw || raw >= this.solo)) this.flush();
    this.cur ??= { buf: this.buffers.take(), items: [], raw: 0 };
    return { buffer: this.cur.buf, at: this.used };
  };

  /** A record whose payload `p` was read into its slot: taken into the batch (false: `p` is elsewhere). */
  add(p: Uint8Array, record: BatchRecord['record'], tag: T): boolean {
    const b = this.cur;
    if (!b || p.buffer !== b.buf || p.byteOffset !== this.used) return false;
    b.items.push({ rec: { at: this.used, len: p.length, record, outAt: b.raw }, tag });
    this.used += p.length;
    b.raw += record.rawLen;
    if (b.raw >= this.maxRaw || this.used === b.buf.byteLength || record.rawLen >= this.solo) this.flush();
    return true;
  }

  /** Make the records gathered so far a ready batch. */
  flush(): void {
    const b = this.cur;
    if (!b || b.items.length === 0) return;
    this.cur = undefined;
    this.used = 0;
    this.ready.push(b);
  }

  /** The batches ready to be decoded (each one handed out once). */
  takeReady(): PayloadBatch<T>[] {
    const r = this.ready;
    this.ready = [];
    return r;
  }

  /** Give back the buffers of whatever was not handed out (reading ended early). */
  dispose(): void {
    for (const b of [...this.ready, ...(this.cur ? [this.cur] : [])]) this.buffers.give(b.buf);
    this.ready = [];
    this.cur = undefined;
    this.used = 0;
  }
}

/**
 * The data a verify's decodeBatch job covers at most: about 2 ms of a worker's time on very
 * compressible data, so a message each way is a small part of it, and a 1 GiB volume is still over a
 * hundred jobs to share.
 */
export const BATCH_RAW = 8 * 1024 * 1024;

export interface EncodeRun {
  zero: boolean;
  first: number;
  count: number;
  rawLen?: number;
  codec?: number;
  storedHash?: bigint;
  hashes?: ArrayBuffer;
  /** The stored bytes in a buffer of their own (when the job had no output buffer) ... */
  stored?: ArrayBuffer;
  /** ... or `len` bytes at `at` of the job's input buffer (`buf`: a raw run) or output buffer (`out`). */
  in?: 'buf' | 'out';
  at?: number;
  len?: number;
}

export interface EncodeResult {
  runs: EncodeRun[];
  /** The input buffer, handed back. */
  buf: ArrayBuffer;
  /** The output buffer, handed back (when one was given). */
  out?: ArrayBuffer;
}

export interface DecodeResult {
  ok: boolean;
  raw?: ArrayBuffer;
  badBlocks?: number[];
  error?: string;
}

/** decodeRecycled's result: every buffer that was sent comes back, in `raw` or in `spare`. */
export interface RecycledDecodeResult {
  ok: boolean;
  /** With wantData: a buffer whose first rawLen bytes are the record's data. */
  raw?: ArrayBuffer;
  /** The buffers sent that do not hold the data: reusable at once. */
  spare: ArrayBuffer[];
  badBlocks?: number[];
  error?: string;
}

/** The error of a record whose payload failed its checks or would not decompress (PAYLOAD_CORRUPT). */
export function payloadCorrupt(res: { error?: string; badBlocks?: number[] }, firstBlock: number, offset: number, file: string | undefined): FormatError {
  const bad = res.badBlocks?.length ? `, first bad block ${firstBlock + res.badBlocks[0]}` : '';
  return new FormatError('PAYLOAD_CORRUPT', `record starting at block ${firstBlock}: ${res.error}${bad}`, offset, file);
}

/** A payload as a whole ArrayBuffer for the workers: its own buffer when it starts one, else a copy (Buffer.slice would be a view). */
export function payloadBuffer(p: Uint8Array): ArrayBuffer {
  return p.byteOffset === 0 && p.byteLength === p.buffer.byteLength ? p.buffer as ArrayBuffer : new Uint8Array(p).buffer as ArrayBuffer;
}

/** For decodeRecycled: a buffer whose first p.length bytes are the payload (p's own when p starts it, else a copy). */
export function payloadStart(p: Uint8Array): ArrayBuffer {
  return p.byteOffset === 0 ? p.buffer as ArrayBuffer : p.slice().buffer as ArrayBuffer;
}

/** One record of a decodeBatch job: its payload is `len` bytes at `at` of the batch's buffer. */
export interface BatchRecord {
  at: number;
  len: number;
  record: Pick<DataRecordHead, 'codec' | 'rawLen' | 'storedHash' | 'hashes'>;
  /** With an output buffer: where the record's data goes in it. */
  outAt?: number;
}

export interface BatchResult {
  /** The records that failed their checks (index into the batch), as decode reports them. */
  failed: { index: number; error: string; badBlocks?: number[] }[];
  /** The buffers sent, handed back. */
  stored: ArrayBuffer;
  out?: ArrayBuffer;
}

export interface HashResult {
  hashes: ArrayBuffer;
  zeroMask: ArrayBuffer;
  buf: ArrayBuffer;
}

export interface SealResult {
  plain: ArrayBuffer;
  out: ArrayBuffer;
  len: number;
}

export interface OpenResult {
  ok: boolean;
  /** With `decrypt`: the plaintext bytes at the start of `sealed`. */
  len?: number;
  badChunk?: number;
  sealed: ArrayBuffer;
}

interface Pending {
  msg: Record<string, unknown>;
  transfer: ArrayBuffer[];
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

const WORKER_PATH = packagePath('dist', 'archive', 'worker.cjs');

/** worker.cjs loaded in this thread, for inline jobs (on first use) */
type JobHandler = (msg: Record<string, unknown>) => Promise<{ result: unknown }>;
let inlineHandler: JobHandler | undefined;
function handleInline(msg: Record<string, unknown>): Promise<{ result: unknown }> {
  inlineHandler ??= (createRequire(import.meta.url)(WORKER_PATH) as { handle: JobHandler }).handle;
  return inlineHandler(msg);
}

/** The bytes a job works on, for the inline budget. */
function jobBytes(msg: Record<string, unknown>): number {
  const n = msg['len'] ?? msg['rawLen'] ?? msg['plainLen'] ?? msg['sealedLen'];
  return typeof n === 'number' ? n : 0;
}

/**
 * withPool's inline budget for an operation's own pool. A worker costs about 35 ms to start on the
 * development machine and a large part of a second in user-mode Linux (a thread, an isolate, zstd and
 * xxhash loaded); 8 MiB encode in 20-40 ms on one core. docs/PERFORMANCE.md "Against LINBIT thin-send-recv".
 */
export const INLINE_BYTES = 8 * 1024 * 1024;

/**
 * The highest zstd level a job may be compressed at in the calling thread. Above it (zstd's slower
 * strategies) a 4 MiB job can take a second or more, and a job in the main thread holds off everything
 * else there, signal handling included (a second SIGINT must end a send at once): such jobs always go
 * to a worker.
 */
export const INLINE_MAX_LEVEL = 5;

/**
 * Jobs posted to one worker at a time. With one, a worker waits a whole round trip (its answer handled
 * in this thread, the next job posted) after every job, which mattered when every record of very
 * compressible data was a job of its own. Measured alone it changed little (docs/PERFORMANCE.md,
 * "2026-12-08: small records in batches, archives read ahead"); with batches, one or two are the same.
 */
export const JOBS_PER_WORKER = 2;

export interface WorkerPoolOptions {
  /**
   * Run jobs in the calling thread, starting no worker, until they have covered this many bytes; then
   * start the workers, and go on running jobs here until one of them is ready. A compression above
   * INLINE_MAX_LEVEL always goes to a worker. 0 (the default): the workers start at once and run
   * every job.
   */
  inlineBytes?: number;
}

export class WorkerPool {
  private readonly workers: Worker[] = [];
  /** Jobs posted to each worker and not answered yet (at most JOBS_PER_WORKER). */
  private readonly posted = new Map<Worker, number>();
  private readonly queue: Pending[] = [];
  private readonly inflight = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;
  private failure: Error | undefined;
  private readonly lazy: boolean;
  private inlineLeft: number;
  private online = 0;
  readonly size: number;

  constructor(size = Math.max(1, availableParallelism()), opts: WorkerPoolOptions = {}) {
    this.size = size;
    this.inlineLeft = opts.inlineBytes ?? 0;
    this.lazy = this.inlineLeft > 0;
    if (!this.lazy) this.start();
  }

  /** Start the workers (once). */
  private start(): void {
    if (this.workers.length > 0) return;
    for (let i = 0; i < this.size; i++) {
      const w = new Worker(WORKER_PATH);
      w.on('message', (m: { id: number; result?: unknown; error?: string; ready?: boolean }) => this.onMessage(w, m));
      w.on('error', (e) => this.onFatal(e));
      w.on('exit', (code) => {
        if (!this.closed) this.onFatal(new Error(`worker thread exited with code ${code}`));
      });
      this.workers.push(w);
      this.posted.set(w, 0);
    }
  }

  /**
   * Jobs that run in this thread (a lazy pool's): within the budget, then until a worker is ready;
   * never a compression above INLINE_MAX_LEVEL.
   */
  private runsInline(msg: Record<string, unknown>): boolean {
    if (!this.lazy || this.online > 0) return false;
    if (msg['op'] === 'encode' && !((msg['level'] as number) <= INLINE_MAX_LEVEL)) {
      this.start();
      return false;
    }
    if (this.workers.length === 0) {
      this.inlineLeft -= jobBytes(msg);
      if (this.inlineLeft <= 0) this.start();
    }
    return true;
  }

  private onMessage(w: Worker, m: { id: number; result?: unknown; error?: string; ready?: boolean }): void {
    if (m.ready) {
      this.online++;
      return;
    }
    const p = this.inflight.get(m.id);
    this.inflight.delete(m.id);
    this.posted.set(w, this.posted.get(w)! - 1);
    this.pump();
    if (!p) return;
    if (m.error !== undefined) p.reject(new ThinarchiveError('WORKER_FAILED', `worker failed: ${m.error}`));
    else p.resolve(m.result);
  }

  private onFatal(e: Error): void {
    this.failure ??= new ThinarchiveError('WORKER_FAILED', `worker thread failed: ${e.message}`);
    for (const p of [...this.inflight.values(), ...this.queue]) p.reject(this.failure);
    this.inflight.clear();
    this.queue.length = 0;
  }

  /**
   * Post queued jobs to the worker with the fewest unanswered ones, up to JOBS_PER_WORKER each: a
   * worker that finishes a job finds the next one waiting instead of idling for a round trip through
   * this thread's event loop.
   */
  private pump(): void {
    while (this.queue.length > 0) {
      let w: Worker | undefined;
      let least = JOBS_PER_WORKER;
      for (const x of this.workers) {
        const n = this.posted.get(x)!;
        if (n < least) {
          w = x;
          least = n;
        }
      }
      if (!w) return;
      const p = this.queue.shift()!;
      const id = this.nextId++;
      this.inflight.set(id, p);
      this.posted.set(w, least + 1);
      w.postMessage({ ...p.msg, id }, p.transfer);
    }
  }

  private run<T>(msg: Record<string, unknown>, transfer: ArrayBuffer[], inlineOk = true): Promise<T> {
    const job = this.failure ? Promise.reject(this.failure)
      : this.closed ? Promise.reject(new ThinarchiveError('WORKER_FAILED', 'worker pool is closed'))
        : inlineOk && this.runsInline(msg)
          // (after the caller's current step, as a worker's answer would be)
          ? Promise.resolve().then(() => handleInline(msg)).then(
            (out) => out.result as T,
            (e: unknown) => { throw new ThinarchiveError('WORKER_FAILED', `job failed: ${e instanceof Error ? e.message : String(e)}`); },
          )
          : new Promise<T>((resolve, reject) => {
            this.queue.push({ msg, transfer, resolve: resolve as (v: unknown) => void, reject });
            this.pump();
          });
    // Pipelines keep several jobs in flight and stop awaiting the rest at the first failure: a failed
    // pool rejects them all at once, and a rejection nobody awaits must not end the process (a
    // daemon's other runs go on). Whoever awaits a job still gets its error.
    job.catch(() => {});
    return job;
  }

  /**
   * Zero-detect, hash and compress `len` bytes of `buf` (transferred) starting at block `firstBlock`.
   * With `out` (transferred, at least `len` bytes) the stored bytes of the runs are left in `buf` (raw
   * runs) and `out` (compressed runs), and both come back: nothing is allocated per job.
   */
  encode(buf: ArrayBuffer, len: number, firstBlock: number, blockSize: number, level: number, out?: ArrayBuffer): Promise<EncodeResult> {
    return this.run({ op: 'encode', buf, len, firstBlock, blockSize, level, out }, out ? [buf, out] : [buf]);
  }

  /**
   * Check a record's stored payload (transferred) against its stored hash, decompress it into exactly
   * rawLen bytes and check every block hash.
   */
  decode(
    stored: ArrayBuffer, record: Pick<DataRecordHead, 'codec' | 'rawLen' | 'storedHash' | 'hashes'>, blockSize: number, wantData: boolean,
    /** A buffer to decompress into (transferred), e.g. one returned by an earlier decode. */
    out?: ArrayBuffer,
  ): Promise<DecodeResult> {
    const h = record.hashes.slice().buffer;
    return this.run({
      op: 'decode', stored, codec: record.codec, rawLen: record.rawLen, storedHash: record.storedHash, blockSize, hashes: h, wantData, out,
    }, out ? [stored, h, out] : [stored, h]);
  }

  /**
   * decode for callers that recycle buffers: the payload is the first `storedLen` bytes of `stored`
   * (transferred); with wantData it is decompressed into `out` (transferred) when that is large
   * enough. Every buffer sent comes back whole (`raw`, `spare`), also when the record is bad.
   */
  decodeRecycled(
    stored: ArrayBuffer, storedLen: number, record: Pick<DataRecordHead, 'codec' | 'rawLen' | 'storedHash' | 'hashes'>, blockSize: number,
    wantData: boolean, out?: ArrayBuffer,
  ): Promise<RecycledDecodeResult> {
    const h = record.hashes.slice().buffer;
    return this.run({
      op: 'decode', recycle: true, stored, storedLen, codec: record.codec, rawLen: record.rawLen, storedHash: record.storedHash, blockSize, hashes: h, wantData, out,
    }, out ? [stored, h, out] : [stored, h]);
  }

  /**
   * decode for several records whose payloads share one buffer (`stored`, transferred): one job, one
   * message each way, for records too small to be worth a job each. With `out` (transferred), record
   * i's data goes to recs[i].outAt of it. Both buffers come back, also when records fail.
   */
  decodeBatch(stored: ArrayBuffer, recs: readonly BatchRecord[], blockSize: number, out?: ArrayBuffer): Promise<BatchResult> {
    let count = 0;
    let rawLen = 0;
    for (const r of recs) {
      if (out && (r.outAt ?? 0) + r.record.rawLen > out.byteLength) throw new Error(`decodeBatch: a record's data does not fit the output buffer (${r.outAt} + ${r.record.rawLen} > ${out.byteLength})`);
      count += r.record.hashes.length;
      rawLen += r.record.rawLen;
    }
    const hashes = new BigUint64Array(count);
    let h = 0;
    const list = recs.map(({ at, len, record, outAt }) => {
      hashes.set(record.hashes, h);
      h += record.hashes.length;
      return { at, len, outAt, codec: record.codec, rawLen: record.rawLen, storedHash: record.storedHash, hashCount: record.hashes.length };
    });
    const hb = hashes.buffer as ArrayBuffer;
    return this.run({ op: 'decodeBatch', stored, recs: list, hashes: hb, blockSize, out, rawLen }, out ? [stored, hb, out] : [stored, hb]);
  }

  /** Hash the blocks of `len` bytes of `buf` (transferred); also reports which blocks are all zero. */
  hash(buf: ArrayBuffer, len: number, blockSize: number): Promise<HashResult> {
    return this.run({ op: 'hash', buf, len, blockSize }, [buf]);
  }

  /**
   * Seal the plaintext `plainLen` bytes of `plain` (transferred) as consecutive age chunks from chunk
   * `index` (the final one flagged last when `last`) into `out` (transferred; room for the ciphertext
   * and a tag per chunk). Both buffers come back; `len` bytes of `out` are the sealed chunks.
   */
  seal(key: Buffer, index: number, last: boolean, plain: ArrayBuffer, plainLen: number, out: ArrayBuffer): Promise<SealResult> {
    return this.run({ op: 'seal', key: new Uint8Array(key), index, last, plain, plainLen, out }, [plain, out]);
  }

  /**
   * Authenticate the sealed age chunks in the first `sealedLen` bytes of `sealed` (transferred), chunk
   * `index` first, of a payload of `total` chunks; with `decrypt` the plaintext replaces them in place
   * (its first `len` bytes). The buffer comes back; `badChunk` is the first chunk that fails (or
   * `total`: bytes after the last).
   */
  open(key: Buffer, index: number, total: number, sealed: ArrayBuffer, sealedLen: number, decrypt: boolean): Promise<OpenResult> {
    return this.run({ op: 'open', key: new Uint8Array(key), index, total, sealed, sealedLen, decrypt }, [sealed]);
  }

  /**
   * A full garbage collection in every worker, when none has a job (else nothing: a busy pool's
   * garbage goes with its next collection anyway).
   */
  async collect(): Promise<void> {
    if (this.spent || this.queue.length > 0 || this.inflight.size > 0) return;
    // (every worker idle: each job goes to a different one, the one with none posted)
    await Promise.all(this.workers.map(() => this.run({ op: 'collect' }, [], false)));
  }

  /** Closed, or a worker died: no job will run here again. */
  get spent(): boolean {
    return this.closed || this.failure !== undefined;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/**
 * The process-wide pool withPool lends while sharing is on (shareWorkers), with its users and the
 * timer that closes it once idle.
 */
interface Shared { pool: WorkerPool; users: number; timer: NodeJS.Timeout | undefined }
let sharing: { idleMs: number } | undefined;
let shared: Shared | undefined;

/**
 * Lend one process-wide pool to every withPool caller instead of starting a pool per operation, for
 * a long-running process that runs many operations (the daemon): a pool's start costs about 40 ms of
 * CPU (each worker loads zstd and xxhash), and threads started and ended by the thousand leave the
 * allocator's arenas fragmented (RSS creeping up). Operations share the pool's workers through its
 * FIFO; each still bounds its own jobs in flight. The pool closes after `idleMs` without a user and
 * starts again at the next use; a pool whose worker died is replaced at the next use (its current
 * users get WORKER_FAILED, as they would with their own). `shareWorkers(undefined)` ends sharing: the
 * shared pool closes once its last user is done.
 */
export async function shareWorkers(idleMs: number | undefined): Promise<void> {
  sharing = idleMs === undefined ? undefined : { idleMs };
  if (shared && shared.users === 0) await release(shared);
}

/** A full garbage collection in the shared pool's workers while no operation uses it (WorkerPool.collect). */
export async function collectSharedWorkers(): Promise<void> {
  if (shared && shared.users === 0) await shared.pool.collect();
}

/**
 * After a shared pool's last user: close it now (sharing ended, it failed or was replaced, or the
 * idle time passed: `now`), else after the idle time.
 */
function release(s: Shared, now = false): Promise<void> | undefined {
  clearTimeout(s.timer);
  s.timer = undefined;
  if (!now && s === shared && sharing && !s.pool.spent) {
    s.timer = setTimeout(() => { if (s.users === 0) void release(s, true); }, sharing.idleMs);
    s.timer.unref();
    return undefined;
  }
  if (s === shared) shared = undefined;
  return s.pool.close();
}

/**
 * Run `fn` with a pool of its own that is closed afterwards, whatever happens; its first INLINE_BYTES
 * of jobs run in this thread. While sharing: the shared pool (always workers: they stay warm).
 */
export async function withPool<T>(fn: (pool: WorkerPool) => Promise<T>, size?: number): Promise<T> {
  if (sharing && size === undefined) {
    if (!shared || shared.pool.spent) {
      if (shared && shared.users === 0) void release(shared);
      shared = { pool: new WorkerPool(), users: 0, timer: undefined };
    }
    const s = shared;
    clearTimeout(s.timer);
    s.users++;
    try {
      return await fn(s.pool);
    } finally {
      if (--s.users === 0) await release(s);
    }
  }
  const pool = new WorkerPool(size, { inlineBytes: INLINE_BYTES });
  try {
    return await fn(pool);
  } finally {
    await pool.close();
  }
}
