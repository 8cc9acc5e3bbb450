/**
 * The library API: every operation thinarchive has, as an async function with typed options and a
 * typed result (README, "Library"). Each long operation takes `signal` (an AbortSignal: it stops
 * cleanly and rejects with AbortedError, code ABORTED), `onProgress` where progress can be told, and
 * `log` (a pino-compatible logger; silent by default). Every other failure is a ThinarchiveError with
 * a stable `code` and `exitClass`. Nothing here prints or exits. `close()` releases shared store
 * connections (ssh) when the caller is done. Each operation loads its implementation on its first
 * call (operations.ts).
 */
import type { SendOptions as SendImageOptions } from '../commands/send.js';
import type { SendLvOptions, SendLvResult } from '../commands/send-lv.js';

export * from './core.js';
export * from './operations.js';
export type { SyncOptions, SyncResult } from '../commands/sync.js';
export type { SyncHello, SyncHashed } from '../chain/hash-exchange.js';
export type { MigrateResult, MigrateRound } from '../commands/migrate.js';
export type { ApplyOptions, ApplyProgress, ApplyResult, AppliedArchive } from '../commands/apply.js';
export type { ArchiveInfo } from '../commands/info.js';
export type { ListedArchive, ListedChain, ListedLease } from '../commands/list.js';
export {
  ChainLeaseHolder, DEFAULT_LEASE_TTL_MS, MIN_LEASE_TTL_MS, type LeaseHolderOptions, type LeaseIdentity, type LeaseRecord, type LeaseState,
} from '../store/lease.js';
export type { MergeOptions, MergeResult } from '../commands/merge.js';
export type { PruneOptions, PruneResult } from '../commands/prune.js';
export { planRetention, type RetentionGrid } from '../chain/retention.js';
export { repairInputs, type RepairOptions, type RepairResult } from '../commands/repair.js';
export type { RestoreOptions, RestoreResult } from '../commands/restore.js';
export type { SendGroupOptions, SendGroupResult } from '../commands/send-lv.js';
export type { GroupPoint, GroupPointMember, VerifiedGroupMember, VerifiedGroupPoint } from '../chain/group.js';
export { listGroups } from '../commands/list.js';
export { GROUP_NAME_RE, MAX_GROUP_MEMBERS, type GroupMeta, type GroupMember, type QuiesceMethod } from '../format/group.js';
export { quiesceSpecOf, type FreezeChoice, type QuiesceReport, type QuiesceSpec } from '../source/quiesce.js';
export type { GroupPointsOptions, PruneGroupOptions, PruneGroupResult, PrunedGroupPoint, RestoreGroupOptions, RestoreGroupResult, VerifyGroupOptions, VerifyGroupResult } from './group.js';
export type { KeepFailure, KeptOverlay, ServeListening, ServeOptions, ServeResult } from '../commands/serve.js';
export type { MountOptions, MountRecord, MountResult, UmountOptions, UmountResult } from '../commands/mount.js';
export type { VerifiedArchive, VerifyOptions, VerifyResult } from '../commands/verify.js';
export type { VerifyAgainstOptions, VerifyAgainstResult } from '../commands/verify-against.js';
export type { VerifyReplicaOptions, VerifyReplicaResult, VerifyTargetSideOptions } from '../commands/verify-replica.js';
export type { Finding, FindingCode, TargetFinding, TargetFindingCode } from '../chain/findings.js';
export type { RecoverAction, RecoverOptions, RecoverResult } from '../target/recover.js';
export type { SendDestination, SendLeaseOptions, SendResult } from '../chain/publish.js';
export type { WriteProgress } from '../archive/writer.js';
export type { StoreOptions } from '../store/open.js';
export { generateIdentity, loadKeys, type KeyFiles } from '../crypto/keys.js';
export type { Identity, Recipient } from '../crypto/age.js';
export type { ArchivePipe } from '../store/types.js';
export { endWritable, writableSink } from '../store/stream.js';
export { remoteApplyDestination, RemoteApplyError, type RemoteApplyOptions, type RemoteApplyResult } from '../store/remote-apply.js';
export type { ZeroStats } from '../target/file-target.js';
export type { TargetKind, TargetState } from '../target/state.js';
export type { LvTargetReport, TargetSnapshot, TargetSnapshots } from '../target/target.js';
export {
  DEFAULT_POOL_THRESHOLDS, formatPercent, resolveThresholds,
  type PoolThresholds, type PoolThresholdSettings, type UsagePair,
} from '../lvm/pool-status.js';
export {
  DEFAULT_HELD_METADATA_SNAPSHOT_MS, poolCondition, poolsOfVolumes, STATE_RANK, watchPools, worstState,
  type CheckState, type HeldMetadataSnapshotInfo, type PoolCondition, type PoolReport, type PoolWatchSettings, type SpaceUsage, type WatchPoolsOptions,
} from '../commands/pool-watch.js';
export type { AutoextendVerdict } from '../lvm/pool-watch.js';
export { metadataSnapshotsInFlight, metadataSnapshotsReleased } from '../lvm/metadata-snap.js';
export { collectSharedWorkers, shareWorkers } from '../archive/pool.js';
export type { FillRate } from '../lvm/pool-samples.js';
export type { PinnedSnapshot } from '../source/pinned.js';
export type { SendImageOptions, SendLvOptions as SendVolumeOptions, SendLvResult as SendVolumeResult };

/** Test-only hooks (crash tests: docs/JOURNAL.md); the CLI sets them from THINARCHIVE_TEST_* variables. */
export { targetHooks } from '../target/file-target.js';
export { journalHooks } from '../target/undo-journal.js';
export { claimHooks } from '../store/claims.js';
export { lockHooks } from '../target/target-lock.js';
