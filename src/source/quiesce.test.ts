// The quiesce window with real processes (sh scripts standing in for fsfreeze, a freeze/thaw pair and
// virsh, whose log shows what ran and when): thaw after the work, after a failing work, by the
// watchdog when the work hangs, a hung thaw retried, a SIGKILLed freeze command, and the detached
// guard that thaws when the process running the window is SIGKILLed. virsh is a fake on PATH.
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ThinarchiveError } from '../errors.js';
import { spawnStep, withQuiesce } from './quiesce.js';

const dir = mkdtempSync(join(tmpdir(), 'ta-quiesce-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
/** A fresh log file and a command that appends WORD to it. */
function logger(): { log: string; cmd: (word: string) => string; lines: () => string[] } {
  const log = join(dir, `log-${++n}`);
  writeFileSync(log, '');
  return { log, cmd: (w) => `echo ${w} >> ${log}`, lines: () => readFileSync(log, 'utf8').split('\n').filter(Boolean) };
}
const quiet = { guard: false, handleSignals: false };

describe('withQuiesce', () => {
  it('freezes, runs the work inside, thaws after; reports the window', async () => {
    const l = logger();
    const r = await withQuiesce({ method: 'command', freeze: l.cmd('freeze'), thaw: l.cmd('thaw') }, quiet, async () => {
      writeFileSync(l.log, 'work\n', { flag: 'a' });
      return 42;
    });
    expect(r.value).toBe(42);
    expect(l.lines()).toEqual(['freeze', 'work', 'thaw']);
    expect(r.report).toMatchObject({ method: 'command', thawedBy: 'finally', warnings: [] });
    expect(r.report.freezeMs).toBeGreaterThanOrEqual(0);
  });

  it('thaws when the work fails, and the error is the work\'s', async () => {
    const l = logger();
    await expect(withQuiesce({ method: 'command', freeze: l.cmd('freeze'), thaw: l.cmd('thaw') }, quiet, async () => {
      throw new Error('lvcreate failed');
    })).rejects.toThrow('lvcreate failed');
    expect(l.lines()).toEqual(['freeze', 'thaw']);
  });

  it('a hung work: the watchdog thaws at the timeout and aborts it (FREEZE_TIMEOUT)', async () => {
    const l = logger();
    const t0 = performance.now();
    let thawSeenByWork = false;
    const e = await withQuiesce({ method: 'command', freeze: l.cmd('freeze'), thaw: l.cmd('thaw') }, { ...quiet, timeoutMs: 400 }, async (signal) => {
      // a hung lvcreate: killed through the window's signal
      const r = await spawnStep(['sleep', '30'], 60_000, signal);
      thawSeenByWork = l.lines().includes('thaw') || r.signal === 'SIGKILL';
    }).catch((x: unknown) => x);
    expect((e as ThinarchiveError).code).toBe('FREEZE_TIMEOUT');
    expect(thawSeenByWork).toBe(true);
    expect(l.lines()).toEqual(['freeze', 'thaw']);
    expect(performance.now() - t0).toBeLessThan(10_000);
  });

  it('a thaw that hangs is killed and tried again; the window still ends', async () => {
    const l = logger();
    const once = join(dir, `once-${n}`);
    const r = await withQuiesce({
      method: 'command', freeze: l.cmd('freeze'), thaw: `if [ ! -e ${once} ]; then touch ${once}; sleep 30; fi; ${l.cmd('thaw')}`,
    }, { ...quiet, timeoutMs: 2000 }, async () => 1);
    expect(l.lines()).toEqual(['freeze', 'thaw']);
    expect(r.report.warnings).toHaveLength(1);
    expect(r.report.warnings[0]).toMatch(/attempt 1.*killed/);
  });

  it('a thaw that always fails: THAW_FAILED, naming the command to run by hand', async () => {
    const l = logger();
    const e = await withQuiesce({ method: 'command', freeze: l.cmd('freeze'), thaw: 'exit 3' }, quiet, async () => 1).catch((x: unknown) => x);
    expect((e as ThinarchiveError).code).toBe('THAW_FAILED');
    expect((e as Error).message).toMatch(/by hand: sh -c exit 3/);
  });

  it('a freeze command SIGKILLed after it froze: FREEZE_FAILED, and it is thawed', async () => {
    const l = logger();
    let worked = false;
    const e = await withQuiesce({ method: 'command', freeze: `${l.cmd('freeze')}; kill -9 $$`, thaw: l.cmd('thaw') }, quiet, async () => {
      worked = true;
    }).catch((x: unknown) => x);
    expect((e as ThinarchiveError).code).toBe('FREEZE_FAILED');
    expect((e as Error).message).toMatch(/SIGKILL/);
    expect(worked).toBe(false);
    expect(l.lines()).toEqual(['freeze', 'thaw']);
  });

  it('virsh: domfsfreeze / domfsthaw of the domain (a fake virsh on PATH)', async () => {
    const l = logger();
    const bin = join(dir, `bin-${n}`);
    mkdirSync(bin);
    writeFileSync(join(bin, 'virsh'), `#!/bin/sh\necho "virsh $*" >> ${l.log}\n`);
    chmodSync(join(bin, 'virsh'), 0o755);
    const path = process.env.PATH;
    process.env.PATH = `${bin}:${path}`;
    try {
      const r = await withQuiesce({ method: 'virsh', domain: 'vm-101' }, quiet, async () => {
        writeFileSync(l.log, 'work\n', { flag: 'a' });
      });
      expect(r.report).toMatchObject({ method: 'virsh', targets: ['vm-101'] });
    } finally {
      process.env.PATH = path;
    }
    expect(l.lines()).toEqual(['virsh domfsfreeze vm-101', 'work', 'virsh domfsthaw vm-101']);
  });

  it('the process running the window is SIGKILLed: the detached guard thaws after the timeout', async () => {
    const l = logger();
    // the built module (dist/, as the e2e tests use): a plain node process that can be SIGKILLed
    const built = resolve(__dirname, '..', '..', 'dist', 'source', 'quiesce.js');
    const code = `const { withQuiesce } = await import(${JSON.stringify(built)});
await withQuiesce({ method: 'command', freeze: ${JSON.stringify(l.cmd('freeze'))}, thaw: ${JSON.stringify(l.cmd('thaw'))} }, { timeoutMs: 1000 }, async () => {
  console.log('in-window');
  await new Promise((r) => setTimeout(r, 60_000));
});`;
    const p = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((res, rej) => {
      p.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('in-window')) res(); });
      p.on('exit', (c) => rej(new Error(`child exited ${c}`)));
    });
    p.kill('SIGKILL');
    expect(l.lines()).toEqual(['freeze']);
    const t0 = performance.now();
    while (!l.lines().includes('thaw') && performance.now() - t0 < 15_000) await new Promise((r) => setTimeout(r, 100));
    expect(l.lines()).toEqual(['freeze', 'thaw']);
  });
});
