/**
 * Exact-length reads over an async stream of byte chunks, tracking the absolute offset. Works the same
 * whether the source delivers the archive whole or one byte at a time.
 */
import { FormatError } from '../errors.js';

export class ByteReader {
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
    let out: Uint8Array;
    if (first.length >= n && !fresh) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = new Uint8Array(n);
      let at = 0;
      while (at < n) {
        const c = this.chunks[0];
        const k = Math.min(c.length, n - at);
        out.set(c.subarray(0, k), at);
        at += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
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

  /** True when no byte is left. */
  async atEnd(): Promise<boolean> {
    return !(await this.fill(1));
  }

  /** Release the underlying source early (for example after an error). */
  async close(): Promise<void> {
    await this.it.return?.();
  }
}
