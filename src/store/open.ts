/**
 * Opening a store by the name the user gives: a directory path, `ssh://[user@]host[:port]/path` or
 * `s3://bucket/prefix`. `-` (a pipe) is not a store; commands handle it themselves.
 */
import { UsageError } from '../errors.js';
import { DirectoryStore } from './dir.js';
import { parseSshUrl, SshStore } from './ssh.js';
import type { ArchiveStore } from './types.js';

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

/** The URL schemes a store name may have. */
export type StoreKind = 'dir' | 'ssh' | 's3';

/** Which kind of store `ref` names (anything that is not a known URL is a directory path). */
export function storeKind(ref: string): StoreKind {
  if (/^ssh:\/\//i.test(ref)) return 'ssh';
  if (/^s3:\/\//i.test(ref)) return 's3';
  return 'dir';
}

/** True when `ref` is a remote store URL (`ssh://...` or `s3://...`) rather than a local path or `-`. */
export function isStoreUrl(ref: string): boolean {
  return storeKind(ref) !== 'dir';
}

/** Open the store `url` names. Does not contact a remote store until it is used. */
export async function openStore(url: string, opts: StoreOptions = {}): Promise<ArchiveStore> {
  if (url === '-') throw new UsageError("'-' is a pipe, not a store");
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url) && !isStoreUrl(url)) {
    throw new UsageError(`unsupported store URL ${url}: use a directory, ssh://[user@]host[:port]/path or s3://bucket/prefix`);
  }
  switch (storeKind(url)) {
    case 'ssh':
      return new SshStore(parseSshUrl(url), opts);
    case 's3': {
      // Loaded only for s3:// (the AWS SDK takes about a second to import; every other command skips it).
      const { S3Store } = await import('./s3.js');
      return new S3Store(url, opts);
    }
    default:
      return new DirectoryStore(url);
  }
}
