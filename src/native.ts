/**
 * The native addon (native/thinio.c): Linux calls Node does not expose. Loaded once, synchronously.
 * Errors thrown by it carry `code` = the errno name.
 */
import { createRequire } from 'node:module';
import { packagePath } from './paths.js';

/** One target of a device-mapper table, as DM_TABLE_STATUS returns it. */
export interface DmTargetStatus {
  start: number;
  length: number;
  type: string;
  params: string;
}

/** What ThinIO.dmIoctl resolves with. */
export interface DmIoctlResult {
  openCount: number;
  /** only for "status" */
  targets: DmTargetStatus[];
}

export interface ThinIO {
  /** Offset of the next data at or after `offset`, or -1 when there is none (ENXIO). */
  seekData(fd: number, offset: number): number;
  /** Offset of the next hole at or after `offset` (the file size when there is none), or -1 past the end. */
  seekHole(fd: number, offset: number): number;
  punchHole(fd: number, offset: number, length: number): void;
  zeroRange(fd: number, offset: number, length: number): void;
  blkDiscard(fd: number, offset: number, length: number): void;
  blkZeroOut(fd: number, offset: number, length: number): void;
  blkGetSize64(fd: number): number;
  /** flock(fd, LOCK_EX | LOCK_NB): true when now held, false when another open file description holds it. */
  flockExclusive(fd: number): boolean;
  /** flock(fd, LOCK_UN) */
  flockUnlock(fd: number): void;
  /** glibc's malloc_trim(0): free heap pages back to the system; true when some were (false elsewhere). */
  mallocTrim(): boolean;
  /** glibc's mallopt(M_MMAP_THRESHOLD, bytes): blocks this large or larger are mapped alone and unmapped when freed; true when set. */
  mallocMmapThreshold(bytes: number): boolean;
  /** fcntl(F_SETPIPE_SZ): a pipe's buffer raised to at least `bytes`; the new size, or -1 (not a pipe, or not allowed). */
  pipeSize(fd: number, bytes: number): number;
  /**
   * One device-mapper ioctl on /dev/mapper/control, off the main thread: "status" (DM_TABLE_STATUS,
   * what `dmsetup status` prints), "info" (DM_DEV_STATUS: the open count), "message" (DM_TARGET_MSG to
   * sector 0). Rejects with code ENXIO when there is no such device.
   */
  dmIoctl(op: 'status' | 'info' | 'message', name: string, message?: string): Promise<DmIoctlResult>;
  /**
   * Write all of `bytes` at `position` through `fd`, opened with O_DIRECT, off the main thread (the
   * bytes go through an aligned buffer of the thread doing it). position and length must be
   * multiples of DIRECT_ALIGN (else it throws EINVAL). Rejects with code EINVAL also when the file
   * system or device refuses the write.
   */
  pwriteDirect(fd: number, bytes: Uint8Array, position: number): Promise<void>;
  /** pwriteDirect's read: fills `bytes` from `position`; resolves with the count, short only at the end of the file. */
  preadDirect(fd: number, bytes: Uint8Array, position: number): Promise<number>;
  /** XXH64 (seed 0) of `bytes` (libxxhash; the worker threads use it, src/format/hash.ts is xxhash-wasm's). */
  xxh64(bytes: Uint8Array): bigint;
  /** XXH64 of each `blockSize`-byte block of `bytes` (the last may be shorter) into `out`; RangeError when `out` is too short. */
  xxh64Blocks(bytes: Uint8Array, blockSize: number, out: BigUint64Array): void;
}

/** The alignment pwriteDirect and preadDirect ask of positions and lengths (and gives its own buffer). */
export const DIRECT_ALIGN = 4096;

const require = createRequire(import.meta.url);
let loaded: ThinIO | undefined;

export function thinio(): ThinIO {
  loaded ??= require(packagePath('build', 'Release', 'thinio.node')) as ThinIO;
  return loaded;
}
