/**
 * Direct I/O (O_DIRECT) beside a file's ordinary descriptor: volumes are read and targets written
 * past the page cache. On the 2-core machine of docs/PERFORMANCE.md ("Direct I/O") the page cache's
 * copy, page allocation and write-back cost more CPU than decompressing: a 1.5 GB buffered dd spent
 * 1.4-3.7 s in the kernel against 0.26-0.47 s with oflag=direct. A backup read also stops evicting
 * what the host's page cache held.
 *
 * Only what is 4096-aligned (position and length) goes direct; the caller does the rest through its
 * ordinary descriptor. Where O_DIRECT cannot be opened (tmpfs, some FUSE file systems), or once a
 * direct call is refused with EINVAL (an alignment beyond 4096), nothing more goes direct. The
 * kernel keeps the two descriptors coherent: a direct read first writes back dirty cached pages of
 * its range, a direct write drops cached pages of its range.
 */
import { constants as fsc } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { DIRECT_ALIGN, thinio } from './native.js';

export class DirectFile {
  private refused = false;

  private constructor(private readonly fh: FileHandle) {}

  /**
   * A second descriptor of `path` with O_DIRECT, or undefined where that cannot be opened. Never
   * exclusive (a block device's O_EXCL claim stays with the caller's descriptor).
   */
  static async open(path: string, mode: 'read' | 'write'): Promise<DirectFile | undefined> {
    try {
      return new DirectFile(await open(path, (mode === 'read' ? fsc.O_RDONLY : fsc.O_WRONLY) | fsc.O_DIRECT));
    } catch {
      return undefined;
    }
  }

  /** Whether direct calls are still made (false once one was refused). */
  get active(): boolean {
    return !this.refused;
  }

  /** How many of `length` bytes at `position` can go direct (a prefix; 0: none). */
  alignedPart(position: number, length: number): number {
    return this.refused || position % DIRECT_ALIGN !== 0 ? 0 : length - (length % DIRECT_ALIGN);
  }

  /**
   * Write all of `bytes` (alignedPart long) at `position`; false when refused (EINVAL: nothing more
   * goes direct, the caller writes these bytes through the page cache). Other errors are thrown.
   */
  async write(bytes: Uint8Array, position: number): Promise<boolean> {
    try {
      await thinio().pwriteDirect(this.fh.fd, bytes, position);
      return true;
    } catch (e) {
      return this.refusal(e);
    }
  }

  /** Read into `bytes` (alignedPart long) from `position`: the count (short only at the end), or undefined when refused. */
  async read(bytes: Uint8Array, position: number): Promise<number | undefined> {
    try {
      return await thinio().preadDirect(this.fh.fd, bytes, position);
    } catch (e) {
      this.refusal(e);
      return undefined;
    }
  }

  /** false for EINVAL (and nothing goes direct from now on); throws anything else. */
  private refusal(e: unknown): false {
    if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
    this.refused = true;
    return false;
  }

  /** Close the descriptor (after the last direct call has settled). */
  async close(): Promise<void> {
    await this.fh.close().catch(() => {});
  }
}

/** Write all of `bytes` at `position` through an ordinary descriptor. */
async function writeAll(fh: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let at = 0;
  while (at < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, at, bytes.length - at, position + at);
    if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
    at += bytesWritten;
  }
}

/** The size of SequentialWriter's pieces. */
export const STAGE_BYTES = 4 << 20;

/**
 * A file written front to back (an archive being stored). Its bytes are gathered into whole
 * STAGE_BYTES pieces, each written direct while the next one fills (two buffers); what is left at
 * the end, and everything when `direct` is undefined or refused, goes through `fh`. Errors are
 * raw (the caller names the file).
 */
export class SequentialWriter {
  private readonly stages: Buffer[] = [];
  private fill = 0;
  private turn = 0;
  /** the direct write of each stage buffer, settled before the buffer is filled again */
  private readonly inFlight: (Promise<void> | undefined)[] = [undefined, undefined];
  /** bytes handed to the file (written or in flight) */
  private written = 0;

  constructor(private readonly fh: FileHandle, private readonly direct: DirectFile | undefined) {}

  /** Bytes taken so far (the next write's position). */
  get position(): number {
    return this.written + this.fill;
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (!this.direct?.active && this.fill === 0) {
      await this.settle(true);
      await writeAll(this.fh, chunk, this.written);
      this.written += chunk.length;
      return;
    }
    let at = 0;
    while (at < chunk.length) {
      if (this.fill === 0) {
        await this.inFlight[this.turn]; // this buffer's last write (its error is thrown here)
        this.inFlight[this.turn] = undefined;
        this.stages[this.turn] ??= Buffer.allocUnsafe(STAGE_BYTES);
      }
      const stage = this.stages[this.turn]!;
      const n = Math.min(chunk.length - at, STAGE_BYTES - this.fill);
      stage.set(chunk.subarray(at, at + n), this.fill);
      this.fill += n;
      at += n;
      if (this.fill === STAGE_BYTES) {
        const position = this.written;
        const w = this.direct!.write(stage, position).then((ok) => (ok ? undefined : writeAll(this.fh, stage, position)));
        w.catch(() => {}); // thrown when awaited
        this.inFlight[this.turn] = w;
        this.written += STAGE_BYTES;
        this.fill = 0;
        this.turn ^= 1;
      }
    }
  }

  /** Write what is still gathered through `fh` and wait for every write. */
  async finish(): Promise<void> {
    await this.settle(true);
    if (this.fill > 0) {
      await writeAll(this.fh, this.stages[this.turn]!.subarray(0, this.fill), this.written);
      this.written += this.fill;
      this.fill = 0;
    }
  }

  /** Wait for the direct writes in flight; `raise`: throw the first error (else ignore them: aborting). */
  async settle(raise = false): Promise<void> {
    const all = this.inFlight.splice(0, 2, undefined, undefined).filter((p) => p !== undefined);
    const results = await Promise.allSettled(all);
    const failed = results.find((r) => r.status === 'rejected');
    if (raise && failed) throw (failed as PromiseRejectedResult).reason;
  }

  /** Close the direct descriptor, after waiting for its writes (the caller closes `fh`). */
  async close(): Promise<void> {
    await this.settle(false);
    await this.direct?.close();
  }
}
