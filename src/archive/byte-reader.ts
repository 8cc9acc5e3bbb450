/**
 * Exact-length reads of an archive's bytes, tracking the absolute offset: `ByteReader` over an async
 * stream of byte chunks (works the same whether the source delivers the archive whole or one byte at a
 * time), `PositionalReader` over positional reads of a file (payloads read straight into the caller's
 * recycled buffers).
 */
import { FormatError } from '../errors.js';

/** What readArchive reads through. */
export interface ArchiveByteReader {
  /** Absolute offset of the next byte to be returned. */
  readonly offset: number;
  /** Exactly `n` bytes; FormatError TRUNCATED at the end of the source. */
  read(n: number): Promise<Uint8Array>;
  /**
   * Exactly `n` bytes in a buffer of their own: the `n` bytes at `at` of `into` when it is large
   * enough (it is then the caller's again), else a new buffer that the result owns whole (safe to
   * transfer).
   */
  readPayload(n: number, into?: ArrayBuffer, at?: number): Promise<Uint8Array>;
  /** True when no byte is left. */
  atEnd(): Promise<boolean>;
  close(): Promise<void>;
}

/** Where a payload is to be read: at `at` of `buffer` (several payloads in one buffer). */
export interface PayloadSlot {
  buffer: ArrayBuffer;
  at: number;
}

/** Positional reads of an archive (a local file): up to `length` bytes; 0 at the end. */
export interface PositionalSource {
  readInto(buf: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  /** Called when reading ends (readArchive's finally). */
  close?(): Promise<void>;
}

function truncated(n: number, left: number, offset: number, file: string | undefined): FormatError {
  return new FormatError('TRUNCATED', `archive is truncated: needed ${n} bytes, ${left} left`, offset, file);
}

export class ByteReader implements ArchiveByteReader {
  /** Absolute offset of the next byte to be returned. */
  offset = 0;
  private readonly it: AsyncIterator<Uint8Array>;
  private chunks: Uint8Array[] = [];
  private avail = 0;
  private eof = false;
  private readonly file: string | undefined;

  constructor(source: AsyncIterable<Uint8Array>, file?: string) {
    this.it = source[Symbol.asyncIterator]();
    this.file = file;
  }

  private async fill(n: number): Promise<boolean> {
    while (this.avail < n && !this.eof) {
      const r = await this.it.next();
      if (r.done) {
        this.eof = true;
        break;
      }
      const c = r.value;
      if (c.length === 0) continue;
      this.chunks.push(c);
      this.avail += c.length;
    }
    return this.avail >= n;
  }

  private take(n: number, fresh: boolean): Uint8Array {
    const first = this.chunks[0];
    if (first.length >= n && !fresh) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.avail -= n;
      this.offset += n;
      return out;
    }
    return this.copyOut(new Uint8Array(n));
  }

  /** Move the next `out.length` bytes (all in `chunks`) into `out`. */
  private copyOut(out: Uint8Array): Uint8Array {
    const n = out.length;
    let at = 0;
    while (at < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - at);
      out.set(k === c.length ? c : c.subarray(0, k), at);
      at += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.avail -= n;
    this.offset += n;
    return out;
  }

  /**
   * Read exactly `n` bytes. At the end of the stream this throws FormatError TRUNCATED. With `fresh`
   * the result owns its whole ArrayBuffer (safe to transfer to a worker).
   */
  async read(n: number, fresh = false): Promise<Uint8Array> {
    if (n === 0) return new Uint8Array(0);
    if (!(await this.fill(n))) {
      throw new FormatError('TRUNCATED', `archive is truncated: needed ${n} bytes, ${this.avail} left`, this.offset, this.file);
    }
    return this.take(n, fresh);
  }

  /** `n` bytes copied into `into` at `at` (when large enough) or a fresh buffer. */
  async readPayload(n: number, into?: ArrayBuffer, at = 0): Promise<Uint8Array> {
    if (!into || into.byteLength < at + n) return this.read(n, true);
    if (!(await this.fill(n))) throw truncated(n, this.avail, this.offset, this.file);
    return this.copyOut(new Uint8Array(into, at, n));
  }

  /** True when no byte is left. */
  async atEnd(): Promise<boolean> {
    return !(await this.fill(1));
  }

  /** Release the underlying source early (for example after an error). */
  async close(): Promise<void> {
    await this.it.return?.();
  }
}

/** The read-ahead of PositionalReader: pieces of this size, ... */
const PIECE = 512 * 1024;
/** ... this many of them read ahead (in flight or waiting to be consumed) ... */
const PIECES_AHEAD = 2;
/**
 * ... but after a long payload (read straight into its buffer) one piece of this size: the next frame
 * comes with it, and if its payload is long too, little of it is copied (a record of incompressible
 * data is 4 MiB: copying a whole 1 MiB read ahead of each one cost verify 6% more CPU).
 */
const LEAN_PIECE = 64 * 1024;

/** One piece of the read-ahead: `len` bytes of the file at `pos` (fewer than asked: the end of the file). */
interface Piece {
  pos: number;
  buf: Buffer;
  /** The bytes asked for (PIECE or LEAN_PIECE), and those read. */
  want: number;
  len: number;
  /** Settles when the piece is read (never rejects: a failure is `error`). */
  done: Promise<void> | undefined;
  error?: unknown;
}

/**
 * Exact-length reads over positional reads (a local archive file). The next PIECES_AHEAD pieces of the
 * file are read ahead, in flight while the caller works: frames and small payloads are copied out of
 * them, so an archive of small records (very compressible data) costs a read per 512 KiB rather than
 * a wait for a read per record. The part of a large payload past the read-ahead is read straight into
 * the caller's buffer (nothing copied twice). `read` returns copies; nothing is allocated per record
 * but the small frame copies.
 */
export class PositionalReader implements ArchiveByteReader {
  offset = 0;
  /** Pieces read (or being read) from `offset` on, in file order; the first one's bytes before `offset` are used. */
  private pieces: Piece[] = [];
  private readonly spare: Buffer[] = [];
  /** Where the next piece would start (the end of the last piece, or of a payload read directly). */
  private next = 0;
  /** The file ends here (known once a piece came back short). */
  private end = Infinity;
  /** The last payload was long: read ahead one LEAN_PIECE only. */
  private lean = false;

  constructor(private readonly src: PositionalSource, private readonly file?: string) {}

  /** Read ahead up to PIECES_AHEAD pieces (one lean piece after a long payload). */
  private issue(): void {
    // (pieces read and used up first: they hold no place in the read-ahead)
    for (let p = this.pieces[0]; p && p.done === undefined && this.offset >= p.pos + p.len; p = this.pieces[0]) {
      this.pieces.shift();
      this.spare.push(p.buf);
    }
    while (this.pieces.length < (this.lean ? 1 : PIECES_AHEAD) && this.next < this.end) {
      const want = this.lean ? LEAN_PIECE : PIECE;
      const piece: Piece = { pos: this.next, buf: this.spare.pop() ?? Buffer.allocUnsafeSlow(PIECE), want, len: 0, done: undefined };
      piece.done = this.fillPiece(piece).catch((e: unknown) => {
        piece.error = e;
      });
      this.pieces.push(piece);
      this.next += want;
    }
  }

  private async fillPiece(p: Piece): Promise<void> {
    while (p.len < p.want) {
      const k = await this.src.readInto(p.buf, p.len, p.want - p.len, p.pos + p.len);
      if (k === 0) {
        this.end = Math.min(this.end, p.pos + p.len);
        return;
      }
      p.len += k;
    }
  }

  /** The first piece read ahead that holds bytes at `offset` (waiting for it); undefined when none does. */
  private async first(): Promise<Piece | undefined> {
    while (this.pieces.length > 0) {
      const p = this.pieces[0];
      if (p.done) {
        await p.done;
        p.done = undefined;
      }
      if (p.error !== undefined) throw p.error;
      // (past the end of the file: read ahead before a piece before it came back short)
      if (this.offset < p.pos) return undefined;
      if (this.offset < p.pos + p.len) return p;
      // (used up, or short at the end of the file)
      this.pieces.shift();
      this.spare.push(p.buf);
    }
    return undefined;
  }

  /**
   * Copy the next bytes (up to `n`) into out[at..] from the pieces read ahead; with `more`, reading
   * ahead further as they are used. How many were copied (fewer: the end of the file, or without
   * `more`, of the read-ahead).
   */
  private async copyAhead(out: Uint8Array, at: number, n: number, more: boolean): Promise<number> {
    let done = 0;
    while (done < n) {
      if (more) this.issue();
      const p = await this.first();
      if (!p) break;
      const from = this.offset - p.pos;
      const k = Math.min(n - done, p.len - from);
      out.set(p.buf.subarray(from, from + k), at + done);
      done += k;
      this.offset += k;
    }
    return done;
  }

  async read(n: number): Promise<Uint8Array> {
    if (n === 0) return new Uint8Array(0);
    // A copy (a Buffer, as a file stream's chunks are): the pieces are reused.
    const out = Buffer.allocUnsafe(n);
    const k = await this.copyAhead(out, 0, n, true);
    if (k < n) throw truncated(n, k, this.offset - k, this.file);
    return out;
  }

  async readPayload(n: number, into?: ArrayBuffer, intoAt = 0): Promise<Uint8Array> {
    if (n === 0) return new Uint8Array(0);
    const base = this.offset;
    const out = into && into.byteLength >= intoAt + n ? new Uint8Array(into, intoAt, n) : new Uint8Array(n);
    let at = 0;
    if (n - (this.next - this.offset) > PIECE) {
      // A long payload: what is read ahead already (or on its way), then the rest straight into the
      // payload's buffer; the read-ahead goes on after it.
      at = await this.copyAhead(out, 0, n, false);
      while (at < n && base + at < this.end) {
        const got = await this.src.readInto(out, at, n - at, base + at);
        if (got === 0) this.end = base + at;
        at += got;
      }
      this.offset = base + at;
      this.next = this.offset;
      this.lean = true;
    } else {
      this.lean = false;
    }
    at += await this.copyAhead(out, at, n - at, true);
    if (at < n) throw truncated(n, at, base, this.file);
    return out;
  }

  async atEnd(): Promise<boolean> {
    this.issue();
    return (await this.first()) === undefined;
  }

  async close(): Promise<void> {
    // (reads still in flight finish into buffers nobody uses)
    await Promise.all(this.pieces.map((p) => p.done));
    await this.src.close?.();
  }
}
