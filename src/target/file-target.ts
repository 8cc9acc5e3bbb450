/**
 * Targets that apply writes to: a sparse image file or a block device. Zeroing is never skipped
 * (docs/FORMAT.md section 3, rule 5); the state file: docs/LVM-METADATA.md section 6.
 */
import { constants as fsc } from 'node:fs';
import { open, readFile, rm, stat, type FileHandle } from 'node:fs/promises';
import { ioError, UnsafeError, UsageError } from '../errors.js';
import { sysBlockDir } from '../fsutil.js';
import { silentLogger, type Logger } from '../log.js';
import { DirectFile } from '../direct-io.js';
import { thinio } from '../native.js';
import { JsonStateStore, stateFileFor, undoFileFor, type TargetKind, type TargetState, type TargetStateStore } from './state.js';
import type { UndoJournal } from './undo-journal.js';

/** Test-only hooks (set by the CLI from THINARCHIVE_TEST_KILL_AFTER_WRITES, see docs/JOURNAL.md). */
export const targetHooks: { afterWrite?: () => void } = {};



export interface ZeroStats {
  punched: number;
  zeroedRange: number;
  zeroedOut: number;
  written: number;
}

const ZERO_WRITE_CHUNK = 1 << 20;
/** errno codes meaning "this zeroing method is not supported here" (as opposed to a real failure). */
const UNSUPPORTED = new Set(['EOPNOTSUPP', 'ENOTSUP', 'EINVAL', 'ENOTTY', 'ENODEV']);


/** A way to make a byte range of the target read back as zeroes. */
export interface ZeroMethod {
  stat: keyof ZeroStats;
  broken: boolean;
  run: (fd: number, offset: number, length: number) => void;
}





/** Whether a block device is read-only (/sys/dev/block/MAJ:MIN/ro); false when that cannot be read. */
async function blockDeviceReadOnly(path: string): Promise<boolean> {
  try {
    return (await readFile(`${await sysBlockDir(path)}/ro`, 'utf8')).trim() === '1';
  } catch {
    return false;
  }
}


export class FileTarget {
  readonly zeroStats: ZeroStats = { punched: 0, zeroedRange: 0, zeroedOut: 0, written: 0 };
  private zeroBuf: Buffer | undefined;
  /** Zeroing methods in order of preference; each guarantees the range reads back as zeroes. */
  private readonly zeroMethods: ZeroMethod[];
  /** Told when zeroing falls back to a slower method. */
  log: Logger = silentLogger;
  /** While set, every write and zeroing first journals the range's old contents (durably). */
  undo: UndoJournal | undefined;
  /** Where this target's undo journal lives (undefined: none possible). */
  undoPath: string | undefined;

  private constructor(
    readonly kind: TargetKind,
    readonly path: string,
    private readonly fh: FileHandle,
    public size: number,
    readonly stateStore: TargetStateStore,
    zeroMethods?: ZeroMethod[],
    /** the aligned part of each write goes through it (src/direct-io.ts); closed by close() only */
    private readonly direct?: DirectFile,
  ) {
    const io = thinio();
    this.zeroMethods = zeroMethods ?? [
      { stat: 'punched', broken: false, run: io.punchHole },
      kind === 'image'
        ? { stat: 'zeroedRange', broken: false, run: io.zeroRange }
        : { stat: 'zeroedOut', broken: false, run: io.blkZeroOut },
    ];
  }

  /**
   * Open a target for writing. A block device is opened exclusively (O_EXCL): a mounted or otherwise
   * exclusively held device is refused. An image must exist unless `create` is set, in which case it
   * must not exist yet and is created sparse at `createSize`.
   */
  static async open(path: string, opts: { create?: boolean; createSize?: number; stateDir?: string } = {}): Promise<FileTarget> {
    return FileTarget.openWith(path, opts);
  }

  /**
   * Open with a given state store and zeroing methods (used by LV targets, which are block devices
   * whose state lives in LV tags and whose zeroing must not allocate pool space).
   */
  static async openWith(
    path: string,
    opts: { create?: boolean; createSize?: number; stateDir?: string; kind?: TargetKind; stateStore?: TargetStateStore; zeroMethods?: ZeroMethod[]; undoPath?: string },
  ): Promise<FileTarget> {
    let st: import("node:fs").Stats | undefined;
    try {
      st = await stat(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, `cannot inspect target ${path}`);
    }
    if (st?.isBlockDevice()) {
      if (opts.create) throw new UnsafeError('TARGET_EXISTS', `target ${path} is a block device; --create makes a new image file only`);
      let fh: FileHandle;
      try {
        fh = await open(path, fsc.O_RDWR | fsc.O_EXCL);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EBUSY') throw new UnsafeError('TARGET_BUSY', `target ${path} is in use (mounted or held open exclusively); refusing to write`);
        if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') throw new UnsafeError('TARGET_READONLY', `target ${path} cannot be opened for writing (${code})`);
        throw ioError(e, `cannot open target ${path}`);
      }
      // A read-only block device (blockdev --setro) may still open for writing: ask sysfs.
      if (await blockDeviceReadOnly(path)) {
        await fh.close();
        throw new UnsafeError('TARGET_READONLY', `target ${path} cannot be opened for writing (the block device is read-only)`);
      }
      const size = thinio().blkGetSize64(fh.fd);
      const store = opts.stateStore ?? new JsonStateStore(stateFileFor('blockdev', path, opts.stateDir));
      const t = new FileTarget(opts.kind ?? 'blockdev', path, fh, size, store, opts.zeroMethods, await DirectFile.open(path, 'write'));
      t.undoPath = opts.undoPath ?? (opts.stateStore ? undefined : undoFileFor('blockdev', path, opts.stateDir));
      return t;
    }
    if (st && !st.isFile()) throw new UsageError(`target ${path} is neither an image file nor a block device`);
    if (!st && !opts.create) throw new UsageError(`target ${path} does not exist (use --create to make a new image)`);
    if (st && opts.create) throw new UnsafeError('TARGET_EXISTS', `target ${path} already exists; --create makes a new image only`);
    let fh: FileHandle;
    try {
      fh = st ? await open(path, 'r+') : await open(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL, 0o600); // read too: the undo journal reads old contents
      if (!st) await fh.truncate(opts.createSize ?? 0);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') throw new UnsafeError('TARGET_READONLY', `target ${path} cannot be opened for writing (${code})`);
      throw ioError(e, `cannot open target ${path}`);
    }
    const size = st ? st.size : (opts.createSize ?? 0);
    const stateFile = stateFileFor('image', path, opts.stateDir);
    // A state file without its image is stale (the image was removed): a new image starts with none.
    if (!st) await rm(stateFile, { force: true });
    const t = new FileTarget('image', path, fh, size, new JsonStateStore(stateFile), undefined, await DirectFile.open(path, 'write'));
    t.undoPath = undoFileFor('image', path, opts.stateDir);
    return t;
  }

  get fd(): number {
    return this.fh.fd;
  }

  readState(): Promise<TargetState | null> {
    return this.stateStore.read();
  }

  writeState(s: TargetState): Promise<void> {
    return this.stateStore.write(s);
  }

  /** Check that a block device is large enough for a volume of `size` bytes (images: always). */
  checkSize(size: number): void {
    if (this.kind !== 'image' && this.size < size) {
      throw new UnsafeError('TARGET_TOO_SMALL', `target ${this.path} has ${this.size} bytes, the volume needs ${size}`);
    }
  }

  /** Make the target exactly `size` bytes (images) or check that it is large enough (block devices). */
  async ensureSize(size: number): Promise<void> {
    if (this.kind !== 'image') {
      this.checkSize(size);
      return;
    }
    if (this.size !== size) {
      // Shrinking cuts the tail off: journal it first.
      if (size < this.size) await this.undo?.protect(size, this.size - size);
      try {
        await this.fh.truncate(size);
      } catch (e) {
        throw ioError(e, `cannot resize target ${this.path}`);
      }
      this.size = size;
    }
  }

  /** Put an image back to `size` bytes (rolling back; block devices: nothing to do). */
  async setSize(size: number): Promise<void> {
    if (this.kind !== 'image') return;
    try {
      await this.fh.truncate(size);
    } catch (e) {
      throw ioError(e, `cannot resize target ${this.path}`);
    }
    this.size = size;
  }

  /** The range will be written soon: its old contents can be journaled ahead (batching the journal's flushes). */
  announce(position: number, length: number): void {
    this.undo?.announce(position, length);
  }

  async write(buf: Uint8Array, position: number): Promise<void> {
    if (this.undo) await this.undo.protect(position, buf.length);
    await this.writeRaw(buf, position);
    targetHooks.afterWrite?.();
  }

  /** How many descriptors of the target this process holds open (2 with direct writes): a device-mapper open count counts each. */
  get descriptors(): number {
    return this.direct ? 2 : 1;
  }

  /** Whether writes bypass the page cache (their aligned part; src/direct-io.ts). */
  get directWrites(): boolean {
    return this.direct?.active ?? false;
  }

  private refusalLogged = false;

  private async writeRaw(buf: Uint8Array, position: number): Promise<void> {
    let at = 0;
    const aligned = this.direct?.alignedPart(position, buf.length) ?? 0;
    if (aligned > 0) {
      try {
        if (await this.direct!.write(buf.subarray(0, aligned), position)) at = aligned;
        else if (!this.refusalLogged) {
          // (once: writes in flight together can each be refused)
          this.refusalLogged = true;
          this.log.warn({ target: this.path, code: 'EINVAL' }, 'direct writes refused; writing through the page cache');
        }
      } catch (e) {
        throw ioError(e, `cannot write target ${this.path} at byte ${position}`);
      }
    }
    try {
      while (at < buf.length) {
        const { bytesWritten } = await this.fh.write(buf, at, buf.length - at, position + at);
        if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
        at += bytesWritten;
      }
    } catch (e) {
      throw ioError(e, `cannot write target ${this.path} at byte ${position + at}`);
    }
  }

  async read(buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    try {
      const { bytesRead } = await this.fh.read(buf, offset, length, position);
      return bytesRead;
    } catch (e) {
      throw ioError(e, `cannot read target ${this.path} at byte ${position}`);
    }
  }

  /** Make [offset, offset+length) read back as zeroes, by the cheapest method that guarantees it. */
  async zero(offset: number, length: number): Promise<void> {
    if (length <= 0) return;
    if (this.undo) await this.undo.protect(offset, length);
    await this.zeroRaw(offset, length);
    targetHooks.afterWrite?.();
  }

  private async zeroRaw(offset: number, length: number): Promise<void> {
    const fd = this.fh.fd;
    for (const m of this.zeroMethods) {
      if (m.broken) continue;
      try {
        m.run(fd, offset, length);
        this.zeroStats[m.stat] += length;
        return;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code ?? '';
        if (!UNSUPPORTED.has(code)) throw ioError(e, `cannot zero ${length} bytes of ${this.path} at ${offset}`);
        // Unsupported here: never try this method again on this target, fall through to the next.
        m.broken = true;
        this.log.warn({ target: this.path, method: m.stat, code }, 'zeroing method unsupported; falling back');
      }
    }
    this.zeroBuf ??= Buffer.alloc(ZERO_WRITE_CHUNK);
    for (let at = 0; at < length; at += ZERO_WRITE_CHUNK) {
      const n = Math.min(ZERO_WRITE_CHUNK, length - at);
      await this.writeRaw(this.zeroBuf.subarray(0, n), offset + at);
    }
    this.zeroStats.written += length;
  }

  /** Flush written data to stable storage. */
  async sync(): Promise<void> {
    try {
      await this.fh.datasync();
    } catch (e) {
      throw ioError(e, `cannot flush target ${this.path}`);
    }
  }

  async close(): Promise<void> {
    await this.direct?.close();
    await this.fh.close();
  }
}

