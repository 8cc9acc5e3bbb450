/**
 * apply: replay a chain of archives onto a target (target/target.ts). Every archive is pre-flighted
 * and the chain links checked before the first write; the first archive applied must continue the
 * target's recorded state; each archive is begun (rollback point, "applying"), streamed, flushed and
 * committed ("clean"). From standard input the trailer is checked only at the end: the target stays
 * "applying" until the whole stream is verified. Crash safety: docs/JOURNAL.md.
 */
import { FormatError, ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import { PayloadBatcher, payloadCorrupt, payloadStart, RecordBuffers, WorkerPool, type BatchRecord } from '../archive/pool.js';
import { plainStream } from '../archive/encrypted.js';
import { ArchiveFile, readArchive, type ArchiveEvent } from '../archive/reader.js';
import { Codec, ExtentKind, MAX_RECORD_RAW } from '../format/constants.js';
import type { ArchiveHeader, MapEnd } from '../format/types.js';
import { rangeBytes } from '../format/types.js';
import type { Logger } from '../log.js';
import type { LvmExec } from '../lvm/exec.js';
import { verifyWritten, WrittenBlocks, type WrittenCheck } from '../chain/written.js';
import { resolveArchiveInputs, type StoreOptions } from '../store/refs.js';
import type { ZeroStats } from '../target/file-target.js';
import { recover, type RecoverResult } from '../target/recover.js';
import type { TargetKind, TargetState } from '../target/state.js';
import { checkTargetOptions, lockTarget, resolveCreate, Target, type LvTargetReport, type TargetLock, type TargetSnapshots } from '../target/target.js';

export interface ApplyProgress {
  archiveId: string;
  bytesDone: number;
  bytesTotal: number | undefined;
}

export interface ApplyOptions {
  /** Options for remote stores the archives are read from (ssh options, S3 endpoint, ...). */
  storeOptions?: StoreOptions;
  inputs: string[];
  to: string;
  create?: boolean;
  /** as `create` when the target does not exist, else apply to it (replication jobs) */
  createIfMissing?: boolean;
  force?: boolean;
  /** LV targets: the thin pool (`VG/POOL`) --create makes the new LV in. */
  pool?: string;
  /** LV targets: keep a read-only thin snapshot of the target after each applied archive. */
  snapshotTarget?: boolean;
  /** with snapshotTarget: keep this many newest snapshots (default: all) */
  keep?: number;
  /** LV targets: how LVM commands are run (tests); default execa with the logger. */
  lvmExec?: LvmExec;
  /** The bytes of `-` (standard input). */
  stdin?: AsyncIterable<Uint8Array>;
  stateDir?: string;
  /** No undo journal / rollback snapshot: faster; an interrupted apply is completed by applying again. */
  noUndo?: boolean;
  /**
   * Read back every block each archive wrote, zeroed or unmapped and compare it with the archive's
   * checksums before its new state is recorded (src/chain/written.ts). A mismatch fails with
   * REPLICA_MISMATCH and leaves the target mid-apply: the next apply rolls it back first.
   */
  verify?: boolean;
  /** test hook: runs after an archive's writes are flushed, before they are read back */
  beforeVerify?: () => Promise<void>;
  /**
   * Another process holds the target (its lock, docs/JOURNAL.md): wait for it instead of being
   * refused at once with TARGET_LOCKED.
   */
  wait?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: ApplyProgress) => void;
  log?: Logger;
  /**
   * The target lock, already held by the caller (the target side of `sync`, which holds it from
   * hashing to the end of the apply): apply neither takes nor releases it.
   */
  lock?: TargetLock;
  /**
   * The target side of `sync` (docs/SYNC.md): the one archive to apply is a resync archive whose
   * parent must be `baseId`, the nonce of this hashing session; the target's recorded state is not
   * consulted for where to start (the hashes were). `unchanged` is called after the target is opened
   * and before the first write, and throws when the target changed since it was hashed.
   */
  resync?: { baseId: string; unchanged?: () => Promise<void> };
}

export interface AppliedArchive {
  archiveId: string;
  sequence: number;
  dataBytes: number;
  zeroBytes: number;
  seconds: number;
  /** with verify: the read-back check of what this archive wrote */
  verify?: WrittenCheck;
}

export interface ApplyResult {
  target: string;
  targetKind: TargetKind;
  applied: AppliedArchive[];
  skipped: string[];
  state: { archiveId: string; sequence: number; chainId: string };
  zeroing: ZeroStats;
  /** LV targets only */
  lv?: LvTargetReport;
  /** with --snapshot-target */
  snapshots?: TargetSnapshots;
  /** what the recovery run before applying did, when it did something */
  recovered?: RecoverResult;
  /** bytes of old contents kept in undo journals (0 with --no-undo or on thin LVs) */
  undoBytes: number;
}

function describeState(s: TargetState): string {
  return `archive ${s.archiveId} (sequence ${s.sequence} of chain ${s.chainId})`;
}

/**
 * Decide where in `headers` applying starts, given the target's state. Throws UnsafeError when the
 * first archive to apply does not sit on the target's state.
 */
export function planStart(headers: ArchiveHeader[], state: TargetState | null, opts: { fresh: boolean; force: boolean }): number {
  const first = headers[0];
  if (state === null) {
    if (!opts.fresh && !opts.force) {
      throw new UnsafeError('TARGET_UNKNOWN', first.full
        ? 'the target has no thinarchive state (it was not written by apply); use --force to overwrite it with this full archive'
        : `the target has no thinarchive state (it was not written by apply) and archive ${first.archiveId} is incremental (sequence ${first.sequence}): `
          + 'apply the whole chain from its full archive (apply STORE --to TARGET, with --force to overwrite the target), or restore it (thinarchive restore STORE --to TARGET --force)');
    }
    if (!first.full) {
      throw new UnsafeError('CHAIN_MISMATCH', `archive ${first.archiveId} is incremental (sequence ${first.sequence}); a target without state needs the chain from its full archive first (apply STORE --to TARGET, or thinarchive restore STORE --to TARGET)`);
    }
    return 0;
  }
  if (state.status === 'applying') {
    const a = state.applying!;
    const i = headers.findIndex((h) => h.archiveId === a.archiveId);
    if (i >= 0) return i;
    if (opts.force && first.full) return 0;
    throw new UnsafeError('TARGET_MID_APPLY', `the target is in the middle of applying archive ${a.archiveId} (sequence ${a.sequence}); apply that archive again to complete it`);
  }
  const at = headers.findIndex((h) => h.archiveId === state.archiveId);
  if (at >= 0) return at + 1;
  const next = headers.findIndex((h) => h.parentId === state.archiveId);
  if (next >= 0) {
    if (headers[next].volumeUuid !== state.volumeUuid) {
      throw new UnsafeError('VOLUME_MISMATCH', `archive ${headers[next].archiveId} is of volume ${headers[next].volumeUuid}, the target holds volume ${state.volumeUuid}`);
    }
    return next;
  }
  if (opts.force && first.full) return 0;
  const want = first.parentId ? `its parent ${first.parentId}` : 'a new target (it is a full archive; --force overwrites)';
  throw new UnsafeError('CHAIN_MISMATCH', `the target holds ${describeState(state)}; archive ${first.archiveId} (sequence ${first.sequence}) applies on top of ${want}`);
}

/**
 * sync: the archive must be the resync archive computed against this hashing session (its parent is
 * the session's nonce), or it would be written over content it was not compared with.
 */
export function checkResync(headers: ArchiveHeader[], baseId: string): void {
  const h = headers[0];
  if (headers.length !== 1 || h.full || h.parentId !== baseId) {
    throw new UnsafeError('RESYNC_MISMATCH', `archive ${h.archiveId} (sequence ${h.sequence}) is not the resync archive of this hashing session (its parent is ${h.parentId ?? 'none'}, the session is ${baseId}); nothing was written`);
  }
}

/** Check that each archive continues the one before it. */
export function checkChain(headers: ArchiveHeader[]): void {
  for (let i = 1; i < headers.length; i++) {
    const a = headers[i - 1];
    const b = headers[i];
    if (b.parentId !== a.archiveId) {
      throw new UnsafeError('CHAIN_BROKEN', `archive ${b.archiveId} (sequence ${b.sequence}) does not follow archive ${a.archiveId} (sequence ${a.sequence}): its parent is ${b.parentId ?? 'none'}`);
    }
    if (b.volumeUuid !== a.volumeUuid) throw new UnsafeError('VOLUME_MISMATCH', `archives ${a.archiveId} and ${b.archiveId} are of different volumes`);
  }
}

const DECODE_WINDOW_PER_WORKER = 2;

/** A data record on its way to the target: its first block, data bytes, and offset in the archive. */
type ApplyRecord = { first: number; rawLen: number; offset: number };
const MAX_WRITES_IN_FLIGHT = 2;

/** Apply one validated archive stream to the target. The header event has been consumed already. */
async function applyStream(
  events: AsyncGenerator<ArchiveEvent>, h: ArchiveHeader, target: Target, pool: WorkerPool, buffers: RecordBuffers,
  opts: {
    fresh: boolean; total: number | undefined; label: string; signal?: AbortSignal; onProgress?: (p: ApplyProgress) => void; written?: WrittenBlocks;
    /** The batcher whose slots `events` reads payloads into (readArchive's payloadBuffer). */
    batcher: PayloadBatcher<ApplyRecord>;
  },
): Promise<{ dataBytes: number; zeroBytes: number }> {
  const bs = h.blockSize;
  const size = h.volumeSize;
  let dataBytes = 0;
  let zeroBytes = 0;
  const zero = async (first: number, count: number): Promise<void> => {
    const n = rangeBytes(first, count, size, bs);
    if (!opts.fresh) await target.zero(first * bs, n);
    zeroBytes += n;
    progress();
  };
  // Payloads are gathered several to a record buffer (opts.batcher: readArchive reads into its slots)
  // and decoded a batch at a time into one output buffer; a batch of one record is decoded alone.
  type Job =
    | { one: true; rec: ApplyRecord; p: ReturnType<WorkerPool['decodeRecycled']> }
    | { one: false; recs: { rec: ApplyRecord; outAt: number }[]; p: ReturnType<WorkerPool['decodeBatch']> };
  const window: Job[] = [];
  const limit = pool.size * DECODE_WINDOW_PER_WORKER;
  const progress = (): void => opts.onProgress?.({ archiveId: h.archiveId, bytesDone: dataBytes + zeroBytes, bytesTotal: opts.total });
  const writes: Promise<void>[] = [];
  /** Write `raw` (a record's data) at its block; `done` after it is written. */
  const write = async (rec: ApplyRecord, raw: Uint8Array, done: () => void): Promise<void> => {
    // Writes to distinct offsets overlap with each other and with decoding; a few at a time.
    const w = target.write(raw, rec.first * bs).then(() => {
      dataBytes += raw.length;
      done();
      progress();
    });
    w.catch(() => {}); // handled when awaited below
    writes.push(w);
    if (writes.length > MAX_WRITES_IN_FLIGHT) await writes.shift();
  };
  const writeOldest = async (): Promise<void> => {
    const job = window.shift()!;
    if (job.one) {
      const res = await job.p;
      for (const b of res.spare) buffers.give(b);
      if (!res.ok) throw payloadCorrupt(res, job.rec.first, job.rec.offset, opts.label);
      await write(job.rec, new Uint8Array(res.raw!, 0, job.rec.rawLen), () => buffers.give(res.raw));
      return;
    }
    const res = await job.p;
    buffers.give(res.stored);
    const bad = res.failed[0];
    const end = bad ? bad.index : job.recs.length;
    // The records before a bad one are written, as they would be one at a time; the output buffer
    // comes back once its last write is done.
    let left = end;
    if (left === 0) buffers.give(res.out);
    for (let i = 0; i < end; i++) {
      const { rec, outAt } = job.recs[i];
      await write(rec, new Uint8Array(res.out!, outAt, rec.rawLen), () => {
        if (--left === 0) buffers.give(res.out);
      });
    }
    if (bad) throw payloadCorrupt(bad, job.recs[bad.index].rec.first, job.recs[bad.index].rec.offset, opts.label);
  };
  /** One record whose payload is the first `len` bytes of `buf`, decoded alone (into a record buffer of its own). */
  const decodeOne = (rec: ApplyRecord, buf: ArrayBuffer, len: number, record: BatchRecord['record']): void => {
    const out = record.codec === Codec.ZSTD ? buffers.take() : undefined;
    window.push({ one: true, rec, p: pool.decodeRecycled(buf, len, record, bs, true, out) });
  };
  const dispatch = (): void => {
    for (const b of opts.batcher.takeReady()) {
      if (b.items.length === 1) {
        const { rec, tag } = b.items[0];
        decodeOne(tag, b.buf, rec.len, rec.record);
      } else {
        window.push({ one: false, recs: b.items.map((i) => ({ rec: i.tag, outAt: i.rec.outAt! })), p: pool.decodeBatch(b.buf, b.items.map((i) => i.rec), bs, buffers.take()) });
      }
    }
  };
  const drain = async (): Promise<void> => {
    opts.batcher.flush();
    dispatch();
    while (window.length > 0) await writeOldest();
    while (writes.length > 0) await writes.shift();
  };
  try {
    for await (const ev of events) {
      opts.signal?.throwIfAborted();
      if (ev.type === 'map') {
        // (announced first: the undo journal keeps all their old contents with one flush)
        if (!opts.fresh) for (const e of ev.extents) if (e.kind !== ExtentKind.DATA) target.announce(e.firstBlock * bs, rangeBytes(e.firstBlock, e.blockCount, size, bs));
        for (const e of ev.extents) if (e.kind !== ExtentKind.DATA) await zero(e.firstBlock, e.blockCount);
        if (opts.written) for (const e of ev.extents) await opts.written.mapExtent(e);
      } else if (ev.type === 'data') {
        const r = ev.record;
        const p = ev.payload;
        await opts.written?.dataRecord(r);
        target.announce(r.firstBlock * bs, rangeBytes(r.firstBlock, r.blockCount, size, bs));
        const rec: ApplyRecord = { first: r.firstBlock, rawLen: r.rawLen, offset: ev.offset };
        // (a payload in a buffer of its own, larger than any record buffer: decoded alone)
        if (!opts.batcher.add(p, r, rec)) decodeOne(rec, payloadStart(p), p.length, r);
        dispatch();
        while (window.length >= limit) await writeOldest();
      } else if (ev.type === 'zero') {
        // On a fresh target a ZERO record writes nothing, and records never overlap (the validator),
        // so the decodes and writes in flight go on (data with a zero block every few blocks drained
        // the pipeline every few hundred KiB). On an existing target they settle first, as before.
        if (!opts.fresh) await drain();
        await zero(ev.record.firstBlock, ev.record.blockCount);
        await opts.written?.zeroRecord(ev.record);
      }
    }
    await drain();
  } finally {
    opts.batcher.dispose();
    await Promise.allSettled([...window.map((w) => w.p), ...writes]);
  }
  return { dataBytes, zeroBytes };
}

export async function apply(opts: ApplyOptions): Promise<ApplyResult> {
  // Every option is checked before any archive is read (some are remote).
  await checkTargetOptions(opts.to, opts);
  const inputs = await resolveArchiveInputs(opts.inputs, opts.storeOptions);
  const files: ArchiveFile[] = [];
  const maps: MapEnd[] = [];
  // The worker pool, started when first needed (authenticating an encrypted archive, or applying).
  let workers: WorkerPool | undefined;
  const pool = (): WorkerPool => (workers ??= new WorkerPool());
  try {
    // 1. Everything that can be checked before touching the target.
    for (const inp of inputs) {
      if (inp.kind === 'file') {
        const f = await inp.open();
        files.push(f);
        // An encrypted archive: every chunk authenticated before the target is touched (FORMAT.md §3.4),
        // on every worker at once.
        if (f.src.authenticate) await f.src.authenticate(pool());
        maps.push(await f.preflight());
      }
    }
    const fromStdin = inputs.length === 1 && inputs[0].kind === 'stdin';
    const buffers = new RecordBuffers();
    // Small payloads are read several to a record buffer and decoded a batch at a time (applyStream);
    // records of 1 MiB of data or more go one at a time, as before.
    const batcher = new PayloadBatcher<ApplyRecord>(buffers, MAX_RECORD_RAW, MAX_RECORD_RAW / 4);
    if (fromStdin && !opts.stdin) throw new UsageError('no standard input to read the archive from');
    checkChain(files.map((f) => f.header));

    // 2. From stdin, the header decides the target's size; read it before opening the target.
    let stdinEvents: AsyncGenerator<ArchiveEvent> | undefined;
    let headers: ArchiveHeader[];
    if (fromStdin) {
      stdinEvents = readArchive(plainStream(opts.stdin!, opts.storeOptions?.identities ?? [], 'standard input'), { file: 'standard input', payloadBuffer: batcher.slot });
      const first = await stdinEvents.next();
      if (first.done || first.value.type !== 'header') throw new FormatError('BAD_STRUCTURE', 'no archive header on standard input');
      headers = [first.value.header];
    } else {
      headers = files.map((f) => f.header);
    }

    // A new image (or LV) is created only once the archives are known to fit it.
    if (opts.resync) checkResync(headers, opts.resync.baseId);
    const created = opts.resync ? false : await resolveCreate(opts.to, opts, opts.lvmExec);
    if (created) planStart(headers, null, { fresh: true, force: !!opts.force });
    // A target left by an interrupted apply is rolled back first (or, without undo, left to be completed).
    // Only when this apply would go ahead on the interrupted target: a refused apply touches nothing.
    // recover's question: would this apply go ahead on a target in state s, applying something?
    const accept = (s: TargetState | null): boolean => {
      try {
        return planStart(headers, created ? null : s, { fresh: created, force: !!opts.force }) < headers.length;
      } catch {
        return false;
      }
    };
    // One writer at a time: the target lock is taken before recovery looks at the state, and held
    // until the target is closed. A live apply is never taken for an interrupted one.
    const lock = opts.lock ?? await lockTarget(opts.to, { stateDir: opts.stateDir, command: 'apply', wait: opts.wait, signal: opts.signal, log: opts.log });
    const releaseLock = async (): Promise<void> => {
      if (!opts.lock) await lock.release();
    };
    let target: Target;
    let rec: RecoverResult;
    try {
      // (sync recovered the target before hashing it, under the same lock)
      rec = opts.resync
        ? { target: opts.to, targetKind: 'image', action: 'none', state: null, seconds: 0 }
        : await recover({ target: opts.to, stateDir: opts.stateDir, ...(opts.lvmExec ? { lvmExec: opts.lvmExec } : {}), log: opts.log, fromApply: true, accept, lock });
      target = await Target.open(opts.to, {
        // --create-if-missing on a target that exists: the pool is for creating, not used
        create: created, pool: created ? opts.pool : undefined, snapshotTarget: opts.snapshotTarget, keep: opts.keep, noUndo: opts.noUndo,
        createSize: headers[0].volumeSize, neededSize: Math.max(...headers.map((h) => h.volumeSize)), blockSize: headers[0].blockSize,
        journalFor: headers[0], stateDir: opts.stateDir, ...(opts.lvmExec ? { exec: opts.lvmExec } : {}), log: opts.log, lock,
      });
    } catch (e) {
      await releaseLock();
      throw e;
    }
    try {
      const state = created ? null : await target.readState();
      if (opts.resync) await opts.resync.unchanged?.();
      const start = opts.resync ? 0 : planStart(headers, state, { fresh: created, force: !!opts.force });
      const result: ApplyResult = {
        target: opts.to, targetKind: target.kind, applied: [], skipped: headers.slice(0, start).map((h) => h.archiveId),
        state: state ? { archiveId: state.archiveId, sequence: state.sequence, chainId: state.chainId } : { archiveId: '', sequence: -1, chainId: '' },
        zeroing: target.zeroStats,
        ...(target.lvReport ? { lv: target.lvReport } : {}),
        ...(opts.snapshotTarget && target.snapshots ? { snapshots: target.snapshots } : {}),
        ...(rec.action !== 'none' || rec.interrupted ? { recovered: rec } : {}),
        undoBytes: 0,
      };
      if (start >= headers.length) {
        // Nothing to apply; a clean target still gets its snapshot if it has none (e.g. the run
        // that applied it failed while taking it).
        if (state) await target.settle(state);
        return result;
      }

      // The state as last read or written (an LV target's state costs an lvs call to read).
      let current: TargetState | null = state;
      for (let i = start; i < headers.length; i++) {
        const h = headers[i];
        const t0 = performance.now();
        // A target created by this run is all holes: zeroing it again is skipped for its first archive.
        const fresh = created && i === start && start === 0;
        await target.begin(h, current, fresh);
        let events: AsyncGenerator<ArchiveEvent>;
        let total: number | undefined;
        if (fromStdin) {
          events = stdinEvents!;
        } else {
          const f = files[i];
          // What applyStream counts: the records' data and zero blocks, and the map's ZERO and UNMAP
          // extents (zeroed too); a partial last block counts only its bytes.
          const m = maps[i];
          total = Math.min(f.trailer.rawBytes + (f.trailer.zeroBlocks + m.zeroBlocks + m.unmapBlocks) * h.blockSize, h.volumeSize);
          // An encrypted archive is decrypted on the pool, ahead of the reader.
          f.src.usePool?.(pool());
          events = readArchive(f.readSource(), { file: f.path, payloadBuffer: batcher.slot });
          const first = await events.next();
          if (first.done || first.value.type !== 'header' || first.value.header.archiveId !== h.archiveId) {
            throw new FormatError('CHANGED_UNDERFOOT', 'archive changed while being applied', 0, f.path);
          }
        }
        const label = fromStdin ? 'standard input' : files[i].path;
        let r: { dataBytes: number; zeroBytes: number };
        const written = opts.verify ? new WrittenBlocks() : undefined;
        let check: WrittenCheck | undefined;
        try {
          try {
            r = await applyStream(events, h, target, pool(), buffers, { fresh, total, label, signal: opts.signal, onProgress: opts.onProgress, written, batcher });
            await target.sync();
          } finally {
            if (!fromStdin) files[i].src.usePool?.(undefined);
            await target.endWrites();
          }
          if (written) {
            await opts.beforeVerify?.();
            check = await verifyWritten(written, { to: opts.to, stateDir: opts.stateDir, pool: pool(), blockSize: h.blockSize, volumeSize: h.volumeSize, signal: opts.signal });
            if (check.mismatchedBlocks > 0) {
              const f = check.first!;
              throw new ThinarchiveError('REPLICA_MISMATCH', `${opts.to}: ${check.mismatchedBlocks} of the ${check.blocksChecked} blocks archive ${h.archiveId} (sequence ${h.sequence}) wrote read back wrong (block ${f.block}, byte ${f.block * h.blockSize}: expected ${f.expected}, read ${f.actual}); its state is not recorded: the next apply rolls it back first`, 'verify');
            }
          }
        } finally {
          await written?.close();
        }
        const done = await target.commit(h);
        current = done.state;
        result.undoBytes += done.undoBytes;
        opts.log?.info({ archiveId: h.archiveId, sequence: h.sequence, target: opts.to, ...r }, 'archive applied');
        result.applied.push({ archiveId: h.archiveId, sequence: h.sequence, ...r, seconds: (performance.now() - t0) / 1000, ...(check ? { verify: check } : {}) });
        result.state = { archiveId: h.archiveId, sequence: h.sequence, chainId: h.chainId };
      }
      return result;
    } finally {
      try {
        await target.close();
      } finally {
        await releaseLock();
      }
    }
  } finally {
    try {
      for (const f of files) await f.close();
    } finally {
      await workers?.close();
    }
  }
}
