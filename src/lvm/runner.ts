/**
 * What runs one LVM command for exec.ts: the runner interface (execa's in exec.ts, dm-native.ts's
 * in-process answers, a test's fake). Its own module so both can use it without importing each other.
 */

export interface RunnerOptions {
  env: Record<string, string>;
  /** Kill the command (SIGTERM, then SIGKILL) after this long. */
  timeoutMs?: number;
  /** Write stdout to this file (created or truncated) instead of returning it. */
  stdoutFile?: string;
  /** Abort: the command is killed. */
  signal?: AbortSignal;
}

/** What a runner reports about one finished (or failed-to-start) command. Never throws for these. */
export interface RunnerResult {
  /** undefined when the command could not be started or was killed by a signal */
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  /** signal name when the command was killed by one */
  signal?: string;
  timedOut?: boolean;
  canceled?: boolean;
  /** errno code or message when the command could not be started (ENOENT: not installed) */
  spawnError?: string;
  /** answered without starting a process (dm-native.ts) */
  inProcess?: boolean;
}

export type CommandRunner = (file: string, args: readonly string[], opts: RunnerOptions) => Promise<RunnerResult>;
