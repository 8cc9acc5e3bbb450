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
import { UsageError } from '../errors.js';
import { withPool } from '../archive/pool.js';
import { volumeBlocks } from '../format/types.js';
import type { StoreOptions } from '../store/open.js';
import { openChain, recordVerification } from '../chain/chain.js';
import { chainSegments, type ReadStats } from '../chain/segments.js';
import type { TargetFinding } from '../chain/findings.js';
import { openScanTarget, scanTarget, type ScanTotals } from '../chain/scan.js';

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
  /**
   * verify --against takes the target lock for its reads (a target mid-apply is not read); when a
   * writer holds it, it is refused (TARGET_LOCKED) or, with wait, waits.
   */
  wait?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: { blocksDone: number; blocks: number }) => void;
  /** test hook: random numbers in [0, 1) for sampling */
  random?: () => number;
  storeOptions?: StoreOptions;
}

const MAX_FINDINGS = 1000;

const hex = (h: bigint): string => h.toString(16).padStart(16, '0');







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
    const tgt = await openScanTarget(opts.against, opts.stateDir, { wait: opts.wait, signal: opts.signal });
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
          findings.push({ code: 'TARGET_STATE', detail: s.status === 'applying' ? 'MID_APPLY' : 'OTHER_ARCHIVE', archive: label, target: label,
            message: `the target's recorded state ${what}; the chain's newest archive is ${newest.archiveId} (sequence ${newest.sequence})` });
        }
      } else if (tgt.snapshotArchive !== null) {
        stateOk = tgt.snapshotArchive === newest.archiveId;
        if (!stateOk) {
          findings.push({ code: 'TARGET_STATE', detail: 'OTHER_ARCHIVE', archive: label, target: label,
            message: `the snapshot's tags name archive ${tgt.snapshotArchive}; the chain's newest archive is ${newest.archiveId} (sequence ${newest.sequence})` });
        }
      }
      const size = tgt.source.size;
      const sizeBad = tgt.kind === 'image' ? size !== newest.volumeSize : size < newest.volumeSize;
      if (sizeBad) {
        findings.push({ code: 'TARGET_SIZE', detail: 'SIZE', archive: label, target: label,
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
              code: 'TARGET_MISMATCH', detail: e.zero ? 'NOT_ZERO' : 'BLOCK_HASH', archive: label, target: label, offset: e.block * bs, block: e.block,
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

