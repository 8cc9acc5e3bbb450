/**
 * Directory store (local disk or NFS).
 *
 * Layout: `ROOT/<chain-id>/<sequence, 10 digits>-<archive-id>.tna`, so `ls` sorts a chain in order.
 * An archive is written as `.<name>.tmp-<pid>-<time>` in the chain directory, fsynced, renamed to its
 * final name (never over an existing file) and the directory fsynced: no partial archive is ever
 * visible under a final name. Leftover temporary files of dead writers are removed by `cleanup`.
 *
 * Publishing a sequence is exclusive (types.ts): right before the link of the archive, `commit` writes
 * the claim's content to a temporary file and links it to `.<sequence>.seq`; link() never replaces
 * and is atomic on local file systems and NFS alike, so of racing writers exactly one gets it. That
 * is `createExclusive`, the store's one exclusive-create primitive; markers (leases) use it too.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, link, open, readdir, readFile, rm, rmdir, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { DirectFile, SequentialWriter } from '../direct-io.js';
import { ioError, UnsafeError } from '../errors.js';
import { fsyncDir, makeDirs, tempNameFor } from '../fsutil.js';
import {
  archiveFileName, CHAIN_RE, checkChainId, checkMarker, claimFileName, MARKER_RE, NAME_RE, onlyChainOf, sortArchives,
} from './layout.js';
import { pidExists } from '../process.js';
import { claimLost, claimSequence, claimText, parseClaim } from './claims.js';

import type { ArchiveStore, ChainListing, CreateArchiveOptions, PendingArchive, StoredArchive } from './types.js';
import { FileByteSource, type ByteSource } from '../archive/reader.js';

export type { ChainListing, PendingArchive, StoredArchive } from './types.js';
export { archiveFileName } from './layout.js';

const TEMP_RE = /^\..+\.tmp-(\d+)-[0-9a-z]+$/;

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

export class DirectoryStore implements ArchiveStore {
  constructor(readonly root: string) {}

  get url(): string {
    return this.root;
  }

  openArchive(a: StoredArchive): Promise<ByteSource> {
    return FileByteSource.open(a.path);
  }

  async deleteArchive(a: StoredArchive): Promise<void> {
    try {
      await unlink(a.path);
      await fsyncDir(dirname(a.path));
    } catch (e) {
      throw ioError(e, `cannot delete ${a.path}`);
    }
  }

  async checkDeletable(archives: StoredArchive[]): Promise<void> {
    for (const dir of new Set(archives.map((a) => dirname(a.path)))) {
      try {
        await access(dir, constants.W_OK);
      } catch (e) {
        throw ioError(e, `cannot delete archives in ${dir}`);
      }
    }
  }

  async close(): Promise<void> {}

  private async readChainDir(dir: string, chainId: string): Promise<ChainListing> {
    const archives: StoredArchive[] = [];
    for (const name of await readdir(dir)) {
      const m = NAME_RE.exec(name);
      if (m) archives.push({ name, path: join(dir, name), chainId, sequence: Number(m[1]), archiveId: m[2] });
    }
    return { chainId, dir, archives: sortArchives(archives) };
  }

  /**
   * The chains in the store. ROOT may also be a single chain directory (it then holds archive files
   * and its name is the chain id).
   */
  async listChains(): Promise<ChainListing[]> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch (e) {
      throw ioError(e, `cannot read store ${this.root}`);
    }
    if (names.some((n) => NAME_RE.test(n))) return [await this.readChainDir(this.root, basename(this.root))];
    const out: ChainListing[] = [];
    for (const n of names.sort()) {
      if (CHAIN_RE.test(n) && (await isDir(join(this.root, n)))) out.push(await this.readChainDir(join(this.root, n), n));
    }
    return out;
  }

  /** The one chain of the store; an error when there are none or several (then a chain dir must be named). */
  async onlyChain(): Promise<ChainListing> {
    return onlyChainOf(this.root, await this.listChains());
  }

  /** The archives of one chain in this store (none when the chain has no directory here). */
  async chainArchives(chainId: string): Promise<StoredArchive[]> {
    const dir = join(this.root, chainId);
    return (await isDir(dir)) ? (await this.readChainDir(dir, chainId)).archives : [];
  }

  /**
   * The exclusive-create primitive (types.ts, markers): the content goes to a temporary file that is
   * linked to `path`; link() never replaces and is atomic on local file systems and NFS alike. True
   * when this call created `path`, false when it existed. `sync`: fsync the directory after (a claim
   * leaves that to the commit it is part of).
   */
  private async createExclusive(path: string, content: string, sync: boolean): Promise<boolean> {
    const tmp = `${tempNameFor(path)}${randomBytes(4).toString('hex')}`; // unique among this process's writers too
    try {
      await writeFile(tmp, content, { flag: 'wx', mode: 0o644 });
      await link(tmp, path);
      if (sync) await fsyncDir(dirname(path));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /**
   * Claim `sequence` of the chain in `dir` for `archiveId`: true when this call created the claim,
   * false when it already named `archiveId` (or, with `replaces`, any archive); CHAIN_FORK otherwise.
   * An orphan claim of a writer that is gone is removed on the way (store/claims.ts).
   */
  private async claim(dir: string, chainId: string, sequence: number, archiveId: string, opts: CreateArchiveOptions): Promise<boolean> {
    const path = join(dir, claimFileName(sequence));
    return claimSequence({
      store: this, chainId, sequence, archiveId, where: path, log: opts.log, replaces: !!opts.replaces,
      create: async () => {
        try {
          return await this.createExclusive(path, claimText(archiveId, opts.leaseToken ?? null), false);
        } catch (e) {
          throw ioError(e, `cannot claim sequence ${sequence} in ${dir}`);
        }
      },
    });
  }

  async createMarker(chainId: string, name: string, content: string): Promise<boolean> {
    checkMarker(chainId, name);
    const dir = join(this.root, chainId);
    try {
      await makeDirs(dir);
    } catch (e) {
      throw ioError(e, `cannot create chain directory ${dir}`);
    }
    try {
      return await this.createExclusive(join(dir, name), content, true);
    } catch (e) {
      throw ioError(e, `cannot create ${join(dir, name)}`);
    }
  }

  async readMarker(chainId: string, name: string): Promise<string | undefined> {
    checkMarker(chainId, name);
    const path = join(this.root, chainId, name);
    try {
      return await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw ioError(e, `cannot read ${path}`);
    }
  }

  async listMarkers(chainId: string, prefix: string): Promise<string[]> {
    checkChainId(chainId);
    const dir = join(this.root, chainId);
    try {
      return (await readdir(dir)).filter((n) => n.startsWith(prefix) && MARKER_RE.test(n)).sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw ioError(e, `cannot read ${dir}`);
    }
  }

  async deleteMarker(chainId: string, name: string): Promise<void> {
    checkMarker(chainId, name);
    const path = join(this.root, chainId, name);
    try {
      await rm(path, { force: true });
    } catch (e) {
      throw ioError(e, `cannot delete ${path}`);
    }
  }

  async createArchive(chainId: string, sequence: number, archiveId: string, opts: CreateArchiveOptions = {}): Promise<PendingArchive> {
    checkChainId(chainId);
    const dir = join(this.root, chainId);
    try {
      await makeDirs(dir);
    } catch (e) {
      throw ioError(e, `cannot create chain directory ${dir}`);
    }
    // Temporary files of dead writers, in every chain of the store.
    for (const n of await readdir(this.root)) {
      if (CHAIN_RE.test(n) && (await isDir(join(this.root, n)))) await this.cleanup(join(this.root, n));
    }
    const finalPath = join(dir, archiveFileName(sequence, archiveId, opts.encrypted));
    const tmp = tempNameFor(finalPath);
    let fh: FileHandle;
    try {
      fh = await open(tmp, 'wx', 0o644);
    } catch (e) {
      throw ioError(e, `cannot create ${tmp}`);
    }
    // Whole 4 MiB pieces of the archive go past the page cache (src/direct-io.ts).
    const out = new SequentialWriter(fh, await DirectFile.open(tmp, 'write'));
    let closed = false;
    const claim = (): Promise<boolean> => this.claim(dir, chainId, sequence, archiveId, opts);
    const claimPath = join(dir, claimFileName(sequence));
    const root = this.root;
    const close = async (): Promise<void> => {
      if (!closed) {
        closed = true;
        await out.close();
        await fh.close();
      }
    };
    return {
      path: finalPath,
      sink: {
        async write(chunk: Uint8Array): Promise<void> {
          try {
            await out.write(chunk);
          } catch (e) {
            throw ioError(e, `cannot write ${tmp}`);
          }
        },
      },
      async commit(): Promise<void> {
        let claimed = false;
        try {
          await out.finish();
          await fh.sync();
          await close();
          // The sequence first (CHAIN_FORK for the losers of a race), then the archive at once.
          claimed = await claim();
          // link() fails if the final name exists: an archive is never replaced.
          await link(tmp, finalPath);
          // A writer stalled between its claim and here may have lost the claim as an orphan (claims.ts).
          if (!opts.replaces) {
            const holder = parseClaim(await readFile(claimPath, 'utf8').catch(() => '')).archiveId;
            if (holder !== archiveId) {
              await unlink(finalPath);
              throw claimLost(root, chainId, sequence, holder);
            }
          }
          await unlink(tmp);
          await fsyncDir(dir);
        } catch (e) {
          if (e instanceof UnsafeError) throw e;
          // A claim made for an archive that did not become visible is released.
          if (claimed && !(await stat(finalPath).then(() => true, () => false))) await rm(claimPath, { force: true }).catch(() => {});
          if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new UnsafeError('ARCHIVE_EXISTS', `${finalPath} already exists; not replacing it`);
          throw ioError(e, `cannot commit ${finalPath}`);
        }
      },
      async abort(): Promise<void> {
        await close().catch(() => {});
        await rm(tmp, { force: true });
        // A chain directory this send created and left empty goes too (fails harmlessly otherwise).
        await rmdir(dir).catch(() => {});
      },
    };
  }

  async sweep(chainId: string): Promise<string[]> {
    checkChainId(chainId);
    const dir = join(this.root, chainId);
    return (await isDir(dir)) ? (await this.cleanup(dir)).map((n) => join(dir, n)) : [];
  }

  /** Remove temporary files left by writers that are no longer running. */
  async cleanup(dir: string): Promise<string[]> {
    const removed: string[] = [];
    for (const n of await readdir(dir)) {
      const m = TEMP_RE.exec(n);
      if (m && !pidExists(Number(m[1]))) {
        await rm(join(dir, n), { force: true });
        removed.push(n);
      }
    }
    return removed;
  }
}
