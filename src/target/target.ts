/**
 * Target: the one handle apply, restore and repair write through, whatever the target is (image file,
 * block device, thin LV, thick LV). It owns the state record, crash safety (undo journal, or a
 * rollback snapshot on a thin LV; docs/JOURNAL.md) and the applying -> clean transitions of an archive.
 */
import { lstat, stat } from 'node:fs/promises';
import { resolve as resolvePath } from 'node:path';
import { UnsafeError, UsageError } from '../errors.js';
import type { ArchiveHeader } from '../format/types.js';
import { silentLogger, type Logger } from '../log.js';
import { createLvmExec, type LvmExec } from '../lvm/exec.js';
import { lvByName, vgLvs } from '../lvm/tools.js';
import { FileTarget, type ZeroStats } from './file-target.js';
import type { TargetSnapshot } from './lv-tags.js';
import { LvTarget, lvTargetSpec, pathKind, parsePoolSpec, type LvRef, type LvTargetReport, type TargetSnapshots } from './lv-target.js';
import { undoFileFor, type TargetKind, type TargetState } from './state.js';
import { UndoJournal, type JournaledTarget } from './undo-journal.js';
import { lockTarget, type TargetLock } from './target-lock.js';

export type { LvTargetReport, TargetSnapshot, TargetSnapshots };
export { lockTarget, type TargetLock, type TargetLockOptions } from './target-lock.js';

/** The target options a command takes from its user (checked before any I/O by checkTargetOptions). */
export interface TargetSpecOptions {
  create?: boolean;
  /** as `create` when the target does not exist (resolved by resolveCreate before the target is opened) */
  createIfMissing?: boolean;
  /** LV targets: the thin pool (`VG/POOL` or `POOL`) --create makes the new LV in */
  pool?: string;
  /** thin LV targets: keep a read-only snapshot after each applied archive */
  snapshotTarget?: boolean;
  /** with snapshotTarget: keep the newest N */
  keep?: number;
}

/**
 * Usage checks of a target and its options that need no archive: an LV target (`VG/LV`, see
 * lvTargetSpec) or a path. Returns the LV, or null for a path.
 */
export async function checkTargetOptions(spec: string, o: TargetSpecOptions): Promise<LvRef | null> {
  const lv = await lvTargetSpec(spec);
  if (!lv) {
    if (o.pool !== undefined) throw new UsageError(`--pool is for LV targets (VG/LV); ${spec} is a path`);
    if (o.snapshotTarget) throw new UsageError(`--snapshot-target is for thin LV targets (VG/LV); ${spec} is a path`);
  }
  if (o.keep !== undefined && !o.snapshotTarget) throw new UsageError('--keep goes with --snapshot-target');
  if (o.keep !== undefined && (!Number.isInteger(o.keep) || o.keep < 1)) throw new UsageError('--keep must be an integer of at least 1');
  if (o.create && o.createIfMissing) throw new UsageError('--create and --create-if-missing exclude each other');
  const creating = o.create || o.createIfMissing;
  if (lv && creating && o.pool === undefined) throw new UsageError(`--create of an LV target needs --pool ${lv.vg}/POOL (the thin pool to make it in)`);
  if (lv && !creating && o.pool !== undefined) throw new UsageError('--pool goes with --create');
  if (lv && o.pool !== undefined) parsePoolSpec(o.pool, lv.vg);
  return lv;
}

/**
 * Whether this run creates the target: `create`, or `createIfMissing` and no such LV (in its VG) or
 * path exists. A target that appears meanwhile is refused by open (TARGET_EXISTS), never overwritten.
 */
export async function resolveCreate(spec: string, o: TargetSpecOptions, exec?: LvmExec): Promise<boolean> {
  if (o.create) return true;
  if (!o.createIfMissing) return false;
  const lv = await lvTargetSpec(spec);
  if (lv) return lvByName(await vgLvs(exec ?? createLvmExec(), lv.vg), lv.lv) === null;
  return (await pathKind(spec)) === null;
}

export interface OpenTargetOptions extends TargetSpecOptions {
  /** --create: the size of the new target (the first archive's volume size) */
  createSize?: number;
  /** the largest volume size of the archives (an LV must be at least as large) */
  neededSize: number;
  /** archive block size (an LV target's zeroing plan depends on it) */
  blockSize: number;
  /** no undo journal or rollback snapshot (apply --no-undo; restore and repair mark the target instead) */
  noUndo?: boolean;
  /**
   * With create: the archive that will fill the new image. Its journal (which says "created: remove me
   * to roll back") is made before the image exists, so a crash at any point is recoverable.
   */
  journalFor?: ArchiveHeader;
  stateDir?: string;
  /** LV targets: how LVM commands are run (tests) */
  exec?: LvmExec;
  log?: Logger;
  /**
   * The target lock (target-lock.ts), taken by the caller before it recovered or read anything; it
   * stays the caller's to release. Without it, open takes the lock itself (as `command`, waiting
   * with `wait`) and close releases it.
   */
  lock?: TargetLock;
  command?: string;
  wait?: boolean;
  signal?: AbortSignal;
}

/** The clean state of a target that holds exactly archive `h`. */
export function cleanState(h: ArchiveHeader): TargetState {
  return {
    version: 1, volumeUuid: h.volumeUuid, chainId: h.chainId, blockSize: h.blockSize, volumeSize: h.volumeSize,
    archiveId: h.archiveId, sequence: h.sequence, status: 'clean', updatedAt: new Date().toISOString(),
  };
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** The journal of an image this apply creates: no entries; rolling back removes the image. */
async function journalForNewImage(path: string, h: ArchiveHeader, stateDir: string | undefined): Promise<UndoJournal> {
  if (await exists(path)) throw new UnsafeError('TARGET_EXISTS', `target ${path} already exists; --create makes a new image only`);
  const none: JournaledTarget = {
    kind: 'image', path, fd: -1,
    read: () => Promise.reject(new Error('a new image has nothing to journal')),
  };
  return UndoJournal.create(undoFileFor('image', path, stateDir), {
    version: 1, target: resolvePath(path), kind: 'image', archiveId: h.archiveId, sequence: h.sequence,
    prevSize: 0, prevState: null, created: true, createdAt: new Date().toISOString(),
  }, none);
}

export class Target {
  /** The journal of the archive being applied (between begin and commit). */
  private journal: UndoJournal | undefined;
  private closed = false;

  private constructor(
    /** the target as the user named it */
    readonly spec: string,
    private readonly io: FileTarget,
    private readonly lv: LvTarget | undefined,
    /** made by this run: it reads as zeroes everywhere */
    readonly created: boolean,
    private readonly noUndo: boolean,
    /** a new image's journal, made before the image (apply --create); left on disk if never used, so that recover removes the image */
    private createJournal: UndoJournal | undefined,
    /** the target lock taken by open (released by close); undefined when the caller holds it */
    private readonly ownLock: TargetLock | undefined,
  ) {}

  /**
   * Open `spec` for writing: an LV (`VG/LV`), a block device (opened O_EXCL) or an image file
   * (`create`: a new sparse one). Refuses (UnsafeError) a target in use, read-only or too small.
   */
  static async open(spec: string, o: OpenTargetOptions): Promise<Target> {
    const lvRef = await checkTargetOptions(spec, o);
    const log = o.log ?? silentLogger;
    const ownLock = o.lock ? undefined : await lockTarget(spec, { stateDir: o.stateDir, command: o.command ?? 'apply', wait: o.wait, signal: o.signal, log });
    try {
      return await Target.openLocked(spec, o, lvRef, log, ownLock);
    } catch (e) {
      await ownLock?.release();
      throw e;
    }
  }

  private static async openLocked(spec: string, o: OpenTargetOptions, lvRef: LvRef | null, log: Logger, ownLock: TargetLock | undefined): Promise<Target> {
    const created = !!o.create;
    if (lvRef) {
      const lvt = await LvTarget.open({
        ...lvRef,
        ...(created ? { createPool: parsePoolSpec(o.pool!, lvRef.vg), createSize: o.createSize ?? o.neededSize } : {}),
        neededSize: o.neededSize,
        blockSize: o.blockSize,
        ...(o.snapshotTarget ? { snapshot: o.keep !== undefined ? { keep: o.keep } : {} } : {}),
        ...(o.exec ? { exec: o.exec } : {}),
        log,
        stateDir: o.stateDir,
      });
      lvt.target.log = log;
      return new Target(spec, lvt.target, lvt, created, !!o.noUndo, undefined, ownLock);
    }
    const createJournal = created && !o.noUndo && o.journalFor ? await journalForNewImage(spec, o.journalFor, o.stateDir) : undefined;
    let io: FileTarget;
    try {
      io = await FileTarget.open(spec, { create: created, createSize: o.createSize ?? o.neededSize, stateDir: o.stateDir });
    } catch (e) {
      await createJournal?.discard();
      throw e;
    }
    io.log = log;
    return new Target(spec, io, undefined, created, !!o.noUndo, createJournal, ownLock);
  }

  get kind(): TargetKind {
    return this.io.kind;
  }

  get size(): number {
    return this.io.size;
  }

  get zeroStats(): ZeroStats {
    return this.io.zeroStats;
  }

  /** LV targets: what was found and chosen when opening (thin, pool, zeroing plan, ...). */
  get lvReport(): LvTargetReport | undefined {
    return this.lv?.report;
  }

  /** With snapshotTarget: the target snapshots taken, removed and kept. */
  get snapshots(): TargetSnapshots | undefined {
    return this.lv?.snapshots;
  }

  readState(): Promise<TargetState | null> {
    return this.io.readState();
  }

  writeState(s: TargetState): Promise<void> {
    return this.io.writeState(s);
  }

  /** Whether the target may hold data although it has no state: false only for an image with nothing allocated. */
  async mayHoldData(): Promise<boolean> {
    if (this.io.kind !== 'image') return true;
    const st = await stat(this.io.path);
    return !(st.size === 0 || st.blocks === 0);
  }

  checkSize(size: number): void {
    this.io.checkSize(size);
  }

  ensureSize(size: number): Promise<void> {
    return this.io.ensureSize(size);
  }

  /** Tell the undo journal a range is about to be overwritten (one flush covers all announced ranges). */
  announce(position: number, length: number): void {
    this.io.announce(position, length);
  }

  write(buf: Uint8Array, position: number): Promise<void> {
    return this.io.write(buf, position);
  }

  read(buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    return this.io.read(buf, offset, length, position);
  }

  /** Make a range read back as zeroes (never skipped; see file-target.ts and lv-target.ts for how). */
  zero(offset: number, length: number): Promise<void> {
    return this.io.zero(offset, length);
  }

  sync(): Promise<void> {
    return this.io.sync();
  }

  /**
   * Before archive `h` is written on top of state `prev`: make the rollback point durable (rollback
   * snapshot of a thin LV, or an undo journal), then record "applying h", then size the target.
   * `fresh`: the target was created by this run and `h` is its first archive.
   */
  async begin(h: ArchiveHeader, prev: TargetState | null, fresh: boolean): Promise<void> {
    this.io.checkSize(h.volumeSize);
    let journal: UndoJournal | undefined;
    if (!this.noUndo && this.lv?.report.thin) await this.lv.takeRollbackSnapshot(h.archiveId);
    else if (fresh && this.createJournal) journal = this.createJournal;
    else if (!this.noUndo && this.io.undoPath) {
      journal = await UndoJournal.create(this.io.undoPath, {
        version: 1, target: this.io.kind === 'image' ? resolvePath(this.spec) : this.io.path, kind: this.io.kind, archiveId: h.archiveId, sequence: h.sequence,
        prevSize: this.io.size, prevState: prev, created: fresh && this.io.kind === 'image', createdAt: new Date().toISOString(),
      }, this.io);
    }
    if (journal === this.createJournal) this.createJournal = undefined;
    const applying: TargetState = {
      version: 1, volumeUuid: h.volumeUuid, chainId: prev?.chainId ?? h.chainId, blockSize: h.blockSize, volumeSize: h.volumeSize,
      archiveId: prev?.archiveId ?? '', sequence: prev?.sequence ?? -1, status: 'applying',
      applying: { archiveId: h.archiveId, parentId: h.parentId, sequence: h.sequence, chainId: h.chainId, startedAt: new Date().toISOString(), ...(journal ? { undo: journal.path } : {}) },
      updatedAt: new Date().toISOString(),
    };
    try {
      await this.io.writeState(applying);
    } catch (e) {
      await journal?.discard().catch(() => {});
      throw e;
    }
    // A new image needs no journal entries: rolling back removes it.
    if (journal && !journal.header.created) this.io.undo = journal;
    this.journal = journal;
    await this.io.ensureSize(h.volumeSize);
  }

  /** After the archive's data is written (or failed): stop journaling and close the journal (it stays on disk). */
  async endWrites(): Promise<void> {
    this.io.undo = undefined;
    await this.journal?.close();
  }

  /**
   * The archive begun is fully written and flushed: record the clean state at `h`, drop the rollback
   * point, and (snapshotTarget) keep a snapshot. Returns the bytes the undo journal held.
   */
  async commit(h: ArchiveHeader): Promise<{ state: TargetState; undoBytes: number }> {
    const state = cleanState(h);
    await this.io.writeState(state);
    let undoBytes = 0;
    if (this.journal) {
      undoBytes = this.journal.bytesJournaled;
      await this.journal.discard();
      this.journal = undefined;
    }
    if (!this.noUndo && this.lv?.report.thin) await this.lv.dropRollbackSnapshot();
    await this.lv?.afterClean(h);
    return { state, undoBytes };
  }

  /** A clean target that has nothing to apply: snapshotTarget still keeps its snapshot if it has none. */
  async settle(state: TargetState): Promise<void> {
    if (state.status === 'clean') await this.lv?.afterClean(state);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (this.lv) await this.lv.close();
      else await this.io.close();
    } finally {
      await this.ownLock?.release();
    }
  }
}
