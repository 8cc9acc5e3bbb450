/**
 * Resolving what the user names on the command line into archives, in any store: a local archive file
 * or directory, `ssh://...` or `s3://...` (a store, a chain in it, or one archive: a URL ending in
 * `.tna`), or `-` for standard input.
 *
 * Stores are opened once per process and shared (`storeFor`); `closeStores` releases their
 * connections (the CLI calls it when a command ends).
 */
import { stat } from 'node:fs/promises';
import { AgeByteSource, isAgeSource } from '../archive/encrypted.js';
import { ArchiveFile, FileByteSource, type ByteSource } from '../archive/reader.js';
import type { PositionalSource } from '../archive/byte-reader.js';
import type { WorkerPool } from '../archive/pool.js';
import { ioError, UsageError } from '../errors.js';
import { DirectoryStore } from '../store/dir.js';
import { isStoreUrl, openStore, type StoreOptions } from '../store/open.js';
import { basename, dirname } from 'node:path';
import { isEncrypted, NAME_RE, withoutSuperseded } from '../store/layout.js';
import type { ArchiveStore, StoredArchive } from '../store/types.js';

export type { StoreOptions } from '../store/open.js';

/**
 * One archive to read: `path` is a local path or a URL (for messages); `open` reads its header and
 * trailer from wherever it is stored.
 */
export type ArchiveInput = { kind: 'file'; path: string; open(): Promise<ArchiveFile> } | { kind: 'stdin' };

const stores = new Map<string, Promise<ArchiveStore>>();

/** The store `url` names (a directory path or a store URL), opened once per process. */
export function storeFor(url: string, opts: StoreOptions = {}): Promise<ArchiveStore> {
  if (!isStoreUrl(url)) return Promise.resolve(new DirectoryStore(url));
  // (keys play no part in which store this is)
  const { identities: _i, recipients: _r, ...rest } = opts;
  const key = `${url}\0${JSON.stringify(rest)}`;
  let s = stores.get(key);
  if (!s) {
    s = openStore(url, opts);
    stores.set(key, s);
    s.catch(() => stores.delete(key));
  }
  return s;
}

/** Close every store `storeFor` opened (their ssh connections). */
export async function closeStores(): Promise<void> {
  const all = [...stores.values()];
  stores.clear();
  await Promise.allSettled(all.map(async (p) => (await p).close()));
}

/** True when `ref` names one archive in a remote store rather than a store or chain (`….tna`, `….tna.age`). */
function isArchiveUrl(ref: string): boolean {
  return /\.tna(\.age)?$/i.test(ref.replace(/\/+$/, ''));
}

/** Split `scheme://…/dir/NAME.tna` into the store holding it and its name. */
function splitArchiveUrl(url: string): { parent: string; name: string } {
  const u = url.replace(/\/+$/, '');
  const i = u.lastIndexOf('/');
  return { parent: u.slice(0, i), name: u.slice(i + 1) };
}

/** The archives a remote ref names: one archive (URL ending in .tna) or the one chain of a store. */
async function remoteArchives(ref: string, opts: StoreOptions): Promise<{ store: ArchiveStore; archives: StoredArchive[] }> {
  if (isArchiveUrl(ref)) {
    const { parent, name } = splitArchiveUrl(ref);
    const store = await storeFor(parent, opts);
    const found = (await store.listChains()).flatMap((c) => c.archives).find((a) => a.name === name);
    if (!found) throw new UsageError(`no archive ${name} in ${parent} (archive names look like 0000000003-<uuid>.tna, or .tna.age when encrypted)`);
    return { store, archives: [found] };
  }
  const store = await storeFor(ref, opts);
  return { store, archives: (await store.onlyChain()).archives };
}

/**
 * The plaintext of an archive's bytes: `src` itself for a plain archive, its decryption with
 * `opts.identities` for an encrypted one (`encrypted`: known from the name; undefined: found from the
 * first bytes, for a file the user names). Closes `src` when that fails.
 */
export async function plainSource(src: ByteSource, encrypted: boolean | undefined, opts: StoreOptions = {}): Promise<ByteSource> {
  try {
    if (!(encrypted ?? (await isAgeSource(src)))) return src;
  } catch (e) {
    await src.close();
    throw e;
  }
  return AgeByteSource.open(src, opts.identities ?? []);
}

/** The plaintext bytes of a stored archive (random access), decrypted when its name says it is encrypted. */
export async function openStoredSource(store: ArchiveStore, a: StoredArchive, opts: StoreOptions = {}): Promise<ByteSource> {
  return plainSource(await store.openArchive(a), isEncrypted(a), opts);
}

/** Open a stored archive's header and trailer. */
export async function openStored(store: ArchiveStore, a: StoredArchive, opts: StoreOptions = {}): Promise<ArchiveFile> {
  return ArchiveFile.openSource(await openStoredSource(store, a, opts));
}

/** Open a local archive file (plain, or an age file: decrypted with `opts.identities`). */
export async function openLocalArchive(path: string, opts: StoreOptions = {}): Promise<ArchiveFile> {
  return ArchiveFile.openSource(await plainSource(await FileByteSource.open(path), undefined, opts));
}

/** True when the local file `path` starts like an age file (an encrypted archive). */
export async function isAgeFile(path: string): Promise<boolean> {
  const src = await FileByteSource.open(path);
  try {
    return await isAgeSource(src);
  } finally {
    await src.close();
  }
}

/**
 * An encrypted local archive as positional reads of its plaintext, decrypted on `pool` ahead of the
 * reader (encrypted.ts); opened at the first read, closed when reading ends.
 */
export function pooledLocal(path: string, opts: StoreOptions, pool: WorkerPool): PositionalSource {
  let src: Promise<ByteSource> | undefined;
  return {
    async readInto(buf, offset, length, position) {
      src ??= FileByteSource.open(path).then((f) => plainSource(f, undefined, opts)).then((s) => {
        s.usePool?.(pool);
        return s;
      });
      return (await src).readInto!(buf, offset, length, position);
    },
    async close() {
      const s = await src?.catch(() => undefined);
      await s?.close();
    },
  };
}

/** The bytes of a stored archive from the start, as a stream; the source is closed at the end. */
export async function* streamStored(store: ArchiveStore, a: StoredArchive, opts: StoreOptions = {}): AsyncGenerator<Uint8Array> {
  const src: ByteSource = await openStoredSource(store, a, opts);
  try {
    yield* src.stream(0);
  } finally {
    await src.close();
  }
}

async function kindOf(path: string): Promise<'file' | 'dir'> {
  try {
    const st = await stat(path);
    if (st.isDirectory()) return 'dir';
    if (st.isFile()) return 'file';
  } catch (e) {
    throw ioError(e, `cannot open ${path}`);
  }
  throw new UsageError(`${path} is neither an archive file nor a directory`);
}

/**
 * The archive a single reference means: an archive file or archive URL, or a store/chain (directory or
 * URL) meaning its newest archive. Returns it opened (header and trailer read).
 */
export async function openArchiveRef(ref: string, opts: StoreOptions = {}): Promise<ArchiveFile> {
  if (isStoreUrl(ref)) {
    const { store, archives } = await remoteArchives(ref, opts);
    return openStored(store, archives[archives.length - 1], opts);
  }
  return openLocalArchive(await resolveArchiveRef(ref), opts);
}

/**
 * What the name alone tells of the archive a single reference means (as openArchiveRef resolves it),
 * without reading it: chain id, sequence, archive id, whether it is encrypted. Undefined for a local
 * file whose name is not an archive name.
 */
export async function namedArchiveRef(ref: string, opts: StoreOptions = {}): Promise<{ chainId: string; sequence: number; archiveId: string; encrypted: boolean } | undefined> {
  let a: { name: string; chainId?: string };
  if (isStoreUrl(ref)) {
    const { archives } = await remoteArchives(ref, opts);
    a = archives[archives.length - 1];
  } else {
    const path = await resolveArchiveRef(ref);
    a = { name: basename(path), chainId: basename(dirname(path)) };
  }
  const m = NAME_RE.exec(a.name);
  if (!m || !a.chainId) return undefined;
  return { chainId: a.chainId, sequence: Number(m[1]), archiveId: m[2], encrypted: isEncrypted(a) };
}

/** A local archive file, or a store/chain directory meaning its newest archive. */
export async function resolveArchiveRef(ref: string): Promise<string> {
  if (isStoreUrl(ref)) throw new UsageError(`${ref} is not a local archive`);
  if ((await kindOf(ref)) === 'file') return ref;
  const chain = await new DirectoryStore(ref).onlyChain();
  return chain.archives[chain.archives.length - 1].path;
}

/**
 * Archive files and archive URLs, directories and store URLs (each meaning every archive of its one
 * chain, in order, a merged archive in place of the originals it covers), or `-` alone for standard
 * input.
 */
export async function resolveArchiveInputs(refs: string[], opts: StoreOptions = {}): Promise<ArchiveInput[]> {
  if (refs.length === 0) throw new UsageError('no archive given');
  if (refs.includes('-')) {
    if (refs.length > 1) throw new UsageError("'-' (standard input) cannot be combined with other archives");
    return [{ kind: 'stdin' }];
  }
  const out: ArchiveInput[] = [];
  const local = (path: string): ArchiveInput => ({ kind: 'file', path, open: () => openLocalArchive(path, opts) });
  for (const ref of refs) {
    if (isStoreUrl(ref)) {
      const { store, archives } = await remoteArchives(ref, opts);
      const chain = isArchiveUrl(ref) ? archives : withoutSuperseded(archives);
      for (const a of chain) out.push({ kind: 'file', path: a.path, open: () => openStored(store, a, opts) });
    } else if ((await kindOf(ref)) === 'file') out.push(local(ref));
    else for (const a of withoutSuperseded((await new DirectoryStore(ref).onlyChain()).archives)) out.push(local(a.path));
  }
  return out;
}

/** One chain (or one named archive) of a remote ref, for reading archives through as streams. */
export interface RemoteReadGroup {
  label: string;
  /** True for a chain of a store; false for one archive named by URL. */
  store: boolean;
  /** `open`: the archive as a stream; `file`: opened for random access (header and trailer read). */
  items: { label: string; open: () => AsyncIterable<Uint8Array>; file: () => Promise<ArchiveFile> }[];
}

/** Every chain of a remote store (or the one archive a `.tna` URL names), as streams. */
export async function remoteReadGroups(ref: string, opts: StoreOptions = {}, chains?: readonly string[]): Promise<RemoteReadGroup[]> {
  if (isArchiveUrl(ref)) {
    const { store, archives } = await remoteArchives(ref, opts);
    return [{ label: ref, store: false, items: archives.map((a) => ({ label: a.path, open: () => streamStored(store, a, opts), file: () => openStored(store, a, opts) })) }];
  }
  const store = await storeFor(ref, opts);
  return (await store.listChains()).filter((c) => c.archives.length > 0 && (!chains || chains.includes(c.chainId)))
    .map((c) => ({ label: c.dir, store: true, items: c.archives.map((a) => ({ label: a.path, open: () => streamStored(store, a, opts), file: () => openStored(store, a, opts) })) }));
}
