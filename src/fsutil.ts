/** Durable file replacement: temporary name, fsync, rename, fsync the directory (NFS-safe). */
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

/**
 * `mkdir -p`: create `path` and its missing parents. Not Node's `mkdir({ recursive: true })`, which
 * loops forever (100% CPU, deaf to signals) when a parent exists but a child cannot be created in it,
 * as in /proc (mkdir("/proc/x") ENOENT, mkdir("/proc") EEXIST). Each level is tried at most twice,
 * so a path that cannot be created fails with the errno of the level that failed.
 */
export async function makeDirs(path: string, mode?: number): Promise<void> {
  const p = resolve(path);
  const isDir = (): Promise<boolean> => stat(p).then((s) => s.isDirectory(), () => false);
  const once = async (): Promise<void> => {
    try {
      await mkdir(p, { mode });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && (await isDir())) return;
      throw e;
    }
  };
  try {
    await once();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(p) === p) throw e;
    await makeDirs(dirname(p), mode);
    await once();
  }
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Name of the temporary file used while writing `path` (hidden, in the same directory). */
export function tempNameFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Date.now().toString(36)}`);
}

/** Replace `path` with `data` atomically and durably. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = tempNameFor(path);
  try {
    const fh = await open(tmp, 'wx', 0o644);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  await fsyncDir(dirname(path));
}

/** Where thinarchive keeps its state (locks, reservation records, block-device and LV target state, journals). */
export function defaultStateDir(): string {
  return process.env.THINARCHIVE_STATE_DIR || '/var/lib/thinarchive';
}

/** The sysfs directory of a block device node (`/sys/dev/block/MAJOR:MINOR`), from its device number. */
export async function sysBlockDir(devicePath: string): Promise<string> {
  const dev = (await stat(devicePath, { bigint: true })).rdev;
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  return `/sys/dev/block/${major}:${minor}`;
}
