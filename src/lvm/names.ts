/**
 * LVM and device-mapper names (pure).
 *
 * - VG and LV names: `[A-Za-z0-9+_.-]`, not starting with '-', not '.' or '..', at most 127
 *   characters (lvm2's NAME_LEN is 128 including the NUL). lvm2 reserves more (LV names starting
 *   with "snapshot"/"pvmove", containing "_tmeta", "_tdata", ...); those are rejected by lvm itself
 *   with a clear message, so they are not repeated here.
 * - Tags: `[A-Za-z0-9_+.\-/=!:&#]`, 1..1024 characters (lvm2's `validate_tag`).
 * - device-mapper names: `<vg>-<lv>` with each '-' inside the VG and LV names doubled, so
 *   vg `my-vg` pool `p` is `my--vg-p`; the pool's thin-pool target is `<that>-tpool` and its
 *   metadata device `<that>_tmeta` (LVM's layer suffixes).
 */
import { UsageError } from '../errors.js';

const NAME = /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$/;
const TAG = /^[A-Za-z0-9_+.\-/=!:&#]+$/;

export function isLvmName(s: string): boolean {
  return s.length > 0 && s.length <= 127 && s !== '.' && s !== '..' && NAME.test(s);
}

/** Throw a UsageError unless `s` is a valid VG or LV name. */
export function assertLvmName(s: string, what: string): void {
  if (typeof s !== 'string' || !isLvmName(s)) {
    throw new UsageError(`bad ${what} name ${JSON.stringify(s)}: LVM names use A-Z a-z 0-9 + _ . - and do not start with '-'`);
  }
}

export function isLvmTag(s: string): boolean {
  return s.length > 0 && s.length <= 1024 && TAG.test(s);
}

export function assertLvmTag(s: string): void {
  if (typeof s !== 'string' || !isLvmTag(s)) {
    throw new UsageError(`bad LVM tag ${JSON.stringify(s)}: tags use A-Z a-z 0-9 _ + . - / = ! : & #`);
  }
}

/** device-mapper name of an LV: each '-' in the VG and LV names is doubled. */
export function dmName(vg: string, lv: string): string {
  return `${vg.replace(/-/g, '--')}-${lv.replace(/-/g, '--')}`;
}

/** device-mapper name of a thin pool's thin-pool target: `<dm vg>-<dm pool>-tpool`. */
export function poolDmName(vg: string, pool: string): string {
  return `${dmName(vg, pool)}-tpool`;
}

/** Path of a thin pool's metadata device: `/dev/mapper/<dm vg>-<dm pool>_tmeta`. */
export function tmetaPath(vg: string, pool: string): string {
  return `/dev/mapper/${dmName(vg, pool)}_tmeta`;
}

/** `/dev/<vg>/<lv>`: the udev-independent path LVM itself creates for an active LV. */
export function lvDevicePath(vg: string, lv: string): string {
  return `/dev/${vg}/${lv}`;
}
