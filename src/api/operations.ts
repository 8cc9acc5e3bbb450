/**
 * The operations of the library API (re-exported by index.ts), each loading its implementation on
 * its first call: importing this module costs next to nothing, so the CLI pays at start-up only for
 * the command it runs (docs/PERFORMANCE.md, "Start-up").
 */
import type { ApplyOptions, ApplyResult } from '../commands/apply.js';
import type { ArchiveInfo, info as infoOp } from '../commands/info.js';
import type { ListedChain, list as listOp } from '../commands/list.js';
import type { MergeOptions, MergeResult } from '../commands/merge.js';
import type { PruneOptions, PruneResult } from '../commands/prune.js';
import type { RepairOptions, RepairResult } from '../commands/repair.js';
import type { RestoreOptions, RestoreResult } from '../commands/restore.js';
import type { ServeOptions, ServeResult } from '../commands/serve.js';
import type { MountOptions, MountResult, UmountOptions, UmountResult } from '../commands/mount.js';
import type { SendOptions as SendImageOptions } from '../commands/send.js';
import type { SendGroupOptions, SendGroupResult, SendLvOptions, SendLvResult } from '../commands/send-lv.js';
import type { GroupPoint } from '../chain/group.js';
import type { GroupPointsOptions, PruneGroupOptions, PruneGroupResult, RestoreGroupOptions, RestoreGroupResult, VerifyGroupOptions, VerifyGroupResult } from './group.js';
import type { VerifyOptions, VerifyResult } from '../commands/verify.js';
import type { VerifyAgainstOptions, VerifyAgainstResult } from '../commands/verify-against.js';
import type { VerifyReplicaOptions, VerifyReplicaResult, VerifyTargetSideOptions } from '../commands/verify-replica.js';
import type { SyncHashed } from '../chain/hash-exchange.js';
import type { SendResult } from '../chain/publish.js';
import type { HashTargetOptions, SyncOptions, SyncResult } from '../commands/sync.js';
import type { MigrateResult, MigrateRound, RoundOutcome } from '../commands/migrate.js';
import type { ArchivePipe } from '../store/types.js';
import type { StoreOptions } from '../store/open.js';
import type { Logger } from '../log.js';
import { AbortedError } from '../errors.js';
import type { RecoverOptions, RecoverResult } from '../target/recover.js';


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

/** An archive's header, map and trailer (reads no payload). */
export async function info(opts: Parameters<typeof infoOp>[0]): Promise<ArchiveInfo> {
  return (await import('../commands/info.js')).info(opts);
}

/** The chains and archives of a store. */
export async function list(opts: Parameters<typeof listOp>[0]): Promise<ListedChain[]> {
  return (await import('../commands/list.js')).list(opts);
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
  return cancellable(opts.signal, async () => ('image' in opts && opts.image !== undefined
    ? (await import('../commands/send.js')).send(opts)
    : (await import('../commands/send-lv.js')).sendLv(opts as SendLvOptions)));
}

/**
 * A consistency group: every volume's snapshot inside one quiesce window (`quiesce`: fsfreeze,
 * a command pair, virsh; without one the device-mapper devices stacked on the members are
 * suspended), then each member's archive, recording the group. docs/LVM.md section 9.
 */
export function sendGroup(opts: SendGroupOptions): Promise<SendGroupResult> {
  return cancellable(opts.signal, async () => (await import('../commands/send-lv.js')).sendLvGroup(opts));
}

/** The group points of a store (oldest first) and whether each is complete. */
export async function groupPoints(opts: GroupPointsOptions): Promise<GroupPoint[]> {
  return (await import('./group.js')).groupPointsOf(opts);
}

/** Restore every member of a group point into one VG; refused (GROUP_INCOMPLETE) when a member's archive is missing. */
export function restoreGroup(opts: RestoreGroupOptions): Promise<RestoreGroupResult> {
  return cancellable(opts.signal, async () => (await import('./group.js')).restoreGroup(opts));
}

/** Replay archives onto a target. A cancelled apply leaves the target "applying": `recover` (or the next apply) rolls it back. */
export function apply(opts: ApplyOptions): Promise<ApplyResult> {
  return cancellable(opts.signal, async () => (await import('../commands/apply.js')).apply(opts));
}

/** Read archives completely and check every checksum and chain link; findings are in the result. */
export function verify(opts: VerifyOptions): Promise<VerifyResult> {
  return cancellable(opts.signal, async () => (await import('../commands/verify.js')).verify(opts));
}

/** Verify the member chains of a consistency group and report each group point whole (ok only when complete and undamaged). */
export function verifyGroup(opts: VerifyGroupOptions): Promise<VerifyGroupResult> {
  return cancellable(opts.signal, async () => (await import('./group.js')).verifyGroup(opts));
}

/** Compare a target with the state a chain says it must have, by checksums only. */
export function verifyAgainst(opts: VerifyAgainstOptions): Promise<VerifyAgainstResult> {
  return cancellable(opts.signal, async () => (await import('../commands/verify-against.js')).verifyAgainst(opts));
}

/**
 * Compare a replica on another host with a thin LV's base snapshot by block hashes (docs/SYNC.md, the
 * hash exchange): no block data crosses the network. Full, or a seeded sample of the blocks.
 */
export function verifyReplica(opts: VerifyReplicaOptions): Promise<VerifyReplicaResult> {
  return cancellable(opts.signal, async () => (await import('../commands/verify-replica.js')).verifyReplica(opts));
}

/** The replica's side of verifyReplica (run there as the hidden `thinarchive verify-target`). */
export function verifyTargetSide(opts: VerifyTargetSideOptions): Promise<SyncHashed> {
  return cancellable(opts.signal, async () => (await import('../commands/verify-replica.js')).verifyTargetSide(opts));
}

/** Build a target as of any point of a chain, reading each block once. */
export function restore(opts: RestoreOptions): Promise<RestoreResult> {
  return cancellable(opts.signal, async () => (await import('../commands/restore.js')).restore(opts));
}

/**
 * Serve the volume as of any point of a chain over NBD (read-only, or with `writable` into a
 * copy-on-write overlay that is discarded at the end, or with `keepOverlay` kept in a directory and
 * resumed by the next server) until `signal` fires; resolves with what was served and the overlays
 * kept. `onListening` says where clients connect.
 */
export function serve(opts: ServeOptions): Promise<ServeResult> {
  return cancellable(opts.signal, async () => (await import('../commands/serve.js')).serve(opts));
}

/**
 * Mount a point of a chain through the kernel's NBD client: a background `thinarchive serve`, a
 * free /dev/nbdN, read-only with ext4 `noload` / xfs `norecovery` (or read-write into the server's
 * overlay with `writable`). `umount` undoes it. Needs root and the `nbd` module (NBD_UNAVAILABLE).
 */
export function mount(opts: MountOptions): Promise<MountResult> {
  return cancellable(opts.signal, async () => (await import('../commands/mount.js')).mount(opts));
}

/** Undo a `mount`: unmount, disconnect the NBD device, stop its server. */
export async function umount(opts: UmountOptions): Promise<UmountResult> {
  return (await import('../commands/mount.js')).umount(opts);
}

/** Rewrite only the blocks of a target that differ from the chain's newest state. */
export function repair(opts: RepairOptions): Promise<RepairResult> {
  return cancellable(opts.signal, async () => (await import('../commands/repair.js')).repair(opts));
}

/** Roll back a target whose apply was interrupted (never one a live process holds: TARGET_LOCKED, or `wait`). */
export function recover(opts: RecoverOptions): Promise<RecoverResult> {
  return cancellable(opts.signal, async () => (await import('../target/recover.js')).recover(opts));
}

/** Replace consecutive archives of a chain by one equivalent archive. */
export function merge(opts: MergeOptions): Promise<MergeResult> {
  return cancellable(opts.signal, async () => (await import('../commands/merge.js')).merge(opts));
}

/** Keep the newest N points (and those within a duration), merging the archives between them. */
export function prune(opts: PruneOptions): Promise<PruneResult> {
  return cancellable(opts.signal, async () => (await import('../commands/prune.js')).prune(opts));
}

/** Retention over whole points of a consistency group: every member chain keeps or drops a point together. */
export function pruneGroup(opts: PruneGroupOptions): Promise<PruneGroupResult> {
  return cancellable(opts.signal, async () => (await import('./group.js')).pruneGroup(opts));
}

/** What the target side of a sync did: its hashing, and the apply of the resync archive. */
export interface SyncTargetResult {
  target: string;
  nonce: string;
  hashedBlocks: number;
  bytesRead: number;
  hashSeconds: number;
  previousState: { status: string; archiveId: string; sequence: number; chainId: string } | null;
  apply: ApplyResult;
}

/**
 * The target side of `sync` (docs/SYNC.md): hash the target and write the hashes to `out`, then apply
 * the resync archive read from `input`, all under one hold of the target lock. The archive must be the
 * one computed against these hashes (RESYNC_MISMATCH) and the target unchanged (TARGET_CHANGED).
 */
export function syncTarget(opts: Omit<HashTargetOptions, 'out'> & { out: HashTargetOptions['out']; input: AsyncIterable<Uint8Array> }): Promise<SyncTargetResult> {
  return cancellable(opts.signal, async () => {
    const [{ hashTarget }, { apply: applyOp }] = await Promise.all([import('../commands/sync.js'), import('../commands/apply.js')]);
    const h = await hashTarget(opts);
    try {
      const res = await applyOp({
        inputs: ['-'], stdin: opts.input, to: opts.to, stateDir: opts.stateDir, lock: h.lock, resync: { baseId: h.hello.nonce, unchanged: h.unchanged },
        signal: opts.signal, log: opts.log,
      });
      return {
        target: opts.to, nonce: h.hello.nonce, hashedBlocks: h.hashed.hashedBlocks, bytesRead: h.hashed.bytesRead, hashSeconds: h.hashed.seconds,
        previousState: h.hello.state, apply: res,
      };
    } finally {
      await h.lock.release();
    }
  });
}

/**
 * Bring a target that holds an older or unknown copy of the source up to date by comparing block
 * hashes: `to` (a local target) or `remote` (`thinarchive sync-target` over ssh). Only the blocks that
 * differ are sent, as an archive that becomes the target's new chain point.
 */
export function sync(opts: Omit<SyncOptions, 'local'> & { to?: string; stateDir?: string; wait?: boolean }): Promise<SyncResult> {
  return cancellable(opts.signal, async () => {
    const { sync: syncOp } = await import('../commands/sync.js');
    const { to, stateDir, wait, ...rest } = opts;
    return syncOp({
      ...rest, stateDir,
      ...(to !== undefined ? {
        local: {
          target: to,
          run: ({ out, input, blockSize, volumeSize }) => syncTarget({ to, blockSize, volumeSize, stateDir, wait, out, input, signal: opts.signal, log: opts.log }),
        },
      } : {}),
    });
  });
}

export interface MigrateOptions {
  /** VG/LV: a thin LV in use */
  source: string;
  /** A local target (image, block device, VG/LV) ... */
  to?: string;
  /** ... or one on another host: `thinarchive apply` / `sync-target` run there over ssh. */
  remote?: { host: string; target: string; remoteCommand?: string; stateDir?: string };
  /** Create the target (a new image, or a thin LV in `pool`) with a full copy; without it the target exists and the first round is a sync by hashes. */
  create?: boolean;
  pool?: string;
  maxDowntimeMs?: number;
  maxRounds?: number;
  pause?: string;
  resume?: string;
  cutover?: string;
  /** The managed snapshot chain of the rounds (default "migrate"); its snapshots are removed at the end. */
  chain?: string;
  /** Locks (source) and, with `to`, a block device target's state. */
  stateDir?: string;
  storeOptions?: StoreOptions;
  level?: number;
  signal?: AbortSignal;
  log?: Logger;
  onRound?: (r: MigrateRound) => void;
}

/**
 * Move a thin LV in use to a target with a short pause: a first full copy (or a sync by hashes onto an
 * existing target), rounds of incrementals until the predicted last one fits `maxDowntimeMs`, then
 * `pause`, the final incremental (read back at the target before it is committed), `cutover`. A failure
 * after `pause` runs `resume`. README "migrate".
 */
export function migrate(opts: MigrateOptions): Promise<MigrateResult> {
  return cancellable(opts.signal, async () => {
    const [{ migrate: migrateOp, DEFAULT_MIGRATE_CHAIN }, { sendLv }, { apply: applyOp }, { remoteApplyDestination }, { MemoryPipe }] = await Promise.all([
      import('../commands/migrate.js'), import('../commands/send-lv.js'), import('../commands/apply.js'), import('../store/remote-apply.js'), import('../store/stream.js'),
    ]);
    const { UsageError } = await import('../errors.js');
    if ((opts.to === undefined) === (opts.remote === undefined)) throw new UsageError('name the target: --to TARGET, or --apply-remote ssh://HOST with --remote-to TARGET');
    if (opts.pool !== undefined && !opts.create) throw new UsageError('--pool goes with --create');
    const chain = opts.chain ?? DEFAULT_MIGRATE_CHAIN;
    /** Where a round's archive goes: into an apply at the target. */
    const destination = (first: boolean, final: boolean): { dest: ArchivePipe; result: () => unknown } => {
      const create = first && !!opts.create;
      if (opts.remote) {
        const args = [...(create ? ['--create'] : []), ...(create && opts.pool ? ['--pool', opts.pool] : []), ...(final ? ['--verify'] : []),
          ...(opts.remote.stateDir !== undefined ? ['--state-dir', opts.remote.stateDir] : [])];
        const r = remoteApplyDestination({ host: opts.remote.host, target: opts.remote.target, remoteCommand: opts.remote.remoteCommand, remoteArgs: args, storeOptions: opts.storeOptions });
        return { dest: r.dest, result: () => r.result()?.result };
      }
      const pipe = new MemoryPipe();
      const applying = applyOp({
        inputs: ['-'], stdin: pipe, to: opts.to!, create, pool: create ? opts.pool : undefined, verify: final, stateDir: opts.stateDir, signal: opts.signal, log: opts.log,
      });
      applying.catch(() => {});
      let result: unknown;
      return {
        dest: {
          label: opts.to!, sink: pipe.sink,
          end: async () => {
            pipe.end();
            result = await applying;
          },
          abort: async () => {
            pipe.fail(new Error('the send was aborted'));
            await applying.catch(() => {});
          },
        },
        result: () => result,
      };
    };
    const round = async (r: { index: number; kind: 'first' | 'incremental' | 'final' }): Promise<RoundOutcome> => {
      if (r.kind === 'first' && !opts.create) {
        const s = await sync({
          source: opts.source, to: opts.to, remote: opts.remote, chain, stateDir: opts.stateDir, storeOptions: opts.storeOptions, level: opts.level, signal: opts.signal, log: opts.log,
        });
        return { archiveId: s.archive.archiveId, sequence: s.archive.sequence, dataBytes: s.archive.dataBytes, bytesSent: s.bytesSent, target: s.apply };
      }
      const d = destination(r.kind === 'first', r.kind === 'final');
      const s = await sendLv({
        volume: opts.source, chain, full: r.kind === 'first', to: d.dest, stateDir: opts.stateDir, storeOptions: opts.storeOptions, level: opts.level, signal: opts.signal, log: opts.log,
      });
      return { archiveId: s.archiveId, sequence: s.sequence, dataBytes: s.dataBytes, bytesSent: s.archiveBytes, target: d.result() };
    };
    return migrateOp({
      source: opts.source, first: opts.create ? 'full' : 'sync', round, maxDowntimeMs: opts.maxDowntimeMs, maxRounds: opts.maxRounds,
      pause: opts.pause, resume: opts.resume, cutover: opts.cutover, chain, log: opts.log, signal: opts.signal, onRound: opts.onRound,
    });
  });
}

/** Release what the library keeps open between calls (shared ssh connections of ssh:// stores). */
export async function close(): Promise<void> {
  return (await import('../store/refs.js')).closeStores();
}

/**
 * The thin volumes of the system (or of one VG) as `VG/LV`, without thinarchive's own snapshots and
 * internal LVs: what a daemon job's volume patterns (`vg0/vm-*`) are matched against.
 */
export async function thinVolumes(vg?: string, opts: { signal?: AbortSignal } = {}): Promise<string[]> {
  const [{ listLvs }, { TAG_OURS }] = await Promise.all([import('../lvm/tools.js'), import('../source/snapshot-chain.js')]);
  const lvs = await listLvs(vg, { signal: opts.signal });
  return lvs.filter((l) => l.pool !== null && l.thinId !== null && !l.hidden && !l.tags.some((t) => t === TAG_OURS || t.startsWith('ta_snap') || t.startsWith('ta_rollback')))
    .map((l) => `${l.vg}/${l.name}`);
}
