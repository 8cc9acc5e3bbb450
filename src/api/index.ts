/**
 * The library API: every operation thinarchive has, as an async function with typed options and a
 * typed result (README, "Library"). Each long operation takes `signal` (an AbortSignal: it stops
 * cleanly and rejects with AbortedError, code ABORTED), `onProgress` where progress can be told, and
 * `log` (a pino-compatible logger; silent by default). Every other failure is a ThinarchiveError with
 * a stable `code` and `exitClass`. Nothing here prints or exits. `close()` releases shared store
 * connections (ssh) when the caller is done.
 */
import { apply as applyOp, type ApplyOptions, type ApplyResult } from '../commands/apply.js';
import { merge as mergeOp, type MergeOptions, type MergeResult } from '../commands/merge.js';
import { prune as pruneOp, type PruneOptions, type PruneResult } from '../commands/prune.js';
import { repair as repairOp, type RepairOptions, type RepairResult } from '../commands/repair.js';
import { restore as restoreOp, type RestoreOptions, type RestoreResult } from '../commands/restore.js';
import { send as sendImage, type SendOptions as SendImageOptions } from '../commands/send.js';
import { sendLv, type SendLvOptions, type SendLvResult } from '../commands/send-lv.js';
import { verify as verifyOp, type VerifyOptions, type VerifyResult } from '../commands/verify.js';
import { verifyAgainst as verifyAgainstOp, type VerifyAgainstOptions, type VerifyAgainstResult } from '../commands/verify-against.js';
import type { SendResult } from '../chain/publish.js';
import { AbortedError } from '../errors.js';
import { closeStores } from '../store/refs.js';
import { listLvs } from '../lvm/tools.js';
import { TAG_OURS } from '../source/snapshot-chain.js';
import { recover as recoverOp, type RecoverOptions, type RecoverResult } from '../target/recover.js';

export type { ApplyOptions, ApplyProgress, ApplyResult, AppliedArchive } from '../commands/apply.js';
export { info, type ArchiveInfo } from '../commands/info.js';
export { list, type ListedArchive, type ListedChain, type ListedLease } from '../commands/list.js';
export {
  ChainLeaseHolder, DEFAULT_LEASE_TTL_MS, MIN_LEASE_TTL_MS, type LeaseHolderOptions, type LeaseIdentity, type LeaseRecord, type LeaseState,
} from '../store/lease.js';
export type { MergeOptions, MergeResult } from '../commands/merge.js';
export type { PruneOptions, PruneResult } from '../commands/prune.js';
export { planRetention, type RetentionGrid } from '../chain/merge-plan.js';
export { formatBytes, formatDuration, parseDuration } from '../units.js';
export { repairInputs, type RepairOptions, type RepairResult } from '../commands/repair.js';
export type { RestoreOptions, RestoreResult } from '../commands/restore.js';
export type { VerifiedArchive, VerifyOptions, VerifyResult } from '../commands/verify.js';
export type { VerifyAgainstOptions, VerifyAgainstResult } from '../commands/verify-against.js';
export type { Finding, FindingCode, TargetFinding, TargetFindingCode } from '../chain/findings.js';
export type { RecoverAction, RecoverOptions, RecoverResult } from '../target/recover.js';
export type { SendDestination, SendLeaseOptions, SendResult } from '../chain/publish.js';
export type { WriteProgress } from '../archive/writer.js';
export type { StoreOptions } from '../store/open.js';
export type { ArchivePipe } from '../store/types.js';
export { endWritable, writableSink } from '../store/stream.js';
export { remoteApplyDestination, type RemoteApplyOptions, type RemoteApplyResult } from '../store/remote-apply.js';
export type { ZeroStats } from '../target/file-target.js';
export type { TargetKind, TargetState } from '../target/state.js';
export type { LvTargetReport, TargetSnapshot, TargetSnapshots } from '../target/target.js';
export {
  DEFAULT_MAX_DATA_PERCENT, DEFAULT_MAX_METADATA_PERCENT, DEFAULT_POOL_THRESHOLDS, formatPercent, resolveThresholds,
  type PoolThresholds, type PoolThresholdSettings, type UsagePair,
} from '../lvm/pool-status.js';
export {
  DEFAULT_HELD_METADATA_SNAPSHOT_MS, poolCondition, poolsOfVolumes, STATE_RANK, watchPools, worstState,
  type CheckState, type HeldMetadataSnapshotInfo, type PoolCondition, type PoolReport, type PoolWatchSettings, type SpaceUsage, type WatchPoolsOptions,
} from '../commands/pool-watch.js';
export type { AutoextendVerdict } from '../lvm/pool-watch.js';
export type { FillRate } from '../lvm/pool-samples.js';
export type { PinnedSnapshot } from '../source/pinned.js';
export { DEFAULT_CHAIN } from '../source/snapshot-chain.js';
export { AbortedError, CommandError, FormatError, ThinarchiveError, UnsafeError, UsageError, type ErrorCode, type ExitClass } from '../errors.js';
export { ERRORS, EXIT_CODE } from '../error-codes.js';
export type { Logger } from '../log.js';
export { TOOL_VERSION } from '../version.js';
export type { SendImageOptions, SendLvOptions as SendVolumeOptions, SendLvResult as SendVolumeResult };

/** Test-only hooks (crash tests: docs/JOURNAL.md); the CLI sets them from THINARCHIVE_TEST_* variables. */
export { targetHooks } from '../target/file-target.js';
export { journalHooks } from '../target/undo-journal.js';

/** Run `op`; once `signal` has fired, whatever it fails with becomes one AbortedError (the clean-up has run by then). */
async function cancellable<T>(signal: AbortSignal | undefined, op: () => Promise<T>): Promise<T> {
  signal?.throwIfAborted();
  try {
    return await op();
  } catch (e) {
    if (signal?.aborted && !(e instanceof AbortedError)) throw new AbortedError('cancelled', signal.reason ?? e);
    throw e;
  }
}

/**
 * Write one archive: of an image file or block device (`image`), or of a thin LV (`volume: 'VG/LV'`,
 * managed snapshots; or `snapshot: 'VG/SNAP'`, user-managed ones). `to` is a store (directory,
 * ssh:// or s3:// URL) or a pipe (`{ sink, label }`). A cancelled send leaves no archive in the store,
 * and on an LV releases the pool's metadata snapshot and removes the new snapshot.
 */
export function send(opts: SendImageOptions): Promise<SendResult>;
export function send(opts: SendLvOptions): Promise<SendLvResult>;
export function send(opts: SendImageOptions | SendLvOptions): Promise<SendResult | SendLvResult> {
  return cancellable(opts.signal, () => ('image' in opts && opts.image !== undefined ? sendImage(opts) : sendLv(opts as SendLvOptions)));
}

/** Replay archives onto a target. A cancelled apply leaves the target "applying": `recover` (or the next apply) rolls it back. */
export function apply(opts: ApplyOptions): Promise<ApplyResult> {
  return cancellable(opts.signal, () => applyOp(opts));
}

/** Read archives completely and check every checksum and chain link; findings are in the result. */
export function verify(opts: VerifyOptions): Promise<VerifyResult> {
  return cancellable(opts.signal, () => verifyOp(opts));
}

/** Compare a target with the state a chain says it must have, by checksums only. */
export function verifyAgainst(opts: VerifyAgainstOptions): Promise<VerifyAgainstResult> {
  return cancellable(opts.signal, () => verifyAgainstOp(opts));
}

/** Build a target as of any point of a chain, reading each block once. */
export function restore(opts: RestoreOptions): Promise<RestoreResult> {
  return cancellable(opts.signal, () => restoreOp(opts));
}

/** Rewrite only the blocks of a target that differ from the chain's newest state. */
export function repair(opts: RepairOptions): Promise<RepairResult> {
  return cancellable(opts.signal, () => repairOp(opts));
}

/** Roll back a target whose apply was interrupted (never one a live process holds: TARGET_LOCKED, or `wait`). */
export function recover(opts: RecoverOptions): Promise<RecoverResult> {
  return cancellable(opts.signal, () => recoverOp(opts));
}

/** Replace consecutive archives of a chain by one equivalent archive. */
export function merge(opts: MergeOptions): Promise<MergeResult> {
  return cancellable(opts.signal, () => mergeOp(opts));
}

/** Keep the newest N points (and those within a duration), merging the archives between them. */
export function prune(opts: PruneOptions): Promise<PruneResult> {
  return cancellable(opts.signal, () => pruneOp(opts));
}

/** Release what the library keeps open between calls (shared ssh connections of ssh:// stores). */
export function close(): Promise<void> {
  return closeStores();
}

/**
 * The thin volumes of the system (or of one VG) as `VG/LV`, without thinarchive's own snapshots and
 * internal LVs: what a daemon job's volume patterns (`vg0/vm-*`) are matched against.
 */
export async function thinVolumes(vg?: string, opts: { signal?: AbortSignal } = {}): Promise<string[]> {
  const lvs = await listLvs(vg, { signal: opts.signal });
  return lvs.filter((l) => l.pool !== null && l.thinId !== null && !l.hidden && !l.tags.some((t) => t === TAG_OURS || t.startsWith('ta_snap') || t.startsWith('ta_rollback')))
    .map((l) => `${l.vg}/${l.name}`);
}
