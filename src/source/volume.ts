/**
 * Read-only volumes to archive: a (sparse) image file or a block device. A full archive reads only
 * the allocated parts of an image (SEEK_DATA / SEEK_HOLE); a block device is read whole unless the
 * caller supplies the mapped ranges (thin LVs do, from pool metadata).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { DirectFile } from '../direct-io.js';
import { ioError, ThinarchiveError } from '../errors.js';
import type { VolumeSource } from '../archive/writer.js';
import { ExtentKind } from '../format/constants.js';
import type { MapExtent } from '../format/types.js';
import { volumeBlocks } from '../format/types.js';
import { thinio } from '../native.js';

export class FileVolume implements VolumeSource {
  /** positional reads: any number may run at once */
  readonly concurrentReads = true;

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly size: number,
    readonly isBlockDevice: boolean,
    /** the aligned part of each read goes through it (src/direct-io.ts) */
    private readonly direct: DirectFile | undefined,
  ) {}

  /** Whether reads bypass the page cache (their aligned part; src/direct-io.ts). */
  get directReads(): boolean {
    return this.direct?.active ?? false;
  }

  /** Open for reading; `role` names it in messages (the source of a send, the target of verify --against). */
  static async open(path: string, role: 'source' | 'target' = 'source'): Promise<FileVolume> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      throw ioError(e, `cannot open ${role} ${path}`);
    }
    try {
      const st = await fh.stat();
      if (st.isBlockDevice()) return new FileVolume(path, fh, thinio().blkGetSize64(fh.fd), true, await DirectFile.open(path, 'read'));
      if (!st.isFile()) throw new ThinarchiveError('SOURCE_NOT_VOLUME', `${role} ${path} is neither a regular file nor a block device`, 'usage');
      if (st.size === 0) throw new ThinarchiveError('SOURCE_EMPTY', `${role} ${path} is empty`, 'usage');
      return new FileVolume(path, fh, st.size, false, await DirectFile.open(path, 'read'));
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async read(buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    try {
      const aligned = this.direct?.alignedPart(position, length) ?? 0;
      if (aligned > 0) {
        // An I/O error fails a whole direct read: the page cache's read below reads up to the bad
        // byte and names it (or gets the bytes after all).
        const n = await this.direct!.read(buf.subarray(offset, offset + aligned), position).catch(() => undefined);
        // (short: the end of the volume; refused: this and every later read through the page cache)
        if (n !== undefined) {
          if (n < aligned || aligned === length) return n;
          const { bytesRead } = await this.fh.read(buf, offset + n, length - n, position + n);
          return n + bytesRead;
        }
      }
      const { bytesRead } = await this.fh.read(buf, offset, length, position);
      return bytesRead;
    } catch (e) {
      throw ioError(e, `cannot read source ${this.path} at byte ${position}`);
    }
  }

  /**
   * The allocated ranges of the volume as DATA extents in blocks of `blockSize` (a range is widened
   * to whole blocks). For a block device the whole device is one DATA extent.
   */
  async *allocatedExtents(blockSize: number): AsyncGenerator<MapExtent> {
    const blocks = volumeBlocks(this.size, blockSize);
    if (this.isBlockDevice) {
      yield { firstBlock: 0, blockCount: blocks, kind: ExtentKind.DATA };
      return;
    }
    const io = thinio();
    const fd = this.fh.fd;
    let pos = 0;
    let pendingStart = -1;
    let pendingEnd = -1;
    while (pos < this.size) {
      let data: number;
      let hole: number;
      try {
        data = io.seekData(fd, pos);
        if (data < 0 || data >= this.size) break;
        hole = io.seekHole(fd, data);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EINVAL' || code === 'EOPNOTSUPP') {
          // No SEEK_DATA support on this filesystem: everything left is data.
          data = pos;
          hole = this.size;
        } else throw ioError(e, `cannot map allocated ranges of ${this.path}`);
      }
      if (hole < 0 || hole > this.size) hole = this.size;
      const first = Math.floor(data / blockSize);
      const end = Math.ceil(hole / blockSize);
      if (pendingStart >= 0 && first <= pendingEnd) {
        pendingEnd = Math.max(pendingEnd, end);
      } else {
        if (pendingStart >= 0) yield { firstBlock: pendingStart, blockCount: pendingEnd - pendingStart, kind: ExtentKind.DATA };
        pendingStart = first;
        pendingEnd = end;
      }
      pos = hole;
    }
    if (pendingStart >= 0) yield { firstBlock: pendingStart, blockCount: Math.min(pendingEnd, blocks) - pendingStart, kind: ExtentKind.DATA };
  }

  async close(): Promise<void> {
    await this.direct?.close();
    await this.fh.close();
  }
}
