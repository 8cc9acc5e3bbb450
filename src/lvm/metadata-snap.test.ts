// The metadata snapshot discipline against an emulated pool: dmsetup status / message answered
// like the real kernel (the EBUSY / EINVAL stderr is the real one, fixtures/lvm/errors.json).
// test/lab/lvm.test.ts runs the same rules against a real pool.
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CommandError, ThinarchiveError, UnsafeError } from '../errors.js';
import type { Logger } from '../log.js';
import { type LvmExec, commandError } from './exec.js';
import {
  type ReservationRecord, metadataSnapshotsInFlight, metadataSnapshotsReleased, poolLockPath, readReservationRecord, reservationPath, withMetadataSnapshot,
} from './metadata-snap.js';
import { currentBootId, processStartTime } from './pool-lock.js';
import { deadPid } from '../../test/helpers/host.js';

const FIXTURES = fileURLToPath(new URL('../../fixtures/lvm/', import.meta.url));
const ERRORS = JSON.parse(readFileSync(FIXTURES + 'errors.json', 'utf8')) as Record<string, { stderr: string }>;
const POOL = { vg: 'lab-vg', pool: 'thin-pool' };
const TPOOL = 'lab--vg-thin--pool-tpool';
const TMETA = '/dev/mapper/lab--vg-thin--pool_tmeta';

interface FakePool {
  exec: LvmExec;
  held: number | null;
  nextRoot: number;
  state: 'ok' | 'Fail';
  mode: 'rw' | 'ro';
  failRelease: boolean;
  /** processes with the metadata device open besides the pool */
  metaOpeners: number;
  /** run before answering a command (to simulate a racing program) */
  before?: (line: string) => void;
  calls: string[];
  messages(): string[];
}

function fakePool(): FakePool {
  const p: FakePool = {
    held: null,
    nextRoot: 45,
    state: 'ok',
    mode: 'rw',
    failRelease: false,
    metaOpeners: 0,
    calls: [],
    messages: () => p.calls.filter((c) => c.startsWith('dmsetup message')).map((c) => c.split(' ').at(-1)!),
    exec: async (argv) => {
      const line = argv.join(' ');
      p.calls.push(line);
      p.before?.(line);
      if (line === `dmsetup status ${TPOOL}`) {
        if (p.state === 'Fail') return '0 2097152 thin-pool Fail\n';
        return `0 2097152 thin-pool 3 115/1024 20/16384 ${p.held ?? '-'} ${p.mode} no_discard_passdown queue_if_no_space - 256 \n`;
      }
      if (line === `dmsetup info -c --noheadings -o open ${TMETA.slice('/dev/mapper/'.length)}`) return `${1 + p.metaOpeners}\n`;
      if (line === `dmsetup message ${TPOOL} 0 reserve_metadata_snap`) {
        if (p.held !== null) throw commandError(argv, { exitCode: 1, stdout: '', stderr: ERRORS['reserve-twice']!.stderr });
        p.held = p.nextRoot++;
        return '';
      }
      if (line === `dmsetup message ${TPOOL} 0 release_metadata_snap`) {
        if (p.failRelease || p.held === null) throw commandError(argv, { exitCode: 1, stdout: '', stderr: ERRORS['release-none']!.stderr });
        p.held = null;
        return '';
      }
      throw new Error(`unexpected command ${line}`);
    },
  };
  return p;
}

interface LogLine {
  level: string;
  obj: object;
  msg: string;
}
function memoryLogger(): Logger & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at = (level: string) => (obj: object, msg = ''): void => void lines.push({ level, obj, msg });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn') };
}


async function writeRecord(stateDir: string, rec: Partial<ReservationRecord>): Promise<void> {
  const full: ReservationRecord = {
    version: 1, vg: POOL.vg, pool: POOL.pool, state: 'held', heldRoot: null, pid: 1, bootId: await currentBootId(), startTime: null,
    time: '2024-01-01T00:00:00.000Z', ...rec,
  };
  await mkdir(join(stateDir, 'reservations'), { recursive: true });
  await writeFile(reservationPath(stateDir, POOL), JSON.stringify(full));
}

async function rejection(p: Promise<unknown>): Promise<ThinarchiveError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ThinarchiveError);
    return e as ThinarchiveError;
  }
  throw new Error('resolved');
}

let stateDir: string;
let pool: FakePool;
let log: ReturnType<typeof memoryLogger>;
const opts = (extra: object = {}): Parameters<typeof withMetadataSnapshot>[1] => ({ stateDir, exec: pool.exec, logger: log, lockTimeoutMs: 2000, ...extra });

beforeEach(async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'thinarchive-msnap-'));
  pool = fakePool();
  log = memoryLogger();
});
afterEach(async () => {
  await rm(stateDir, { recursive: true, force: true });
});

describe('withMetadataSnapshot', () => {
  it('aborted while it checked the pool (under the lock): refused before reserving anything', async () => {
    const ac = new AbortController();
    // the stop comes while the preflight reads the pool's status
    pool.before = (line) => { if (line.startsWith('dmsetup status')) ac.abort(new Error('daemon stopping')); };
    let ran = false;
    const e = await rejection(withMetadataSnapshot(POOL, opts({ signal: ac.signal }), async () => { ran = true; }));
    expect(e.code).toBe('INTERRUPTED');
    expect(ran).toBe(false);
    expect(pool.messages()).toEqual([]);
    expect(pool.held).toBeNull();
    expect(existsSync(poolLockPath(stateDir, POOL))).toBe(false);
    expect(metadataSnapshotsInFlight()).toBe(0);
  });

  it('counts its reservation in flight from the lock to the release; metadataSnapshotsReleased waits for it, or times out while it is held', async () => {
    expect(metadataSnapshotsInFlight()).toBe(0);
    expect(await metadataSnapshotsReleased(10)).toBe(true);
    let release!: () => void;
    const gate = new Promise<void>((res) => { release = res; });
    let entered!: () => void;
    const inside = new Promise<void>((res) => { entered = res; });
    const running = withMetadataSnapshot(POOL, opts(), async () => { entered(); await gate; });
    await inside;
    expect(metadataSnapshotsInFlight()).toBe(1);
    expect(pool.held).toBe(45);
    expect(await metadataSnapshotsReleased(50)).toBe(false); // still held: timed out
    const waiting = metadataSnapshotsReleased(10_000);
    release();
    expect(await waiting).toBe(true);
    expect(pool.held).toBeNull(); // released before it resolved
    expect(existsSync(poolLockPath(stateDir, POOL))).toBe(false);
    await running;
    expect(metadataSnapshotsInFlight()).toBe(0);
  });

  it('reserves, records the held root durably, runs fn with the tmeta path, releases, removes the record', async () => {
    const result = await withMetadataSnapshot(POOL, opts(), async (tmeta, held) => {
      expect(tmeta).toBe(TMETA);
      expect(held).toMatchObject({ tmeta: TMETA, heldRoot: 45, pool: POOL });
      expect(held.signal.aborted).toBe(false);
      expect(pool.held).toBe(45);
      const rec = await readReservationRecord(stateDir, POOL);
      expect(rec).toMatchObject({ version: 1, vg: 'lab-vg', pool: 'thin-pool', state: 'held', heldRoot: 45, pid: process.pid, bootId: await currentBootId() });
      expect(rec!.startTime).toBe(await processStartTime(process.pid));
      expect(existsSync(poolLockPath(stateDir, POOL))).toBe(true);
      return 'done';
    });
    expect(result).toBe('done');
    expect(pool.held).toBeNull();
    expect(pool.messages()).toEqual(['reserve_metadata_snap', 'release_metadata_snap']);
    expect(existsSync(reservationPath(stateDir, POOL))).toBe(false);
    expect(existsSync(poolLockPath(stateDir, POOL))).toBe(false);
    expect(reservationPath(stateDir, POOL)).toBe(join(stateDir, 'reservations', 'lab--vg-thin--pool.json'));
    // the order: status (preflight), reserve, status (read root back), fn, status (still ours?), release
    expect(pool.calls.map((c) => c.split(' ').at(-1))).toEqual([TPOOL, 'reserve_metadata_snap', TPOOL, TPOOL, 'release_metadata_snap']);
  });

  it('releases when fn fails and rethrows fn\'s error unchanged', async () => {
    const boom = new Error('fn failed');
    await expect(withMetadataSnapshot(POOL, opts(), async () => {
      throw boom;
    })).rejects.toBe(boom);
    expect(pool.held).toBeNull();
    expect((boom as Error & { releaseError?: Error }).releaseError).toBeUndefined();
    expect(existsSync(reservationPath(stateDir, POOL))).toBe(false);
  });

  it('a failed release surfaces as METADATA_SNAP_RELEASE_FAILED, and keeps the record for the next run', async () => {
    const e = await rejection(withMetadataSnapshot(POOL, opts(), async () => {
      pool.failRelease = true;
      return 1;
    }));
    expect(e).toBeInstanceOf(CommandError);
    expect(e.code).toBe('METADATA_SNAP_RELEASE_FAILED');
    expect(e.message).toMatch(/stays reserved .* next thinarchive run/);
    expect(await readReservationRecord(stateDir, POOL)).toMatchObject({ state: 'held', heldRoot: 45 });
  });

  it('the next call in the same process releases what a failed release left', async () => {
    await withMetadataSnapshot(POOL, opts(), async () => {
      pool.failRelease = true;
    }).catch(() => {});
    expect(pool.held).toBe(45);
    pool.failRelease = false;
    await withMetadataSnapshot(POOL, opts(), async (_t, held) => expect(held.heldRoot).toBe(46));
    expect(pool.held).toBeNull();
    expect(log.lines.some((l) => /left behind by a thinarchive process that is gone/.test(l.msg))).toBe(true);
  });

  it('a failed release never masks fn\'s error: it is attached to it', async () => {
    const boom = new Error('fn failed');
    const e = await withMetadataSnapshot(POOL, opts(), async () => {
      pool.failRelease = true;
      throw boom;
    }).catch((x: unknown) => x);
    expect(e).toBe(boom);
    expect((boom as Error & { releaseError?: Error }).releaseError).toMatchObject({ code: 'METADATA_SNAP_RELEASE_FAILED' });
  });

  it('refuses a snapshot held by someone else and does not release it', async () => {
    pool.held = 82;
    const e = await rejection(withMetadataSnapshot(POOL, opts(), async () => 1));
    expect(e).toBeInstanceOf(UnsafeError);
    expect(e.code).toBe('METADATA_SNAP_HELD');
    expect(e.message).toMatch(/held root 82/);
    expect(e.message).toMatch(/another program/);
    expect(e.message).toContain(`dmsetup message ${TPOOL} 0 release_metadata_snap`);
    expect(pool.held).toBe(82);
    expect(pool.messages()).toEqual([]);
    expect(existsSync(poolLockPath(stateDir, POOL))).toBe(false);
  });

  it('force releases it, loudly', async () => {
    pool.held = 82;
    await withMetadataSnapshot(POOL, opts({ force: true }), async (_t, held) => expect(held.heldRoot).toBe(45));
    expect(pool.messages()).toEqual(['release_metadata_snap', 'reserve_metadata_snap', 'release_metadata_snap']);
    const warn = log.lines.find((l) => l.level === 'warn');
    expect(warn?.msg).toMatch(/^FORCE: releasing a metadata snapshot that thinarchive did not reserve/);
    expect(warn?.obj).toMatchObject({ heldRoot: 82 });
  });

  it('recognises and releases its own reservation left by a dead process (same root, pid gone)', async () => {
    pool.held = 82;
    await writeRecord(stateDir, { state: 'held', heldRoot: 82, pid: deadPid() });
    let ran = false;
    await withMetadataSnapshot(POOL, opts(), async () => {
      ran = true;
    });
    expect(ran).toBe(true);
    expect(pool.messages()).toEqual(['release_metadata_snap', 'reserve_metadata_snap', 'release_metadata_snap']);
    expect(log.lines.some((l) => l.level === 'warn' && /left behind by a thinarchive process that is gone/.test(l.msg))).toBe(true);
  });

  it('...also when the record is from another boot, or the pid was reused by a younger process', async () => {
    pool.held = 82;
    await writeRecord(stateDir, { heldRoot: 82, pid: process.pid, bootId: '00000000-0000-0000-0000-000000000000' });
    await withMetadataSnapshot(POOL, opts(), async () => {});
    expect(pool.messages()[0]).toBe('release_metadata_snap');

    pool.held = 83;
    pool.calls.length = 0;
    const st = await processStartTime(process.pid);
    await writeRecord(stateDir, { heldRoot: 83, pid: process.pid, startTime: (st ?? 0) + 1 });
    await withMetadataSnapshot(POOL, opts(), async () => {});
    expect(pool.messages()[0]).toBe('release_metadata_snap');
  });

  it('does not release when the record names another root, or its process still runs', async () => {
    pool.held = 82;
    await writeRecord(stateDir, { heldRoot: 81, pid: deadPid() });
    let e = await rejection(withMetadataSnapshot(POOL, opts(), async () => 1));
    expect(e.code).toBe('METADATA_SNAP_HELD');
    await writeRecord(stateDir, { heldRoot: 82, pid: process.ppid, startTime: null });
    e = await rejection(withMetadataSnapshot(POOL, opts(), async () => 1));
    expect(e.code).toBe('METADATA_SNAP_HELD');
    expect(e.message).toMatch(new RegExp(`thinarchive process ${process.ppid} \\(still running\\)`));
    expect(pool.messages()).toEqual([]);
    expect(pool.held).toBe(82);
  });

  it('a process killed while reserving: its snapshot released when nothing has the metadata device open, else refused with the reason', async () => {
    pool.held = 82;
    pool.metaOpeners = 1; // a program reading the held snapshot (thin_dump -m) has the device open
    await writeRecord(stateDir, { state: 'reserving', heldRoot: null, pid: deadPid() });
    const e = await rejection(withMetadataSnapshot(POOL, opts(), async () => 1));
    expect(e.code).toBe('METADATA_SNAP_HELD');
    expect(e.message).toMatch(/died while reserving .* another process has the pool's metadata device open/);
    expect(pool.messages()).toEqual([]);
    expect(pool.held).toBe(82);

    pool.metaOpeners = 0; // only the pool itself
    await writeRecord(stateDir, { state: 'reserving', heldRoot: null, pid: process.ppid, startTime: null });
    const alive = await rejection(withMetadataSnapshot(POOL, opts(), async () => 1));
    expect(alive.code).toBe('METADATA_SNAP_HELD'); // its process still runs: never released
    expect(pool.messages()).toEqual([]);

    await writeRecord(stateDir, { state: 'reserving', heldRoot: null, pid: deadPid() });
    expect(await withMetadataSnapshot(POOL, opts(), async () => 7)).toBe(7);
    expect(pool.messages()).toEqual(['release_metadata_snap', 'reserve_metadata_snap', 'release_metadata_snap']);
    expect(log.lines.some((l) => l.level === 'warn' && /was reserving/.test(l.msg))).toBe(true);
    expect(pool.held).toBeNull();
  });

  it('discards a stale record when nothing is held, and ignores a malformed one', async () => {
    await writeRecord(stateDir, { heldRoot: 82, pid: deadPid() });
    await withMetadataSnapshot(POOL, opts(), async () => {});
    expect(pool.messages()).toEqual(['reserve_metadata_snap', 'release_metadata_snap']);
    await writeFile(reservationPath(stateDir, POOL), '{"version": 1, "pid": "x"');
    expect(await readReservationRecord(stateDir, POOL)).toBeNull();
    pool.held = 82;
    expect((await rejection(withMetadataSnapshot(POOL, opts(), async () => 1))).code).toBe('METADATA_SNAP_HELD');
  });

  it('someone reserves between our check and our reserve (EBUSY): METADATA_SNAP_HELD, theirs untouched', async () => {
    pool.before = (line) => {
      if (line.endsWith('reserve_metadata_snap') && pool.held === null) pool.held = 90;
    };
    const e = await rejection(withMetadataSnapshot(POOL, opts(), async () => 1));
    expect(e).toBeInstanceOf(UnsafeError);
    expect(e.code).toBe('METADATA_SNAP_HELD');
    expect(e.message).toMatch(/EBUSY/);
    expect(pool.held).toBe(90);
    expect(pool.messages()).toEqual(['reserve_metadata_snap']);
    expect(existsSync(reservationPath(stateDir, POOL))).toBe(false);
  });

  it('someone releases ours while fn runs (Wyng does that): METADATA_SNAP_LOST, their new one untouched', async () => {
    const e = await rejection(withMetadataSnapshot(POOL, opts(), async () => {
      pool.held = 99; // released ours and reserved their own
      return 'result that cannot be trusted';
    }));
    expect(e).toBeInstanceOf(UnsafeError);
    expect(e.code).toBe('METADATA_SNAP_LOST');
    expect(e.message).toMatch(/root 45\).* \(root 99 is held now and was left alone\)/);
    expect(pool.held).toBe(99);
    expect(pool.messages()).toEqual(['reserve_metadata_snap']);
  });

  it('refuses failed, read-only and needs_check pools', async () => {
    pool.state = 'Fail';
    expect((await rejection(withMetadataSnapshot(POOL, opts(), async () => 1))).code).toBe('POOL_FAILED');
    pool.state = 'ok';
    pool.mode = 'ro';
    expect((await rejection(withMetadataSnapshot(POOL, opts(), async () => 1))).code).toBe('POOL_READ_ONLY');
    expect(pool.messages()).toEqual([]);
  });

  it('serialises concurrent calls in one process', async () => {
    const spans: [number, number][] = [];
    const one = (): Promise<void> => withMetadataSnapshot(POOL, opts(), async () => {
      const s = performance.now();
      await new Promise((r) => setTimeout(r, 50));
      spans.push([s, performance.now()]);
    });
    await Promise.all([one(), one(), one()]);
    spans.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) expect(spans[i]![0]).toBeGreaterThanOrEqual(spans[i - 1]![1]);
    expect(pool.messages()).toEqual(Array(3).fill(['reserve_metadata_snap', 'release_metadata_snap']).flat());
  });

  it('waits for a live lock holder and gives up with POOL_LOCKED; breaks a dead holder\'s lock', async () => {
    const lockPath = poolLockPath(stateDir, POOL);
    await mkdir(join(stateDir, 'locks'), { recursive: true });
    const bootId = await currentBootId();
    await writeFile(lockPath, JSON.stringify({ pid: process.ppid, bootId, startTime: null, token: 't', time: 'then', what: '' }));
    const t = performance.now();
    const e = await rejection(withMetadataSnapshot(POOL, opts({ lockTimeoutMs: 300 }), async () => 1));
    expect(e.code).toBe('POOL_LOCKED');
    expect(e.message).toMatch(new RegExp(`pool lab-vg/thin-pool is locked by thinarchive pid ${process.ppid}`));
    expect(performance.now() - t).toBeGreaterThanOrEqual(290);
    expect(pool.calls).toEqual([]);

    await writeFile(lockPath, JSON.stringify({ pid: deadPid(), bootId, startTime: null, token: 't', time: 'then', what: '' }));
    await withMetadataSnapshot(POOL, opts(), async () => {});
    expect(log.lines.some((l) => /stale thinarchive pool lock/.test(l.msg))).toBe(true);
    expect(existsSync(lockPath)).toBe(false);
  });

  it('on a signal: aborts fn, releases, and (another listener handling it) rejects with INTERRUPTED', async () => {
    const other = (): void => {};
    process.on('SIGTERM', other); // stands in for the CLI's handler: no re-raise then
    try {
      const e = await rejection(withMetadataSnapshot(POOL, opts(), async (_t, held) => {
        process.emit('SIGTERM', 'SIGTERM');
        expect(held.signal.aborted).toBe(true); // at once, synchronously
        await new Promise((r) => setTimeout(r, 50)); // the release runs meanwhile
        throw held.signal.reason;
      }));
      expect(e.code).toBe('INTERRUPTED');
      expect(pool.held).toBeNull();
      expect(pool.messages()).toEqual(['reserve_metadata_snap', 'release_metadata_snap']);
      expect(process.listenerCount('SIGTERM')).toBe(1); // ours are gone
      expect(process.listenerCount('SIGINT')).toBe(0);
      expect(existsSync(poolLockPath(stateDir, POOL))).toBe(false);
    } finally {
      process.removeListener('SIGTERM', other);
    }
  });

  it('installs no signal handlers outside the held section, or with handleSignals: false', async () => {
    const before = process.listenerCount('SIGINT');
    await withMetadataSnapshot(POOL, opts(), async () => expect(process.listenerCount('SIGINT')).toBe(before + 1));
    await withMetadataSnapshot(POOL, opts({ handleSignals: false }), async () => expect(process.listenerCount('SIGINT')).toBe(before));
    expect(process.listenerCount('SIGINT')).toBe(before);
  });

  it('writes records atomically as JSON under the state dir', async () => {
    await withMetadataSnapshot(POOL, opts(), async () => {
      const raw = await readFile(reservationPath(stateDir, POOL), 'utf8');
      expect(JSON.parse(raw)).toMatchObject({ state: 'held', heldRoot: 45 });
    });
  });
});
