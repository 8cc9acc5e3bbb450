/**
 * The library API: every operation thinarchive has, as an async function with typed options and a
 * typed result. Each takes an optional `signal` (AbortSignal: cancels cleanly, see
 * docs/ARCHITECTURE.md), `onProgress` where progress can be told, and `log` (a pino-compatible logger;
 * silent by default). Errors are ThinarchiveError with a stable `code` and `exitClass`. Nothing here
 * prints or exits. Call `close()` when done to release shared store connections (ssh).
 */
import { send as sendImage, type SendOptions as SendImageOptions } from '../commands/send.js';
import { sendLv, type SendLvOptions, type SendLvResult } from '../commands/send-lv.js';
import type { SendResult } from '../chain/publish.js';
import { closeStores } from '../store/refs.js';

export { apply, type ApplyOptions, type ApplyProgress, type ApplyResult, type AppliedArchive } from '../commands/apply.js';
export { info, type ArchiveInfo } from '../commands/info.js';
export { list, type ListedArchive, type ListedChain } from '../commands/list.js';
export { merge, type MergeOptions, type MergeResult } from '../commands/merge.js';
export { parseDuration, prune, type PruneOptions, type PruneResult } from '../commands/prune.js';
export { repair, repairInputs, type RepairOptions, type RepairResult } from '../commands/repair.js';
export { restore, type RestoreOptions, type RestoreResult } from '../commands/restore.js';
export { verify, type VerifiedArchive, type VerifyOptions, type VerifyResult } from '../commands/verify.js';
export { verifyAgainst, type VerifyAgainstOptions, type VerifyAgainstResult } from '../commands/verify-against.js';
export type { Finding, FindingCode, TargetFinding, TargetFindingCode } from '../chain/findings.js';
export { recover, type RecoverAction, type RecoverOptions, type RecoverResult } from '../target/recover.js';
export type { SendDestination, SendResult } from '../chain/publish.js';
export type { WriteProgress } from '../archive/writer.js';
export type { StoreOptions } from '../store/open.js';
export type { ArchivePipe } from '../store/types.js';
export { endWritable, writableSink } from '../store/stream.js';
export { remoteApplyDestination, type RemoteApplyOptions, type RemoteApplyResult } from '../store/remote-apply.js';
export type { ZeroStats } from '../target/file-target.js';
export type { TargetKind, TargetState } from '../target/state.js';
export { DEFAULT_MAX_DATA_PERCENT, DEFAULT_MAX_METADATA_PERCENT } from '../lvm/pool-status.js';
export { DEFAULT_CHAIN } from '../source/snapshot-chain.js';
export { CommandError, FormatError, ThinarchiveError, UnsafeError, UsageError, type ExitClass } from '../errors.js';
export type { Logger } from '../log.js';
export { TOOL_VERSION } from '../version.js';
export type { SendImageOptions, SendLvOptions as SendVolumeOptions, SendLvResult as SendVolumeResult };

/** Test-only hooks (crash tests: docs/JOURNAL.md); the CLI sets them from THINARCHIVE_TEST_* variables. */
export { targetHooks } from '../target/file-target.js';
export { journalHooks } from '../target/undo-journal.js';

/**
 * Write one archive: of an image file or block device (`image`), or of a thin LV (`volume: 'VG/LV'`,
 * managed snapshots; or `snapshot: 'VG/SNAP'`, user-managed ones). `to` is a store (directory,
 * ssh:// or s3:// URL) or a pipe (`{ sink, label }`).
 */
export function send(opts: SendImageOptions): Promise<SendResult>;
export function send(opts: SendLvOptions): Promise<SendLvResult>;
export function send(opts: SendImageOptions | SendLvOptions): Promise<SendResult | SendLvResult> {
  return 'image' in opts && opts.image !== undefined ? sendImage(opts) : sendLv(opts as SendLvOptions);
}

/** Release what the library keeps open between calls (shared ssh connections of ssh:// stores). */
export function close(): Promise<void> {
  return closeStores();
}
