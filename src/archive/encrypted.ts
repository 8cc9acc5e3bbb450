/**
 * Encrypted archives (docs/FORMAT.md §3.4): an age v1 file whose plaintext is the archive stream,
 * unchanged. Three adapters over src/crypto/age.ts:
 *
 * - `AgeEncryptor`: encrypts what an archive writer produces, in one forward pass, holding at most one
 *   64 KiB chunk of plaintext and one batch of ciphertext (a chunk is sealed as soon as the next byte
 *   shows it is not the last; `finish` seals the last one).
 * - `AgeByteSource`: the plaintext of a stored encrypted archive as a ByteSource (random access):
 *   `read(offset, len)` reads and authenticates only the chunks that hold those bytes (one ranged read
 *   of the store for all of them), `stream(start)` decrypts forward from the chunk holding `start`.
 *   Opening authenticates the header (MAC) and the last chunk (so truncation and extension are found
 *   at once); `authenticate` checks every chunk (apply's pre-flight: nothing unauthenticated reaches
 *   a target, and a failure comes before the first write).
 * - `decryptStream`: the plaintext of an encrypted stream of unknown length (standard input).
 *
 * A failed authentication is FormatError AGE_AUTH naming the archive and the chunk; decrypted bytes
 * are handed out only after their chunk authenticated.
 */
import { FormatError } from '../errors.js';
import {
  CHUNK, CHUNK_CT, MAX_HEADER, NONCE_SIZE, checkStanzas, looksLikeAge, newHeader, openChunk, parseHeader, payloadKey, payloadLayout, sealChunk, unwrapFileKey,
  type Identity, type Recipient,
} from '../crypto/age.js';
import type { ByteSource } from './reader.js';
import type { SealResult, WorkerPool } from './pool.js';

export type { Identity, Recipient } from '../crypto/age.js';

/** Ciphertext handed to the inner writer at a time (whole chunks). */
const BATCH_CHUNKS = 16;
/** Chunks read with one ranged read at most (1 MiB of ciphertext); also the chunks of one pool job. */
const READ_BATCH = 16;
/**
 * Random reads keep this many ciphertext read buffers for reuse, or as many as were ever in flight at
 * once if more (a chain reader keeps 2 x workers + 2 reads going): a buffer dropped after each read
 * would be garbage that V8 collects late, tens of MiB of peak RSS.
 */
const SPARE_READS = 2;
/** Decrypted chunks kept (frames next to each other share one). */
const CACHED_CHUNKS = 4;
/** Pooled reads: batches read and opened ahead of the one being read, beyond one per worker. */
const AHEAD_EXTRA = 1;

function authError(detail: string, file: string, offset?: number): FormatError {
  return new FormatError('AGE_AUTH', `encrypted archive fails authentication: ${detail}`, offset, file);
}

/**
 * Encrypt to `recipients` what is written, passing the ciphertext to `out` (whose promise resolves
 * when it is done with the buffer). Call `finish` once after the last write. With a worker pool
 * (`usePool`), batches of BATCH_CHUNKS chunks are sealed on the workers, a few at a time, into
 * recycled buffers, and handed to `out` in order; without one, on this thread.
 */
export class AgeEncryptor {
  private readonly key: Buffer;
  private prefix: Buffer | undefined;
  private plain = Buffer.allocUnsafe(CHUNK);
  private fill = 0;
  private index = 0;
  private batch: Buffer[] = [];
  private finished = false;
  // The pooled path: the plaintext batch being filled, the jobs in flight (oldest first), spare buffers.
  private pool: WorkerPool | undefined;
  private batchBuf: ArrayBuffer | undefined;
  private batchFill = 0;
  private readonly sealing: Promise<SealResult>[] = [];
  private readonly freePlain: ArrayBuffer[] = [];
  private readonly freeOut: ArrayBuffer[] = [];

  constructor(recipients: Recipient[], private readonly out: (b: Uint8Array) => Promise<void>) {
    const h = newHeader(recipients);
    this.key = h.key;
    this.prefix = h.prefix;
  }

  /**
   * Seal on `pool` from the next write on (before any byte was written); `undefined` after `finish`
   * (or to give up the pool: what is in flight is awaited and written first).
   */
  async usePool(pool: WorkerPool | undefined): Promise<void> {
    if (pool && (this.index > 0 || this.fill > 0 || this.batchFill > 0)) throw new Error('AgeEncryptor.usePool: bytes were already written');
    if (!pool && this.pool) {
      if (this.batchBuf && this.batchFill > 0) {
        // Back to this thread: the batch's bytes go through the single-chunk path.
        const rest = Buffer.from(this.batchBuf, 0, this.batchFill);
        this.batchFill = 0;
        this.pool = undefined;
        await this.drain();
        await this.write(rest);
        return;
      }
      await this.drain();
    }
    this.pool = pool;
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.pool) return this.writePooled(chunk);
    let at = 0;
    while (at < chunk.length) {
      if (this.fill === CHUNK) {
        // More bytes follow: the full chunk is not the last.
        this.batch.push(...sealChunk(this.key, this.index++, false, this.plain));
        this.fill = 0;
        if (this.batch.length >= 2 * BATCH_CHUNKS) await this.flush();
      }
      const k = Math.min(CHUNK - this.fill, chunk.length - at);
      this.plain.set(chunk.subarray(at, at + k), this.fill);
      this.fill += k;
      at += k;
    }
  }

  private async writePooled(chunk: Uint8Array): Promise<void> {
    const size = BATCH_CHUNKS * CHUNK;
    let at = 0;
    while (at < chunk.length) {
      // More bytes follow: a full batch holds no last chunk.
      if (this.batchFill === size) await this.submit(false);
      this.batchBuf ??= this.freePlain.pop() ?? new ArrayBuffer(size);
      const k = Math.min(size - this.batchFill, chunk.length - at);
      new Uint8Array(this.batchBuf, this.batchFill, k).set(chunk.subarray(at, at + k));
      this.batchFill += k;
      at += k;
    }
  }

  /** Seal the batch being filled on the pool (its final chunk flagged last when `last`). */
  private async submit(last: boolean): Promise<void> {
    const plain = this.batchBuf ?? this.freePlain.pop() ?? new ArrayBuffer(BATCH_CHUNKS * CHUNK);
    const n = this.batchFill;
    const out = this.freeOut.pop() ?? new ArrayBuffer(BATCH_CHUNKS * CHUNK_CT);
    const job = this.pool!.seal(this.key, this.index, last, plain, n, out);
    job.catch(() => {}); // awaited in order by drainOne
    this.sealing.push(job);
    this.index += Math.max(1, Math.ceil(n / CHUNK));
    this.batchBuf = undefined;
    this.batchFill = 0;
    while (this.sealing.length > this.pool!.size + 1) await this.drainOne();
  }

  /** Hand the oldest sealed batch to `out` and keep its buffers. */
  private async drainOne(): Promise<void> {
    const r = await this.sealing.shift()!;
    this.freePlain.push(r.plain);
    if (this.prefix) {
      const p = this.prefix;
      this.prefix = undefined;
      await this.out(p);
    }
    await this.out(new Uint8Array(r.out, 0, r.len));
    this.freeOut.push(r.out);
  }

  private async drain(): Promise<void> {
    while (this.sealing.length > 0) await this.drainOne();
  }

  private async flush(): Promise<void> {
    const parts = this.prefix ? [this.prefix, ...this.batch] : this.batch;
    this.prefix = undefined;
    this.batch = [];
    if (parts.length > 0) await this.out(parts.length === 1 ? parts[0] : Buffer.concat(parts));
  }

  /** Seal the last chunk and hand out everything left. */
  async finish(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    if (this.pool) {
      await this.submit(true);
      await this.drain();
      this.pool = undefined;
      return;
    }
    this.batch.push(...sealChunk(this.key, this.index++, true, this.plain.subarray(0, this.fill)));
    await this.flush();
  }
}

/** The file key's payload key and where the payload starts, from the start of an age file. */
async function openHeader(readAt: (offset: number, len: number) => Promise<Uint8Array>, size: number | undefined, identities: Identity[], label: string): Promise<{ key: Buffer; payloadStart: number }> {
  let want = 4096;
  for (;;) {
    const n = size === undefined ? want : Math.min(want, size);
    const b = await readAt(0, n);
    const h = parseHeader(b, label);
    if (h) {
      const fileKey = unwrapFileKey(h, identities, label);
      const nonce = await readAt(h.length, NONCE_SIZE);
      if (nonce.length < NONCE_SIZE) throw authError('it ends inside the payload nonce', label, h.length);
      return { key: payloadKey(fileKey, Buffer.from(nonce)), payloadStart: h.length + NONCE_SIZE };
    }
    if (b.length < n || n >= MAX_HEADER || (size !== undefined && n >= size)) {
      throw new FormatError(b.length >= MAX_HEADER ? 'AGE_HEADER' : 'AGE_AUTH', b.length >= MAX_HEADER ? 'age header: too large' : 'encrypted archive fails authentication: it ends inside the age header', undefined, label);
    }
    want *= 4;
  }
}

/** True when the first bytes of `src` are an age header. */
export async function isAgeSource(src: ByteSource): Promise<boolean> {
  return looksLikeAge(await src.read(0, Math.min(src.size, 22)));
}

/** The plaintext of a stored encrypted archive, with random access (see the module comment). */
export class AgeByteSource implements ByteSource {
  readonly label: string;
  readonly size: number;
  private readonly chunks: number;
  /** A few recently decrypted chunks (frames next to each other share one). */
  private readonly cache = new Map<number, Buffer>();
  /** With a worker pool (`usePool`): reads go through batches opened on the pool, read ahead. */
  private window: PooledWindow | undefined;
  /** With a worker pool for random reads (`usePool(pool, true)`): chunks not cached are opened on it. */
  private randomPool: WorkerPool | undefined;
  /** Spare batch buffers of the pooled paths (the authenticating pass hands them to the reading one). */
  private readonly spares: ArrayBuffer[] = [];
  /** Random reads in flight, and the most ever at once (how many spare read buffers are kept). */
  private reading = 0;
  private mostReading = 0;
  /**
   * The pooled random path caches a copy of a chunk (its batch buffer goes back to the pool): copies
   * evicted from the cache are reused rather than left to the garbage collector (a 64 KiB copy per
   * MiB read piled up to 30 MiB of peak RSS in a restore). `copies` are this source's own; an evicted
   * one is reused only while no copyOut runs (copyOut holds cached chunks across its awaits).
   */
  private readonly copies = new WeakSet<Buffer>();
  private readonly freeCopies: Buffer[] = [];
  private copyOuts = 0;

  private constructor(private readonly cipher: ByteSource, private readonly key: Buffer, private readonly payloadStart: number) {
    this.label = cipher.label;
    const layout = payloadLayout(cipher.size - payloadStart);
    if (!layout) throw authError(`its length (${cipher.size} bytes) is not that of an age file: truncated or extended`, cipher.label, cipher.size);
    this.chunks = layout.chunks;
    this.size = layout.plainSize;
  }

  /** Open `cipher` with `identities`: header MAC and the last chunk are authenticated. Closes `cipher` on failure. */
  static async open(cipher: ByteSource, identities: Identity[]): Promise<AgeByteSource> {
    try {
      const { key, payloadStart } = await openHeader((o, l) => cipher.read(o, l), cipher.size, identities, cipher.label);
      const s = new AgeByteSource(cipher, key, payloadStart);
      await s.chunk(s.chunks - 1);
      return s;
    } catch (e) {
      await cipher.close();
      throw e;
    }
  }

  /**
   * Whole-archive reads go through `stream` (one forward pass, decrypting each chunk once), unless a
   * pool was attached: then positional reads, decrypted on the pool ahead of the reader.
   */
  get streamPreferred(): boolean {
    return !this.window;
  }

  /**
   * Open chunks on `pool` from now on, when the archive is a local file: sequential reads decrypt
   * ahead, in batches of READ_BATCH chunks on every worker; with `random`, each read opens just the
   * chunks it needs (at most READ_BATCH per job), nothing ahead. The buffers are recycled. Undefined
   * detaches the pool; detach before it closes.
   */
  usePool(pool: WorkerPool | undefined, random = false): void {
    this.window?.drop();
    this.window = undefined;
    // (only over positional reads of a local file: a remote store keeps its streaming and ranged reads)
    this.randomPool = random && this.cipher.readInto ? pool : undefined;
    if (random) return;
    this.window = pool && this.cipher.readInto ? new PooledWindow(pool, this.cipher, this.key, this.payloadStart, this.chunks, (d, o) => authError(d, this.label, o), this.spares) : undefined;
  }

  private decrypt(i: number, sealed: Uint8Array): Buffer {
    const last = i === this.chunks - 1;
    const want = last ? this.cipher.size - this.payloadStart - i * CHUNK_CT : CHUNK_CT;
    if (sealed.length < want) throw authError(`chunk ${i} is truncated`, this.label, this.payloadStart + i * CHUNK_CT + sealed.length);
    const p = openChunk(this.key, i, last, sealed.subarray(0, want));
    if (!p) throw authError(`chunk ${i} of ${this.chunks} (${last ? 'the last' : 'not the last'}) does not authenticate`, this.label, this.payloadStart + i * CHUNK_CT);
    return p;
  }

  private remember(i: number, p: Buffer): void {
    this.cache.set(i, p);
    if (this.cache.size <= CACHED_CHUNKS) return;
    const [oldest, b] = this.cache.entries().next().value!;
    this.cache.delete(oldest);
    if (this.copies.has(b) && this.copyOuts === 0 && this.freeCopies.length < 2) this.freeCopies.push(b);
  }

  /** Cache a copy of `p` (a view of a buffer about to be reused) as chunk `i`. */
  private rememberCopy(i: number, p: Uint8Array): void {
    let b = this.freeCopies.pop();
    if (!b || b.length !== p.length) {
      b = Buffer.allocUnsafeSlow(p.length);
      this.copies.add(b);
    }
    b.set(p);
    this.remember(i, b);
  }

  /** A random read starts (readDone ends it). */
  private readStart(): void {
    this.reading++;
    this.mostReading = Math.max(this.mostReading, this.reading);
  }

  /** A random read is done with its read buffer. */
  private readDone(held: ArrayBuffer | undefined): void {
    this.reading--;
    if (held && this.spares.length < Math.max(SPARE_READS, this.mostReading)) this.spares.push(held);
  }

  private async chunk(i: number): Promise<Buffer> {
    const hit = this.cache.get(i);
    if (hit) return hit;
    const at = this.payloadStart + i * CHUNK_CT;
    const p = this.decrypt(i, await this.cipher.read(at, Math.min(CHUNK_CT, this.cipher.size - at)));
    this.remember(i, p);
    return p;
  }

  /**
   * Decrypt the plaintext bytes [offset, end) into `out` at `at`: the chunks not cached are read with
   * one ranged read per READ_BATCH chunks (bounded memory whatever the length). Cached chunks are
   * taken at the start: reads run concurrently, and another may evict them while this one waits.
   */
  private async copyOut(offset: number, end: number, out: Uint8Array, at: number): Promise<void> {
    const first = Math.floor(offset / CHUNK);
    const last = Math.floor((end - 1) / CHUNK);
    const have = new Map<number, Buffer>();
    for (let i = first; i <= last; i++) {
      const c = this.cache.get(i);
      if (c) have.set(i, c);
    }
    let sealed: Uint8Array | undefined;
    // A local file is read into a recycled buffer (this read's own: reads run concurrently).
    let held: ArrayBuffer | undefined;
    let from = 0;
    this.copyOuts++;
    this.readStart();
    try {
      for (let i = first; i <= last; i++) {
        let p = have.get(i);
        if (!p) {
          if (!sealed || i >= from + READ_BATCH || (i - from) * CHUNK_CT >= sealed.length) {
            from = i;
            let to = i;
            while (to < last && to - from + 1 < READ_BATCH && !have.has(to + 1)) to++;
            const base = this.payloadStart + from * CHUNK_CT;
            const len = Math.min((to - from + 1) * CHUNK_CT, this.cipher.size - base);
            if (this.cipher.readInto) {
              held ??= this.spares.pop() ?? new ArrayBuffer(READ_BATCH * CHUNK_CT);
              sealed = await readFully(this.cipher, new Uint8Array(held, 0, len), base);
            } else sealed = await this.cipher.read(base, len);
          }
          const rel = (i - from) * CHUNK_CT;
          p = this.decrypt(i, sealed.subarray(rel, rel + CHUNK_CT));
          this.remember(i, p);
        }
        place(p, i, offset, end, out, at);
      }
    } finally {
      this.copyOuts--;
      this.readDone(held);
    }
  }

  /**
   * copyOut with the chunks not cached opened on `pool`: read (at most READ_BATCH chunks at a time)
   * into a recycled buffer, authenticated and decrypted in place by a worker, copied out. The last
   * chunk of each group is kept in the cache (a copy): the next frame often starts in it.
   */
  private async copyOutPooled(pool: WorkerPool, offset: number, end: number, out: Uint8Array, at: number): Promise<void> {
    const first = Math.floor(offset / CHUNK);
    const last = Math.floor((end - 1) / CHUNK);
    let held: ArrayBuffer | undefined;
    this.readStart();
    try {
      for (let i = first; i <= last;) {
        const hit = this.cache.get(i);
        if (hit) {
          place(hit, i, offset, end, out, at);
          i++;
          continue;
        }
        let to = i;
        while (to < last && to - i + 1 < READ_BATCH && !this.cache.has(to + 1)) to++;
        const base = this.payloadStart + i * CHUNK_CT;
        const len = Math.min((to - i + 1) * CHUNK_CT, this.cipher.size - base);
        held ??= this.spares.pop() ?? new ArrayBuffer(READ_BATCH * CHUNK_CT);
        const got = (await readFully(this.cipher, new Uint8Array(held, 0, len), base)).length;
        if (got < len) throw authError(`chunk ${i + Math.floor(got / CHUNK_CT)} is truncated`, this.label, base + got);
        const r = await pool.open(this.key, i, this.chunks, held, len, true);
        held = r.sealed;
        if (!r.ok) {
          const bad = r.badChunk!;
          throw authError(`chunk ${bad} of ${this.chunks} (${bad === this.chunks - 1 ? 'the last' : 'not the last'}) does not authenticate`, this.label, this.payloadStart + bad * CHUNK_CT);
        }
        const plain = Buffer.from(held, 0, r.len);
        for (let k = i; k <= to; k++) place(plain.subarray((k - i) * CHUNK, (k - i + 1) * CHUNK), k, offset, end, out, at);
        this.rememberCopy(to, plain.subarray((to - i) * CHUNK, (to - i + 1) * CHUNK));
        i = to + 1;
      }
    } finally {
      this.readDone(held);
    }
  }

  async read(offset: number, len: number): Promise<Uint8Array> {
    const end = Math.min(offset + len, this.size);
    if (offset >= end) return new Uint8Array(0);
    const out = Buffer.allocUnsafe(end - offset);
    if (this.window) await this.window.copy(offset, end, out, 0);
    else if (this.randomPool) await this.copyOutPooled(this.randomPool, offset, end, out, 0);
    else await this.copyOut(offset, end, out, 0);
    return out;
  }

  /** Positional reads into the caller's (recycled) buffer: a record's payload needs no buffer of its own. */
  async readInto(buf: Uint8Array, at: number, length: number, position: number): Promise<number> {
    const end = Math.min(position + length, this.size);
    if (position >= end) return 0;
    if (this.window) await this.window.copy(position, end, buf, at);
    else if (this.randomPool) await this.copyOutPooled(this.randomPool, position, end, buf, at);
    else await this.copyOut(position, end, buf, at);
    return end - position;
  }

  async *stream(start = 0): AsyncGenerator<Uint8Array> {
    if (start >= this.size) return;
    let i = Math.floor(start / CHUNK);
    let skip = start - i * CHUNK;
    const pending: Buffer[] = [];
    let have = 0;
    // The next n bytes (all pending): a view of the first piece when it holds them, else one copy of
    // everything pending (a chunk that straddles the source's pieces).
    const take = (n: number): Buffer => {
      let b = pending[0];
      if (b.length < n) {
        b = Buffer.concat(pending, have);
        pending.length = 0;
        pending.push(b);
      }
      const out = b.subarray(0, n);
      if (b.length > n) pending[0] = b.subarray(n);
      else pending.shift();
      have -= n;
      return out;
    };
    const end = this.cipher.size;
    for await (const c of this.cipher.stream(this.payloadStart + i * CHUNK_CT)) {
      pending.push(Buffer.from(c.buffer, c.byteOffset, c.byteLength));
      have += c.length;
      while (i < this.chunks && have >= (i === this.chunks - 1 ? end - this.payloadStart - i * CHUNK_CT : CHUNK_CT)) {
        const n = i === this.chunks - 1 ? end - this.payloadStart - i * CHUNK_CT : CHUNK_CT;
        const p = this.decrypt(i, take(n));
        i++;
        yield skip > 0 ? p.subarray(skip) : p;
        skip = 0;
      }
      if (i === this.chunks) {
        if (have > 0) throw authError('bytes after its last chunk', this.label, end);
      }
    }
    if (i < this.chunks) throw authError(`it ends in chunk ${i} of ${this.chunks}`, this.label, this.payloadStart + i * CHUNK_CT + have);
  }

  /**
   * Authenticate every chunk (reads the whole file once, keeps nothing). With `pool` and a local file,
   * batches of READ_BATCH chunks are authenticated on every worker at once (nothing is decrypted into
   * a buffer); a remote store's archive is streamed once.
   */
  async authenticate(pool?: WorkerPool): Promise<void> {
    if (!pool || !this.cipher.readInto) {
      for await (const _ of this.stream(0)) { /* each chunk is checked as it is decrypted */ }
      return;
    }
    const w = new PooledWindow(pool, this.cipher, this.key, this.payloadStart, this.chunks, (d, o) => authError(d, this.label, o), this.spares, false);
    try {
      await w.authenticateAll();
    } finally {
      w.drop();
    }
  }

  async close(): Promise<void> {
    this.window?.drop();
    this.window = undefined;
    this.randomPool = undefined;
    this.spares.length = 0;
    this.freeCopies.length = 0;
    this.cache.clear();
    await this.cipher.close();
  }
}

/** The part of plaintext chunk `i` (`p`) that falls in [offset, end), into `out` at `at` (for `offset`). */
function place(p: Uint8Array, i: number, offset: number, end: number, out: Uint8Array, at: number): void {
  const s = Math.max(offset, i * CHUNK) - i * CHUNK;
  const e = Math.min(end, (i + 1) * CHUNK) - i * CHUNK;
  if (e > s) out.set(p.subarray(s, e), at + Math.max(offset, i * CHUNK) - offset);
}

/** Fill `view` from `position` of `src` by positional reads; a shorter view at the end of the source. */
async function readFully(src: ByteSource, view: Uint8Array, position: number): Promise<Uint8Array> {
  let got = 0;
  while (got < view.length) {
    const n = await src.readInto!(view, got, view.length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got === view.length ? view : view.subarray(0, got);
}

interface OpenedBatch {
  /** The batch's plaintext (a view of `buf`), or empty when only authenticated. */
  plain: Buffer;
  buf: ArrayBuffer;
}

/**
 * Batches of READ_BATCH chunks of an encrypted local archive, each read with one positional read into
 * a recycled buffer and opened on the worker pool (authenticated, and decrypted in place), one per worker and AHEAD_EXTRA more ahead of the reader. A batch is handed out only once every
 * chunk of it authenticated. Batches behind the reader are released (their buffers reused): the window
 * suits forward reads; a read further back opens its batches again.
 */
class PooledWindow {
  private readonly jobs = new Map<number, Promise<OpenedBatch>>();
  private readonly batches: number;
  private readonly ahead: number;
  private dropped = false;

  constructor(
    private readonly pool: WorkerPool, private readonly cipher: ByteSource, private readonly key: Buffer, private readonly payloadStart: number,
    private readonly chunks: number, private readonly fail: (detail: string, offset: number) => FormatError, private readonly spares: ArrayBuffer[],
    private readonly decrypt = true,
  ) {
    this.batches = Math.ceil(chunks / READ_BATCH);
    this.ahead = pool.size + AHEAD_EXTRA;
  }

  /** Read batch `b`'s ciphertext and open it on the pool. */
  private async open(b: number): Promise<OpenedBatch> {
    const first = b * READ_BATCH;
    const at = this.payloadStart + first * CHUNK_CT;
    const len = Math.min(Math.min(READ_BATCH, this.chunks - first) * CHUNK_CT, this.cipher.size - at);
    const sealed = this.spares.pop() ?? new ArrayBuffer(READ_BATCH * CHUNK_CT);
    const got = (await readFully(this.cipher, new Uint8Array(sealed, 0, len), at)).length;
    if (got < len) throw this.fail(`it ends in chunk ${first + Math.floor(got / CHUNK_CT)} of ${this.chunks}`, at + got);
    const r = await this.pool.open(this.key, first, this.chunks, sealed, len, this.decrypt);
    if (!r.ok) {
      this.give({ plain: Buffer.alloc(0), buf: r.sealed });
      const i = r.badChunk!;
      throw this.fail(`chunk ${i} of ${this.chunks} (${i === this.chunks - 1 ? 'the last' : 'not the last'}) does not authenticate`, this.payloadStart + i * CHUNK_CT);
    }
    return { plain: this.decrypt ? Buffer.from(r.sealed, 0, r.len) : Buffer.alloc(0), buf: r.sealed };
  }

  private give(o: OpenedBatch): void {
    if (this.dropped) return;
    if (this.spares.length <= this.ahead) this.spares.push(o.buf);
  }

  /** The batch's job, started (with the ones after it, up to the read-ahead) when not yet. */
  private job(b: number): Promise<OpenedBatch> {
    for (let k = b; k < Math.min(this.batches, b + this.ahead); k++) {
      if (this.jobs.has(k)) continue;
      const p = this.open(k);
      p.catch(() => {}); // awaited by its reader (or dropped)
      this.jobs.set(k, p);
    }
    return this.jobs.get(b)!;
  }

  /** Release (recycle) every batch before `b`. */
  private releaseBefore(b: number): void {
    for (const [k, p] of this.jobs) {
      if (k >= b) continue;
      this.jobs.delete(k);
      p.then((o) => this.give(o), () => {});
    }
  }

  /** Plaintext bytes [offset, end) into `out` at `at`, from the batches that hold them. */
  async copy(offset: number, end: number, out: Uint8Array, at: number): Promise<void> {
    const per = READ_BATCH * CHUNK;
    const first = Math.floor(offset / per);
    const last = Math.floor((end - 1) / per);
    this.releaseBefore(first);
    for (let b = first; b <= last; b++) {
      const o = await this.job(b);
      const s = Math.max(offset, b * per);
      const e = Math.min(end, (b + 1) * per);
      out.set(o.plain.subarray(s - b * per, e - b * per), at + s - offset);
    }
  }

  /** Authenticate every batch, all workers at once, in order (the first failure is thrown). */
  async authenticateAll(): Promise<void> {
    for (let b = 0; b < this.batches; b++) {
      const o = await this.job(b);
      this.jobs.delete(b);
      this.give(o);
    }
  }

  /**
   * Forget every job: those in flight finish on their own (nothing waits for them, and their buffers
   * are not taken back: the pool may close under them).
   */
  drop(): void {
    this.dropped = true;
    this.jobs.clear();
  }
}

/**
 * The plaintext of an age stream of unknown length (standard input): header, then chunks, each handed
 * out once authenticated. A full chunk is held until the next byte (or the end) says whether it is
 * the last.
 */
export async function* decryptStream(src: AsyncIterable<Uint8Array>, identities: Identity[], label: string): AsyncGenerator<Uint8Array> {
  const it = src[Symbol.asyncIterator]();
  let buf: Buffer = Buffer.alloc(0);
  let eof = false;
  const more = async (): Promise<boolean> => {
    if (eof) return false;
    const r = await it.next();
    if (r.done) {
      eof = true;
      return false;
    }
    buf = buf.length === 0 ? Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength) : Buffer.concat([buf, r.value]);
    return true;
  };
  try {
    const { key, payloadStart } = await openHeader(async (offset, len) => {
      while (buf.length < offset + len && (await more()));
      return buf.subarray(offset, Math.min(buf.length, offset + len));
    }, undefined, identities, label);
    buf = buf.subarray(payloadStart);
    let offset = payloadStart;
    for (let i = 0; ; i++) {
      // A full chunk and one more byte, or the end.
      while (buf.length <= CHUNK_CT && (await more()));
      const last = buf.length <= CHUNK_CT;
      const sealed = buf.subarray(0, Math.min(CHUNK_CT, buf.length));
      const p = openChunk(key, i, last, sealed);
      if (!p) throw authError(`chunk ${i} (${last ? 'the last' : 'not the last'}) does not authenticate`, label, offset);
      buf = buf.subarray(sealed.length);
      offset += sealed.length;
      if (p.length > 0) yield p;
      if (last) return;
    }
  } finally {
    await it.return?.();
  }
}

/**
 * A stream of an archive that may be encrypted (standard input): decrypted when its first bytes are
 * an age header, passed through unchanged otherwise.
 */
export async function* plainStream(src: AsyncIterable<Uint8Array>, identities: Identity[], label: string): AsyncGenerator<Uint8Array> {
  const it = src[Symbol.asyncIterator]();
  const head: Uint8Array[] = [];
  let have = 0;
  let done = false;
  // Enough bytes to tell an age header from an archive preamble.
  while (have < 22) {
    const r = await it.next();
    if (r.done) {
      done = true;
      break;
    }
    head.push(r.value);
    have += r.value.length;
  }
  async function* rest(): AsyncGenerator<Uint8Array> {
    yield* head;
    if (done) return;
    for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
  }
  const first = Buffer.concat(head);
  if (looksLikeAge(first) && first.length >= 22) yield* decryptStream(rest(), identities, label);
  else {
    try {
      yield* rest();
    } finally {
      await it.return?.();
    }
  }
}

/**
 * What can be checked of an encrypted archive without a key (`verify --structure-only`): an age v1
 * header with well-formed X25519 or scrypt stanzas and a MAC line, a payload nonce, and a length that
 * chunks of 64 KiB (each with its 16-byte tag) can make: a truncation or extension that breaks the
 * chunk lengths is found. (Whether bytes were changed, or whole chunks cut off, takes the key.)
 */
export async function checkAgeStructure(src: ByteSource): Promise<{ stanzas: string[]; chunks: number; plainSize: number }> {
  let want = 4096;
  for (;;) {
    const b = await src.read(0, Math.min(want, src.size));
    const h = parseHeader(b, src.label);
    if (h) {
      checkStanzas(h, src.label);
      const layout = payloadLayout(src.size - h.length - NONCE_SIZE);
      if (!layout) throw authError(`its length (${src.size} bytes) is not that of an age file: truncated or extended`, src.label, src.size);
      return { stanzas: h.stanzas.map((s) => s.type), ...layout };
    }
    if (b.length < Math.min(want, src.size) || want >= MAX_HEADER || want >= src.size) {
      throw new FormatError('AGE_HEADER', 'age header: it ends before its MAC line', undefined, src.label);
    }
    want *= 4;
  }
}
