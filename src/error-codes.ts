/**
 * The error-code registry: every code a ThinarchiveError can carry is declared here once, with its
 * exit class and a one-line meaning. The code type is derived from this table, so an undeclared code
 * does not compile, and the exit class of an error always comes from here (README, "Error codes";
 * src/error-codes.test.ts checks that src/ and the README agree with this table).
 *
 * Two families are declared by pattern because their suffix comes from outside: IO_<ERRNO> (Node's
 * error code of a system error, normally an errno name, from ioError or a remote command's message) and S3_<ERROR> (an S3 SDK error name
 * or a network errno, from s3Error). A code declared here by name takes precedence over a family.
 */

/** How the CLI reports an error; each class has one exit code (README, "Exit codes"). */
export type ExitClass = 'usage' | 'runtime' | 'verify' | 'unsafe' | 'interrupted';

interface Declared {
  readonly exit: ExitClass;
  readonly meaning: string;
}

/** The exit code of each class. */
export const EXIT_CODE: Readonly<Record<ExitClass, number>> = { runtime: 1, usage: 2, verify: 3, unsafe: 4, interrupted: 130 };

export const ERRORS = {
  // usage (exit 2)
  USAGE: { exit: 'usage', meaning: 'bad or missing arguments, or a bad argument to a library call' },
  GROUP_NOT_QUIESCABLE: { exit: 'usage', meaning: 'a group send without a freeze method: a member has no device-mapper device stacked on it to suspend; give --freeze, --freeze-cmd/--thaw-cmd or --virsh-domain' },
  GROUP_NOT_FOUND: { exit: 'usage', meaning: 'restore --group, prune --group, verify --group: the store holds no point of that group (or none matching --at)' },
  NOT_THIN_VOLUME: { exit: 'usage', meaning: 'the LV named is not a thin volume (or, where classic LVs are taken too, neither a thin nor a classic LV)' },
  TRACKER_NO_SPACE: { exit: 'usage', meaning: 'send or sync of a classic LV: the volume group has less free space than the classic snapshot needs (--tracker-size)' },
  NOT_THIN_POOL: { exit: 'usage', meaning: 'check --pool: the LV named is not a thin pool' },
  SOURCE_NOT_VOLUME: { exit: 'usage', meaning: 'the source is neither a regular file nor a block device' },
  SOURCE_EMPTY: { exit: 'usage', meaning: 'the source image is empty' },
  S3_NO_OBJECT_LOCK: { exit: 'usage', meaning: 'retention was asked for but the bucket has no object lock' },
  JOB_NOT_FOUND: { exit: 'usage', meaning: 'run: no job of that name in the configuration, or no volume of the job matches --volume' },
  CONFIG_INVALID: { exit: 'usage', meaning: 'the daemon configuration file is unreadable or invalid (every problem with its line)' },
  ALERTS_NOT_CONFIGURED: { exit: 'usage', meaning: 'notify test: the configuration has no alert channel (alerts.email, webhook, exec or ping)' },
  KEY_INVALID: { exit: 'usage', meaning: 'a recipient (age1…), identity file (AGE-SECRET-KEY-1…), recipients file or passphrase file is invalid or empty (its contents are never quoted)' },
  AGE_NO_IDENTITY: { exit: 'usage', meaning: 'an archive is encrypted (age) and no --identity, --passphrase-file or THINARCHIVE_IDENTITY was given' },
  AGE_WRONG_KEY: { exit: 'usage', meaning: 'none of the identities (or the passphrase) given decrypts the encrypted archive' },
  CHANGES_INVALID: { exit: 'usage', meaning: 'the --changes file of an image send is not valid thin_delta XML (the DELTA_* code is in the message)' },

  // interrupted (exit 130)
  ABORTED: { exit: 'interrupted', meaning: 'cancelled through the AbortSignal (library) or by SIGINT/SIGTERM' },

  // runtime (exit 1)
  FREEZE_FAILED: { exit: 'runtime', meaning: 'a group send\'s freeze command failed or was killed; everything was thawed and nothing was sent' },
  FREEZE_TIMEOUT: { exit: 'runtime', meaning: 'a group send\'s quiesce window outlasted --freeze-timeout; the watchdog thawed and nothing was sent' },
  THAW_FAILED: { exit: 'runtime', meaning: 'a thaw command failed on every attempt: the filesystems or devices named may still be frozen' },
  LV_NOT_FOUND: { exit: 'runtime', meaning: 'a named logical volume does not exist' },
  NO_BASE_SNAPSHOT: { exit: 'runtime', meaning: 'verify VG/LV --host: the volume has no base snapshot in that chain (nothing replicated yet)' },
  POOL_NOT_ACTIVE: { exit: 'runtime', meaning: 'the thin pool has no device-mapper device (not active)' },
  POOL_LOCKED: { exit: 'runtime', meaning: 'another thinarchive process holds the pool lock; gave up waiting' },
  POOL_REPORT: { exit: 'runtime', meaning: 'the pool of the volume is not reported as a thin pool with a chunk size' },
  POOL_CHUNK_MISMATCH: { exit: 'runtime', meaning: 'the pool metadata and lvs disagree on the chunk size' },
  SEND_IN_PROGRESS: { exit: 'runtime', meaning: 'another send of the same volume and chain is running' },
  NOT_THIN_SNAPSHOT: { exit: 'runtime', meaning: 'a snapshot just created is not a thin snapshot of its origin' },
  THIN_DEVICE_NOT_FOUND: { exit: 'runtime', meaning: 'the pool metadata has no such thin device (deleted, or newer than the metadata snapshot)' },
  METADATA_SNAP_MISSING: { exit: 'runtime', meaning: 'a metadata snapshot was reserved or needed but the pool holds none' },
  METADATA_SNAP_RELEASE_FAILED: { exit: 'runtime', meaning: 'the metadata snapshot this run reserved could not be released' },
  DELTA_DEVICES: { exit: 'runtime', meaning: 'thin_delta compared other devices than those asked for' },
  COW_INVALID: { exit: 'runtime', meaning: 'a classic snapshot\'s copy-on-write store has no "SnAp" header, another version or a bad chunk size' },
  NOT_CLASSIC_SNAPSHOT: { exit: 'runtime', meaning: 'a snapshot just created is not a classic snapshot of its origin' },
  SNAPSHOT_SIZE: { exit: 'runtime', meaning: 'the snapshot device size differs from the size lvs reports' },
  DMSETUP_INFO: { exit: 'runtime', meaning: 'dmsetup info gave an unreadable open count' },
  ROLLBACK_MERGE: { exit: 'runtime', meaning: 'merging the rollback snapshot back did not put it in place of the target' },
  TARGET_STATE_WRITE: { exit: 'runtime', meaning: 'the target state tags read back differ from those written' },
  TARGET_SHORT: { exit: 'runtime', meaning: 'the target ended before the volume size while being read' },
  SOURCE_SHORT: { exit: 'runtime', meaning: 'the source ended before the volume size while being read' },
  BAD_EXTENTS: { exit: 'runtime', meaning: 'the extents given to the archive writer are empty, out of order, overlapping or out of range' },
  JOURNAL_READ: { exit: 'runtime', meaning: 'a short read from the undo journal while rolling back' },
  INTERRUPTED: { exit: 'runtime', meaning: 'interrupted by a signal or an abort' },
  NBD_UNAVAILABLE: { exit: 'runtime', meaning: 'mount: the kernel has no NBD client (module nbd); serve the point and use a userland client (nbdfuse, qemu-img)' },
  MOUNT_FAILED: { exit: 'runtime', meaning: 'mount/umount: starting the server, nbd-client, finding the partition or filesystem, or mount/umount failed (the step is named); what was done is undone' },
  NBD_LISTEN: { exit: 'runtime', meaning: 'serve: cannot listen on the --socket path or --listen address (in use, not a socket, no permission)' },
  WORKER_FAILED: { exit: 'runtime', meaning: 'a compression or hashing worker thread failed' },
  LVM_COMMAND: { exit: 'runtime', meaning: 'an LVM or thin-provisioning-tools command failed' },
  LVM_NOT_FOUND: { exit: 'runtime', meaning: 'an LVM or thin-provisioning-tools command is not installed' },
  LVM_TIMEOUT: { exit: 'runtime', meaning: 'an LVM command timed out and was killed' },
  LVM_CANCELED: { exit: 'runtime', meaning: 'an LVM command was canceled' },
  LVM_KILLED: { exit: 'runtime', meaning: 'an LVM command was killed by a signal' },
  DAEMON_RUNNING: { exit: 'runtime', meaning: 'another daemon is running with the same state directory (its socket answers, or it holds daemon.lock); run: a daemon runs the jobs of this state directory' },
  SSH_FAILED: { exit: 'runtime', meaning: 'the ssh client could not be run' },
  STORE_AUTH: { exit: 'runtime', meaning: 'the store rejected the credentials (S3: unknown access key, wrong secret key, access denied; ssh://: authentication failed), whichever step met it' },
  SSH_CONNECT: { exit: 'runtime', meaning: 'cannot connect to the ssh:// host' },
  REMOTE_FAILED: { exit: 'runtime', meaning: 'a command on the ssh:// store host failed' },
  REMOTE_APPLY_FAILED: { exit: 'runtime', meaning: 'send --apply-remote: the remote apply failed (ssh failed, killed, not found, or a runtime failure)' },
  S3_OBJECT_LOCKED: { exit: 'runtime', meaning: 'an S3 object cannot be deleted: object-lock retention' },
  S3_TOO_MANY_PARTS: { exit: 'runtime', meaning: 'the archive is too large for one S3 multipart upload' },
  S3_NO_UPLOAD_ID: { exit: 'runtime', meaning: 'the S3 server returned no multipart upload id' },
  S3_UPLOAD: { exit: 'runtime', meaning: 'an S3 upload failed' },
  S3_RETENTION: { exit: 'runtime', meaning: 'the archive is stored but its object-lock retention could not be set' },

  // verify (exit 3): archives, and other structured input (LVM tool output) that is malformed
  NOT_AN_ARCHIVE: { exit: 'verify', meaning: 'not a thinarchive archive (bad magic)' },
  UNSUPPORTED_VERSION: { exit: 'verify', meaning: 'archive format major version not supported by this reader' },
  UNSUPPORTED_ALGORITHM: { exit: 'verify', meaning: 'unknown compression, hash or digest algorithm' },
  BAD_HEADER: { exit: 'verify', meaning: 'the archive header is invalid' },
  BAD_BLOCK_SIZE: { exit: 'verify', meaning: 'the archive block size is invalid' },
  BAD_UUID: { exit: 'verify', meaning: 'a UUID field is not a UUID' },
  META_TOO_LARGE: { exit: 'verify', meaning: 'the header metadata exceeds its size limit' },
  FIELD_RANGE: { exit: 'verify', meaning: 'a numeric field is out of range' },
  RESERVED_NONZERO: { exit: 'verify', meaning: 'reserved bytes are not zero' },
  UNKNOWN_FRAME: { exit: 'verify', meaning: 'an unknown frame type' },
  FRAME_TOO_LARGE: { exit: 'verify', meaning: 'a frame body exceeds the limit for its type' },
  FRAME_CHECKSUM: { exit: 'verify', meaning: 'a frame checksum mismatch' },
  BAD_STRUCTURE: { exit: 'verify', meaning: 'frames out of the order the format requires' },
  BAD_MAP: { exit: 'verify', meaning: 'the extent map is invalid' },
  BAD_RECORD: { exit: 'verify', meaning: 'a data record is invalid (overlap, order or range)' },
  BAD_INDEX: { exit: 'verify', meaning: 'an index frame is invalid or missing' },
  BAD_TRAILER: { exit: 'verify', meaning: 'the trailer totals do not match the archive' },
  DIGEST_MISMATCH: { exit: 'verify', meaning: 'the archive digest does not match its contents' },
  TRUNCATED: { exit: 'verify', meaning: 'the archive is truncated' },
  TRAILING_DATA: { exit: 'verify', meaning: 'bytes after the end marker' },
  AGE_HEADER: { exit: 'verify', meaning: 'an encrypted archive (.tna.age) has no valid age v1 header' },
  AGE_AUTH: { exit: 'verify', meaning: 'an encrypted archive fails authentication: a changed byte, a truncated or extended file, chunks reordered or taken from another archive, or an altered header' },
  PAYLOAD_CORRUPT: { exit: 'verify', meaning: 'a record payload fails its hash or does not decompress' },
  NOT_A_FILE: { exit: 'verify', meaning: 'the archive path is not a regular file' },
  MISNAMED: { exit: 'verify', meaning: 'an archive header does not match its file name' },
  GROUP_INCOMPLETE: { exit: 'verify', meaning: 'restore --group: a member\'s archive of the group point is missing or unreadable; prune --group: no point of the group is complete (nothing pruned)' },
  MISSING_ARCHIVE: { exit: 'verify', meaning: 'an archive the chain needs is missing' },
  BROKEN_LINK: { exit: 'verify', meaning: 'an archive does not follow its parent in the chain' },
  CHANGED_UNDERFOOT: { exit: 'verify', meaning: 'the archive changed while being applied' },
  REPLICA_MISMATCH: { exit: 'verify', meaning: 'apply --verify: blocks read back after writing differ from the archive (state not recorded; the next apply rolls back); daemon: a replica differs after apply' },
  VERIFY_FAILED: { exit: 'verify', meaning: 'daemon: a scheduled verification (job verify:) found problems in the chain in the store or in the local replica' },
  LVS_REPORT: { exit: 'verify', meaning: 'lvs output is not what was asked for' },
  VGS_REPORT: { exit: 'verify', meaning: 'vgs output is not what was asked for' },
  POOL_STATUS: { exit: 'verify', meaning: 'the thin-pool status line is unreadable' },
  DELTA_XML: { exit: 'verify', meaning: 'thin_delta output is not well-formed XML' },
  DELTA_HEADER: { exit: 'verify', meaning: 'thin_delta output has no valid header' },
  DELTA_ELEMENT: { exit: 'verify', meaning: 'thin_delta output has an unexpected or incomplete element' },
  DELTA_BAD_RANGE: { exit: 'verify', meaning: 'thin_delta output has an empty, out-of-range or unreadable run' },
  DELTA_UNSORTED: { exit: 'verify', meaning: 'thin_delta runs overlap or are out of order' },
  DELTA_TRUNCATED: { exit: 'verify', meaning: 'thin_delta output ended early' },
  DUMP_XML: { exit: 'verify', meaning: 'thin_dump output is not well-formed XML' },
  DUMP_HEADER: { exit: 'verify', meaning: 'thin_dump output has no valid superblock' },
  DUMP_ELEMENT: { exit: 'verify', meaning: 'thin_dump output has an unexpected or incomplete element' },
  DUMP_BAD_RANGE: { exit: 'verify', meaning: 'thin_dump output has an empty, out-of-range or unreadable mapping' },
  DUMP_UNSORTED: { exit: 'verify', meaning: 'thin_dump mappings overlap or are out of order' },
  DUMP_REF: { exit: 'verify', meaning: 'thin_dump output refers to an undefined <def>' },
  DUMP_TRUNCATED: { exit: 'verify', meaning: 'thin_dump output ended early' },
  OVERLAY_INVALID: { exit: 'verify', meaning: 'serve --keep-overlay: a kept overlay cannot be resumed: its sidecar is malformed or truncated, its overlay file is missing or of the wrong size, or it has no sidecar (its server did not stop cleanly)' },

  // unsafe (exit 4): refused, nothing changed
  ARCHIVE_EXISTS: { exit: 'unsafe', meaning: 'an archive of that name exists already; not replacing it' },
  CHAIN_FORK: { exit: 'unsafe', meaning: 'the store already has a newer archive of the chain; this one would fork it' },
  CHAIN_LEASED: { exit: 'unsafe', meaning: 'another writer (host, pid, job, volume in the message) holds the lease of the chain in the store and it has not expired; nothing was written (--take-lease takes it over)' },
  TRACKER_OVERFLOW: { exit: 'unsafe', meaning: 'send of a classic LV: the base snapshot (the change tracker) overflowed, so what changed since it is unknown; sync brings a target up to date, send --full starts a new chain' },
  CHAIN_BROKEN: { exit: 'unsafe', meaning: 'the archives given do not follow each other' },
  CHAIN_ENCRYPTION_MIXED: { exit: 'unsafe', meaning: 'a chain is all encrypted or all plain: this send (or merge) would mix them' },
  CHAIN_MISMATCH: { exit: 'unsafe', meaning: 'the target holds an archive of another chain' },
  CHAIN_CONFUSED: { exit: 'unsafe', meaning: 'the chain has base snapshots of different archive chains' },
  BAD_CHAIN_TAGS: { exit: 'unsafe', meaning: 'an LV tagged as a thinarchive snapshot has incomplete tags, or tags of an unknown scheme version' },
  BASE_MISMATCH: { exit: 'unsafe', meaning: 'the parent archive holds another snapshot than the base given' },
  BASE_OTHER_POOL: { exit: 'unsafe', meaning: 'the base snapshot is in another pool than the volume' },
  BASE_WRITABLE: { exit: 'unsafe', meaning: 'the base snapshot is writable and may no longer match its archive' },
  PARENT_NOT_IN_STORE: { exit: 'unsafe', meaning: 'the store does not hold the archive of the base snapshot' },
  VOLUME_MISMATCH: { exit: 'unsafe', meaning: 'the archive is of another volume than the target holds' },
  OVERLAY_MISMATCH: { exit: 'unsafe', meaning: 'serve --keep-overlay: a kept overlay in the directory is of another chain, another archive of the point (merged or replaced) or another volume size than the chain served; nothing was changed' },
  OVERLAY_IN_USE: { exit: 'unsafe', meaning: 'serve --keep-overlay: a kept overlay is in use by another server, or was left by one that did not stop cleanly (its lock file remains)' },
  TARGET_UNKNOWN: { exit: 'unsafe', meaning: 'the target has no thinarchive state (use --force)' },
  TARGET_NOT_EMPTY: { exit: 'unsafe', meaning: 'the target has no thinarchive state and may hold data (use --force)' },
  TARGET_MID_APPLY: { exit: 'unsafe', meaning: 'the target is in the middle of applying another archive' },
  TARGET_STATE: { exit: 'unsafe', meaning: "the target's state does not match the archive to apply" },
  TARGET_STATE_CORRUPT: { exit: 'unsafe', meaning: 'the target state (file or LV tags) is unreadable' },
  TARGET_BUSY: { exit: 'unsafe', meaning: 'the target is mounted or open elsewhere' },
  TARGET_LOCKED: { exit: 'unsafe', meaning: 'another thinarchive process (apply, restore, repair, recover, verify --against) holds the target; nothing was read or written (--wait waits)' },
  TARGET_READONLY: { exit: 'unsafe', meaning: 'the target is read-only' },
  TARGET_TOO_SMALL: { exit: 'unsafe', meaning: 'the target is smaller than the volume' },
  TARGET_EXISTS: { exit: 'unsafe', meaning: '--create was given but the target exists' },
  TARGET_IS_SNAPSHOT: { exit: 'unsafe', meaning: 'the target is a target or rollback snapshot kept by thinarchive' },
  NO_UNDO: { exit: 'unsafe', meaning: 'an apply under --no-undo was interrupted; nothing to roll back with' },
  JOURNAL_CORRUPT: { exit: 'unsafe', meaning: 'the undo journal is unreadable; cannot roll back with it' },
  JOURNAL_MISMATCH: { exit: 'unsafe', meaning: 'the undo journal is of another archive or target' },
  ROLLBACK_SNAPSHOT: { exit: 'unsafe', meaning: 'an LV tagged as the rollback snapshot is not a thin snapshot of the target' },
  SNAPSHOT_NAME_TAKEN: { exit: 'unsafe', meaning: 'the name for a new snapshot is taken' },
  TAG_VALUE: { exit: 'unsafe', meaning: 'a value cannot be recorded in an LV tag' },
  LV_GONE: { exit: 'unsafe', meaning: 'an LV disappeared while in use' },
  LV_REPLACED: { exit: 'unsafe', meaning: 'an LV was replaced by another of the same name (uuid changed)' },
  LV_NOT_OURS: { exit: 'unsafe', meaning: 'refusing to remove an LV that does not carry thinarchive\'s tag' },
  LV_ACTIVE_WRITABLE: { exit: 'unsafe', meaning: 'the LV is active and writable; it must be deactivated to activate it read-only' },
  POOL_FAILED: { exit: 'unsafe', meaning: 'the thin pool is in failure mode (Fail or Error): repair it first' },
  POOL_NEEDS_CHECK: { exit: 'unsafe', meaning: 'the thin pool is flagged needs_check' },
  POOL_READ_ONLY: { exit: 'unsafe', meaning: 'the thin pool is read-only (metadata error or full metadata)' },
  POOL_OUT_OF_SPACE: { exit: 'unsafe', meaning: 'the thin pool is out of data space' },
  POOL_CRITICAL: { exit: 'unsafe', meaning: 'send VG/LV: the thin pool data or metadata usage is above its critical threshold (--max-data-percent, --max-metadata-percent, config pools); no snapshot was created' },
  POOL_SKIPS_ZEROING: { exit: 'unsafe', meaning: 'the pool does not zero new chunks larger than the block size: stale data could show' },
  METADATA_SNAP_HELD: { exit: 'unsafe', meaning: 'the pool holds a metadata snapshot this run did not reserve' },
  METADATA_SNAP_LOST: { exit: 'unsafe', meaning: 'the metadata snapshot was released by another program while in use' },
  THIN_TOOLS_VERSION: { exit: 'unsafe', meaning: 'thin-provisioning-tools version unreadable or not supported (0.9.x or 1.0.6+)' },
  MIGRATE_NOT_CONVERGING: { exit: 'runtime', meaning: 'migrate: the rounds did not shrink, or --max-rounds was reached, before the predicted final round fitted --max-downtime; the source was not paused' },
  MIGRATE_HOOK_FAILED: { exit: 'runtime', meaning: 'migrate: the --pause or --cutover command failed (the --resume command was run)' },
  RESYNC_MISMATCH: { exit: 'unsafe', meaning: 'sync: the archive given to the target side is not the resync archive of its hashing session' },
  TARGET_CHANGED: { exit: 'unsafe', meaning: 'sync: the target changed between hashing and applying; nothing was written (run sync again)' },
  SYNC_PROTOCOL: { exit: 'runtime', meaning: 'sync, verify --host: the other side broke the hash exchange protocol (docs/SYNC.md), or ended early' },
  REMOTE_APPLY_USAGE: { exit: 'usage', meaning: 'send --apply-remote: the remote apply exited 2 (usage)' },
  REMOTE_APPLY_VERIFY: { exit: 'verify', meaning: 'send --apply-remote: the remote apply exited 3 (verification failed)' },
  REMOTE_APPLY_UNSAFE: { exit: 'unsafe', meaning: 'send --apply-remote: the remote apply exited 4 (refused as unsafe)' },
} as const satisfies Record<string, Declared>;

/** Codes whose suffix comes from outside, declared by pattern (see the module comment). */
export const ERROR_FAMILIES = {
  IO_: { pattern: 'IO_<ERRNO>', exit: 'runtime', meaning: 'a system error, e.g. IO_ENOENT, IO_EACCES, IO_ENOSPC, IO_EIO (the suffix is the errno name)' },
  S3_: { pattern: 'S3_<ERROR>', exit: 'runtime', meaning: 'an S3 request failed; the suffix is the SDK error name (S3_NOSUCHBUCKET, S3_ACCESSDENIED), a network errno (S3_ECONNREFUSED) or NO_CREDENTIALS' },
} as const satisfies Record<string, Declared & { pattern: string }>;

export type DeclaredCode = keyof typeof ERRORS;
/** A code of the IO_<ERRNO> family: IO_ and Node's error code (an errno name such as ENOENT). */
export type IoCode = `IO_${string}`;
/** A code of the S3_<ERROR> family: made only by s3Error, from the SDK's error (see s3Code). */
export type S3Code = string & { readonly s3Family: true };
export type ErrorCode = DeclaredCode | IoCode | S3Code;

/** The exit class a code declares. */
export type ExitClassOf<C> = C extends DeclaredCode ? (typeof ERRORS)[C]['exit'] : 'runtime';
/** The declared codes of one exit class. */
export type CodeOfClass<X extends ExitClass> = { [C in DeclaredCode]: (typeof ERRORS)[C]['exit'] extends X ? C : never }[DeclaredCode];

/** An S3_<ERROR> family code from an SDK error name or errno (upper case, non-alphanumerics as _). */
export function s3Code(name: string): S3Code {
  return `S3_${name.replace(/[^A-Za-z0-9]+/g, '_').toUpperCase()}` as S3Code;
}

/** The declaration of a code: by name, else by family; undefined for an undeclared code. */
export function declarationOf(code: string): (Declared & { pattern?: string }) | undefined {
  if (Object.hasOwn(ERRORS, code)) return ERRORS[code as DeclaredCode];
  if (/^IO_[A-Z0-9_]+$/.test(code)) return ERROR_FAMILIES.IO_;
  if (/^S3_[A-Z0-9_]+$/.test(code)) return ERROR_FAMILIES.S3_;
  return undefined;
}

/** The exit class of a code; 'runtime' for one not declared (the registry test keeps src/ free of those). */
export function exitClassOf(code: string): ExitClass {
  return declarationOf(code)?.exit ?? 'runtime';
}

/** The README's "Error codes" table, generated from the registry (src/error-codes.test.ts compares). */
export function errorCodeTable(): string {
  const rows = [
    ...Object.entries(ERRORS).map(([code, d]) => ({ code: `\`${code}\``, d })),
    ...Object.values(ERROR_FAMILIES).map((d) => ({ code: `\`${d.pattern}\``, d })),
  ].sort((a, b) => EXIT_CODE[a.d.exit] - EXIT_CODE[b.d.exit] || (a.code < b.code ? -1 : a.code > b.code ? 1 : 0));
  return ['| code | exit | meaning |', '|---|---|---|', ...rows.map((r) => `| ${r.code} | ${EXIT_CODE[r.d.exit]} | ${r.d.meaning.replace(/\|/g, '\\|')} |`)].join('\n');
}
