/**
 * The thin-LVM lab: runs a bash script as root inside a user-mode Linux guest (Debian's
 * `user-mode-linux` package, a Linux 6.1 kernel that has dm-thin-pool as a module), with the host's
 * root filesystem mounted through hostfs, so the host's own lvm, dmsetup, thin_delta and node run
 * against real thin pools on sparse backing files. See shared/LAB.md for the recipe.
 *
 * Inside the guest the script sees:
 *   $LAB_WORK   the run's host directory (cwd of the script; removed afterwards unless `keep`)
 *   $LAB_OUT    a host directory for results: every file left there is returned in `LabRun.files`
 *   $LAB_DISKS  space-separated guest devices of the disks: "/dev/ubda /dev/ubdb ..."
 *   $HOME       $LAB_WORK/home
 *   $THINARCHIVE_STATE_DIR  $LAB_WORK/state unless the run's env sets it (target locks, journals and
 *               reservations of the guest's commands never land in the host's /var/lib/thinarchive)
 *   PATH        the host node's directory first, then the sbin/bin directories
 *   LVM_SYSTEM_DIR with an lvm.conf for a guest without udev; MODPROBE_OPTIONS so plain `modprobe`
 *   finds the UML modules (nothing is written to the host's /lib/modules).
 * It runs as `bash -eE -o pipefail` (a failing command ends it; an ERR trap names the command and
 * line on stderr). Its stdout and stderr go to `LabRun.output`; kernel messages and the harness's
 * markers go to `LabRun.console`.
 *
 * Nothing outlives a run: the kernel runs in its own host process group, killed on timeout, after
 * it halts, on this process's exit, and (through a tiny watchdog reading a pipe from this process)
 * when this process is SIGKILLed. Run directories of dead processes are swept on the next run.
 *
 * Host packages: user-mode-linux lvm2 thin-provisioning-tools kmod e2fsprogs.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, mkdir, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, relative, resolve } from 'node:path';
import { ciSet } from '../helpers/host.js';

/** A sparse backing file attached as /dev/ubda, /dev/ubdb, ... in order. */
export interface LabDisk {
  sizeBytes: number;
  /**
   * Use (and keep) this host file instead of a temporary one: created sparse if missing, extended
   * to sizeBytes if smaller, never deleted. Lets a test boot twice on the same pool.
   */
  path?: string;
}

export interface LabRunOptions {
  /** bash text, run with `set -eE -o pipefail` semantics in its own bash process. */
  script: string;
  disks?: LabDisk[];
  /** guest memory; default 1024 */
  memMB?: number;
  /**
   * whole run including boot, counted from the start of the guest (not the wait for a lab slot);
   * default 180 000. On expiry the UML process group is killed.
   */
  timeoutMs?: number;
  /** parent directory of the run's temporary directory; default os.tmpdir() */
  workDir?: string;
  /** host directory seen inside as $LAB_OUT; default <run dir>/out. A given one is never deleted. */
  outDir?: string;
  /** extra environment for the script */
  env?: Record<string, string>;
  /** keep the run directory and its disk images (their paths are in LabRun.runDir/diskPaths) */
  keep?: boolean;
  /**
   * Before halting, unmount device-mapper filesystems and `vgchange -an` so the pool metadata is
   * committed. Default: true when a disk has a `path` or `keep` is set (only then does it matter).
   */
  cleanShutdown?: boolean;
  /** dm modules loaded before the script; default ['dm-thin-pool', 'dm-snapshot'] */
  modules?: string[];
  /** called with each chunk of console output as it arrives (e.g. process.stderr.write) */
  onConsole?: (text: string) => void;
}

export interface LabRun {
  /** exit status of the user script (255 if the harness's own set-up inside the guest failed) */
  exitCode: number;
  /** the script's stdout and stderr, interleaved */
  output: string;
  /** wall time from spawning UML to its exit */
  durationMs: number;
  /** wall time from spawning UML until the guest was set up and about to run the script (-1: never) */
  bootMs: number;
  /** wall time spent waiting for a lab slot before the guest started (see labSlots) */
  waitMs: number;
  /** kernel console: boot messages, dm messages, harness markers */
  console: string;
  /** files left in $LAB_OUT, by path relative to it, read as UTF-8 */
  files: Record<string, string>;
  /** host pid (= process group id) the UML kernel ran as; nothing in that group outlives the run */
  pid: number;
  runDir: string;
  outDir: string;
  diskPaths: string[];
}

export class LabError extends Error {
  constructor(
    message: string,
    readonly partial: { output: string; console: string; durationMs: number; runDir: string; pid: number },
  ) {
    super(message);
    this.name = 'LabError';
  }
}

const GUEST_PATH_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
const UML_MODULES_ROOT = '/usr/lib/uml/modules';
const NEEDED_TOOLS = [
  'bash', 'mount', 'lvm', 'dmsetup', 'thin_delta', 'thin_dump', 'modprobe', 'mkfs.ext4', 'halt',
];
const DEFAULT_MODULES = ['dm-thin-pool', 'dm-snapshot'];
const RUN_PREFIX = 'thinarchive-lab-';

// global_filter: PVs are only ever on the ubd disks; without it every LVM command opens every device in
// /dev, each thin LV and snapshot the tests activate included (as a host's devices file or filter avoids).
const LVM_CONF = `# written by test/lab/lab.ts: a guest without udev
devices {
  obtain_device_list_from_udev = 0
  scan = [ "/dev" ]
  global_filter = [ "a|^/dev/ubd|", "r|.*|" ]
}
activation {
  udev_sync = 0
  udev_rules = 0
  verify_udev_operations = 1
  monitoring = 0
}
`;

function findOnPath(name: string, dirs: string[]): string | undefined {
  for (const d of dirs) {
    const p = join(d, name);
    try {
      if (statSync(p).isFile()) return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

function hostSearchDirs(): string[] {
  const fromEnv = (process.env.PATH ?? '').split(delimiter).filter((d) => d.startsWith('/'));
  return [...new Set([dirname(process.execPath), ...fromEnv, ...GUEST_PATH_DIRS])];
}

function guestPath(): string {
  return [...new Set([dirname(process.execPath), ...GUEST_PATH_DIRS])].join(':');
}

interface UmlInfo {
  bin: string;
  version: string;
}

let availability: Promise<{ ok: true } | { ok: false; reason: string }> | undefined;
let umlInfo: UmlInfo | undefined;

/** Whether runInLab can work here; the answer is computed once per process. */
export function labAvailable(): Promise<{ ok: true } | { ok: false; reason: string }> {
  availability ??= checkAvailable();
  return availability;
}

async function checkAvailable(): Promise<{ ok: true } | { ok: false; reason: string }> {
  if (process.platform !== 'linux') return { ok: false, reason: `the lab needs Linux, this is ${process.platform}` };
  const dirs = hostSearchDirs();
  const bin = process.env.THINARCHIVE_LAB_UML ?? findOnPath('linux.uml', dirs);
  if (!bin) {
    return {
      ok: false,
      reason: 'linux.uml not found: apt-get install user-mode-linux lvm2 thin-provisioning-tools kmod e2fsprogs',
    };
  }
  let version: string;
  try {
    version = execFileSync(bin, ['--version'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (e) {
    return { ok: false, reason: `${bin} --version failed: ${(e as Error).message}` };
  }
  if (!/^\d+\.\d+\S*$/.test(version)) return { ok: false, reason: `${bin} --version printed ${JSON.stringify(version)}` };
  const thinKo = join(UML_MODULES_ROOT, version, 'kernel/drivers/md/dm-thin-pool.ko');
  if (!existsSync(join(UML_MODULES_ROOT, version, 'modules.dep'))) {
    return { ok: false, reason: `UML modules for ${version} missing (${join(UML_MODULES_ROOT, version)})` };
  }
  if (!existsSync(thinKo)) return { ok: false, reason: `UML module dm-thin-pool missing (${thinKo})` };
  const guestDirs = [dirname(process.execPath), ...GUEST_PATH_DIRS];
  const missing = NEEDED_TOOLS.filter((t) => !findOnPath(t, guestDirs));
  if (missing.length) {
    return {
      ok: false,
      reason: `missing tools: ${missing.join(', ')} (apt-get install lvm2 thin-provisioning-tools kmod e2fsprogs)`,
    };
  }
  umlInfo = { bin, version };
  return { ok: true };
}

export { ciSet };

/**
 * Gate at the start of a lab test: returns when the lab can run. When it cannot, the test fails under
 * CI (a skipped lab tier is a failure there) and is skipped elsewhere, with the reason printed.
 */
export async function requireLab(ctx: { skip: (note?: string) => void }): Promise<void> {
  const avail = await labAvailable();
  if (avail.ok) return;
  if (ciSet()) throw new Error(`the thin-LVM lab is not available under CI: ${avail.reason}`);
  console.warn(`thin-LVM lab skipped: ${avail.reason}`);
  ctx.skip(`lab not available: ${avail.reason}`);
}

/**
 * A guest scenario's `$LAB_OUT/results.tsv` ("key<TAB>value" lines, as the scripts append them) as an
 * object; a later line of the same key wins.
 */
export function parseResults(tsv: string): Record<string, string> {
  const r: Record<string, string> = {};
  for (const line of tsv.split('\n')) {
    if (!line) continue;
    const i = line.indexOf('\t');
    r[line.slice(0, i)] = line.slice(i + 1);
  }
  return r;
}

/** A reader of a run's `$LAB_OUT` files (relative names), trimmed; a missing one throws, with the script's output. */
export function labFile(run: Pick<LabRun, 'files' | 'output'>): (name: string) => string {
  return (name) => {
    const text = run.files[name];
    if (text === undefined) throw new Error(`guest result ${name} missing; output:\n${run.output}`);
    return text.trim();
  };
}

/** Single-quote for bash. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Guest device name of the i-th disk: 0 -> /dev/ubda. */
export function labDiskDevice(i: number): string {
  if (i < 0 || i >= 16) throw new RangeError(`disk index ${i}`);
  return `/dev/ubd${String.fromCharCode(97 + i)}`;
}

export interface LabPoolOptions {
  vg?: string; // default 'vg'
  pool?: string; // default 'pool'
  disk?: string; // default '/dev/ubda'
  poolSize: string; // lvcreate -L, e.g. '3G'
  chunk?: string; // --chunksize, e.g. '64k'
  metadataSize?: string; // --poolmetadatasize
  /** zero newly provisioned blocks (lvcreate -Zy); default false (-Zn), faster */
  zero?: boolean;
}

const LVM_NAME = /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$/;
const SIZE = /^\d+(\.\d+)?[bBsSkKmMgGtTpPeE]?$/;

/** bash text creating a PV, a VG and a thin pool on one disk. */
export function labPoolSetup(o: LabPoolOptions): string {
  const vg = o.vg ?? 'vg';
  const pool = o.pool ?? 'pool';
  const disk = o.disk ?? '/dev/ubda';
  for (const [k, v] of [['vg', vg], ['pool', pool]] as const) {
    if (!LVM_NAME.test(v)) throw new Error(`bad LVM ${k} name ${JSON.stringify(v)}`);
  }
  for (const [k, v] of [['poolSize', o.poolSize], ['chunk', o.chunk], ['metadataSize', o.metadataSize]] as const) {
    if (v !== undefined && !SIZE.test(v)) throw new Error(`bad ${k} ${JSON.stringify(v)}`);
  }
  const lvcreate = ['lvcreate', '-y', '-T', `${vg}/${pool}`, '-L', o.poolSize];
  if (o.chunk) lvcreate.push('--chunksize', o.chunk);
  if (o.metadataSize) lvcreate.push('--poolmetadatasize', o.metadataSize);
  lvcreate.push(o.zero ? '-Zy' : '-Zn');
  return [
    `pvcreate -ff -y ${shq(disk)}`,
    `vgcreate ${shq(vg)} ${shq(disk)}`,
    lvcreate.join(' '),
    '',
  ].join('\n');
}

/** dm name of an LV: each '-' in the VG and LV names is doubled. */
export function dmName(vg: string, lv: string): string {
  return `${vg.replace(/-/g, '--')}-${lv.replace(/-/g, '--')}`;
}

const live = new Set<number>();
let exitHookInstalled = false;

function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* ESRCH: gone already */
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A test runner that exits (or is interrupted) mid-run must not leave kernels running.
  process.on('exit', () => {
    for (const pid of live) killGroup(pid);
  });
}

function checkHostPath(p: string, what: string): void {
  if (!p.startsWith('/') || /[\s,"'\\]/.test(p)) {
    throw new Error(`${what} ${JSON.stringify(p)} must be absolute without spaces, commas or quotes (UML command line)`);
  }
}

function buildInit(a: {
  runDir: string;
  outDir: string;
  scriptPath: string;
  outputPath: string;
  diskDevs: string[];
  env: Record<string, string>;
  cleanShutdown: boolean;
  modules: string[];
}): string {
  const envLines = Object.entries(a.env).map(([k, v]) => {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bad env name ${JSON.stringify(k)}`);
    return `export ${k}=${shq(v)}`;
  });
  const trap = `trap 'lab_rc=$?; echo "lab: line $LINENO: command exited $lab_rc: $BASH_COMMAND" >&2' ERR; . "$1"`;
  return `#!/bin/bash
# PID 1 of a thin-LVM lab guest, written by test/lab/lab.ts
export PATH=${shq(guestPath())}
export LVM_SYSTEM_DIR=${shq(join(a.runDir, 'lvm'))} DM_DISABLE_UDEV=1 LVM_SUPPRESS_FD_WARNINGS=1
export MODPROBE_OPTIONS='-d /run/lab-modroot'
export HOME=${shq(join(a.runDir, 'home'))} LC_ALL=C TERM=dumb
export LAB_WORK=${shq(a.runDir)} LAB_OUT=${shq(a.outDir)} LAB_DISKS=${shq(a.diskDevs.join(' '))}
export THINARCHIVE_STATE_DIR=${shq(join(a.runDir, 'state'))}
${envLines.join('\n')}

lab_halt() {
  sync
  halt -f
  poweroff -f
  echo o > /proc/sysrq-trigger
  sleep 1000
}
lab_setup_failed() {
  echo "LAB_SETUP_FAILED: $*"
  echo "LAB_EXIT=255"
  lab_halt
}

mount -t proc proc /proc || lab_setup_failed "mount /proc"
mount -t sysfs sys /sys || lab_setup_failed "mount /sys"
mountpoint -q /dev || mount -t devtmpfs dev /dev || lab_setup_failed "mount /dev"
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run || lab_setup_failed "mount /run"
mkdir -p /run/lvm /run/lock/lvm /run/lab-modroot/lib/modules
ln -s ${shq(UML_MODULES_ROOT)}/"$(uname -r)" /run/lab-modroot/lib/modules/"$(uname -r)"
for m in ${a.modules.map(shq).join(' ')}; do
  modprobe "$m" || lab_setup_failed "modprobe $m"
done
echo "LAB_READY"

cd "$LAB_WORK"
bash -eE -o pipefail -c ${shq(trap)} lab-script ${shq(a.scriptPath)} > ${shq(a.outputPath)} 2>&1 < /dev/null
lab_rc=$?

${a.cleanShutdown ? `echo "LAB_SHUTDOWN"
awk '$1 ~ "^/dev/(mapper/|dm-)" { print $2 }' /proc/mounts | sort -r | while read -r m; do umount "$m" || umount -l "$m"; done
vgchange -an > /dev/null 2>&1 || dmsetup remove_all
` : ''}echo "LAB_EXIT=$lab_rc"
lab_halt
`;
}

async function readTree(root: string): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  async function walk(dir: string): Promise<void> {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) files[relative(root, p)] = await readFile(p, 'utf8');
    }
  }
  await walk(root);
  return files;
}

/**
 * How many guests run at once on this host, across all processes (test files run in parallel
 * workers): THINARCHIVE_LAB_SLOTS, default 2. A user-mode Linux guest keeps a core busy; more guests
 * than cores only make each slower (and a slow guest looks like a hung one to its timeout).
 */
export function labSlots(): number {
  const n = Number(process.env['THINARCHIVE_LAB_SLOTS'] ?? 2);
  return Number.isInteger(n) && n >= 1 ? n : 2;
}

/** Where the slot files live: THINARCHIVE_LAB_SLOT_DIR (tests of the slots), else one per host. */
function slotDir(): string {
  return process.env['THINARCHIVE_LAB_SLOT_DIR'] || join(tmpdir(), 'thinarchive-lab-slots');
}

/**
 * What a lab test adds to its own guest timeout for the time it may wait for a slot while other
 * files' guests run: the lab files start first (test/sequencer.ts), so a third one waits for one of
 * the first two, which run 10 to 20 minutes on the 2-core CI machine.
 */
export const LAB_SLOT_WAIT_MS = 1_800_000;

/**
 * THINARCHIVE_LAB_FULL=1: the lab tests run the full counts their issues ask for (20 group points,
 * the one-by-one pairs, 10 concurrent rounds, ...) instead of the suite's smaller ones. User-mode Linux
 * is slow (a process start in the guest costs tens of milliseconds, an LVM command a second or more),
 * and the suite must fit its time budget on a 2-core machine; each test's header says what it cuts.
 */
export const LAB_FULL = process.env['THINARCHIVE_LAB_FULL'] === '1';

/**
 * Take one of labSlots() slot files (O_EXCL create holding "pid token"); a slot whose owner process
 * is dead is taken over. Polls until one is free. Returns the release function.
 */
async function acquireSlot(): Promise<() => Promise<void>> {
  const dir = slotDir();
  await mkdir(dir, { recursive: true });
  const token = `${process.pid} ${Math.random().toString(36).slice(2)}\n`;
  for (;;) {
    for (let i = 0; i < labSlots(); i++) {
      const p = join(dir, `slot-${i}`);
      try {
        await writeFile(p, token, { flag: 'wx' });
        return async () => {
          if ((await readFile(p, 'utf8').catch(() => '')) === token) await rm(p, { force: true });
        };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const owner = Number((await readFile(p, 'utf8').catch(() => '')).split(' ')[0]);
      // A slot file being written has no pid yet; only a dead owner's slot is freed.
      if (Number.isInteger(owner) && owner > 0 && !alive(owner)) await rm(p, { force: true });
    }
    await new Promise((r) => setTimeout(r, 250 + Math.random() * 250));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const swept = new Set<string>();

/**
 * Remove run directories in `parent` left by a test process that died hard (SIGKILL) before its
 * clean-up: those whose owning process and UML kernel are both gone. Once per parent per process.
 */
async function sweepStale(parent: string): Promise<void> {
  if (swept.has(parent)) return;
  swept.add(parent);
  let names: string[];
  try {
    names = await readdir(parent);
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(RUN_PREFIX)) continue;
    const dir = join(parent, name);
    const pidOf = async (f: string): Promise<number> => Number((await readFile(join(dir, f), 'utf8').catch(() => '')).trim());
    const isPid = (n: number): boolean => Number.isInteger(n) && n > 0;
    const owner = await pidOf('owner.pid');
    const uml = await pidOf('uml/pid');
    if (isPid(owner) ? alive(owner) : !isPid(uml)) continue; // a live run, or one just being created
    if (isPid(uml) && alive(uml)) continue;
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}

function tail(s: string, lines: number): string {
  return s.split('\n').slice(-lines).join('\n');
}

/** Boot a guest, run `script` in it as root, halt, and return its exit code, output and results. */
export async function runInLab(opts: LabRunOptions): Promise<LabRun> {
  const avail = await labAvailable();
  if (!avail.ok) throw new Error(`lab not available: ${avail.reason}`);
  const uml = umlInfo!;
  installExitHook();

  const memMB = opts.memMB ?? 1024;
  const timeoutMs = opts.timeoutMs ?? 180_000;
  const disks = opts.disks ?? [];
  if (disks.length > 16) throw new Error('at most 16 disks');
  if (!Number.isInteger(memMB) || memMB < 64) throw new Error(`memMB ${memMB}`);

  const parent = resolve(opts.workDir ?? tmpdir());
  await mkdir(parent, { recursive: true });
  await sweepStale(parent);
  checkHostPath(join(parent, RUN_PREFIX), 'workDir');
  if (opts.outDir) checkHostPath(resolve(opts.outDir), 'outDir');
  const waitStart = performance.now();
  const release = await acquireSlot();
  const waitMs = performance.now() - waitStart;
  const runDir = await mkdtemp(join(parent, RUN_PREFIX)).catch(async (e: unknown) => {
    await release();
    throw e;
  });
  const outDir = resolve(opts.outDir ?? join(runDir, 'out'));
  const keep = opts.keep ?? false;
  const cleanupDisks: string[] = [];

  try {
    await writeFile(join(runDir, 'owner.pid'), `${process.pid}\n`);
    await Promise.all([
      mkdir(outDir, { recursive: true }),
      mkdir(join(runDir, 'home')),
      mkdir(join(runDir, 'lvm')).then(() => writeFile(join(runDir, 'lvm', 'lvm.conf'), LVM_CONF)),
    ]);

    const diskPaths: string[] = [];
    for (const [i, d] of disks.entries()) {
      if (!Number.isSafeInteger(d.sizeBytes) || d.sizeBytes <= 0 || d.sizeBytes % 512 !== 0) {
        throw new Error(`disk ${i}: sizeBytes must be a positive multiple of 512`);
      }
      const p = d.path ? resolve(d.path) : join(runDir, `disk${i}.img`);
      checkHostPath(p, `disk ${i} path`);
      const fh = await open(p, 'a'); // creates if missing, never truncates existing data
      try {
        if ((await fh.stat()).size < d.sizeBytes) await fh.truncate(d.sizeBytes); // sparse
      } finally {
        await fh.close();
      }
      diskPaths.push(p);
      if (!d.path) cleanupDisks.push(p);
    }

    const scriptPath = join(runDir, 'script.sh');
    const outputPath = join(runDir, 'output.log');
    const initPath = join(runDir, 'init.sh');
    await writeFile(scriptPath, opts.script);
    await writeFile(outputPath, '');
    await writeFile(
      initPath,
      buildInit({
        runDir,
        outDir,
        scriptPath,
        outputPath,
        diskDevs: diskPaths.map((_, i) => labDiskDevice(i)),
        env: opts.env ?? {},
        cleanShutdown: opts.cleanShutdown ?? (keep || disks.some((d) => d.path)),
        modules: opts.modules ?? DEFAULT_MODULES,
      }),
      { mode: 0o755 },
    );

    const args = [
      `mem=${memMB}M`,
      'root=/dev/root',
      'rootfstype=hostfs',
      'rootflags=/',
      'rw',
      'quiet',
      `init=${initPath}`,
      `uml_dir=${runDir}`,
      'umid=uml',
      ...diskPaths.map((p, i) => `ubd${i}=${p}`),
      'con=null',
      'con0=fd:0,fd:1',
    ];

    const started = performance.now();
    let bootMs = -1;
    let consoleText = '';
    let timedOut = false;

    const child = spawn(uml.bin, args, {
      detached: true, // own process group: UML's helper processes are killed with it
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TMPDIR: existsSync('/dev/shm') ? '/dev/shm' : tmpdir() },
    });
    const pid = child.pid;
    if (pid === undefined) {
      const err = await new Promise<Error>((res) => child.once('error', res));
      throw new Error(`cannot start ${uml.bin}: ${err.message}`);
    }
    live.add(pid);
    // If this process dies without running its exit hook (SIGKILL, an interrupted test runner: UML
    // is in its own process group, so a terminal's Ctrl-C does not reach it), the watchdog sees
    // EOF on its stdin and kills the kernel's group.
    const watchdog = spawn('/bin/sh', ['-c', `read -r _; kill -9 -${pid} 2>/dev/null`], {
      detached: true,
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    watchdog.on('error', () => {});
    watchdog.unref();

    const onData = (chunk: string): void => {
      const text = chunk.replace(/\r/g, ''); // the console is a tty: \r\n line ends
      consoleText += text;
      if (bootMs < 0 && consoleText.includes('LAB_READY\n')) bootMs = performance.now() - started;
      opts.onConsole?.(text);
    };
    child.stdout!.setEncoding('utf8').on('data', onData);
    child.stderr!.setEncoding('utf8').on('data', onData);

    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(pid);
    }, timeoutMs);

    const exited = new Promise<void>((res) => {
      child.once('exit', () => res());
      child.once('error', () => res());
    });
    const closed = new Promise<void>((res) => child.once('close', () => res()));
    await exited;
    clearTimeout(timer);
    // Whatever is left of the group (helpers, stubs) goes with the kernel.
    killGroup(pid);
    await Promise.race([closed, new Promise((r) => setTimeout(r, 2_000))]);
    const leftovers = await waitGroupGone(pid, 3_000);
    live.delete(pid);
    watchdog.kill('SIGKILL'); // the group is gone: a late kill could hit a reused pid
    watchdog.stdin?.destroy();
    const durationMs = performance.now() - started;

    const output = await readFile(outputPath, 'utf8').catch(() => '');
    const partial = { output, console: consoleText, durationMs, runDir, pid };
    // Scripts that record results as they go (results.tsv) show how far they got.
    const results = await readFile(join(outDir, 'results.tsv'), 'utf8').catch(() => '');
    const diag = (): string =>
      `\n--- last console lines ---\n${tail(consoleText.trimEnd(), 25)}\n--- last script output lines ---\n${tail(output.trimEnd(), 25)}`
      + (results ? `\n--- last lines of $LAB_OUT/results.tsv ---\n${tail(results.trimEnd(), 15).slice(-3000)}` : '');

    if (leftovers.length) {
      throw new LabError(`UML processes of group ${pid} survived SIGKILL: ${leftovers.join('; ')}${diag()}`, partial);
    }
    if (timedOut) throw new LabError(`lab timed out after ${timeoutMs} ms; the UML process group was killed${diag()}`, partial);
    const setupFailed = /^LAB_SETUP_FAILED: (.*)$/m.exec(consoleText);
    if (setupFailed) throw new LabError(`lab guest set-up failed: ${setupFailed[1]}${diag()}`, partial);
    const markers = [...consoleText.matchAll(/^LAB_EXIT=(\d+)$/gm)];
    const last = markers.at(-1);
    if (!last) {
      throw new LabError(`lab guest ended without a LAB_EXIT marker (UML exit ${child.exitCode ?? child.signalCode})${diag()}`, partial);
    }

    const files = await readTree(outDir);
    return {
      exitCode: Number(last[1]),
      output,
      durationMs,
      bootMs,
      waitMs,
      console: consoleText,
      files,
      pid,
      runDir,
      outDir,
      diskPaths,
    };
  } finally {
    await release();
    if (!keep) {
      await Promise.all(cleanupDisks.map((p) => rm(p, { force: true })));
      await rm(runDir, { recursive: true, force: true });
    }
  }
}

/**
 * Host processes in process group `pgid` that are not zombies: after a run of the lab with that
 * pid there must be none (UML's helper processes are killed with the group).
 */
export function labLeftovers(pgid: number): string[] {
  const found: string[] = [];
  for (const ent of readdirSync('/proc')) {
    if (!/^\d+$/.test(ent)) continue;
    let st: string;
    try {
      st = readFileSync(`/proc/${ent}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
    const close = st.lastIndexOf(')');
    const comm = st.slice(st.indexOf('(') + 1, close);
    const [state, , pgrp] = st.slice(close + 2).split(' ');
    if (Number(pgrp) === pgid && state !== 'Z' && state !== 'X') found.push(`${ent} ${state} ${comm}`);
  }
  return found;
}

async function waitGroupGone(pgid: number, ms: number): Promise<string[]> {
  const until = performance.now() + ms;
  for (;;) {
    const left = labLeftovers(pgid);
    if (left.length === 0 || performance.now() > until) return left;
    killGroup(pgid);
    await new Promise((r) => setTimeout(r, 50));
  }
}
