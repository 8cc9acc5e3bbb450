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
   * Exactly `n` bytes in a buffer of their own: the first `n` bytes of `into` when it is large enough
   * (it is then the caller's again), else a new buffer that the result owns whole (safe to transfer).
   */
  readPayload(n: number, into?: ArrayBuffer): Promise<Uint8Array>;
  /** True when no byte is left. */
  atEnd(): Promise<boolean>;
  close(): Promise<void>;
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

  /** `n` bytes copied into `into` (when large enough) or a fresh buffer. */
  async readPayload(n: number, into?: ArrayBuffer): Promise<Uint8Array> {
    if (!into || into.byteLength < n) return this.read(n, true);
    if (!(await this.fill(n))) throw truncated(n, this.avail, this.offset, this.file);
    return this.copyOut(new Uint8Array(into, 0, n));
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

/** Bytes read ahead for frames; payload bytes beyond them are read straight into their buffer. */
const STAGE = 256 * 1024;

/**
 * Exact-length reads over positional reads (a local archive file). Frames come from a reused
 * read-ahead buffer (`read` returns copies); payloads are read directly into the caller's buffer.
 * Nothing is allocated per record but the small frame copies.
 */
export class PositionalReader implements ArchiveByteReader {
  offset = 0;
  private stage: Buffer = Buffer.allocUnsafeSlow(STAGE);
  /** The bytes at `offset`.. are stage[start, end). */
  private start = 0;
  private end = 0;
  private eof = false;

  constructor(private readonly src: PositionalSource, private readonly file?: string) {}

  private get avail(): number {
    return this.end - this.start;
  }

  private async fill(n: number): Promise<boolean> {
    if (this.avail >= n) return true;
    if (this.eof) return false;
    if (n > this.stage.length) {
      const bigger = Buffer.allocUnsafeSlow(n);
      this.stage.copy(bigger, 0, this.start, this.end);
      this.stage = bigger;
    } else if (this.start > 0) {
      this.stage.copy(this.stage, 0, this.start, this.end);
    }
    this.end -= this.start;
    this.start = 0;
    while (this.end < n) {
      const k = await this.src.readInto(this.stage, this.end, this.stage.length - this.end, this.offset + this.end);
      if (k === 0) {
        this.eof = true;
        return false;
      }
      this.end += k;
    }
    return true;
  }

  async read(n: number): Promise<Uint8Array> {
    if (n === 0) return new Uint8Array(0);
    if (!(await this.fill(n))) throw truncated(n, this.avail, this.offset, this.file);
    // A copy (a Buffer, as a file stream's chunks are): the stage is reused by the next read.
    const out = Buffer.from(this.stage.subarray(this.start, this.start + n));
    this.start += n;
    this.offset += n;
    return out;
  }

  async readPayload(n: number, into?: ArrayBuffer): Promise<Uint8Array> {
    if (n === 0) return new Uint8Array(0);
    const base = this.offset;
    const out = into && into.byteLength >= n ? new Uint8Array(into, 0, n) : new Uint8Array(n);
    // What the stage holds already.
    let at = Math.min(this.avail, n);
    out.set(this.stage.subarray(this.start, this.start + at));
    this.start += at;
    this.offset += at;
    if (at < n && n - at < STAGE / 2) {
      // A short rest: read ahead into the stage (the next frame comes with it).
      const rest = n - at;
      if (!(await this.fill(rest))) throw truncated(n, at + this.avail, base, this.file);
      out.set(this.stage.subarray(this.start, this.start + rest), at);
      this.start += rest;
      this.offset += rest;
      at = n;
    }
    // A long rest: straight into the payload's buffer (the stage is empty here).
    while (at < n) {
      const got = this.eof ? 0 : await this.src.readInto(out, at, n - at, base + at);
      if (got === 0) {
        this.eof = true;
        throw truncated(n, at, base, this.file);
      }
      at += got;
      this.offset = base + at;
    }
    return out;
  }

  async atEnd(): Promise<boolean> {
    return !(await this.fill(1));
  }

  async close(): Promise<void> {
    await this.src.close?.();
  }
}
