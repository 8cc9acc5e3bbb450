/**
 * The block devices stacked on an LV (sysfs `holders`), and suspending / resuming device-mapper
 * devices: the write barrier of a consistency group without a freeze method (docs/LVM.md section 9).
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type LvmExec, runLvmCommand } from './exec.js';
import { assertLvmName, dmName } from './names.js';

export interface HolderOptions {
  exec?: LvmExec;
  signal?: AbortSignal;
  /** default /sys (tests point it at a fake tree) */
  sysfs?: string;
}

/** A device at the top of a stack over an LV: its kernel name (dm-5, md0) and, for device-mapper, its dm name. */
export interface TopHolder {
  kernelName: string;
  dmName: string | null;
}

async function holdersOf(sysfs: string, kernelName: string): Promise<string[]> {
  try {
    return (await readdir(join(sysfs, 'block', kernelName, 'holders'))).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

/** The kernel name (dm-N) of an active LV, from `dmsetup info`. */
export async function lvKernelName(vg: string, lv: string, o: HolderOptions = {}): Promise<string> {
  assertLvmName(vg, 'VG');
  assertLvmName(lv, 'LV');
  const out = await (o.exec ?? runLvmCommand)(['dmsetup', 'info', '-c', '--noheadings', '-o', 'blkdevname', dmName(vg, lv)], o.signal ? { signal: o.signal } : {});
  return out.trim();
}

/**
 * The devices at the top of every stack over a device (kernel name): holders of holders, down to
 * those nobody holds. [] when nothing is stacked on it (it is used directly: mounted, or by a VM).
 */
export async function topHolders(kernelName: string, o: HolderOptions = {}): Promise<TopHolder[]> {
  const sysfs = o.sysfs ?? '/sys';
  const tops = new Map<string, TopHolder>();
  const walk = async (name: string, depth: number): Promise<void> => {
    if (depth > 16) throw new Error(`device stack over ${kernelName} deeper than 16`);
    for (const h of await holdersOf(sysfs, name)) {
      const above = await holdersOf(sysfs, h);
      if (above.length) {
        await walk(h, depth + 1);
        continue;
      }
      let dm: string | null = null;
      try {
        dm = (await readFile(join(sysfs, 'block', h, 'dm', 'name'), 'utf8')).trim() || null;
      } catch {
        dm = null;
      }
      tops.set(h, { kernelName: h, dmName: dm });
    }
  };
  await walk(kernelName, 0);
  return [...tops.values()];
}

/** `dmsetup suspend --nolockfs NAME`: in-flight I/O completes, new I/O waits until the resume. */
export async function dmSuspend(name: string, o: HolderOptions = {}): Promise<void> {
  await (o.exec ?? runLvmCommand)(['dmsetup', 'suspend', '--nolockfs', name], o.signal ? { signal: o.signal } : {});
}

/** `dmsetup resume NAME` */
export async function dmResume(name: string, o: HolderOptions = {}): Promise<void> {
  await (o.exec ?? runLvmCommand)(['dmsetup', 'resume', name], o.signal ? { signal: o.signal } : {});
}
