/**
 * The one interface every archive store implements: a directory (local disk or NFS), `ssh://` and
 * `s3://`. Commands talk to stores only through it, and test/store/conformance runs the same suite
 * against each implementation.
 *
 * Naming is the same everywhere: `<root>/<chain-id>/<sequence, 10 digits>-<archive-id>.tna`, with `.age`
 * added for an encrypted archive (`.tna.age`, FORMAT.md §3.4).
 * Rules every store keeps:
 * - An archive becomes visible under its final name only when complete and durable (`commit`);
 *   a failed or interrupted write never leaves anything that lists as an archive.
 * - `commit` never replaces an existing archive: it fails with UnsafeError('ARCHIVE_EXISTS').
 * - A sequence of a chain is published once, whatever the timing, by however many writers on however
 *   many hosts: `commit` first claims the sequence with the store's exclusive-create primitive (the
 *   claim `<chain-id>/.<sequence>.seq` holds the archive id: directory and NFS, `link()` of a
 *   temporary file, which never replaces; ssh://, the remote `ln` without -f; s3://, a PutObject with
 *   `If-None-Match: *`), then makes the archive visible. Of writers racing for one sequence exactly
 *   one gets the claim; every other `commit` fails with UnsafeError('CHAIN_FORK') and, after
 *   `abort`, leaves nothing (no archive, temporary file, upload or claim). The claim is made only
 *   after the archive's bytes are durable and is followed at once by the step that makes it visible,
 *   so it is part of the publish: a writer that dies before its commit never blocks the chain. Only
 *   a writer dying between those two steps (a moment) leaves a claim without its archive; the claim
 *   names its owner, and the next commit of that sequence removes it when the owner is provably gone
 *   and is refused naming the owner otherwise (store/claims.ts). Right after making its archive
 *   visible, a writer checks the claim is still its own (a stalled writer whose claim was removed as
 *   an orphan withdraws its archive: CHAIN_FORK). A commit that fails after claiming removes its own
 *   claim. Claims are never listed and never deleted by merge or prune: a merged
 *   archive (`createArchive` with `replaces`) takes a sequence its originals already claimed.
 * - Listing returns archives of a chain in sequence order.
 * - Markers are the small hidden objects beside a chain's archives (`<chain-id>/.<name>`): the sequence
 *   claims above and the chain's lease generations (store/lease.ts, FORMAT.md §3.3). `createMarker`
 *   is the store's one exclusive-create primitive, the same one claims are made with: the content is
 *   complete when the name appears, an existing marker is never replaced, and of callers racing for
 *   one name exactly one gets true. Markers are never listed as archives.
 */
import type { ArchiveSink } from '../archive/writer.js';
import type { ByteSource } from '../archive/reader.js';
import type { Identity, Recipient } from '../crypto/age.js';
import type { Logger } from '../log.js';

export interface StoredArchive {
  /** File name: `<sequence>-<archive-id>.tna` (`.tna.age` when encrypted). */
  name: string;
  /** Where it is, for messages and for `openArchive`: a local path or a URL. */
  path: string;
  chainId: string;
  sequence: number;
  archiveId: string;
  /** Size in bytes when the listing knows it. */
  size?: number;
}

export interface ChainListing {
  chainId: string;
  /** The chain's location (a directory path or a URL prefix), for messages. */
  dir: string;
  archives: StoredArchive[];
}

export interface PendingArchive {
  /** The final location the archive will have after `commit`. */
  readonly path: string;
  readonly sink: ArchiveSink;
  /** Make the archive durable and visible under its final name. */
  commit(): Promise<void>;
  /** Discard what was written. Safe to call after a failed commit, and more than once. */
  abort(): Promise<void>;
}

export interface CreateArchiveOptions {
  /** A merged archive taking the sequence of the archives it replaces: no exclusive claim. */
  replaces?: boolean;
  /** The bytes written are an age file: the name ends in `.tna.age` (FORMAT.md §3.4). */
  encrypted?: boolean;
  /** The token of the chain lease the writer holds, recorded in the claim's owner (store/claims.ts). */
  leaseToken?: string | null;
  /** Where the removal of an orphan claim is logged. */
  log?: Logger;
}

export interface ArchiveStore {
  /** The store as the user named it (path or URL). */
  readonly url: string;
  /** Every chain in the store. */
  listChains(): Promise<ChainListing[]>;
  /** The one chain with archives; UsageError when there are none or several. */
  onlyChain(): Promise<ChainListing>;
  /** The archives of one chain (none when the chain does not exist here). */
  chainArchives(chainId: string): Promise<StoredArchive[]>;
  /**
   * Start writing a new archive. Its `commit` claims `sequence` exclusively (CHAIN_FORK when another
   * archive holds it), unless `replaces`: the archive stands in for archives already holding that
   * sequence (merge, prune), and the claim is then made only if there is none.
   */
  createArchive(chainId: string, sequence: number, archiveId: string, opts?: CreateArchiveOptions): Promise<PendingArchive>;
  /** Random access to a stored archive. */
  openArchive(a: StoredArchive): Promise<ByteSource>;
  /** Delete one archive (prune). */
  deleteArchive(a: StoredArchive): Promise<void>;
  /**
   * Remove what writers that are gone left in one chain: temporary files of dead processes (directory,
   * ssh), incomplete uploads past the stale age (s3). A live writer's files are never touched. Returns
   * what was removed (paths or URLs). Writers sweep before they write; prune sweeps too, because a
   * writer killed after its archive became visible leaves nothing the next prune would write over.
   */
  sweep(chainId: string): Promise<string[]>;
  /**
   * Throw (a one-line ThinarchiveError) if any of these archives could not be deleted now: a
   * read-only directory, object-lock retention or a legal hold. Merge and prune ask before they
   * write anything, so a refusal changes nothing.
   */
  checkDeletable(archives: StoredArchive[]): Promise<void>;
  /**
   * Create the marker `<chain-id>/<name>` holding `content`, exclusively: true when this call created
   * it, false when it already exists (whatever it holds). Creates the chain's directory if needed.
   */
  createMarker(chainId: string, name: string, content: string): Promise<boolean>;
  /** The content of a marker; undefined when there is none of that name. */
  readMarker(chainId: string, name: string): Promise<string | undefined>;
  /** The names of a chain's markers that start with `prefix` (none when the chain has no directory here). */
  listMarkers(chainId: string, prefix: string): Promise<string[]>;
  /** Delete a marker (no error when it is already gone). */
  deleteMarker(chainId: string, name: string): Promise<void>;
  /** Release connections. */
  close(): Promise<void>;
}

/** An archive written to a pipe instead of a store: `label` names it, `end` flushes it, `abort` drops it. */
export interface ArchivePipe {
  sink: ArchiveSink;
  label: string;
  end?: () => Promise<void>;
  abort?: () => Promise<void>;
}

/**
 * Options for remote stores, from global command-line options. Open: each store reads the fields it
 * knows and ignores the rest.
 */
export interface StoreOptions {
  /** Extra arguments passed to every `ssh` invocation (e.g. `-c aes128-gcm@openssh.com`, `-o Compression=yes`, `-i KEY`). */
  sshOptions?: string[];
  /** The `ssh` binary (default `ssh`). */
  sshCommand?: string;
  /** S3 endpoint URL (overrides AWS_ENDPOINT_URL and the config files). */
  s3Endpoint?: string;
  /** Object-lock retention for new S3 archives, in days. */
  retainDays?: number;
  /** Identities (and passphrases) that open encrypted archives (`--identity`, `--passphrase-file`). */
  identities?: Identity[];
  /** Who new archives are encrypted to (`--encrypt-to`, `--recipients-file`, `--passphrase-file` of send). */
  recipients?: Recipient[];
  [key: string]: unknown;
}
