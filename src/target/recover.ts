/**
 * recover: bring a target whose `apply` was interrupted back to its previous consistent state (undo
 * journal, or rollback snapshot of a thin LV via LvTarget.recover); `apply` runs it first on its
 * target. The rules and exit codes: docs/JOURNAL.md.
 */
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { rm } from 'node:fs/promises';
import { ioError, UnsafeError } from '../errors.js';
import { fsyncDir } from '../fsutil.js';
import { dirname } from 'node:path';
import { silentLogger, type Logger } from '../log.js';
import type { LvmExec } from '../lvm/exec.js';
import { FileTarget } from './file-target.js';
import { JsonStateStore, stateFileFor, undoFileFor, type TargetKind, type TargetState } from './state.js';
import { journalExists, readJournal, removeJournal, replayJournal } from './undo-journal.js';
import { lvTargetSpec, recoverLv } from './lv-target.js';
import { lockTarget, type TargetLock } from './target-lock.js';

export type RecoverAction =
  /** nothing was interrupted */
  | 'none'
  /** the undo journal was replayed: the target is back at its previous state */
  | 'rolled-back'
  /** the interrupted apply had created the image: it was removed */
  | 'removed-created'
  /** a journal next to a consistent target was removed */
  | 'stale-journal-removed'
  /** thin LV: the rollback snapshot was put back in place of the LV */
  | 'restored-snapshot'
  /** thin LV: a rollback snapshot next to a clean LV was removed */
  | 'stale-snapshot-removed';

export interface RecoverResult {
  target: string;
  targetKind: TargetKind;
  action: RecoverAction;
  /** the archive whose apply was interrupted */
  interrupted?: { archiveId: string; sequence: number };
  /** the target's state afterwards (null: none recorded) */
  state: { archiveId: string; sequence: number; status: TargetState['status'] } | null;
  journal?: string;
  entries?: number;
  bytesRestored?: number;
  /** bytes at the end of the journal that were not a complete entry (ignored) */
  tornBytes?: number;
  snapshot?: string;
  seconds: number;
}

export interface RecoverOptions {
  target: string;
  stateDir?: string;
  lvmExec?: LvmExec;
  log?: Logger;
  /** Called by apply: an interrupted --no-undo apply is not an error there (applying the archive again completes it). */
  fromApply?: boolean;
  /**
   * apply: whether it would go ahead on the interrupted target as it is (its archives continue the
   * state). When not, nothing is rolled back: apply refuses as before, and the target is untouched.
   */
  accept?: (state: TargetState | null) => boolean;
  /**
   * The target lock, held by the caller (apply takes it before recovering). Without it, recover takes
   * the lock itself for its run (refused with TARGET_LOCKED while another process holds the target,
   * or waiting for it with `wait`): a live apply is never taken for an interrupted one.
   */
  lock?: TargetLock;
  wait?: boolean;
  signal?: AbortSignal;
}

const short = (s: TargetState | null): RecoverResult['state'] => (s ? { archiveId: s.archiveId, sequence: s.sequence, status: s.status } : null);

async function kindOf(path: string): Promise<'image' | 'blockdev' | null> {
  try {
    const st = await stat(path);
    return st.isBlockDevice() ? 'blockdev' : 'image';
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw ioError(e, `cannot inspect target ${path}`);
  }
}

function noUndo(target: string, s: TargetState): UnsafeError {
  const a = s.applying!;
  return new UnsafeError('NO_UNDO', `${target} was interrupted while applying archive ${a.archiveId} (sequence ${a.sequence}) without an undo journal (--no-undo): it cannot be rolled back; apply that archive again to complete it`);
}

export async function recover(opts: RecoverOptions): Promise<RecoverResult> {
  if (opts.lock) return recoverLocked(opts);
  const lock = await lockTarget(opts.target, { stateDir: opts.stateDir, command: 'recover', wait: opts.wait, signal: opts.signal, log: opts.log });
  try {
    return await recoverLocked(opts);
  } finally {
    await lock.release();
  }
}

async function recoverLocked(opts: RecoverOptions): Promise<RecoverResult> {
  const t0 = performance.now();
  const log = opts.log ?? silentLogger;
  const lvRef = await lvTargetSpec(opts.target);
  if (lvRef) {
    const r = await recoverLv({ ...lvRef, ...(opts.lvmExec ? { exec: opts.lvmExec } : {}), log, fromApply: !!opts.fromApply, stateDir: opts.stateDir, ...(opts.accept ? { accept: opts.accept } : {}) });
    return { target: opts.target, targetKind: 'lv', ...r, seconds: (performance.now() - t0) / 1000 };
  }
  const path = opts.target;
  const kind = await kindOf(path);
  const done = (r: Omit<RecoverResult, 'target' | 'targetKind' | 'seconds'>): RecoverResult =>
    ({ target: path, targetKind: kind ?? 'image', ...r, seconds: (performance.now() - t0) / 1000 });
  const journal = undoFileFor(kind ?? 'image', path, opts.stateDir);
  if (kind === null) {
    // No image: a journal of an image that was removed is stale.
    if (await journalExists(journal)) {
      await removeJournal(journal);
      return done({ action: 'stale-journal-removed', state: null, journal });
    }
    // Nothing there and nothing of ours: for apply a new target; for recover a wrong path.
    if (!opts.fromApply) throw ioError(Object.assign(new Error('ENOENT'), { code: 'ENOENT' }), `cannot recover ${path}`);
    return done({ action: 'none', state: null });
  }
  const stateStore = new JsonStateStore(stateFileFor(kind, path, opts.stateDir));
  const state = await stateStore.read();
  const hasJournal = await journalExists(journal);
  if (state?.status === 'applying') {
    const a = state.applying!;
    if (!a.undo || !hasJournal) {
      if (opts.fromApply) return done({ action: 'none', state: short(state), interrupted: { archiveId: a.archiveId, sequence: a.sequence } });
      throw noUndo(path, state);
    }
    const j = await readJournal(journal);
    if (j.header.archiveId !== a.archiveId || resolve(j.header.target) !== resolve(path)) {
      throw new UnsafeError('JOURNAL_MISMATCH', `undo journal ${journal} is of archive ${j.header.archiveId} on ${j.header.target}, but ${path} is applying archive ${a.archiveId}; refusing to roll back`);
    }
    const interrupted = { archiveId: a.archiveId, sequence: a.sequence };
    // apply: roll back when it goes ahead on the interrupted target (the same archive again) or on the
    // state before the interrupted apply (its sender gave that archive up: one that continues the
    // state before it has come instead); otherwise apply refuses, the target untouched
    if (opts.accept && !opts.accept(state) && !opts.accept(j.header.prevState)) return done({ action: 'none', state: short(state), interrupted, journal });
    if (j.header.created && opts.fromApply) {
      // A new image interrupted in its first archive: apply completes it instead (the archive being
      // applied again starts from an image that held nothing; `--create` again is refused as before).
      return done({ action: 'none', state: short(state), interrupted, journal });
    }
    if (j.header.created) {
      // The image did not exist before: going back means removing it.
      await removeCreated(path, stateStore.where);
      await removeJournal(journal);
      log.info({ target: path, archiveId: a.archiveId }, 'recovery: removed the image created by the interrupted apply');
      return done({ action: 'removed-created', interrupted, state: null, journal, entries: 0, bytesRestored: 0, tornBytes: j.tornBytes });
    }
    const target = await FileTarget.open(path, { stateDir: opts.stateDir });
    target.log = log;
    let r: { entries: number; bytes: number };
    try {
      r = await replayJournal(journal, j, target);
    } finally {
      await target.close();
    }
    const prev = j.header.prevState;
    if (prev) await stateStore.write({ ...prev, updatedAt: new Date().toISOString() });
    else {
      try {
        await rm(stateStore.where, { force: true });
        await fsyncDir(dirname(stateStore.where));
      } catch (e) {
        throw ioError(e, `cannot remove target state ${stateStore.where}`);
      }
    }
    await removeJournal(journal);
    log.info({ target: path, archiveId: a.archiveId, entries: r.entries, bytes: r.bytes }, 'recovery: rolled back with the undo journal');
    return done({ action: 'rolled-back', interrupted, state: short(prev), journal, entries: r.entries, bytesRestored: r.bytes, tornBytes: j.tornBytes });
  }
  if (hasJournal && state === null) {
    // An image made by `apply --create` that was killed before its state was written: its journal
    // (created before the image) says so; the image holds nothing yet.
    const j = await readJournal(journal).catch(() => null);
    if (j?.header.created && resolve(j.header.target) === resolve(path) && (!opts.accept || opts.accept(null))) {
      await removeCreated(path, stateStore.where);
      await removeJournal(journal);
      return done({ action: 'removed-created', state: null, journal, interrupted: { archiveId: j.header.archiveId, sequence: j.header.sequence } });
    }
  }
  if (hasJournal) {
    // A clean (or stateless) target: the journal's apply finished, or never wrote anything.
    await removeJournal(journal);
    return done({ action: 'stale-journal-removed', state: short(state), journal });
  }
  return done({ action: 'none', state: short(state) });
}

async function removeCreated(path: string, stateFile: string): Promise<void> {
  try {
    await rm(path, { force: true });
    await rm(stateFile, { force: true });
    await fsyncDir(dirname(path));
  } catch (e) {
    throw ioError(e, `cannot remove the partially written image ${path}`);
  }
}

