/**
 * verify VG/LV --against TARGET --host ssh://HOST: compare a replica on another host with the thin
 * LV's base snapshot (the newest point of its managed snapshot chain, which the replica must hold)
 * by the hash exchange of sync (docs/SYNC.md): the replica's host hashes its blocks
 * (`thinarchive verify-target`, run over ssh) and sends 8 bytes a block; this side reads the
 * snapshot, hashes the same blocks and compares, streaming both: memory stays bounded whatever the
 * volume size, and no block data crosses the network. Full, or a sample (`samplePercent`): a seeded
 * selection of blocks both sides compute alike, a new seed each run.
 *
 * The replica's recorded state must name the base snapshot's archive (a replica fed by remote apply
 * records every archive it applied). This is the scheduled check of the daemon's remote replicas,
 * which have no store to compare with.
 */
import { randomInt } from 'node:crypto';
import { join } from 'node:path';
import { withPool } from '../archive/pool.js';
import { hashRuns } from '../chain/block-hashes.js';
import type { TargetFinding } from '../chain/findings.js';
import { ByteReader, checkHello, helloState, newHello, parseLine, sampledBlocks, selectedRuns, wholeRuns, writeHashes, type SyncHashed, type SyncHello } from '../chain/hash-exchange.js';
import { openScanTarget } from '../chain/scan.js';
import { ThinarchiveError, UsageError } from '../errors.js';
import type { ArchiveSink } from '../archive/writer.js';
import { volumeBlocks } from '../format/types.js';
import { isValidBlockSize } from '../format/frames.js';
import { defaultStateDir } from '../fsutil.js';
import { silentLogger, type Logger } from '../log.js';
import { createLvmExec, runLvmCommand, type LvmExec } from '../lvm/exec.js';
import { assertLvmName } from '../lvm/names.js';
import { activateReadOnly, deactivate, listLvs } from '../lvm/tools.js';
import { checkChainName, classifyChainSnapshots, DEFAULT_CHAIN, lockSnapshotChain } from '../source/snapshot-chain.js';
import { FileVolume } from '../source/volume.js';
import type { StoreOptions } from '../store/open.js';
import { remoteSession } from '../store/remote-apply.js';

/** The block size of the comparison: 8 bytes of hashes cross the network per block. */
export const VERIFY_REPLICA_BLOCK_SIZE = 64 * 1024;
const MAX_FINDINGS = 1000;

// ---------------------------------------------------------------------------------------------
// The replica's side

export interface VerifyTargetSideOptions {
  to: string;
  blockSize: number;
  volumeSize: number;
  /** Hash only the blocks `sampledBlocks(seed, percent)` selects. */
  sample?: { seed: number; percent: number };
  stateDir?: string;
  wait?: boolean;
  out: ArchiveSink;
  signal?: AbortSignal;
}

/**
 * The replica's side (`thinarchive verify-target`, hidden): under the target lock taken as a reader
 * (a target being written is not read; nothing is rolled back or written), the hello line with the
 * recorded state, the hashes of the (selected) blocks, the hashed line.
 */
export async function verifyTargetSide(o: VerifyTargetSideOptions): Promise<SyncHashed> {
  const bs = o.blockSize;
  if (!isValidBlockSize(bs)) throw new UsageError(`invalid block size ${bs}: a power of two from 4 KiB to 4 MiB`);
  if (!Number.isSafeInteger(o.volumeSize) || o.volumeSize <= 0) throw new UsageError(`invalid volume size ${o.volumeSize}`);
  if (o.sample && (!(o.sample.percent > 0) || o.sample.percent > 100 || !Number.isInteger(o.sample.seed))) throw new UsageError('--sample must be a percentage above 0 and at most 100, with an integer --seed');
  const t0 = performance.now();
  const t = await openScanTarget(o.to, o.stateDir, { wait: o.wait, signal: o.signal });
  try {
    const hello = newHello({
      target: o.to, targetKind: t.kind, targetSize: t.source.size, blockSize: bs, volumeSize: o.volumeSize, state: helloState(t.state),
      snapshotArchive: t.snapshotArchive, ...(o.sample ? { sample: o.sample } : {}),
    });
    await o.out.write(Buffer.from(JSON.stringify(hello) + '\n'));
    const totals = await withPool((pool) => writeHashes({
      source: t.source, sourceSize: t.source.size, blockSize: bs, volumeSize: o.volumeSize, pool, out: o.out, signal: o.signal,
      ...(o.sample ? { select: sampledBlocks(o.sample.seed, o.sample.percent) } : {}),
    }));
    const hashed: SyncHashed = { hashedBlocks: totals.blocksHashed, bytesRead: totals.bytesRead, seconds: (performance.now() - t0) / 1000 };
    await o.out.write(Buffer.from(JSON.stringify(hashed) + '\n'));
    return hashed;
  } finally {
    await t.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The source's side

export interface VerifyReplicaOptions {
  /** The thin LV whose base snapshot the replica must equal: VG/LV. */
  volume: string;
  /** Its managed snapshot chain (default "default"; the daemon's chains are named after the job). */
  chain?: string;
  /** ssh://[user@]host[:port] */
  host: string;
  /** The replica on that host: image path, block device or VG/LV. */
  target: string;
  /** The thinarchive command there (default "thinarchive"). */
  remoteCommand?: string;
  /** The remote side's --state-dir. */
  remoteStateDir?: string;
  /** A random PERCENT of the blocks (default all). */
  samplePercent?: number;
  /** The sample's seed (default random). */
  seed?: number;
  /** Locks of the snapshot chain (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive). */
  stateDir?: string;
  /** Wait for a writer holding the replica (remote --wait) instead of TARGET_LOCKED. */
  wait?: boolean;
  storeOptions?: StoreOptions;
  exec?: LvmExec;
  signal?: AbortSignal;
  log?: Logger;
}

export interface VerifyReplicaResult {
  ok: boolean;
  volume: string;
  chain: string;
  /** The base snapshot compared with, and the archive its tags name. */
  snapshot: string;
  archiveId: string;
  sequence: number;
  chainId: string;
  host: string;
  target: string;
  targetKind: string;
  mode: 'full' | 'sample';
  samplePercent?: number;
  seed?: number;
  /** The replica's recorded state. */
  state: SyncHello['state'];
  /** true when the recorded state is clean at the base snapshot's archive */
  stateOk: boolean;
  blockSize: number;
  blocks: number;
  blocksChecked: number;
  mismatchedBlocks: number;
  /** The first findings (at most 1000 block findings; mismatchedBlocks counts all). */
  findings: TargetFinding[];
  /** Bytes read from the snapshot here and from the replica there. */
  sourceBytesRead: number;
  targetBytesRead: number;
  /** Bytes of hashes and protocol lines received. */
  bytesReceived: number;
  seconds: number;
}

const hex = (h: bigint): string => h.toString(16).padStart(16, '0');

export async function verifyReplica(o: VerifyReplicaOptions): Promise<VerifyReplicaResult> {
  const started = performance.now();
  const m = /^([^/]+)\/([^/]+)$/.exec(o.volume);
  if (!m) throw new UsageError(`${o.volume}: name the source as VG/LV`);
  const [vg, lvName] = [m[1], m[2]];
  assertLvmName(vg, 'VG');
  assertLvmName(lvName, 'LV');
  const pct = o.samplePercent;
  if (pct !== undefined && (!(pct > 0) || pct > 100)) throw new UsageError('--sample must be a percentage above 0 and at most 100');
  const chain = o.chain ?? DEFAULT_CHAIN;
  checkChainName(chain);
  const log = o.log ?? silentLogger;
  const exec = o.exec ?? (o.log ? createLvmExec({ logger: o.log }) : runLvmCommand);
  const tools = { exec, ...(o.signal ? { signal: o.signal } : {}) };
  const stateDir = o.stateDir ?? defaultStateDir();
  // No send of this chain meanwhile: it would replace the base (and the replica) under the comparison.
  const lock = await lockSnapshotChain(join(stateDir, 'locks'), vg, lvName, chain, log);
  let activated = '';
  let volume: FileVolume | undefined;
  try {
    const lvs = await listLvs(vg, tools);
    const lv = lvs.find((l) => l.name === lvName && !l.hidden);
    if (!lv) throw new ThinarchiveError('LV_NOT_FOUND', `logical volume ${vg}/${lvName} not found`);
    const base = classifyChainSnapshots(lvs, lv.uuid, chain).base;
    if (!base) throw new ThinarchiveError('NO_BASE_SNAPSHOT', `${vg}/${lvName} has no base snapshot in chain ${chain}: nothing was replicated yet (send ${vg}/${lvName}${chain === DEFAULT_CHAIN ? '' : ` --chain ${chain}`} first)`);
    const snap = base.lv;
    const dev = await activateReadOnly(vg, snap.name, tools, snap);
    if (!snap.active) activated = snap.name;
    volume = await FileVolume.open(dev);
    const size = volume.size;
    const bs = VERIFY_REPLICA_BLOCK_SIZE;
    const blocks = volumeBlocks(size, bs);
    const seed = pct !== undefined ? (o.seed ?? randomInt(0x7fffffff)) : undefined;
    const select = pct !== undefined ? sampledBlocks(seed!, pct) : undefined;
    const args = ['verify-target', o.target, '--block-size', String(bs), '--volume-size', String(size),
      ...(pct !== undefined ? ['--sample', String(pct), '--seed', String(seed)] : []),
      ...(o.remoteStateDir !== undefined ? ['--state-dir', o.remoteStateDir] : []), ...(o.wait ? ['--wait'] : [])];
    const session = remoteSession({ host: o.host, args, remoteCommand: o.remoteCommand, storeOptions: o.storeOptions });
    const label = `${o.target} on ${session.label}`;
    const reader = new ByteReader(session.output, `the replica's side (${session.label})`);
    try {
      const hello = parseLine<SyncHello>(await reader.line(), `the replica's side (${session.label})`);
      checkHello(hello, bs, size);
      const findings: TargetFinding[] = [];
      const archive = base.tags;
      const s = hello.state;
      let stateOk: boolean;
      if (s) {
        stateOk = s.status === 'clean' && s.archiveId === archive.archiveId;
        if (!stateOk) {
          findings.push({ code: 'TARGET_STATE', detail: s.status === 'applying' ? 'MID_APPLY' : 'OTHER_ARCHIVE', archive: label, target: label,
            message: `the replica's recorded state ${s.status === 'applying' ? 'is in the middle of an apply' : `holds archive ${s.archiveId} (sequence ${s.sequence} of chain ${s.chainId})`}; `
              + `the base snapshot ${vg}/${snap.name} is archive ${archive.archiveId} (sequence ${archive.sequence})` });
        }
      } else {
        stateOk = hello.snapshotArchive === archive.archiveId;
        if (!stateOk) {
          findings.push({ code: 'TARGET_STATE', detail: 'OTHER_ARCHIVE', archive: label, target: label,
            message: `the replica has no recorded state${hello.snapshotArchive ? ` (its tags name archive ${hello.snapshotArchive})` : ''}; the base snapshot ${vg}/${snap.name} is archive ${archive.archiveId}` });
        }
      }
      const sizeBad = hello.targetKind === 'image' ? hello.targetSize !== size : hello.targetSize < size;
      if (sizeBad) {
        findings.push({ code: 'TARGET_SIZE', detail: 'SIZE', archive: label, target: label,
          message: `the replica has ${hello.targetSize} bytes, the volume ${hello.targetKind === 'image' ? 'has' : 'needs'} ${size}` });
      }
      let mismatched = 0;
      const src = volume;
      const totals = await withPool((pool) => hashRuns({
        source: src, runs: select ? selectedRuns(wholeRuns(blocks), select) : wholeRuns(blocks), blockSize: bs, volumeSize: size, pool, signal: o.signal,
        onHashes: async (first, mine) => {
          const theirs = await reader.hashes(mine.length);
          for (let i = 0; i < mine.length; i++) {
            if (mine[i] === theirs[i]) continue;
            mismatched++;
            if (mismatched > MAX_FINDINGS) continue;
            const b = first + i;
            findings.push({
              code: 'TARGET_MISMATCH', detail: 'BLOCK_HASH', archive: label, target: label, offset: b * bs, block: b, expected: hex(mine[i]), actual: hex(theirs[i]),
              archiveId: archive.archiveId,
              message: `block ${b} (byte ${b * bs}): the snapshot has xxh64 ${hex(mine[i])}, the replica ${hex(theirs[i])}`,
            });
          }
        },
      }));
      const hashed = parseLine<SyncHashed>(await reader.line(), `the replica's side (${session.label})`);
      if (hashed.hashedBlocks !== totals.blocksHashed) {
        throw new ThinarchiveError('SYNC_PROTOCOL', `the replica's side hashed ${hashed.hashedBlocks} blocks, this side ${totals.blocksHashed}`);
      }
      await session.wait();
      return {
        ok: mismatched === 0 && stateOk && !sizeBad, volume: `${vg}/${lvName}`, chain, snapshot: `${vg}/${snap.name}`, archiveId: archive.archiveId,
        sequence: archive.sequence, chainId: archive.chainId, host: session.label, target: o.target, targetKind: hello.targetKind,
        mode: pct === undefined ? 'full' : 'sample', ...(pct !== undefined ? { samplePercent: pct, seed } : {}), state: s, stateOk, blockSize: bs, blocks,
        blocksChecked: totals.blocksHashed, mismatchedBlocks: mismatched, findings, sourceBytesRead: totals.bytesRead, targetBytesRead: hashed.bytesRead,
        bytesReceived: session.bytes().received, seconds: (performance.now() - started) / 1000,
      };
    } catch (e) {
      // The other side's own error (unreachable, TARGET_LOCKED there, ...) says more than a broken
      // exchange; a side still running (waiting for this one to read) is stopped.
      const theirs = o.signal?.aborted ? undefined : await Promise.race([
        session.wait().then(() => undefined, (x: unknown) => x),
        new Promise<undefined>((r) => { setTimeout(() => r(undefined), 3000).unref(); }),
      ]);
      await session.abort();
      throw theirs ?? e;
    }
  } finally {
    await volume?.close();
    if (activated) await deactivate(vg, activated, { exec }).catch((e: Error) => log.warn({ snapshot: `${vg}/${activated}`, err: e.message }, 'could not deactivate the snapshot'));
    await lock.release();
  }
}
