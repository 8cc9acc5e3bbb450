/**
 * verify DIR --against TARGET: compare a target (image, block device, VG/LV) with the state the
 * chain says it must have, block by block, by checksum only: archive payloads are never read or
 * decompressed. Each target block is read once and hashed (xxh64, on the worker pool); a block whose
 * latest version is data must have the record's hash, a zero or unmapped block must read as zeroes.
 * Holes of a sparse image read as zeroes without being read.
 *
 * Cost controls: `changedOnly` (only the blocks the newest archive touches: its map and record
 * heads), `samplePercent` (a random subset of blocks; repeated runs cover the volume), default full.
 *
 * `scanTarget` is shared with `apply --repair` (repair.ts), which fixes what it finds.
 */
import { ThinarchiveError, UsageError } from '../errors.js';
import { withPool, type WorkerPool } from '../archive/pool.js';
import type { ArchiveFile } from '../archive/reader.js';
import { MAX_RECORD_RAW } from '../format/constants.js';
import { blockLength, volumeBlocks } from '../format/types.js';
import { createLvmExec } from '../lvm/exec.js';
import { activateReadOnly, deactivate, getLv } from '../lvm/tools.js';
import { lvDevicePath } from '../lvm/names.js';
import { FileVolume } from '../source/volume.js';
import type { StoreOptions } from '../store/open.js';
import { JsonStateStore, stateFileFor, type TargetState } from '../target/file-target.js';
import { chainSegments, openChain, recordVerification, type ReadStats, type Segment } from './chain-state.js';
import { lvTargetSpec, tagsToState } from './lv-target.js';
import type { FindingCode } from './verify.js';

export type TargetFindingCode = FindingCode | 'TARGET_MISMATCH' | 'TARGET_STATE' | 'TARGET_SIZE';

/** A finding of verify --against; the fields of verify's Finding, plus what was expected and found. */
export interface TargetFinding {
  code: TargetFindingCode;
  detail: string;
  /** The target (for TARGET_*), or the archive. */
  archive: string;
  message: string;
  /** byte offset in the target */
  offset?: number;
  block?: number;
  /** xxh64 (hex) of the block as the chain has it, or "zero" */
  expected?: string;
  /** xxh64 (hex) of the block as read, or "zero" */
  actual?: string;
  /** the archive that holds the expected version */
  archiveId?: string;
}

export interface VerifyAgainstResult {
  ok: boolean;
  target: string;
  targetKind: 'image' | 'blockdev' | 'lv';
  mode: 'full' | 'changed-only' | 'sample';
  samplePercent?: number;
  chainId: string;
  newestArchiveId: string;
  newestSequence: number;
  /** The target's recorded state, when it has one. */
  state: { status: string; archiveId: string; sequence: number; chainId: string } | null;
  /** true when the recorded state names the chain's newest archive (clean) */
  stateOk: boolean;
  blocks: number;
  blocksChecked: number;
  /** checked by reading; the rest were holes of a sparse image */
  blocksRead: number;
  mismatchedBlocks: number;
  /** The first findings (at most 1000 block findings are kept; mismatchedBlocks counts all). */
  findings: TargetFinding[];
  /** Bytes read from the target. */
  bytesRead: number;
  /** Bytes of archive frames read (map, index, record heads; never payloads). */
  archiveBytesRead: number;
  seconds: number;
}

export interface VerifyAgainstOptions {
  dir: string;
  against: string;
  changedOnly?: boolean;
  samplePercent?: number;
  stateDir?: string;
  signal?: AbortSignal;
  onProgress?: (p: { blocksDone: number; blocks: number }) => void;
  /** test hook: random numbers in [0, 1) for sampling */
  random?: () => number;
  storeOptions?: StoreOptions;
}

const MAX_FINDINGS = 1000;

const hex = (h: bigint): string => h.toString(16).padStart(16, '0');

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
export async function openScanTarget(to: string, stateDir?: string): Promise<{
  source: ScanSource; kind: 'image' | 'blockdev' | 'lv'; state: TargetState | null; snapshotArchive: string | null; close: () => Promise<void>;
}> {
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
      vol = await FileVolume.open(path);
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
  const vol = await FileVolume.open(to);
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

export async function verifyAgainst(opts: VerifyAgainstOptions): Promise<VerifyAgainstResult> {
  const started = performance.now();
  const pct = opts.samplePercent;
  if (pct !== undefined && (!(pct > 0) || pct > 100)) throw new UsageError('--sample must be a percentage above 0 and at most 100');
  if (pct !== undefined && opts.changedOnly) throw new UsageError('--sample and --changed-only do not go together');
  const chain = await openChain(opts.dir, opts.storeOptions);
  try {
    const files = chain.archives.map((a) => a.file);
    const newest = chain.archives[chain.archives.length - 1].header;
    const bs = newest.blockSize;
    const tgt = await openScanTarget(opts.against, opts.stateDir);
    try {
      const findings: TargetFinding[] = [];
      const label = opts.against;
      const s = tgt.state;
      let stateOk = false;
      if (s) {
        stateOk = s.status === 'clean' && s.archiveId === newest.archiveId;
        if (!stateOk) {
          const what = s.status === 'applying'
            ? `is in the middle of applying ${s.applying?.archiveId} onto ${s.archiveId || 'nothing'}`
            : `holds archive ${s.archiveId} (sequence ${s.sequence} of chain ${s.chainId})`;
          findings.push({ code: 'TARGET_STATE', detail: s.status === 'applying' ? 'MID_APPLY' : 'OTHER_ARCHIVE', archive: label,
            message: `the target's recorded state ${what}; the chain's newest archive is ${newest.archiveId} (sequence ${newest.sequence})` });
        }
      } else if (tgt.snapshotArchive !== null) {
        stateOk = tgt.snapshotArchive === newest.archiveId;
        if (!stateOk) {
          findings.push({ code: 'TARGET_STATE', detail: 'OTHER_ARCHIVE', archive: label,
            message: `the snapshot's tags name archive ${tgt.snapshotArchive}; the chain's newest archive is ${newest.archiveId} (sequence ${newest.sequence})` });
        }
      }
      const size = tgt.source.size;
      const sizeBad = tgt.kind === 'image' ? size !== newest.volumeSize : size < newest.volumeSize;
      if (sizeBad) {
        findings.push({ code: 'TARGET_SIZE', detail: 'SIZE', archive: label,
          message: `the target has ${size} bytes, the volume ${tgt.kind === 'image' ? 'has' : 'needs'} ${newest.volumeSize}` });
      }
      const stats: ReadStats[] = files.map(() => ({ metaBytes: 0 }));
      const scanFiles = opts.changedOnly ? [files[files.length - 1]] : files;
      const scanStats = opts.changedOnly ? [stats[stats.length - 1]] : stats;
      const blocks = volumeBlocks(newest.volumeSize, bs);
      let mismatched = 0;
      let totals: ScanTotals = { blocksChecked: 0, blocksRead: 0, bytesRead: 0, bad: 0 };
      if (size >= newest.volumeSize) {
        totals = await withPool((pool) => scanTarget({
          files, segments: chainSegments(scanFiles, { hashes: true, stats: scanStats }), source: tgt.source, pool, blockSize: bs,
          volumeSize: newest.volumeSize, fraction: pct === undefined ? 1 : pct / 100, random: opts.random, signal: opts.signal,
          onProgress: (n) => opts.onProgress?.({ blocksDone: n, blocks }),
          onBad: (e, actual) => {
            mismatched++;
            if (mismatched > MAX_FINDINGS) return;
            const a = scanFiles[e.seg.archive].header;
            const expected = e.zero ? 'zero' : hex(e.hash);
            const got = actual.zero ? 'zero' : hex(actual.hash!);
            findings.push({
              code: 'TARGET_MISMATCH', detail: e.zero ? 'NOT_ZERO' : 'BLOCK_HASH', archive: label, offset: e.block * bs, block: e.block,
              expected, actual: got, archiveId: a.archiveId,
              message: `block ${e.block} (byte ${e.block * bs}): expected ${e.zero ? 'zeroes' : `xxh64 ${expected}`} (${e.seg.kind} of archive sequence ${a.sequence}), read ${actual.zero ? 'zeroes' : `xxh64 ${got}`}`,
            });
          },
        }));
      }
      const ok = mismatched === 0 && !sizeBad && !findings.some((f) => f.code === 'TARGET_STATE');
      const mode = opts.changedOnly ? 'changed-only' : pct !== undefined ? `sample ${pct}%` : 'full';
      await recordVerification(chain, {
        at: new Date().toISOString(), target: opts.against, mode, ok, archiveId: newest.archiveId, sequence: newest.sequence,
        blocksChecked: totals.blocksChecked, mismatchedBlocks: mismatched,
      });
      return {
        ok, target: opts.against, targetKind: tgt.kind, mode: opts.changedOnly ? 'changed-only' : pct !== undefined ? 'sample' : 'full',
        ...(pct !== undefined ? { samplePercent: pct } : {}),
        chainId: chain.chainId, newestArchiveId: newest.archiveId, newestSequence: newest.sequence,
        state: s ? { status: s.status, archiveId: s.archiveId, sequence: s.sequence, chainId: s.chainId } : null, stateOk,
        blocks, blocksChecked: totals.blocksChecked, blocksRead: totals.blocksRead, mismatchedBlocks: mismatched, findings,
        bytesRead: totals.bytesRead, archiveBytesRead: stats.reduce((n, x) => n + x.metaBytes, 0), seconds: (performance.now() - started) / 1000,
      };
    } finally {
      await tgt.close();
    }
  } finally {
    await chain.close();
  }
}

