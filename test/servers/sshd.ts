/**
 * A private OpenSSH server on 127.0.0.1 for tests: a random free port, throwaway ed25519 host and
 * client keys in a temp dir, started in the foreground (`sshd -D`) as our child and stopped by its PID.
 * Recipe: ../shared/SERVERS.md ("SSH").
 *
 * Use `requireSshd(ctx)` at the start of a test (or in beforeAll via `sshdOrSkip`): when sshd is not
 * installed the test fails under CI and is skipped elsewhere, like the lab tier.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ciSet, freePort } from '../helpers/host.js';

const run = promisify(execFile);
export const SSHD = '/usr/sbin/sshd';

export { ciSet };

export interface Sshd {
  host: string;
  port: number;
  user: string;
  dir: string;
  /** The client's private key. */
  key: string;
  /** Options for `ssh` (and for StoreOptions.sshOptions / `--ssh-option`) that reach this server. */
  sshOptions: string[];
  /** `ssh://USER@127.0.0.1:PORT` + path (USER: the user running the tests). */
  url(path: string): string;
  /** PID of the listening daemon. */
  pid: number;
  /** PIDs of the per-connection sshd children right now. */
  connectionPids(): Promise<number[]>;
  log(): Promise<string>;
  stop(): Promise<void>;
}

/** The server's client settings as `-o` options for the CLI's `--ssh-option` (`key`: another client key). */
export function cliSshOptions(s: Sshd, key = s.key): string[] {
  return ['-o', `IdentityFile=${key}`, '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o', `UserKnownHostsFile=${join(s.dir, 'known_hosts')}`,
    '-o', 'StrictHostKeyChecking=yes', '-o', 'GSSAPIAuthentication=no', '-o', 'LogLevel=ERROR'];
}

export function sshdAvailable(): { ok: boolean; reason?: string } {
  if (!existsSync(SSHD)) return { ok: false, reason: `${SSHD} is not installed (Debian package openssh-server)` };
  if (!existsSync('/usr/bin/ssh') && !existsSync('/usr/local/bin/ssh')) return { ok: false, reason: 'the ssh client is not installed' };
  return { ok: true };
}

/** Returns true when the tests may run; under CI a missing sshd is an error, elsewhere a skip. */
export function requireSshd(ctx: { skip: (note?: string) => void }): void {
  const a = sshdAvailable();
  if (a.ok) return;
  if (ciSet()) throw new Error(`sshd is not available under CI: ${a.reason}`);
  console.warn(`ssh tests skipped: ${a.reason}`);
  ctx.skip(`sshd not available: ${a.reason}`);
}

export async function startSshd(): Promise<Sshd> {
  const dir = await mkdtemp(join(tmpdir(), 'ta-sshd-'));
  const hostKey = join(dir, 'host_ed25519');
  const key = join(dir, 'client_ed25519');
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', hostKey]);
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
  await writeFile(join(dir, 'authorized_keys'), await readFile(`${key}.pub`));
  const hostPub = (await readFile(`${hostKey}.pub`, 'utf8')).trim().split(/\s+/).slice(0, 2).join(' ');
  const port = await freePort();
  await writeFile(join(dir, 'known_hosts'), `[127.0.0.1]:${port} ${hostPub}\n`);
  await mkdir('/run/sshd', { recursive: true }).catch(() => {}); // privilege separation dir (root only)
  const config = join(dir, 'sshd_config');
  await writeFile(config, [
    `Port ${port}`, 'ListenAddress 127.0.0.1', `HostKey ${hostKey}`, `PidFile ${join(dir, 'sshd.pid')}`,
    `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`, 'PermitRootLogin prohibit-password', 'PasswordAuthentication no',
    'KbdInteractiveAuthentication no', 'UsePAM no', 'StrictModes no', 'MaxStartups 64:30:128',
    'Subsystem sftp internal-sftp', 'LogLevel ERROR',
    // bash sources ~/.bashrc for commands run by sshd unless SHLVL says it is nested; this machine's
    // root .bashrc takes ~200 ms (pyenv), which would be paid by every remote command of the tests.
    'SetEnv SHLVL=1', '',
  ].join('\n'));
  const child: ChildProcess = spawn(SSHD, ['-D', '-f', config, '-E', join(dir, 'sshd.log')], { stdio: 'ignore' });
  const pid = child.pid!;
  let exited = false;
  child.once('exit', () => { exited = true; });
  const sshOptions = [
    '-F', '/dev/null', '-i', key, '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o', `UserKnownHostsFile=${join(dir, 'known_hosts')}`,
    '-o', 'StrictHostKeyChecking=yes', '-o', 'GSSAPIAuthentication=no', '-o', 'LogLevel=ERROR',
  ];
  const user = userInfo().username;
  const s: Sshd = {
    host: '127.0.0.1', port, user, dir, key, sshOptions, pid,
    url: (path: string) => `ssh://${user}@127.0.0.1:${port}${path.startsWith('/') ? '' : '/'}${path}`,
    async connectionPids() {
      try {
        const { stdout } = await run('pgrep', ['-P', String(pid)]);
        return stdout.split('\n').filter(Boolean).map(Number);
      } catch {
        return [];
      }
    },
    log: () => readFile(join(dir, 'sshd.log'), 'utf8').catch(() => ''),
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        await new Promise<void>((r) => (exited ? r() : child.once('exit', () => r())));
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
  // Ready when a real login works.
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (exited) throw new Error(`sshd exited at start: ${await s.log()}`);
    try {
      await run('ssh', [...sshOptions, '-p', String(port), `${user}@127.0.0.1`, 'true'], { timeout: 5000 });
      return s;
    } catch (e) {
      if (Date.now() > deadline) {
        await s.stop();
        throw new Error(`sshd on port ${port} did not accept a login: ${(e as Error).message}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
