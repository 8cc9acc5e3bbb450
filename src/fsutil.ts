/** Durable file replacement: temporary name, fsync, rename, fsync the directory (NFS-safe). */
import { open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

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
