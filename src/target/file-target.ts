/**
 * Targets that apply writes to: a sparse image file or a block device.
 *
 * Zeroing (ZERO records and UNMAP extents) is never skipped:
 * - image: punch a hole (reads back as zeroes, frees space); if the filesystem cannot, zero the range
 *   with fallocate(ZERO_RANGE); if that fails too, write zeroes.
 * - block device: fallocate(PUNCH_HOLE) (the kernel's WRITE_ZEROES with unmap, guaranteed to read back
 *   zero, never falls back); if unsupported, ioctl(BLKZEROOUT) (guaranteed zeroes; the kernel writes
 *   them when the device has no offload); if that fails, write zeroes.
 * A plain BLKDISCARD is not used: a discard may leave old data readable.
 *
 * State (which archive the target holds) lives beside an image (`IMAGE.thinarchive.json`) and, for a
 * block device, in the state directory (see TargetStateStore). Both are replaced atomically.
 */
import { constants as fsc } from 'node:fs';
import { open, readFile, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ioError, UnsafeError, UsageError } from '../errors.js';
import { makeDirs, writeFileAtomic } from '../fsutil.js';
import { silentLogger, type Logger } from '../log.js';
import { thinio } from '../native.js';
import type { UndoJournal } from './undo-journal.js';

/** Test-only hooks (set by the CLI from THINARCHIVE_TEST_KILL_AFTER_WRITES, see docs/JOURNAL.md). */
export const targetHooks: { afterWrite?: () => void } = {};

export type TargetKind = 'image' | 'blockdev' | 'lv';

export interface TargetState {
  version: 1;
  volumeUuid: string;
  chainId: string;
  blockSize: number;
  volumeSize: number;
  /** The last archive fully applied; the target holds exactly its state. */
  archiveId: string;
  sequence: number;
  status: 'clean' | 'applying';
  /** Set while an archive is being applied: the target is between `archiveId` and this one. */
  applying?: {
    archiveId: string; parentId: string | null; sequence: number; chainId: string; startedAt: string;
    /** the undo journal of this apply (absent with --no-undo, and for thin LV targets) */
    undo?: string;
  };
  updatedAt: string;
}

export interface ZeroStats {
  punched: number;
  zeroedRange: number;
  zeroedOut: number;
  written: number;
}

const ZERO_WRITE_CHUNK = 1 << 20;
/** errno codes meaning "this zeroing method is not supported here" (as opposed to a real failure). */
const UNSUPPORTED = new Set(['EOPNOTSUPP', 'ENOTSUP', 'EINVAL', 'ENOTTY', 'ENODEV']);

/** Where a target's state is kept: a JSON file (images, block devices) or LV tags (LV targets). */
export interface TargetStateStore {
  /** Names the place, for messages. */
  readonly where: string;
  read(): Promise<TargetState | null>;
  /** Replace the state atomically and durably. */
  write(s: TargetState): Promise<void>;
}

/** A way to make a byte range of the target read back as zeroes. */
export interface ZeroMethod {
  stat: keyof ZeroStats;
  broken: boolean;
  run: (fd: number, offset: number, length: number) => void;
}

function parseState(text: string): TargetState | null {
  try {
    const s = JSON.parse(text) as TargetState;
    if (s.version === 1 && typeof s.archiveId === 'string' && (s.status === 'clean' || s.status === 'applying')) return s;
  } catch {
    // fall through
  }
  return null;
}

/** State in a JSON file, replaced atomically (temporary file, fsync, rename, fsync directory). */
export class JsonStateStore implements TargetStateStore {
  constructor(readonly where: string) {}

  async read(): Promise<TargetState | null> {
    let text: string;
    try {
      text = await readFile(this.where, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw ioError(e, `cannot read target state ${this.where}`);
    }
    const s = parseState(text);
    if (!s) throw new UnsafeError('TARGET_STATE_CORRUPT', `target state file ${this.where} is unreadable; refusing to guess the target's state`);
    return s;
  }

  async write(s: TargetState): Promise<void> {
    try {
      await makeDirs(dirname(this.where));
      await writeFileAtomic(this.where, JSON.stringify(s, null, 2) + '\n');
    } catch (e) {
      throw ioError(e, `cannot write target state ${this.where}`);
    }
  }
}

export function defaultStateDir(): string {
  return process.env.THINARCHIVE_STATE_DIR || '/var/lib/thinarchive';
}

export function stateFileFor(kind: TargetKind, path: string, stateDir = defaultStateDir()): string {
  if (kind === 'image') return `${path}.thinarchive.json`;
  return join(stateDir, 'blockdev', `${encodeURIComponent(path)}.json`);
}

/** Whether a block device is read-only (/sys/dev/block/MAJ:MIN/ro); false when that cannot be read. */
async function blockDeviceReadOnly(path: string): Promise<boolean> {
  try {
    const dev = (await stat(path, { bigint: true })).rdev;
    const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
    const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
    return (await readFile(`/sys/dev/block/${major}:${minor}/ro`, 'utf8')).trim() === '1';
  } catch {
    return false;
  }
}

/** The undo journal's place: beside the state file (IMAGE.thinarchive.undo; STATE_DIR/blockdev/DEV.undo). */
export function undoFileFor(kind: TargetKind, path: string, stateDir = defaultStateDir()): string {
  return stateFileFor(kind, path, stateDir).replace(/\.json$/, '.undo');
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
      const t = new FileTarget(opts.kind ?? 'blockdev', path, fh, size, store, opts.zeroMethods);
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
    const t = new FileTarget('image', path, fh, size, new JsonStateStore(stateFile));
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

  private async writeRaw(buf: Uint8Array, position: number): Promise<void> {
    let at = 0;
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
    await this.fh.close();
  }
}

export function describeZeroStats(z: ZeroStats): string {
  const parts: string[] = [];
  if (z.punched) parts.push(`${z.punched} B punched/unmapped`);
  if (z.zeroedRange) parts.push(`${z.zeroedRange} B zero-ranged`);
  if (z.zeroedOut) parts.push(`${z.zeroedOut} B zeroed out`);
  if (z.written) parts.push(`${z.written} B written as zeroes`);
  return parts.join(', ') || 'none';
}

