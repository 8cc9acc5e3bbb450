/**
 * LVM, device-mapper and thin-provisioning-tools operations, each a thin wrapper around one or two
 * commands run through an LvmExec (default: execa); parsing lives in report.ts, pool-status.ts,
 * thin-delta.ts and thin-dump.ts. Tool behaviour relied on and accepted versions: docs/LVM.md section 1.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CommandError, ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import { type LvmExec, runLvmCommand, runsRealCommands } from './exec.js';
import { assertLvmName, assertLvmTag, dmName, lvDevicePath, poolDmName } from './names.js';
import { type PoolStatus, parsePoolStatus } from './pool-status.js';
import { LVS_FIELDS, type LvInfo, VGS_FIELDS, type VgInfo, parseLvsReport, parsePoolSettings, parseVgsReport } from './report.js';
import { type OpenThinDeltaOptions, type ThinDelta, openThinDelta } from './thin-delta.js';
import { type OpenThinDumpOptions, type ThinDump, openThinDump } from './thin-dump.js';
import { cachedToolVersion } from './version-cache.js';

export interface ToolOptions {
  exec?: LvmExec;
  signal?: AbortSignal;
  /**
   * The state directory: thin_delta / thin_dump versions are remembered in its tool-versions.json
   * across processes (version-cache.ts; only what real commands said). Without: asked once per process.
   */
  stateDir?: string;
}

const ex = (o: ToolOptions | undefined): LvmExec => o?.exec ?? runLvmCommand;
const sig = (o: ToolOptions | undefined): { signal?: AbortSignal } => (o?.signal ? { signal: o.signal } : {});

// ---------------------------------------------------------------------------------------------
// Reports

/** All LVs (of one VG, or of every VG), as `lvs --reportformat json --units b --nosuffix` reports them. */
export async function listLvs(vg?: string, opts?: ToolOptions): Promise<LvInfo[]> {
  if (vg !== undefined) assertLvmName(vg, 'VG');
  const argv = ['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', LVS_FIELDS.join(',')];
  if (vg !== undefined) argv.push(vg);
  return parseLvsReport(await ex(opts)(argv, sig(opts)));
}

/** One LV; ThinarchiveError LV_NOT_FOUND if the VG has no LV of that name. */
export async function getLv(vg: string, name: string, opts?: ToolOptions): Promise<LvInfo> {
  assertLvmName(name, 'LV');
  const lv = (await listLvs(vg, opts)).find((l) => l.name === name && !l.hidden);
  if (!lv) throw new ThinarchiveError('LV_NOT_FOUND', `logical volume ${vg}/${name} not found`);
  return lv;
}

export async function listVgs(opts?: ToolOptions): Promise<VgInfo[]> {
  return parseVgsReport(
    await ex(opts)(['vgs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', VGS_FIELDS.join(',')], sig(opts)),
  );
}

// ---------------------------------------------------------------------------------------------
// The thin pool's device-mapper target

/** `dmsetup status <vg>-<pool>-tpool`, parsed. ThinarchiveError POOL_NOT_ACTIVE when there is no such device. */
export async function poolStatus(vg: string, pool: string, opts?: ToolOptions): Promise<PoolStatus> {
  assertLvmName(vg, 'VG');
  assertLvmName(pool, 'pool');
  const dm = poolDmName(vg, pool);
  let out: string;
  try {
    out = await ex(opts)(['dmsetup', 'status', dm], sig(opts));
  } catch (e) {
    if (e instanceof CommandError && /Device does not exist/i.test(e.stderr)) {
      throw new ThinarchiveError('POOL_NOT_ACTIVE', `thin pool ${vg}/${pool} is not active (no device-mapper device ${dm}); activate it or one of its thin volumes first`);
    }
    throw e;
  }
  return parsePoolStatus(out);
}

export type PoolMessage = 'reserve_metadata_snap' | 'release_metadata_snap';

/** `dmsetup message <vg>-<pool>-tpool 0 <message>`. */
export async function poolMessage(vg: string, pool: string, message: PoolMessage, opts?: ToolOptions): Promise<void> {
  assertLvmName(vg, 'VG');
  assertLvmName(pool, 'pool');
  await ex(opts)(['dmsetup', 'message', poolDmName(vg, pool), '0', message], sig(opts));
}

// ---------------------------------------------------------------------------------------------
// Logical volumes

/**
 * `lvcreate -s -n NAME [--addtag T]... VG/ORIGIN`: a thin snapshot of a thin volume (no size: a
 * thick origin makes lvcreate fail). Returns the new LV, checked to be a thin snapshot of ORIGIN.
 * `readOnlyActive`: created read-only and active (`-pr -ay -K`), ready to be read: the same state as
 * activateReadOnly leaves, in the one command instead of three.
 */
export async function createThinSnapshot(vg: string, origin: string, name: string, tags: readonly string[] = [], opts?: ToolOptions, readOnlyActive = false): Promise<LvInfo> {
  const lv = await createSnapshot(vg, origin, name, tags, readOnlyActive ? ['-pr', '-ay', '-K'] : [], opts);
  if (!lv.isThinVolume || lv.origin !== origin) {
    throw new ThinarchiveError('NOT_THIN_SNAPSHOT', `${vg}/${name} was created but is not a thin snapshot of ${origin} (attr ${lv.attr}, origin ${lv.origin ?? 'none'})`);
  }
  return lv;
}

/** One `lvcreate -s FLAGS -n NAME --addtag ... VG/ORIGIN` (the snapshot never exists untagged), then its report. */
async function createSnapshot(vg: string, origin: string, name: string, tags: readonly string[], flags: readonly string[], opts?: ToolOptions): Promise<LvInfo> {
  assertLvmName(vg, 'VG');
  assertLvmName(origin, 'origin LV');
  assertLvmName(name, 'snapshot LV');
  tags.forEach(assertLvmTag);
  const argv = ['lvcreate', '-s', ...flags, '-n', name];
  for (const t of tags) argv.push('--addtag', t);
  argv.push(`${vg}/${origin}`);
  await ex(opts)(argv, sig(opts));
  return getLv(vg, name, opts);
}

/**
 * A classic (copy-on-write) snapshot of `origin`, read-only, `sizeBytes` of COW store with chunks of
 * `chunkBytes` (`lvcreate -s -pr -L SIZE -c CHUNK`): it records every origin chunk written after it.
 */
export async function createClassicSnapshot(vg: string, origin: string, name: string, tags: readonly string[], sizeBytes: number, chunkBytes: number,
  opts?: ToolOptions): Promise<LvInfo> {
  const lv = await createSnapshot(vg, origin, name, tags, ['-pr', '-L', `${sizeBytes}b`, '-c', `${chunkBytes / 1024}k`], opts);
  if (!lv.isClassicSnapshot || lv.origin !== origin) {
    throw new ThinarchiveError('NOT_CLASSIC_SNAPSHOT', `${vg}/${name} was created but is not a classic snapshot of ${origin} (attr ${lv.attr}, origin ${lv.origin ?? 'none'})`);
  }
  return lv;
}

/** The copy-on-write device of classic snapshot VG/LV. */
export function cowDevicePath(vg: string, lv: string): string {
  return `/dev/mapper/${dmName(vg, lv)}-cow`;
}

/** Drop a block device's page cache (`blockdev --flushbufs`): what the kernel wrote past it is read afresh. */
export async function flushBuffers(dev: string, opts?: ToolOptions): Promise<void> {
  await ex(opts)(['blockdev', '--flushbufs', dev], sig(opts));
}

/**
 * Make an LV read-only (`lvchange -pr`) unless it is. Refuses an LV that is active and writable (it
 * may be in use: changing its permission under a mounted filesystem is not this function's business).
 * `known`: what the caller has just read of the LV, instead of an lvs.
 */
export async function makeReadOnly(vg: string, lv: string, opts?: ToolOptions, known?: Pick<LvInfo, 'active' | 'readOnly'>): Promise<void> {
  const info = known ?? await getLv(vg, lv, opts);
  if (info.active && !info.readOnly) {
    throw new UnsafeError('LV_ACTIVE_WRITABLE', `${vg}/${lv} is active and writable; deactivate it before activating it read-only`);
  }
  if (!info.readOnly) await ex(opts)(['lvchange', '-pr', `${vg}/${lv}`], sig(opts));
}

/**
 * Make an LV read-only and active (makeReadOnly, then `lvchange -ay -K`), skipping what is already
 * so. Returns `/dev/VG/LV`. `known`: what the caller has just read of the LV (its own new snapshot,
 * under its chain lock), instead of an lvs.
 */
export async function activateReadOnly(vg: string, lv: string, opts?: ToolOptions, known?: Pick<LvInfo, 'active' | 'readOnly'>): Promise<string> {
  const info = known ?? await getLv(vg, lv, opts);
  await makeReadOnly(vg, lv, opts, info);
  if (!info.active) await ex(opts)(['lvchange', '-ay', '-K', `${vg}/${lv}`], sig(opts));
  return lvDevicePath(vg, lv);
}

/** `lvchange -an VG/LV`. */
export async function deactivate(vg: string, lv: string, opts?: ToolOptions): Promise<void> {
  assertLvmName(vg, 'VG');
  assertLvmName(lv, 'LV');
  await ex(opts)(['lvchange', '-an', `${vg}/${lv}`], sig(opts));
}

/**
 * `lvremove -y VG/LV`. With `requireTag`, refuses (UnsafeError LV_NOT_OURS) unless the LV carries
 * that tag: thinarchive removes only the snapshots it created. `known`: the caller's report of the
 * LV, read under the lock that keeps it (instead of an lvs).
 */
export async function removeLv(vg: string, lv: string, opts?: ToolOptions & { requireTag?: string; known?: Pick<LvInfo, 'name' | 'tags'> }): Promise<void> {
  assertLvmName(vg, 'VG');
  assertLvmName(lv, 'LV');
  if (opts?.requireTag !== undefined) {
    assertLvmTag(opts.requireTag);
    const info = opts.known?.name === lv ? opts.known : await getLv(vg, lv, opts);
    if (!info.tags.includes(opts.requireTag)) {
      throw new UnsafeError('LV_NOT_OURS', `refusing to remove ${vg}/${lv}: it does not carry the tag ${opts.requireTag}`);
    }
  }
  await ex(opts)(['lvremove', '-y', `${vg}/${lv}`], sig(opts));
}

export async function addTag(vg: string, lv: string, tag: string, opts?: ToolOptions): Promise<void> {
  assertLvmName(vg, 'VG');
  assertLvmName(lv, 'LV');
  assertLvmTag(tag);
  await ex(opts)(['lvchange', '--addtag', tag, `${vg}/${lv}`], sig(opts));
}

export async function delTag(vg: string, lv: string, tag: string, opts?: ToolOptions): Promise<void> {
  assertLvmName(vg, 'VG');
  assertLvmName(lv, 'LV');
  assertLvmTag(tag);
  await ex(opts)(['lvchange', '--deltag', tag, `${vg}/${lv}`], sig(opts));
}

// ---------------------------------------------------------------------------------------------
// thin-provisioning-tools

export interface ThinToolsVersion {
  /** as printed, e.g. "0.9.0" or "1.0.9" */
  text: string;
  major: number;
  minor: number;
  patch: number;
}

/**
 * Parse `thin_delta -V` output: "0.9.0" (0.9, C++), "1.0.9" (1.x, tools_version!()), or
 * "thin_delta 1.0.4" (early 1.x, clap's --version). FormatError if there is no version number.
 */
export function parseThinToolsVersion(output: string): ThinToolsVersion {
  const m = /(?:^|\s)v?(\d+)\.(\d+)\.(\d+)(\S*)/.exec(output.trim());
  if (!m) throw new UnsafeError('THIN_TOOLS_VERSION', `cannot read a version number in ${JSON.stringify(output.trim().slice(0, 100))}`);
  return { text: `${m[1]}.${m[2]}.${m[3]}${m[4]}`, major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3]) };
}

/** Accept 0.9.x and >= 1.0.6; refuse everything else with UnsafeError THIN_TOOLS_VERSION. */
export function checkThinToolsVersion(v: ThinToolsVersion): ThinToolsVersion {
  const ok = (v.major === 0 && v.minor === 9) || v.major > 1 || (v.major === 1 && (v.minor > 0 || v.patch >= 6));
  if (!ok) {
    const why = v.major === 1
      ? 'thin-provisioning-tools 1.0.0 to 1.0.5 print wrong thin_delta output and mis-parse options'
      : 'only thin-provisioning-tools 0.9.x and 1.0.6 or later are supported';
    throw new UnsafeError('THIN_TOOLS_VERSION', `thin-provisioning-tools ${v.text} refused: ${why}; install 0.9.x or 1.0.6+`);
  }
  return v;
}

const versionMemo = new WeakMap<LvmExec, Map<string, Promise<ThinToolsVersion>>>();

/**
 * Run `<tool> -V`, parse and check it (remembered per exec function and tool, and with `stateDir`
 * across processes for the same binary).
 */
export function thinToolsVersion(tool: 'thin_delta' | 'thin_dump' = 'thin_delta', opts?: ToolOptions): Promise<ThinToolsVersion> {
  const exec = ex(opts);
  let m = versionMemo.get(exec);
  if (!m) versionMemo.set(exec, (m = new Map()));
  let p = m.get(tool);
  if (!p) {
    const ask = (): Promise<string> => exec([tool, '-V']);
    const out = opts?.stateDir !== undefined && runsRealCommands(exec) ? cachedToolVersion(opts.stateDir, tool, ask) : ask();
    p = out.then((o) => checkThinToolsVersion(parseThinToolsVersion(o)));
    m.set(tool, p);
    p.catch(() => m!.delete(tool)); // a failure is not remembered
  }
  return p;
}

/** A tool's XML output in a file. `remove()` deletes it (and the temporary directory made for it). */
export interface ToolOutput {
  path: string;
  remove(): Promise<void>;
}

export interface ThinToolRunOptions extends ToolOptions {
  /** Write here; default: `<dir>/thinarchive-XXXXXX/<name>.xml` in a new temporary directory. */
  outFile?: string;
  /** Parent of the temporary directory; default os.tmpdir(). */
  dir?: string;
}

async function outputFile(name: string, opts: ThinToolRunOptions | undefined): Promise<ToolOutput> {
  if (opts?.outFile !== undefined) {
    const path = opts.outFile;
    return { path, remove: () => rm(path, { force: true }) };
  }
  const dir = await mkdtemp(join(opts?.dir ?? tmpdir(), 'thinarchive-'));
  return { path: join(dir, name), remove: () => rm(dir, { recursive: true, force: true }) };
}

function thinToolError(e: unknown, what: string): unknown {
  if (!(e instanceof CommandError)) return e;
  if (/Unable to find mapping tree/i.test(e.stderr)) {
    return new ThinarchiveError('THIN_DEVICE_NOT_FOUND', `${what}: ${e.stderr.split('\n')[0]!.trim()} (deleted, or the metadata snapshot predates it)`);
  }
  if (/no current metadata snap/i.test(e.stderr)) {
    return new ThinarchiveError('METADATA_SNAP_MISSING', `${what}: the pool holds no metadata snapshot (it must be reserved while the tool runs)`);
  }
  return e;
}

/**
 * `thin_delta -m --snap1 A --snap2 B TMETA > file`: run while a metadata snapshot is held (see
 * withMetadataSnapshot), read the file afterwards with readThinDeltaFile.
 */
export async function thinDelta(tmeta: string, snap1: number, snap2: number, opts?: ThinToolRunOptions): Promise<ToolOutput> {
  for (const [k, v] of [['snap1', snap1], ['snap2', snap2]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) throw new UsageError(`${k} must be a thin device id, got ${v}`);
  }
  await thinToolsVersion('thin_delta', opts);
  const out = await outputFile('delta.xml', opts);
  try {
    await ex(opts)(['thin_delta', '-m', '--snap1', String(snap1), '--snap2', String(snap2), tmeta], { stdoutFile: out.path, ...sig(opts) });
  } catch (e) {
    await out.remove();
    throw thinToolError(e, `thin_delta ${snap1} -> ${snap2}`);
  }
  return out;
}

/** `thin_dump -m --dev-id N TMETA > file`, under a held metadata snapshot; read it with readThinDumpFile. */
export async function thinDump(tmeta: string, devId: number, opts?: ThinToolRunOptions): Promise<ToolOutput> {
  if (!Number.isSafeInteger(devId) || devId < 0) throw new UsageError(`devId must be a thin device id, got ${devId}`);
  await thinToolsVersion('thin_dump', opts);
  const out = await outputFile('dump.xml', opts);
  try {
    await ex(opts)(['thin_dump', '-m', '--dev-id', String(devId), tmeta], { stdoutFile: out.path, ...sig(opts) });
  } catch (e) {
    await out.remove();
    throw thinToolError(e, `thin_dump --dev-id ${devId}`);
  }
  return out;
}

/** Open a thin_delta output file (streamed, see thin-delta.ts). */
export function readThinDeltaFile(path: string, opts: OpenThinDeltaOptions = {}): Promise<ThinDelta> {
  return openThinDelta(createReadStream(path), { file: path, ...opts });
}

/** Open a thin_dump output file (streamed, see thin-dump.ts). */
export function readThinDumpFile(path: string, opts: OpenThinDumpOptions = {}): Promise<ThinDump> {
  return openThinDump(createReadStream(path), { file: path, ...opts });
}

// ---------------------------------------------------------------------------------------------
// Helpers of LV targets (all through one LvmExec)


/** Every LV of a VG (one lvs call); UsageError when the VG does not exist. */
export async function vgLvs(exec: LvmExec, vg: string): Promise<LvInfo[]> {
  try {
    return await listLvs(vg, { exec });
  } catch (e) {
    if (e instanceof CommandError && /Volume group .* not found/i.test(e.stderr)) {
      throw new UsageError(`volume group ${vg} not found`);
    }
    throw e;
  }
}

export const lvByName = (all: readonly LvInfo[], name: string): LvInfo | null => all.find((l) => l.name === name && !l.hidden) ?? null;

export async function requireLv(exec: LvmExec, vg: string, lv: string, uuid?: string): Promise<LvInfo> {
  const info = lvByName(await vgLvs(exec, vg), lv);
  if (!info) throw new UnsafeError('LV_GONE', `logical volume ${vg}/${lv} disappeared`);
  if (uuid !== undefined && info.uuid !== uuid) {
    throw new UnsafeError('LV_REPLACED', `logical volume ${vg}/${lv} is no longer the same LV (uuid ${info.uuid}, was ${uuid})`);
  }
  return info;
}

/** One lvchange with every --deltag and --addtag: a single metadata commit. */
export async function changeTags(exec: LvmExec, vg: string, lv: string, del: readonly string[], add: readonly string[]): Promise<void> {
  if (del.length === 0 && add.length === 0) return;
  const argv = ['lvchange'];
  for (const t of del) argv.push('--deltag', t);
  for (const t of add) argv.push('--addtag', t);
  argv.push(`${vg}/${lv}`);
  await exec(argv);
}

/** The pool's `discards` and `zero` settings from lvs (2.03.16: "passdown"/"nopassdown"/"ignore"; zero: "zero" or ""). */
export async function poolSettings(exec: LvmExec, vg: string, pool: string): Promise<{ discards: string; zero: boolean }> {
  const out = await exec(['lvs', '--reportformat', 'json', '-o', 'lv_name,discards,zero', `${vg}/${pool}`]);
  return parsePoolSettings(out, `lvs -o discards,zero ${vg}/${pool}`);
}

/** The device-mapper open count of an active LV. */
export async function openCount(exec: LvmExec, vg: string, lv: string): Promise<number> {
  const out = (await exec(['dmsetup', 'info', '-c', '--noheadings', '-o', 'open', dmName(vg, lv)])).trim();
  const n = Number(out);
  if (!/^[0-9]+$/.test(out)) throw new ThinarchiveError('DMSETUP_INFO', `dmsetup info ${dmName(vg, lv)}: open count ${JSON.stringify(out)}`);
  return n;
}

