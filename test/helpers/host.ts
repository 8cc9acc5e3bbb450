/**
 * Facts of the host the tests run on, shared by the lab harness and the test servers (and, through
 * scripts/lib/lab.mjs, by the demo and the benchmarks): whether this is CI, a free TCP port, a dead pid.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';

/** $CI is set (not empty, "0" or "false"): a tier that cannot run here is then a failure, not a skip. */
export function ciSet(): boolean {
  const v = (process.env.CI ?? '').trim().toLowerCase();
  return v !== '' && v !== '0' && v !== 'false';
}

/** The pid of a process that has exited (and been reaped): no process has it now. */
export function deadPid(): number {
  return spawnSync('true').pid!;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Can we attach a loop device here? Attaches one to a tiny file and detaches it. */
export function probeLoopDevices(): string | null {
  if (process.getuid?.() !== 0) return 'not running as root';
  const dir = join(process.env.THINARCHIVE_E2E_TMP ?? '/tmp', `thinarchive-e2e-probe-${process.pid}`);
  try {
    mkdirSync(dir, { recursive: true });
    const f = join(dir, 'probe.img');
    writeFileSync(f, Buffer.alloc(1 << 20));
    const dev = execFileSync('losetup', ['-f', '--show', f], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    execFileSync('losetup', ['-d', dev]);
    return null;
  } catch (e) {
    return `cannot attach a loop device: ${(e as Error).message.split('\n')[0]}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
