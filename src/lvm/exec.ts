/**
 * The one place where lvm2, dmsetup and thin-provisioning-tools commands are run.
 *
 * Commands run without a shell (execa, argv array), with stdin closed (a prompt reads EOF and
 * answers no), `LVM_SUPPRESS_FD_WARNINGS=1` (lvm complains about inherited descriptors on stderr
 * otherwise) and `LC_ALL=C` (stable messages and number formats). stdout is returned, or written to
 * a file (`stdoutFile`) for large outputs such as thin_delta / thin_dump XML. Three dmsetup forms are
 * answered in-process by the same kernel calls (dm-native.ts). A failure becomes a
 * CommandError carrying argv, exit code and trimmed stderr, with a one-line message.
 *
 * Everything that decides *what* to run takes an `LvmExec` so it can be tested with a fake.
 */
import { CommandError, UsageError } from '../errors.js';
import { type Logger, silentLogger } from '../log.js';
import { nativeDmRunner } from './dm-native.js';
import type { CommandRunner, RunnerResult } from './runner.js';

/** The commands this module runs. Anything else is a programming error. */
export const LVM_COMMANDS = new Set([
  'lvm', 'lvs', 'vgs', 'pvs', 'lvcreate', 'lvchange', 'lvremove', 'lvrename', 'lvextend', 'vgchange',
  'dmsetup', 'blockdev',
  'thin_delta', 'thin_dump', 'thin_check', 'thin_ls', 'thin_metadata_size',
]);

export type { CommandRunner, RunnerOptions, RunnerResult } from './runner.js';

/** The process runner: execa, no shell, stdin ignored, output not stripped. */
export const execaRunner: CommandRunner = async (file, args, opts) => {
  // Imported on first use: execa and its dependencies are a large share of start-up otherwise.
  const { execa } = await import('execa');
  const r = await execa(file, [...args], {
    env: opts.env,
    extendEnv: true,
    reject: false,
    stdin: 'ignore',
    stdout: opts.stdoutFile !== undefined ? { file: opts.stdoutFile } : 'pipe',
    stderr: 'pipe',
    // A file target is written by execa *and* buffered unless told otherwise: thin_delta /
    // thin_dump output can be hundreds of MB, it must not be held in memory.
    buffer: { stdout: opts.stdoutFile === undefined, stderr: true },
    stripFinalNewline: false,
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
    ...(opts.timeoutMs !== undefined ? { timeout: opts.timeoutMs } : {}),
    ...(opts.signal ? { cancelSignal: opts.signal } : {}),
    forceKillAfterDelay: 5_000,
  });
  const res: RunnerResult = {
    exitCode: r.exitCode,
    stdout: typeof r.stdout === 'string' ? r.stdout : '',
    stderr: typeof r.stderr === 'string' ? r.stderr : '',
  };
  if (r.signal) res.signal = r.signal;
  if (r.timedOut) res.timedOut = true;
  if (r.isCanceled) res.canceled = true;
  if (r.failed && r.exitCode === undefined && !r.signal && !r.timedOut && !r.isCanceled) {
    const code = (r as { code?: unknown }).code;
    res.spawnError = typeof code === 'string' ? code : (r.shortMessage ?? 'could not start');
  }
  return res;
};

/**
 * The runner every LvmExec uses unless given another: execa, except `dmsetup status`, `message` and
 * `info -o open`, which are device-mapper ioctls in this process (dm-native.ts).
 */
export const defaultRunner: CommandRunner = nativeDmRunner(execaRunner);

export interface ExecOptions {
  /** Write stdout to this file instead of returning it (the returned string is then ''). */
  stdoutFile?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Run one command; resolve with its stdout, reject with a CommandError. */
export type LvmExec = (argv: readonly string[], opts?: ExecOptions) => Promise<string>;

export interface LvmExecConfig {
  runner?: CommandRunner;
  logger?: Logger;
  /** Default timeout of every command; default 10 minutes (lvm waits for its own locks). */
  timeoutMs?: number;
}

export const LVM_ENV: Readonly<Record<string, string>> = Object.freeze({ LVM_SUPPRESS_FD_WARNINGS: '1', LC_ALL: 'C' });

const DEFAULT_TIMEOUT_MS = 10 * 60_000;

/** The LvmExecs that run the real commands (made with the default or the execa runner), not a test's fake. */
const realExecs = new WeakSet<LvmExec>();

/** Whether `exec` runs the real commands: what it reports may be remembered beyond this process. */
export function runsRealCommands(exec: LvmExec): boolean {
  return realExecs.has(exec);
}

/** Make an LvmExec with the given runner, logger and timeout. */
export function createLvmExec(config: LvmExecConfig = {}): LvmExec {
  const runner = config.runner ?? defaultRunner;
  const logger = config.logger ?? silentLogger;
  const defaultTimeout = config.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const exec: LvmExec = async (argv, opts = {}) => {
    const [file, ...args] = argv;
    if (file === undefined || !LVM_COMMANDS.has(file)) {
      throw new UsageError(`not an LVM command: ${JSON.stringify(file)}`);
    }
    const started = performance.now();
    const res = await runner(file, args, {
      env: { ...LVM_ENV },
      timeoutMs: opts.timeoutMs ?? defaultTimeout,
      ...(opts.stdoutFile !== undefined ? { stdoutFile: opts.stdoutFile } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    const ms = Math.round(performance.now() - started);
    const how = res.inProcess ? { inProcess: true } : {};
    if (res.exitCode === 0) {
      logger.debug({ argv, ms, ...how }, 'lvm command');
      return opts.stdoutFile !== undefined ? '' : res.stdout;
    }
    const err = commandError(argv, res);
    logger.debug({ argv, ms, exitCode: res.exitCode, stderr: err.stderr, ...how }, 'lvm command failed');
    throw err;
  };
  if (runner === defaultRunner || runner === execaRunner) realExecs.add(exec);
  return exec;
}

/** The default LvmExec (execa, silent, 10-minute timeout). */
export const runLvmCommand: LvmExec = createLvmExec();

/** Lines of stderr that say nothing about why a command failed. */
const NOISE = [
  /^WARNING:/i,
  /^Command failed\.?$/,
  /^Usage:/,
  /^Options:/,
  /^\{/, // thin-provisioning-tools 0.9 usage lines: "{--thin1, --snap1}"
  /^File descriptor \d+ .* leaked on /,
];

/** The most telling line of a command's stderr: the first that is not a warning or usage text. */
export function stderrSummary(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  const telling = lines.find((l) => !NOISE.some((re) => re.test(l))) ?? lines[0] ?? '';
  return telling.length > 300 ? `${telling.slice(0, 297)}...` : telling;
}

/** Build the CommandError for a failed run. Codes: LVM_NOT_FOUND, LVM_TIMEOUT, LVM_KILLED, LVM_COMMAND. */
export function commandError(argv: readonly string[], res: RunnerResult): CommandError {
  const cmd = argv.join(' ');
  const stderr = res.stderr.trim();
  const why = stderrSummary(stderr);
  if (res.spawnError !== undefined) {
    const notFound = res.spawnError === 'ENOENT';
    return new CommandError(
      notFound ? 'LVM_NOT_FOUND' : 'LVM_COMMAND',
      notFound
        ? `${argv[0]} not found: install lvm2 / thin-provisioning-tools (running ${cmd})`
        : `${cmd}: could not start: ${res.spawnError}`,
      argv, undefined, stderr,
    );
  }
  if (res.timedOut) return new CommandError('LVM_TIMEOUT', `${cmd}: timed out and was killed`, argv, undefined, stderr);
  if (res.canceled) return new CommandError('LVM_CANCELED', `${cmd}: canceled`, argv, undefined, stderr);
  if (res.exitCode === undefined) {
    return new CommandError('LVM_KILLED', `${cmd}: killed by ${res.signal ?? 'a signal'}${why ? `: ${why}` : ''}`, argv, undefined, stderr);
  }
  return new CommandError('LVM_COMMAND', `${cmd}: exit ${res.exitCode}${why ? `: ${why}` : ''}`, argv, res.exitCode, stderr);
}
