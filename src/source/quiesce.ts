/**
 * The quiesce window of a consistency group (docs/LVM.md section 9): freeze, run the work (every
 * member's snapshot), thaw. Thaw is guaranteed three ways: in a `finally`; by an in-process watchdog
 * when the window outlasts its timeout (it also aborts the work: a hung lvcreate is killed); and by a
 * detached guard process (`sh -c 'sleep T; thaw'`) that thaws even when this process is SIGKILLed.
 * SIGINT/SIGTERM/SIGHUP during the window thaw at once.
 */
import { spawn } from 'node:child_process';
import { AbortedError, ThinarchiveError } from '../errors.js';
import type { QuiesceMethod } from '../format/group.js';
import { silentLogger, type Logger } from '../log.js';

export type QuiesceSpec =
  | { method: 'fsfreeze'; mountpoints: string[] }
  | { method: 'command'; freeze: string; thaw: string }
  | { method: 'virsh'; domain: string }
  | { method: 'dm-suspend'; devices: string[] };

/** The freeze options a user gives (send's flags, a daemon group job's keys). */
export interface FreezeChoice {
  mountpoints?: readonly string[];
  freezeCmd?: string;
  thawCmd?: string;
  virshDomain?: string;
}

/**
 * The quiesce a user's freeze options ask for: fsfreeze of mountpoints, a freeze/thaw command pair, or
 * virsh; undefined without one (a group send then suspends the stacked dm devices). Which options may
 * go together is checked by the caller, in its own words (flags or config keys).
 */
export function quiesceSpecOf(c: FreezeChoice): Exclude<QuiesceSpec, { method: 'dm-suspend' }> | undefined {
  if (c.mountpoints?.length) return { method: 'fsfreeze', mountpoints: [...c.mountpoints] };
  if (c.freezeCmd !== undefined) return { method: 'command', freeze: c.freezeCmd, thaw: c.thawCmd! };
  if (c.virshDomain !== undefined) return { method: 'virsh', domain: c.virshDomain };
  return undefined;
}

export interface StepResult {
  code: number | null;
  signal: string | null;
  stderr: string;
  timedOut: boolean;
}
/** Runs argv (no shell) and kills it (SIGKILL, its process group) after timeoutMs or on abort. */
export type StepRunner = (argv: readonly string[], timeoutMs: number, signal?: AbortSignal) => Promise<StepResult>;

export const DEFAULT_FREEZE_TIMEOUT_MS = 10_000;

export interface QuiesceOptions {
  /** the whole window (freeze, work, thaw) must end within this; default 10 s */
  timeoutMs?: number;
  log?: Logger;
  run?: StepRunner;
  /** start the detached guard process (default true; unit tests turn it off) */
  guard?: boolean;
  /** install SIGINT/SIGTERM/SIGHUP handlers during the window (default true) */
  handleSignals?: boolean;
}

export interface QuiesceReport {
  method: QuiesceMethod;
  targets: string[];
  frozenAt: string;
  /** from the start of the freeze to the end of the thaw */
  freezeMs: number;
  /** what thawed: the normal end, the watchdog (timeout), or a signal */
  thawedBy: 'finally' | 'watchdog' | 'signal';
  /** thaw attempts that failed before one succeeded */
  warnings: string[];
}

interface Step {
  freeze: string[];
  thaw: string[];
  label: string;
}

function stepsOf(spec: QuiesceSpec): Step[] {
  switch (spec.method) {
    case 'fsfreeze':
      return spec.mountpoints.map((m) => ({ freeze: ['fsfreeze', '-f', m], thaw: ['fsfreeze', '-u', m], label: m }));
    case 'command':
      return [{ freeze: ['sh', '-c', spec.freeze], thaw: ['sh', '-c', spec.thaw], label: spec.freeze }];
    case 'virsh':
      return [{ freeze: ['virsh', 'domfsfreeze', spec.domain], thaw: ['virsh', 'domfsthaw', spec.domain], label: spec.domain }];
    case 'dm-suspend':
      return spec.devices.map((d) => ({ freeze: ['dmsetup', 'suspend', '--nolockfs', d], thaw: ['dmsetup', 'resume', d], label: d }));
  }
}

export function quiesceTargets(spec: QuiesceSpec): string[] {
  return stepsOf(spec).map((s) => s.label);
}

/** The default runner: spawn without a shell, in its own process group, killed with SIGKILL on timeout. */
export const spawnStep: StepRunner = (argv, timeoutMs, signal) => new Promise((resolve) => {
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], detached: true, env: { ...process.env, LC_ALL: 'C' } });
  let stderr = '';
  let timedOut = false;
  const kill = (): void => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      child.kill('SIGKILL');
    }
  };
  const timer = setTimeout(() => {
    timedOut = true;
    kill();
  }, timeoutMs);
  const onAbort = (): void => kill();
  signal?.addEventListener('abort', onAbort, { once: true });
  child.stderr!.on('data', (d: Buffer) => {
    if (stderr.length < 4000) stderr += d.toString();
  });
  child.on('error', (e) => {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
    resolve({ code: null, signal: null, stderr: e.message, timedOut: false });
  });
  child.on('close', (code, sig) => {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
    resolve({ code, signal: sig, stderr: stderr.trim(), timedOut });
  });
});

const shq = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

function describe(r: StepResult, timeoutMs: number): string {
  if (r.timedOut) return `did not finish within ${timeoutMs} ms (killed)`;
  if (r.signal) return `was killed by ${r.signal}`;
  return `exited ${r.code ?? '(not started)'}${r.stderr ? `: ${r.stderr.split('\n')[0]}` : ''}`;
}

/**
 * Freeze, run `work` (with a signal aborted when the watchdog or a signal thaws early), thaw. Thaw runs
 * for every step whose freeze was started, also when that freeze failed. Throws FREEZE_FAILED (a
 * freeze step failed), FREEZE_TIMEOUT (the watchdog thawed first; `work`'s result is discarded),
 * THAW_FAILED (every thaw attempt of a step failed), or what `work` threw.
 */
export async function withQuiesce<T>(spec: QuiesceSpec, o: QuiesceOptions, work: (signal: AbortSignal) => Promise<T>): Promise<{ value: T; report: QuiesceReport }> {
  const timeoutMs = o.timeoutMs ?? DEFAULT_FREEZE_TIMEOUT_MS;
  const log = o.log ?? silentLogger;
  const run = o.run ?? spawnStep;
  const steps = stepsOf(spec);
  const window = new AbortController();
  const started: Step[] = [];
  const warnings: string[] = [];
  const t0 = performance.now();
  const frozenAt = new Date().toISOString();
  let thawedBy: QuiesceReport['thawedBy'] | null = null;
  let thawEnd = 0;
  let thawError: ThinarchiveError | null = null;
  // One thaw, whoever asks first; later callers wait for it.
  let thawing: Promise<void> | null = null;
  const attemptMs = Math.max(1000, Math.min(5000, Math.floor(timeoutMs / 4)));
  const thaw = (by: 'finally' | 'watchdog' | 'signal'): Promise<void> => {
    if (thawing) return thawing;
    thawedBy = by;
    window.abort(new Error(`quiesce window ended by ${by}`));
    thawing = (async () => {
      for (const s of [...started].reverse()) {
        let ok = false;
        for (let attempt = 1; attempt <= 3 && !ok; attempt++) {
          const r = await run(s.thaw, attemptMs);
          // fsfreeze -u of a filesystem that is not frozen: EINVAL, i.e. thawed (a freeze that failed).
          ok = r.code === 0 || (spec.method === 'fsfreeze' && r.code !== null && /Invalid argument/.test(r.stderr));
          if (!ok) {
            const w = `thaw of ${s.label} (attempt ${attempt}): ${s.thaw.join(' ')} ${describe(r, attemptMs)}`;
            warnings.push(w);
            log.warn({ method: spec.method }, w);
          }
        }
        if (!ok && !thawError) {
          thawError = new ThinarchiveError('THAW_FAILED', `thaw of ${s.label} failed 3 times (${warnings.at(-1)}): it may still be frozen; thaw it by hand: ${s.thaw.join(' ')}`);
        }
      }
      thawEnd = performance.now();
    })();
    return thawing;
  };

  // The guard: a detached shell that thaws after the timeout (+1 s) unless killed first.
  let guard: ReturnType<typeof spawn> | null = null;
  const stopGuard = (): void => {
    if (!guard?.pid) return;
    try {
      process.kill(-guard.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    guard = null;
  };
  const watchdog = setTimeout(() => {
    log.warn({ method: spec.method, timeoutMs }, 'quiesce window outlasted its timeout: thawing');
    void thaw('watchdog');
  }, timeoutMs);
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  const onSignal = (sig: NodeJS.Signals): void => {
    log.warn({ signal: sig }, 'signal during the quiesce window: thawing');
    void thaw('signal').finally(() => {
      process.removeListener(sig, onSignal);
      // Nobody else handles it: the default action, now that everything is thawed.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  };
  if (o.handleSignals !== false) for (const s of signals) process.on(s, onSignal);
  try {
    if (o.guard !== false) {
      const script = `sleep ${Math.ceil(timeoutMs / 1000) + 1}; ${steps.map((s) => s.thaw.map(shq).join(' ')).reverse().join('; ')}`;
      guard = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' });
      guard.on('error', () => undefined);
      guard.unref();
    }
    for (const s of steps) {
      if (window.signal.aborted) break;
      started.push(s);
      const r = await run(s.freeze, timeoutMs, window.signal);
      if (r.code !== 0) {
        if (window.signal.aborted) break;
        throw new ThinarchiveError('FREEZE_FAILED', `freeze of ${s.label}: ${s.freeze.join(' ')} ${describe(r, timeoutMs)}; thawed, nothing sent`);
      }
    }
    if (thawedBy === 'signal') throw new AbortedError('interrupted in the quiesce window (thawed)');
    if (window.signal.aborted) throw new ThinarchiveError('FREEZE_TIMEOUT', `freezing (${spec.method}) took longer than ${timeoutMs} ms; thawed, nothing sent`);
    let value: T;
    try {
      value = await work(window.signal);
    } catch (e) {
      if (thawedBy === 'signal') throw new AbortedError('interrupted in the quiesce window (thawed)', e);
      if (thawedBy === 'watchdog') throw new ThinarchiveError('FREEZE_TIMEOUT', `the quiesce window (${spec.method}) outlasted ${timeoutMs} ms; the watchdog thawed, nothing sent`, undefined, { cause: e });
      throw e;
    }
    if (thawedBy === 'watchdog') throw new ThinarchiveError('FREEZE_TIMEOUT', `the quiesce window (${spec.method}) outlasted ${timeoutMs} ms; the watchdog thawed, nothing sent`);
    await thaw('finally');
    if (thawError) throw thawError;
    return {
      value,
      report: { method: spec.method, targets: steps.map((s) => s.label), frozenAt, freezeMs: Math.round(thawEnd - t0), thawedBy: thawedBy ?? 'finally', warnings },
    };
  } finally {
    clearTimeout(watchdog);
    await thaw('finally');
    if (!thawError) stopGuard();
    if (o.handleSignals !== false) for (const s of signals) process.removeListener(s, onSignal);
  }
}
