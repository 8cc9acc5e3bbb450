/**
 * mount STORE [--at POINT] MOUNTPOINT [--partition N] [-o OPTIONS] [--writable] and umount MOUNTPOINT:
 * a point of a chain mounted through the kernel's NBD client. mount resolves the point (openChain,
 * selectPoint), starts `thinarchive serve` as a background process on a private unix socket,
 * connects a free /dev/nbdN to it with `nbd-client`, finds the partition if asked, and mounts it
 * read-only with the options that keep a journaling filesystem from writing (ext2/3/4 `noload`, xfs
 * `norecovery`); with --writable the server keeps writes in its overlay and the mount is read-write.
 * What was set up is recorded in `<state dir>/mounts/<mountpoint, URI-encoded>.json` (docs/NBD.md),
 * which umount reads to undo all of it: unmount, disconnect the device, stop the server (which
 * deletes its overlay). Any failure part-way undoes what was done.
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ThinarchiveError, UsageError } from '../errors.js';
import { defaultStateDir, writeFileAtomic } from '../fsutil.js';
import { silentLogger, type Logger } from '../log.js';
import { execaRunner, stderrSummary } from '../lvm/exec.js';
import { packagePath } from '../paths.js';
import { pidExists } from '../process.js';
import type { StoreOptions } from '../store/open.js';
import { openChain, selectPoint } from '../chain/chain.js';

export interface MountOptions {
  /** Store, chain directory or URL. */
  dir: string;
  /** Sequence number, archive id or time; default: the newest point. */
  at?: string;
  mountpoint: string;
  /** Mount partition N (1-based) of the volume instead of the whole volume. */
  partition?: number;
  /** Extra mount options (`-o`), added to the read-only ones. */
  options?: string;
  /** Mount read-write; writes go to the server's copy-on-write overlay and are discarded by umount. */
  writable?: boolean;
  stateDir?: string;
  /**
   * How to start `thinarchive serve` (argv before `serve`): the CLI passes the way it was started.
   * Default: this package's bin/thinarchive under the running node.
   */
  serveCommand?: string[];
  /** Global options the server needs (e.g. `-o` ssh options), placed before `serve`. */
  serveArgs?: string[];
  storeOptions?: StoreOptions;
  log?: Logger;
  signal?: AbortSignal;
}

/** The record of a mount (docs/NBD.md, "Mount records"). */
export interface MountRecord {
  version: 1;
  mountpoint: string;
  /** The NBD device (`/dev/nbd0`) and what was mounted (the device or its partition). */
  nbdDevice: string;
  mountedDevice: string;
  fsType: string;
  mountOptions: string;
  socket: string;
  serverPid: number;
  serverLog: string;
  store: string;
  chainId: string;
  sequence: number;
  archiveId: string;
  writable: boolean;
  mountedAt: string;
}

export type MountResult = MountRecord;

export interface UmountOptions {
  mountpoint: string;
  stateDir?: string;
  log?: Logger;
}

export interface UmountResult {
  mountpoint: string;
  nbdDevice: string;
  /** The server had already gone (it is not an error: the device and mount are undone anyway). */
  serverGone: boolean;
}

const SERVE_START_MS = 60_000;

function mountsDir(stateDir?: string): string {
  return join(stateDir ?? defaultStateDir(), 'mounts');
}

function recordPath(stateDir: string | undefined, mountpoint: string): string {
  return join(mountsDir(stateDir), `${encodeURIComponent(mountpoint)}.json`);
}

/** Run a command; its stdout, or a one-line MOUNT_FAILED naming it. */
async function sh(argv: string[], what: string, timeoutMs = 60_000): Promise<string> {
  const r = await execaRunner(argv[0], argv.slice(1), { env: { LC_ALL: 'C' }, timeoutMs });
  if (r.exitCode === 0) return r.stdout;
  const why = r.spawnError === 'ENOENT' ? `${argv[0]} is not installed` : stderrSummary(r.stderr) || `exit ${r.exitCode ?? r.signal}`;
  throw new ThinarchiveError('MOUNT_FAILED', `${what}: ${why}`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Is `path` a mount point now (listed in /proc/self/mountinfo)? */
function isMountPoint(path: string): boolean {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] !== undefined && unescape(l.split(' ')[4]) === path);
}

/** The kernel's NBD devices, loading the module if needed; NBD_UNAVAILABLE when there are none. */
async function nbdDevices(): Promise<string[]> {
  const list = async (): Promise<string[]> => (await readdir('/sys/block').catch(() => [] as string[])).filter((n) => /^nbd\d+$/.test(n))
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  let devs = await list();
  if (devs.length === 0) {
    await execaRunner('modprobe', ['nbd', 'max_part=16'], { env: { LC_ALL: 'C' }, timeoutMs: 30_000 });
    devs = await list();
  }
  if (devs.length === 0) {
    throw new ThinarchiveError('NBD_UNAVAILABLE', 'this kernel has no NBD client (modprobe nbd failed); serve the point instead and use a userland client: '
      + '`thinarchive serve STORE --socket S` with `nbdfuse DIR nbd+unix:///?socket=S` or `qemu-img convert`');
  }
  return devs;
}

/** A device nobody uses: size 0 and no client process. */
async function freeDevice(devs: string[]): Promise<string> {
  for (const d of devs) {
    const size = Number((await readFile(`/sys/block/${d}/size`, 'utf8').catch(() => '1')).trim());
    if (size === 0 && !existsSync(`/sys/block/${d}/pid`) && existsSync(`/dev/${d}`)) return `/dev/${d}`;
  }
  throw new ThinarchiveError('MOUNT_FAILED', `every NBD device is in use (${devs.length}); umount one, or load the module with more (modprobe nbd nbds_max=N)`);
}

async function waitFor(what: string, ms: number, ok: () => boolean | Promise<boolean>): Promise<void> {
  const t0 = Date.now();
  while (!(await ok())) {
    if (Date.now() - t0 > ms) throw new ThinarchiveError('MOUNT_FAILED', `${what}: timed out after ${ms / 1000} s`);
    await sleep(50);
  }
}

/** Is `pid` still our server on `socket` (not a process that took its pid after a reboot)? */
function isServer(pid: number, socket: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(socket);
  } catch {
    return false;
  }
}

/** Stop the server process (SIGTERM; it removes its socket and overlay) and wait for it. True if it was running. */
async function stopServer(pid: number, socket: string): Promise<boolean> {
  if (!pidExists(pid) || !isServer(pid, socket)) return false;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return false;
  }
  const t0 = Date.now();
  while (pidExists(pid) && Date.now() - t0 < 15_000) await sleep(50);
  if (pidExists(pid)) process.kill(pid, 'SIGKILL');
  return true;
}

function defaultServeCommand(): string[] {
  return [process.execPath, packagePath('bin', 'thinarchive')];
}

/** Mount options for a read-only mount that does not write to the filesystem (journal replay). */
export function mountOptionsFor(fsType: string, writable: boolean, extra?: string): string {
  const opts = [writable ? 'rw' : 'ro'];
  if (!writable && /^ext[234]$/.test(fsType)) opts.push('noload');
  if (!writable && fsType === 'xfs') opts.push('norecovery');
  if (extra) opts.push(...extra.split(',').filter(Boolean));
  return opts.join(',');
}

export async function mount(opts: MountOptions): Promise<MountResult> {
  const log = opts.log ?? silentLogger;
  const mountpoint = resolve(opts.mountpoint);
  const st = await stat(mountpoint).catch(() => undefined);
  if (!st?.isDirectory()) throw new UsageError(`mount point ${mountpoint} is not a directory`);
  if (isMountPoint(mountpoint)) throw new UsageError(`${mountpoint} is already a mount point`);
  if (opts.partition !== undefined && (!Number.isInteger(opts.partition) || opts.partition < 1)) throw new UsageError('--partition wants a partition number (1, 2, ...)');
  if (existsSync(recordPath(opts.stateDir, mountpoint))) throw new UsageError(`${mountpoint} has a mount record already (${recordPath(opts.stateDir, mountpoint)}); run umount ${mountpoint}`);
  // The point, resolved here so a bad --at is a usage error before anything starts.
  const chain = await openChain(opts.dir, opts.storeOptions);
  let point;
  try {
    const a = chain.archives[selectPoint(chain.archives, opts.at)];
    point = { chainId: chain.chainId, sequence: a.point, archiveId: a.header.archiveId };
  } finally {
    await chain.close();
  }
  const devs = await nbdDevices();
  opts.signal?.throwIfAborted();

  await mkdir(mountsDir(opts.stateDir), { recursive: true });
  const tag = `${process.pid}-${Date.now().toString(36)}`;
  const socket = join(tmpdir(), `thinarchive-mount-${tag}.sock`);
  const serverLog = join(mountsDir(opts.stateDir), `${encodeURIComponent(mountpoint)}.log`);
  const undo: (() => Promise<unknown>)[] = [];
  try {
    // The server, in the background: it outlives this call and is stopped by umount.
    const logFd = openSync(serverLog, 'w');
    const argv = [...(opts.serveCommand ?? defaultServeCommand()), ...(opts.serveArgs ?? []), 'serve', opts.dir, '--at', String(point.sequence), '--socket', socket];
    if (opts.writable) argv.push('--writable');
    const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ['ignore', 'ignore', logFd] });
    closeSync(logFd);
    child.unref();
    const pid = child.pid!;
    undo.push(() => stopServer(pid, socket));
    await waitFor('starting the server', SERVE_START_MS, async () => {
      const text = await readFile(serverLog, 'utf8').catch(() => '');
      if (text.includes('serving chain')) return true;
      if (!pidExists(pid) || child.exitCode !== null) {
        const line = text.split('\n').filter(Boolean).pop() ?? 'exited';
        throw new ThinarchiveError('MOUNT_FAILED', `the server did not start: ${line.replace(/^thinarchive: /, '')}`);
      }
      return false;
    });
    log.info({ pid, socket }, 'server started');

    const nbd = await freeDevice(devs);
    await sh(['nbd-client', '-u', socket, nbd, '-N', String(point.sequence), ...(opts.writable ? [] : ['-readonly'])], `nbd-client ${nbd}`);
    undo.push(() => sh(['nbd-client', '-d', nbd], `nbd-client -d ${nbd}`));
    const name = nbd.slice('/dev/'.length);
    await waitFor(`${nbd} to connect`, 10_000, async () => Number((await readFile(`/sys/block/${name}/size`, 'utf8')).trim()) > 0);

    let dev = nbd;
    if (opts.partition !== undefined) {
      dev = `${nbd}p${opts.partition}`;
      if (!existsSync(dev)) await execaRunner('blockdev', ['--rereadpt', nbd], { env: { LC_ALL: 'C' }, timeoutMs: 30_000 });
      await waitFor(`partition ${opts.partition} of the volume (${dev})`, 5_000, () => existsSync(dev)).catch(() => {
        throw new ThinarchiveError('MOUNT_FAILED', `the volume has no partition ${opts.partition} (or the nbd module was loaded without max_part)`);
      });
    }
    const fsType = (await execaRunner('blkid', ['-p', '-o', 'value', '-s', 'TYPE', dev], { env: { LC_ALL: 'C' }, timeoutMs: 30_000 })).stdout.trim();
    if (!fsType) throw new ThinarchiveError('MOUNT_FAILED', `no filesystem found on ${dev}${opts.partition === undefined ? ' (a partitioned volume? use --partition N)' : ''}`);
    const mountOptions = mountOptionsFor(fsType, !!opts.writable, opts.options);
    await sh(['mount', '-t', fsType, '-o', mountOptions, dev, mountpoint], `mount ${dev} on ${mountpoint}`);
    undo.push(() => sh(['umount', mountpoint], `umount ${mountpoint}`));

    const rec: MountRecord = {
      version: 1, mountpoint, nbdDevice: nbd, mountedDevice: dev, fsType, mountOptions, socket, serverPid: pid, serverLog,
      store: opts.dir, ...point, writable: !!opts.writable, mountedAt: new Date().toISOString(),
    };
    await writeFileAtomic(recordPath(opts.stateDir, mountpoint), JSON.stringify(rec, null, 2) + '\n');
    return rec;
  } catch (e) {
    for (const u of undo.reverse()) await u().catch((x: unknown) => log.warn({ err: String(x) }, 'undoing the mount'));
    await rm(serverLog, { force: true });
    throw e;
  }
}

export async function umount(opts: UmountOptions): Promise<UmountResult> {
  const mountpoint = resolve(opts.mountpoint);
  const path = recordPath(opts.stateDir, mountpoint);
  let rec: MountRecord;
  try {
    rec = JSON.parse(await readFile(path, 'utf8')) as MountRecord;
  } catch {
    throw new UsageError(`${mountpoint} was not mounted by thinarchive mount (no record ${path})`);
  }
  if (isMountPoint(mountpoint)) await sh(['umount', mountpoint], `umount ${mountpoint}`);
  const name = rec.nbdDevice.slice('/dev/'.length);
  const size = Number((await readFile(`/sys/block/${name}/size`, 'utf8').catch(() => '0')).trim());
  if (size > 0 || existsSync(`/sys/block/${name}/pid`)) await sh(['nbd-client', '-d', rec.nbdDevice], `nbd-client -d ${rec.nbdDevice}`);
  const serverGone = !(await stopServer(rec.serverPid, rec.socket));
  await rm(rec.socket, { force: true });
  await rm(rec.serverLog, { force: true });
  await rm(path, { force: true });
  return { mountpoint, nbdDevice: rec.nbdDevice, serverGone };
}
