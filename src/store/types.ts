/**
 * The one interface every archive store implements: a directory (local disk or NFS), `ssh://` and
 * `s3://`. Commands talk to stores only through it, and test/store/conformance runs the same suite
 * against each implementation.
 *
 * Naming is the same everywhere: `<root>/<chain-id>/<sequence, 10 digits>-<archive-id>.tna`.
 * Rules every store keeps:
 * - An archive becomes visible under its final name only when complete and durable (`commit`);
 *   a failed or interrupted write never leaves anything that lists as an archive.
 * - `commit` never replaces an existing archive: it fails with UnsafeError('ARCHIVE_EXISTS').
 * - Listing returns archives of a chain in sequence order.
 */
import type { ArchiveSink } from '../archive/writer.js';
import type { ByteSource } from '../archive/reader.js';

export interface StoredArchive {
  /** File name: `<sequence>-<archive-id>.tna`. */
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

export interface ArchiveStore {
  /** The store as the user named it (path or URL). */
  readonly url: string;
  /** Every chain in the store. */
  listChains(): Promise<ChainListing[]>;
  /** The one chain with archives; UsageError when there are none or several. */
  onlyChain(): Promise<ChainListing>;
  /** The archives of one chain (none when the chain does not exist here). */
  chainArchives(chainId: string): Promise<StoredArchive[]>;
  /** Start writing a new archive. */
  createArchive(chainId: string, sequence: number, archiveId: string): Promise<PendingArchive>;
  /** Random access to a stored archive. */
  openArchive(a: StoredArchive): Promise<ByteSource>;
  /** Delete one archive (prune). */
  deleteArchive(a: StoredArchive): Promise<void>;
  /**
   * Throw (a one-line ThinarchiveError) if any of these archives could not be deleted now: a
   * read-only directory, object-lock retention or a legal hold. Merge and prune ask before they
   * write anything, so a refusal changes nothing.
   */
  checkDeletable(archives: StoredArchive[]): Promise<void>;
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
  [key: string]: unknown;
}
