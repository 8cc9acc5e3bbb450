import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CommandError, UsageError } from '../errors.js';
import { type CommandRunner, type RunnerOptions, commandError, createLvmExec, execaRunner, stderrSummary } from './exec.js';

const FIXTURES = fileURLToPath(new URL('../../fixtures/lvm/', import.meta.url));
/** Real failures captured in the lab: argv, exit code, stdout, stderr. */
const ERRORS = JSON.parse(readFileSync(FIXTURES + 'errors.json', 'utf8')) as Record<string, { argv: string[]; exitCode: number; stdout: string; stderr: string }>;

function replay(name: string): CommandRunner {
  const e = ERRORS[name]!;
  return async () => ({ exitCode: e.exitCode, stdout: e.stdout, stderr: e.stderr });
}

async function commandFailure(p: Promise<unknown>): Promise<CommandError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(CommandError);
    return e as CommandError;
  }
  throw new Error('resolved');
}

describe('createLvmExec', () => {
  it('runs argv without a shell, with the LVM environment, and returns stdout', async () => {
    const calls: [string, readonly string[], RunnerOptions][] = [];
    const exec = createLvmExec({
      runner: async (file, args, opts) => {
        calls.push([file, args, opts]);
        return { exitCode: 0, stdout: '0.9.0\n', stderr: '' };
      },
      timeoutMs: 1234,
    });
    expect(await exec(['thin_delta', '-V'])).toBe('0.9.0\n');
    expect(calls).toHaveLength(1);
    const [file, args, opts] = calls[0]!;
    expect(file).toBe('thin_delta');
    expect(args).toEqual(['-V']);
    expect(opts.env).toEqual({ LVM_SUPPRESS_FD_WARNINGS: '1', LC_ALL: 'C' });
    expect(opts.timeoutMs).toBe(1234);
    expect(opts.stdoutFile).toBeUndefined();
  });

  it('refuses commands that are not LVM tools', async () => {
    const exec = createLvmExec({ runner: async () => ({ exitCode: 0, stdout: '', stderr: '' }) });
    await expect(exec(['rm', '-rf', '/'])).rejects.toBeInstanceOf(UsageError);
    await expect(exec([])).rejects.toBeInstanceOf(UsageError);
  });

  it('turns every real failure into a one-line CommandError with argv, exit code and trimmed stderr', async () => {
    const expected: Record<string, string> = {
      'lvs-no-vg': 'Volume group "no-such-vg" not found',
      'dmsetup-status-no-dev': 'Device does not exist.',
      'release-none': 'device-mapper: message ioctl on lab--vg-thin--pool-tpool  failed: Invalid argument',
      'reserve-twice': 'device-mapper: message ioctl on lab--vg-thin--pool-tpool  failed: Device or resource busy',
      'delta-no-msnap': 'no current metadata snap',
      'delta-unknown-dev': 'Unable to find mapping tree for snap1 (77)',
      'dump-live': "syscall 'open' failed: Device or resource busy",
      'lvchange-ay-K-pr': 'Command does not accept option: --ignoreactivationskip.',
      'lvchange-pr-again': 'Logical volume "lab-vg/snap1" is already read only.',
      'lvcreate-exists': 'Logical Volume "snap2" already exists in volume group "lab-vg"',
      'lvremove-active-no-y': 'Do you really want to remove active logical volume lab-vg/snap1? [y/n]: [n]',
    };
    expect(Object.keys(ERRORS).sort()).toEqual(Object.keys(expected).sort());
    for (const [name, why] of Object.entries(expected)) {
      const real = ERRORS[name]!;
      const err = await commandFailure(createLvmExec({ runner: replay(name) })(real.argv));
      expect(err.code).toBe('LVM_COMMAND');
      expect(err.argv).toEqual(real.argv);
      expect(err.exitCode).toBe(real.exitCode);
      expect(err.stderr).toBe(real.stderr.trim());
      expect(err.message).toBe(`${real.argv.join(' ')}: exit ${real.exitCode}: ${why}`);
      expect(err.message).not.toContain('\n');
      expect(err.exitClass).toBe('runtime');
    }
  });

  it('not installed, timed out, killed, canceled', async () => {
    let e = commandError(['thin_delta', '-V'], { exitCode: undefined, stdout: '', stderr: '', spawnError: 'ENOENT' });
    expect(e.code).toBe('LVM_NOT_FOUND');
    expect(e.message).toMatch(/thin_delta not found: install/);
    e = commandError(['lvs'], { exitCode: undefined, stdout: '', stderr: '', timedOut: true, signal: 'SIGTERM' });
    expect(e.code).toBe('LVM_TIMEOUT');
    e = commandError(['lvs'], { exitCode: undefined, stdout: '', stderr: 'x\n', signal: 'SIGKILL' });
    expect([e.code, e.message]).toEqual(['LVM_KILLED', 'lvs: killed by SIGKILL: x']);
    e = commandError(['lvs'], { exitCode: undefined, stdout: '', stderr: '', canceled: true });
    expect(e.code).toBe('LVM_CANCELED');
  });

  it('stderrSummary skips warnings, usage and leaked-descriptor noise', () => {
    expect(stderrSummary('  WARNING: Sum of all thin volume sizes exceeds\n  Logical volume x not found\n')).toBe('Logical volume x not found');
    expect(stderrSummary('File descriptor 10 (/dev/null) leaked on lvm invocation. Parent PID 1: bash\n  Failed\n')).toBe('Failed');
    expect(stderrSummary('')).toBe('');
    expect(stderrSummary('WARNING: only this\n')).toBe('WARNING: only this');
    expect(stderrSummary('x'.repeat(400))).toHaveLength(300);
  });
});

describe('execaRunner (real processes on this host)', () => {
  const exec = createLvmExec({ runner: execaRunner });

  it('thin_delta -V, to stdout and to a file', async (ctx) => {
    let out: string;
    try {
      out = await exec(['thin_delta', '-V']);
    } catch (e) {
      if ((e as CommandError).code === 'LVM_NOT_FOUND') ctx.skip('thin-provisioning-tools not installed');
      throw e;
    }
    expect(out).toMatch(/^\d+\.\d+\.\d+/);
    const dir = await mkdtemp(join(tmpdir(), 'thinarchive-exec-'));
    try {
      const file = join(dir, 'v.txt');
      expect(await exec(['thin_delta', '-V'], { stdoutFile: file })).toBe('');
      expect(await readFile(file, 'utf8')).toBe(out);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a failing real command: thin_delta on a missing file', async (ctx) => {
    const e = await commandFailure(exec(['thin_delta', '--snap1', '1', '--snap2', '2', '/nonexistent/meta']));
    if (e.code === 'LVM_NOT_FOUND') ctx.skip('thin-provisioning-tools not installed');
    expect(e.code).toBe('LVM_COMMAND');
    expect(e.exitCode).not.toBe(0);
    expect(e.stderr.length).toBeGreaterThan(0);
  });

  it('a missing program is LVM_NOT_FOUND (run through a runner that maps the name)', async () => {
    const missing = createLvmExec({ runner: (_f, args, opts) => execaRunner('thinarchive-no-such-tool', args, opts) });
    const e = await commandFailure(missing(['lvs']));
    expect(e.code).toBe('LVM_NOT_FOUND');
  });

  it('a timeout kills the command', async () => {
    const slow = createLvmExec({ runner: (_f, _a, opts) => execaRunner('sleep', ['30'], opts) });
    const t = performance.now();
    const e = await commandFailure(slow(['lvs'], { timeoutMs: 200 }));
    expect(e.code).toBe('LVM_TIMEOUT');
    expect(performance.now() - t, 'killed long before sleep 30 ends').toBeLessThan(20_000);
  });

  it('an abort signal cancels it', async () => {
    const slow = createLvmExec({ runner: (_f, _a, opts) => execaRunner('sleep', ['5'], opts) });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const e = await commandFailure(slow(['lvs'], { signal: ac.signal }));
    expect(e.code).toBe('LVM_CANCELED');
  });
});
