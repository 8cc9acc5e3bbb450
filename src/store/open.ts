/**
 * Opening a store by the name the user gives: a directory path, `ssh://[user@]host[:port]/path` or
 * `s3://bucket/prefix`. `-` (a pipe) is not a store; commands handle it themselves.
 */
import { UsageError } from '../errors.js';
import { DirectoryStore } from './dir.js';
import type { StoreOptions } from './types.js';

export type { StoreOptions } from './types.js';
import type { ArchiveStore } from './types.js';


/** The URL schemes a store name may have. */
export type StoreKind = 'dir' | 'ssh' | 's3';

/**
 * Which kind of store `ref` names. Anything that looks like a URL (`scheme:/...`) must be a supported
 * one (UsageError otherwise: `ftp://`, `sftp://` and `s3:/bucket` are never taken as directories);
 * everything else is a directory path.
 */
export function storeKind(ref: string): StoreKind {
  if (/^ssh:\/\//i.test(ref)) return 'ssh';
  if (/^s3:\/\//i.test(ref)) return 's3';
  if (/^[a-z][a-z0-9+.-]*:\//i.test(ref)) {
    throw new UsageError(`unsupported store URL ${ref}: use a directory, ssh://[user@]host[:port]/path or s3://bucket/prefix`);
  }
  return 'dir';
}

/** True when `ref` is a remote store URL (`ssh://...` or `s3://...`) rather than a local path or `-`. */
export function isStoreUrl(ref: string): boolean {
  return storeKind(ref) !== 'dir';
}

/** Open the store `url` names. Does not contact a remote store until it is used. */
export async function openStore(url: string, opts: StoreOptions = {}): Promise<ArchiveStore> {
  if (url === '-') throw new UsageError("'-' is a pipe, not a store");
  switch (storeKind(url)) {
    case 'ssh': {
      // Loaded only for ssh:// (a command on a local store or file skips it: docs/PERFORMANCE.md, "Start-up").
      const { parseSshUrl, SshStore } = await import('./ssh.js');
      return new SshStore(parseSshUrl(url), opts);
    }
    case 's3': {
      // Loaded only for s3:// (the AWS SDK takes about a second to import; every other command skips it).
      const { S3Store } = await import('./s3.js');
      return new S3Store(url, opts);
    }
    default:
      return new DirectoryStore(url);
  }
}
