/**
 * The metadata snapshot discipline: reserve, use and release a thin pool's metadata snapshot, never
 * releasing somebody else's nor leaving thinarchive's own behind (per-pool lock, reservation record,
 * signals). Rules: docs/LVM.md section 6; the record's format: docs/LVM-METADATA.md section 8.
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CommandError, ThinarchiveError, UnsafeError, ioError } from '../errors.js';
import { defaultStateDir, fsyncDir, makeDirs, writeFileAtomic } from '../fsutil.js';
import { type Logger, silentLogger } from '../log.js';
import { type LvmExec, runLvmCommand } from './exec.js';
import { assertLvmName, dmName, poolDmName, tmetaPath } from './names.js';
import { type PoolLock, type ProcessIdentity, acquirePoolLock, identityFrom, isAlive, selfIdentity } from './pool-lock.js';
import { checkPoolHealth, type PoolStatus, type PoolStatusOk } from './pool-status.js';
import { openCount, poolMessage, poolStatus } from './tools.js';

export interface PoolRef {
  vg: string;
  pool: string;
}

export interface MetadataSnapshotOptions {
  /** Where locks and reservation records live; default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive. */
  stateDir?: string;
  /** Release a metadata snapshot held by someone else instead of refusing (logged as a warning). */
  force?: boolean;
  logger?: Logger;
  exec?: LvmExec;
  /** How long to wait for another thinarchive process on the same pool; default 120 s. */
  lockTimeoutMs?: number;
  /** Release on SIGINT/SIGTERM/SIGHUP while held; default true. */
  handleSignals?: boolean;
  /** Aborts waiting for the lock, and the reservation if it is not made yet (not fn: fn gets its own signal). */
  signal?: AbortSignal;
}

export interface HeldMetadataSnapshot {
  pool: PoolRef;
  /** /dev/mapper/<dm vg>-<dm pool>_tmeta: give it to thin_delta / thin_dump with -m */
  tmeta: string;
  /** the metadata block of the snapshot, as the pool status reports it */
  heldRoot: number;
  /** aborted when a signal arrives: stop and return (the snapshot is being released) */
  signal: AbortSignal;
}

/** The reservation record, `<stateDir>/reservations/<dm vg>-<dm pool>.json`. */
export interface ReservationRecord extends ProcessIdentity {
  version: 1;
  vg: string;
  pool: string;
  state: 'reserving' | 'held';
  heldRoot: number | null;
  time: string;
}

/** An error from fn with the release failure attached (fn's error is never replaced). */
export interface WithReleaseError {
  releaseError?: Error;
}


export function reservationPath(stateDir: string, pool: PoolRef): string {
  return join(stateDir, 'reservations', `${dmName(pool.vg, pool.pool)}.json`);
}

export function poolLockPath(stateDir: string, pool: PoolRef): string {
  return join(stateDir, 'locks', `${dmName(pool.vg, pool.pool)}.lock`);
}

/** Read a reservation record; null when there is none. A malformed record reads as null. */
export async function readReservationRecord(stateDir: string, pool: PoolRef): Promise<ReservationRecord | null> {
  const path = reservationPath(stateDir, pool);
  let raw: string;
  try {
    raw = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw ioError(e, `reading ${path}`);
  }
  try {
    const v = JSON.parse(raw) as ReservationRecord;
    const id = identityFrom(v);
    if (!id || v.version !== 1 || (v.state !== 'reserving' && v.state !== 'held')) return null;
    if (v.heldRoot !== null && !(typeof v.heldRoot === 'number' && Number.isSafeInteger(v.heldRoot))) return null;
    return { ...v, ...id };
  } catch {
    return null;
  }
}

/** This process's reservations from the pool lock taken until the snapshot is released and the lock freed. */
const inFlight = new Set<Promise<void>>();

/** How many metadata snapshots this process is reserving, holding or releasing now. */
export function metadataSnapshotsInFlight(): number {
  return inFlight.size;
}

/**
 * Resolves when every metadata snapshot this process reserved (or is reserving) has been released, or
 * after `timeoutMs`, whichever comes first: true when none is left. A process that must exit soon (a
 * daemon at its stop deadline) waits here rather than leave a snapshot held behind it.
 */
export async function metadataSnapshotsReleased(timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.allSettled([...inFlight]),
    new Promise((res) => { timer = setTimeout(res, Math.max(0, timeoutMs)); }),
  ]);
  clearTimeout(timer);
  return inFlight.size === 0;
}

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
type HandledSignal = (typeof SIGNALS)[number];

/**
 * Reserve the pool's metadata snapshot, run fn with the tmeta path, release it (also when fn
 * fails, and on SIGINT/SIGTERM/SIGHUP). Rules: docs/LVM.md section 6.
 */
export async function withMetadataSnapshot<T>(
  pool: PoolRef,
  opts: MetadataSnapshotOptions,
  fn: (tmeta: string, held: HeldMetadataSnapshot) => Promise<T>,
): Promise<T> {
  assertLvmName(pool.vg, 'VG');
  assertLvmName(pool.pool, 'pool');
  const ctx = new Context(pool, opts);
  const lock = await acquirePoolLock(poolLockPath(ctx.stateDir, pool), {
    timeoutMs: opts.lockTimeoutMs ?? 120_000,
    logger: ctx.logger,
    what: ctx.what,
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  let settle!: () => void;
  const settled = new Promise<void>((res) => { settle = res; });
  inFlight.add(settled);
  try {
    await ctx.preflight();
    // Aborted meanwhile (a daemon stopping): never reserve a snapshot only to release it again.
    if (opts.signal?.aborted) throw new ThinarchiveError('INTERRUPTED', `interrupted before reserving the metadata snapshot of ${ctx.what}`);
    return await ctx.run(lock, fn);
  } finally {
    try {
      await lock.release();
    } finally {
      inFlight.delete(settled);
      settle();
    }
  }
}

class Context {
  readonly stateDir: string;
  readonly logger: Logger;
  readonly what: string;
  private readonly exec: LvmExec;
  private readonly recordPath: string;

  constructor(
    readonly pool: PoolRef,
    private readonly opts: MetadataSnapshotOptions,
  ) {
    this.stateDir = opts.stateDir ?? defaultStateDir();
    this.logger = opts.logger ?? silentLogger;
    this.exec = opts.exec ?? runLvmCommand;
    this.what = `${pool.vg}/${pool.pool}`;
    this.recordPath = reservationPath(this.stateDir, pool);
  }

  private status(): Promise<PoolStatus> {
    return poolStatus(this.pool.vg, this.pool.pool, { exec: this.exec });
  }

  private async okStatus(): Promise<PoolStatusOk> {
    const st = await this.status();
    checkPoolHealth(this.what, st, 'using its metadata', { readOnly: true, outOfSpace: true, needsCheck: true });
    return st;
  }

  /**
   * How many openers the pool's metadata device (`<pool>_tmeta`) has besides the pool itself: the
   * open count of `dmsetup info` less the pool target's own reference (a program reading a held
   * metadata snapshot, thin_dump -m / thin_delta / thin_ls, holds it open).
   */
  private async metadataOpeners(): Promise<number> {
    return Math.max(0, (await openCount(this.exec, this.pool.vg, `${this.pool.pool}_tmeta`)) - 1);
  }

  private message(m: 'reserve_metadata_snap' | 'release_metadata_snap'): Promise<void> {
    return poolMessage(this.pool.vg, this.pool.pool, m, { exec: this.exec });
  }

  private async writeRecord(me: ProcessIdentity, state: ReservationRecord['state'], heldRoot: number | null): Promise<void> {
    const rec: ReservationRecord = {
      version: 1,
      vg: this.pool.vg,
      pool: this.pool.pool,
      state,
      heldRoot,
      pid: me.pid,
      bootId: me.bootId,
      startTime: me.startTime,
      time: new Date().toISOString(),
    };
    try {
      await makeDirs(join(this.stateDir, 'reservations'), 0o700);
      await writeFileAtomic(this.recordPath, `${JSON.stringify(rec, null, 2)}\n`);
    } catch (e) {
      throw ioError(e, `writing the reservation record ${this.recordPath}`);
    }
  }

  private async removeRecord(): Promise<void> {
    try {
      await rm(this.recordPath, { force: true });
      await fsyncDir(join(this.stateDir, 'reservations')).catch(() => {});
    } catch (e) {
      // A record left behind is harmless: with no held root it is discarded by the next run.
      this.logger.warn({ record: this.recordPath, err: (e as Error).message }, 'could not remove the reservation record');
    }
  }

  /** Under the lock, before reserving: recover our own stale reservation, refuse anyone else's. */
  async preflight(): Promise<void> {
    const st = await this.status();
    checkPoolHealth(this.what, st, 'reserving its metadata snapshot', { outOfSpace: true });
    const rec = await readReservationRecord(this.stateDir, this.pool);
    if (st.heldRoot === null) {
      if (rec) {
        this.logger.debug({ record: rec }, 'discarding a reservation record: the pool holds no metadata snapshot');
        await this.removeRecord();
      }
      return;
    }
    // This very process counts as gone: holding the pool lock, no other call in it can be using the
    // snapshot (a release that failed earlier in this process left it).
    const me = await selfIdentity();
    const isMe = rec !== null && rec.pid === me.pid && rec.bootId === me.bootId && rec.startTime === me.startTime;
    const ownerAlive = rec ? !isMe && (await isAlive(rec)) : false;
    // Whose it is decides whether it goes: a gone process's recorded root; a gone process's
    // reservation whose root it had not recorded yet (killed between the reserve and the record: the
    // pool held nothing when it reserved, under the lock, so the snapshot is almost surely its; the one
    // other possibility is a program that reserved it since and uses it, which has the metadata device
    // open; so only when nobody has: a daemon SIGKILLed there recovers by itself); or --force-release.
    const reason = rec && !ownerAlive && rec.state === 'held' && rec.heldRoot === st.heldRoot
      ? 'releasing a metadata snapshot left behind by a thinarchive process that is gone'
      : rec && !ownerAlive && rec.state === 'reserving' && (await this.metadataOpeners()) === 0
        ? 'releasing a metadata snapshot a thinarchive process that is gone was reserving (it died before recording the root; nothing has the metadata device open)'
        : this.opts.force
          ? 'FORCE: releasing a metadata snapshot that thinarchive did not reserve; whoever holds it will read garbage'
          : undefined;
    if (reason) {
      this.logger.warn({ pool: this.what, heldRoot: st.heldRoot, record: rec, recordOwnerAlive: ownerAlive }, reason);
      await this.message('release_metadata_snap');
      await this.removeRecord();
      return;
    }
    let who: string;
    if (rec && ownerAlive && rec.heldRoot === st.heldRoot) {
      who = `thinarchive process ${rec.pid} (still running) holds it`;
    } else if (rec && rec.state === 'reserving' && !ownerAlive) {
      who = `thinarchive process ${rec.pid} died while reserving a metadata snapshot (${rec.time}), so this one is probably a leftover of it, but another process has the pool's metadata device open`;
    } else {
      who = 'another program (thin_ls, a backup tool, an administrator) holds it';
    }
    throw new UnsafeError(
      'METADATA_SNAP_HELD',
      `thin pool ${this.what} already has a metadata snapshot (held root ${st.heldRoot}) that this run did not reserve: ${who}. ` +
        `thinarchive will not release it. Wait until it is released, or if nothing uses it, release it with ` +
        `"dmsetup message ${poolDmName(this.pool.vg, this.pool.pool)} 0 release_metadata_snap" or rerun send with --force-release.`,
    );
  }

  /** Reserve, record, run fn, release; signals release first. */
  async run<T>(lock: PoolLock, fn: (tmeta: string, held: HeldMetadataSnapshot) => Promise<T>): Promise<T> {
    const me = await selfIdentity();
    const ac = new AbortController();
    let interrupted: HandledSignal | null = null;
    let releasing: Promise<Error | undefined> | undefined;

    const reserving = this.reserve(me);
    reserving.catch(() => {}); // observed below; no unhandled rejection meanwhile
    const releaseOnce = (): Promise<Error | undefined> =>
      (releasing ??= reserving.then(
        (root) => this.release(root),
        () => undefined, // nothing was reserved
      ));

    const handlers = new Map<HandledSignal, () => void>();
    // A signal's release, lock release and handler removal: done before this returns.
    let afterSignal: Promise<void> | undefined;
    const removeHandlers = (): void => {
      for (const [s, h] of handlers) process.removeListener(s, h);
      handlers.clear();
    };
    if (this.opts.handleSignals ?? true) {
      for (const s of SIGNALS) {
        const h = (): void => {
          if (interrupted) {
            // A second signal: stop waiting for the release. The reservation record lets the next
            // run recognise and release the snapshot.
            this.logger.warn({ pool: this.what, signal: s }, 'second signal: not waiting for the metadata snapshot release');
            removeHandlers();
            if (process.listenerCount(s) === 0) process.kill(process.pid, s);
            return;
          }
          interrupted = s;
          this.logger.warn({ pool: this.what, signal: s }, 'signal received: releasing the metadata snapshot');
          ac.abort(new ThinarchiveError('INTERRUPTED', `interrupted by ${s}`));
          afterSignal = releaseOnce()
            .then((err) => {
              if (err) this.logger.warn({ pool: this.what, err: err.message }, 'releasing the metadata snapshot after a signal failed');
              return lock.release();
            })
            .finally(() => {
              removeHandlers();
              // Nobody else handles it: die of it, as without us.
              if (process.listenerCount(s) === 0) process.kill(process.pid, s);
            });
          afterSignal.catch(() => {}); // awaited below; a failed lock release is not unhandled meanwhile
        };
        handlers.set(s, h);
        process.on(s, h);
      }
    }

    try {
      const root = await reserving;
      const held: HeldMetadataSnapshot = { pool: this.pool, tmeta: tmetaPath(this.pool.vg, this.pool.pool), heldRoot: root, signal: ac.signal };
      let result: T | undefined;
      let failed = false;
      let fnError: unknown;
      if (interrupted) {
        failed = true;
        fnError = ac.signal.reason;
      } else {
        try {
          result = await fn(held.tmeta, held);
        } catch (e) {
          failed = true;
          fnError = e;
        }
      }
      const releaseError = await releaseOnce();
      if (failed) {
        if (releaseError) attachReleaseError(fnError, releaseError);
        throw fnError;
      }
      if (releaseError) throw releaseError;
      if (interrupted) throw ac.signal.reason;
      return result as T;
    } finally {
      if (interrupted) {
        await releaseOnce();
        await afterSignal?.catch(() => undefined);
      } else removeHandlers();
    }
  }

  /** Record intent, reserve, read the held root back, record it. Returns the held root. */
  private async reserve(me: ProcessIdentity): Promise<number> {
    await this.writeRecord(me, 'reserving', null);
    try {
      await this.message('reserve_metadata_snap');
    } catch (e) {
      await this.removeRecord();
      if (e instanceof CommandError && /busy/i.test(e.stderr)) {
        throw new UnsafeError(
          'METADATA_SNAP_HELD',
          `thin pool ${this.what}: another program reserved the metadata snapshot just now (EBUSY); thinarchive will not release it`,
        );
      }
      throw e;
    }
    try {
      const st = await this.okStatus();
      if (st.heldRoot === null) {
        throw new ThinarchiveError('METADATA_SNAP_MISSING', `thin pool ${this.what}: reserved a metadata snapshot but the status shows none held`);
      }
      await this.writeRecord(me, 'held', st.heldRoot);
      this.logger.info({ pool: this.what, heldRoot: st.heldRoot }, 'reserved the metadata snapshot');
      return st.heldRoot;
    } catch (e) {
      // We did reserve it: undo that before reporting.
      try {
        await this.message('release_metadata_snap');
        await this.removeRecord();
      } catch (e2) {
        attachReleaseError(e, e2 as Error);
      }
      throw e;
    }
  }

  /** Release our snapshot if it still is ours. Returns the error instead of throwing it. */
  private async release(root: number): Promise<Error | undefined> {
    let st: PoolStatusOk;
    try {
      st = await this.okStatus();
    } catch (e) {
      return releaseFailed(e as Error, this.what, root);
    }
    if (st.heldRoot !== root) {
      await this.removeRecord();
      return new UnsafeError(
        'METADATA_SNAP_LOST',
        `thin pool ${this.what}: the metadata snapshot thinarchive reserved (root ${root}) was released by another program while in use` +
          `${st.heldRoot !== null ? ` (root ${st.heldRoot} is held now and was left alone)` : ''}; what was read from it cannot be trusted`,
      );
    }
    try {
      await this.message('release_metadata_snap');
    } catch (e) {
      // The record stays: the next run recognises the snapshot as ours once this process is gone.
      return releaseFailed(e as Error, this.what, root);
    }
    await this.removeRecord();
    this.logger.info({ pool: this.what, heldRoot: root }, 'released the metadata snapshot');
    return undefined;
  }
}

function releaseFailed(e: Error, what: string, root: number): Error {
  const msg = `thin pool ${what}: releasing the metadata snapshot (root ${root}) failed: ${e.message}; ` +
    'it stays reserved (costing metadata space) until the next thinarchive run on this pool releases it';
  if (e instanceof CommandError) return new CommandError('METADATA_SNAP_RELEASE_FAILED', msg, e.argv, e.exitCode, e.stderr);
  return new ThinarchiveError('METADATA_SNAP_RELEASE_FAILED', msg, 'runtime', { cause: e });
}

function attachReleaseError(err: unknown, releaseError: Error): void {
  if (err === null || typeof err !== 'object') return;
  try {
    Object.defineProperty(err, 'releaseError', { value: releaseError, enumerable: true, configurable: true, writable: true });
  } catch {
    // a frozen error object: nothing to attach to
  }
}
