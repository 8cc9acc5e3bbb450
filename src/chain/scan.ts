/**
 * Comparing a target with the state a chain says it must have, by per-block checksums only (verify
 * --against, apply --repair): each selected block read once and hashed on the worker pool.
 */
import type { WorkerPool } from '../archive/pool.js';
import type { ArchiveFile } from '../archive/reader.js';
import { MAX_RECORD_RAW } from '../format/constants.js';
import { blockLength } from '../format/types.js';
import { ThinarchiveError } from '../errors.js';
import { createLvmExec } from '../lvm/exec.js';
import { lvDevicePath } from '../lvm/names.js';
import { activateReadOnly, deactivate, getLv } from '../lvm/tools.js';
import { FileVolume } from '../source/volume.js';
import { JsonStateStore, stateFileFor, type TargetState } from '../target/state.js';
import { tagsToState } from '../target/lv-tags.js';
import { lvTargetSpec } from '../target/lv-target.js';
import { lockTarget } from '../target/target-lock.js';
import type { Segment } from './segments.js';

/** What one block must be: data with a hash, or zeroes. */
export interface Expect {
  block: number;
  zero: boolean;
  hash: bigint;
  seg: Segment;
}

/** A target opened read-only for scanning. */
export interface ScanSource {
  readonly size: number;
  read(buf: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  /** Allocated ranges in blocks (a sparse image's holes read as zeroes without reading). */
  allocated?: (blockSize: number) => AsyncIterable<{ firstBlock: number; blockCount: number }>;
}

export interface ScanOptions {
  files: ArchiveFile[];
  /** The archives whose blocks are checked (all of `files`, or only the newest for changed-only). */
  segments: AsyncIterable<Segment>;
  source: ScanSource;
  pool: WorkerPool;
  blockSize: number;
  volumeSize: number;
  /** Keep a block with this probability (1 = every block). */
  fraction?: number;
  random?: () => number;
  signal?: AbortSignal;
  /** A block whose content differs; awaited before the scan goes on. */
  onBad: (e: Expect, actual: { zero: boolean; hash: bigint | null }) => Promise<void> | void;
  onProgress?: (blocksDone: number) => void;
}

export interface ScanTotals {
  blocksChecked: number;
  blocksRead: number;
  bytesRead: number;
  bad: number;
}

/**
 * Compare the target's blocks with the expected segments: one pass, each selected block read once,
 * hashed on the pool a few jobs at a time.
 */
export async function scanTarget(o: ScanOptions): Promise<ScanTotals> {
  const bs = o.blockSize;
  const fraction = o.fraction ?? 1;
  const random = o.random ?? Math.random;
  const perJob = Math.max(1, Math.floor(MAX_RECORD_RAW / bs));
  const totals: ScanTotals = { blocksChecked: 0, blocksRead: 0, bytesRead: 0, bad: 0 };
  // The zero block's hash: a block in a hole read as zeroes.
  const zeroHash = new Map<number, bigint>();
  const hashOfZeroes = async (len: number): Promise<bigint> => {
    let h = zeroHash.get(len);
    if (h === undefined) {
      const r = await o.pool.hash(new ArrayBuffer(len), len, len);
      h = new BigUint64Array(r.hashes)[0];
      zeroHash.set(len, h);
    }
    return h;
  };
  // Allocated ranges of a sparse image: blocks outside them are holes.
  const allocIt = o.source.allocated?.(bs)[Symbol.asyncIterator]();
  let alloc: { first: number; end: number } | null = null;
  let allocDone = !allocIt;
  const inHole = async (block: number): Promise<boolean> => {
    if (!allocIt) return false;
    while (!allocDone && (alloc === null || alloc.end <= block)) {
      const r = await allocIt.next();
      if (r.done) {
        allocDone = true;
        alloc = null;
      } else alloc = { first: r.value.firstBlock, end: r.value.firstBlock + r.value.blockCount };
    }
    return alloc === null || block < alloc.first;
  };

  type Job = { expects: Expect[]; buf: ArrayBuffer; len: number; p: Promise<{ hashes: ArrayBuffer; zeroMask: ArrayBuffer; buf: ArrayBuffer }> };
  const free: ArrayBuffer[] = [];
  const inflight: Job[] = [];
  let cur: Expect[] = [];
  let curBuf: ArrayBuffer | undefined;
  let curLen = 0;
  const window = o.pool.size + 2;

  const finish = async (): Promise<void> => {
    const j = inflight.shift()!;
    const r = await j.p;
    free.push(r.buf);
    const hashes = new BigUint64Array(r.hashes);
    const zero = new Uint8Array(r.zeroMask);
    for (let i = 0; i < j.expects.length; i++) {
      const e = j.expects[i];
      const isZero = zero[i] === 1;
      const good = e.zero ? isZero : hashes[i] === e.hash;
      if (!good) {
        totals.bad++;
        await o.onBad(e, { zero: isZero, hash: hashes[i] });
      }
    }
    o.onProgress?.(totals.blocksChecked);
  };
  const dispatch = async (): Promise<void> => {
    if (cur.length === 0) return;
    const buf = curBuf!;
    inflight.push({ expects: cur, buf, len: curLen, p: o.pool.hash(buf, curLen, bs) });
    cur = [];
    curBuf = undefined;
    curLen = 0;
    if (inflight.length >= window) await finish();
  };
  // Reads runs of consecutive blocks into the job buffer, packed one after another.
  let runStart = -1;
  let runBlocks = 0;
  let runAt = 0;
  const flushRun = async (): Promise<void> => {
    if (runBlocks === 0) return;
    const pos = runStart * bs;
    const len = Math.min((runStart + runBlocks) * bs, o.volumeSize) - pos;
    const view = new Uint8Array(curBuf!, runAt, len);
    let got = 0;
    while (got < len) {
      const k = await o.source.read(view, got, len - got, pos + got);
      if (k === 0) throw new ThinarchiveError('TARGET_SHORT', `the target ends at byte ${pos + got}, before the volume size ${o.volumeSize}`);
      got += k;
    }
    totals.bytesRead += len;
    runBlocks = 0;
  };
  const add = async (e: Expect): Promise<void> => {
    totals.blocksChecked++;
    const len = blockLength(e.block, o.volumeSize, bs);
    if (await inHole(e.block)) {
      if (!e.zero && e.hash !== (await hashOfZeroes(len))) {
        totals.bad++;
        await o.onBad(e, { zero: true, hash: null });
      }
      return;
    }
    if (!curBuf) {
      curBuf = free.pop() ?? new ArrayBuffer(perJob * bs);
      curLen = 0;
    }
    if (runBlocks > 0 && runStart + runBlocks !== e.block) await flushRun();
    if (runBlocks === 0) {
      runStart = e.block;
      runAt = curLen;
    }
    runBlocks++;
    curLen += len;
    cur.push(e);
    totals.blocksRead++;
    if (cur.length === perJob) {
      await flushRun();
      await dispatch();
    }
  };
  try {
    for await (const seg of o.segments) {
      o.signal?.throwIfAborted();
      const zero = seg.kind !== 'data';
      for (let i = 0; i < seg.count; i++) {
        if (fraction < 1 && random() >= fraction) continue;
        await add({ block: seg.first + i, zero, hash: zero ? 0n : seg.hashes![i], seg });
      }
    }
    await flushRun();
    await dispatch();
    while (inflight.length > 0) await finish();
  } finally {
    await Promise.allSettled(inflight.map((j) => j.p));
    await allocIt?.return?.();
  }
  return totals;
}

/** A target opened read-only: an image, a block device, or an LV (activated read-only if needed). */
type ScanTarget = {
  source: ScanSource; kind: 'image' | 'blockdev' | 'lv'; state: TargetState | null; snapshotArchive: string | null; close: () => Promise<void>;
};

/**
 * Open a target for reading (verify --against). The target lock is taken first (as a reader: it goes
 * on without a lock file it cannot create) and held until close: a target being written by apply,
 * restore, repair or recover is not read (TARGET_LOCKED, or waited for with `wait`).
 */
export async function openScanTarget(to: string, stateDir?: string, o: { wait?: boolean; signal?: AbortSignal } = {}): Promise<ScanTarget> {
  const lock = await lockTarget(to, { stateDir, command: 'verify --against', wait: o.wait, signal: o.signal, reader: true });
  let t: ScanTarget;
  try {
    t = await openScanTargetLocked(to, stateDir);
  } catch (e) {
    await lock.release();
    throw e;
  }
  return {
    ...t,
    close: async () => {
      try {
        await t.close();
      } finally {
        await lock.release();
      }
    },
  };
}

export async function openScanTargetLocked(to: string, stateDir?: string): Promise<ScanTarget> {
  const lv = await lvTargetSpec(to);
  if (lv) {
    const exec = createLvmExec();
    const info = await getLv(lv.vg, lv.lv, { exec });
    let activated = false;
    let path = lvDevicePath(lv.vg, lv.lv);
    if (!info.active) {
      path = await activateReadOnly(lv.vg, lv.lv, { exec });
      activated = true;
    }
    // A snapshot made by send VG/LV (tag "thinarchive") names its archive in a tag; a target LV has state tags.
    const isSendSnapshot = info.tags.includes('thinarchive');
    const state = isSendSnapshot ? null : tagsToState(info.tags, to);
    const snapTag = isSendSnapshot ? info.tags.find((t) => t.startsWith('ta_archive_')) : undefined;
    let vol: FileVolume;
    try {
      vol = await FileVolume.open(path, 'target');
    } catch (e) {
      if (activated) await deactivate(lv.vg, lv.lv, { exec }).catch(() => {});
      throw e;
    }
    return {
      source: vol, kind: 'lv', state, snapshotArchive: snapTag ? snapTag.slice('ta_archive_'.length) : null,
      close: async () => {
        await vol.close();
        if (activated) await deactivate(lv.vg, lv.lv, { exec }).catch(() => {});
      },
    };
  }
  const vol = await FileVolume.open(to, 'target');
  const kind = vol.isBlockDevice ? 'blockdev' : 'image';
  try {
    const state = await new JsonStateStore(stateFileFor(kind, to, stateDir)).read();
    const source: ScanSource = kind === 'image'
      ? { size: vol.size, read: (b, o, l, p) => vol.read(b, o, l, p), allocated: (bs) => vol.allocatedExtents(bs) }
      : vol;
    return { source, kind, state, snapshotArchive: null, close: () => vol.close() };
  } catch (e) {
    await vol.close();
    throw e;
  }
}

