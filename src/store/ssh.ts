/**
 * ssh:// store: `ssh://[user@]host[:port]/path` over the system `ssh` binary, so the user's keys,
 * agent and ssh_config apply; options given with `--ssh-option` (StoreOptions.sshOptions) are passed
 * to every ssh invocation (e.g. `-c aes128-gcm@openssh.com`, `-o Compression=yes`, `-i KEY`).
 * The remote side needs only a POSIX shell and the usual utilities (sh, ls-free globbing, cat, wc,
 * mkdir, ln, rm, tail, head or GNU dd, sync); thinarchive is not needed there.
 *
 * Layout as in the directory store: `PATH/<chain-id>/<sequence>-<archive-id>.tna`; PATH may also be a
 * single chain directory. A path `/~/x` means `x` relative to the remote home directory.
 *
 * Writing: the archive streams into `cat > .NAME.tmp-HOST-PID-TIME` (noclobber) in the chain
 * directory, then `sync FILE` (GNU coreutils >= 8.24 fsyncs just that file; elsewhere plain `sync`).
 * `commit` publishes it with `ln TMP FINAL` (fails when FINAL exists: an archive is never replaced),
 * removes the temporary name and syncs the directory (`sync DIR`, or `sync`); in the same remote script,
 * just before that `ln`, it claims the sequence (types.ts): the claim's content goes to a temporary
 * file that is linked with `ln` (no -f: never replaces, atomic) to `.<sequence>.seq`, so of writers
 * racing for one sequence exactly one publishes and the others fail with CHAIN_FORK (`exclusiveCreate`,
 * the store's one exclusive-create primitive, which markers such as leases use too). Nothing is ever visible
 * under a final name before it is complete and durable. A writer that dies leaves only a hidden
 * temporary file; the next writer to the store removes it when its name shows a writer of this host
 * whose process is gone, or when it has not been modified for 15 minutes (`find -mmin`).
 *
 * Reading: ranged reads run `dd iflag=skip_bytes,count_bytes` (GNU) or `tail -c +N | head -c LEN`,
 * through a cache of 16 windows of 256 KiB so that many small reads cost few round trips; `stream()` runs
 * `cat`/`tail -c +N`. All of it goes over one multiplexed connection (ControlMaster with a private
 * ControlPath in a temporary directory), which ends when the store is closed or this process dies.
 * Every remote path is single-quoted for the remote shell.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { mkdtemp, readdir, rm, rmdir, stat } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { posix } from 'node:path';
import { ThinarchiveError, UnsafeError, UsageError, type ErrorCode } from '../errors.js';
import { pidExists } from '../process.js';
import type { ByteSource } from '../archive/reader.js';
import { claimHooks, claimLost, claimText, resolveClaimConflict } from './claims.js';
import type { ArchiveSink } from '../archive/writer.js';
import type { StoreOptions } from './types.js';
import type { ArchiveStore, ChainListing, CreateArchiveOptions, PendingArchive, StoredArchive } from './types.js';
import {
  archiveFileName, CHAIN_RE, checkChainId, checkMarker, claimFileName, MARKER_RE, NAME_RE, onlyChainOf, sequenceTaken, sortArchives,
} from './layout.js';

const CHAIN_GLOB = '????????-????-????-????-????????????';
const TEMP_RE = /^\..+\.(?:tna|seq|\d{10})\.tmp-([A-Za-z0-9.-]+)-(\d+)-[0-9a-z]+$/;
/** A temporary file not modified for this long belongs to a dead writer. */
const STALE_MINUTES = 15;
const WINDOW = 256 << 10;
const DD_PROBE = 'dd if=/dev/null of=/dev/null iflag=skip_bytes,count_bytes count=0 status=none 2>/dev/null';
const CACHE_WINDOWS = 16;
/** Concurrent sessions on the shared connection. */
const MAX_SESSIONS = 8;

export interface SshTarget {
  /** The URL as given. */
  url: string;
  user?: string;
  host: string;
  port?: number;
  /** Remote path: absolute, or relative to the remote home directory. */
  path: string;
}

/** Parse `ssh://[user@]host[:port]/path` (host may be `[ipv6]`; `/~/path` is relative to home). */
export function parseSshUrl(url: string): SshTarget {
  const m = /^ssh:\/\/(?:([^@/]+)@)?(\[[^\]/]+\]|[^:/@]+)(?::(\d+))?(\/.*)?$/i.exec(url);
  if (!m || !m[4]) throw new UsageError(`invalid ssh URL ${url}: expected ssh://[user@]host[:port]/path`);
  const host = m[2].startsWith('[') ? m[2].slice(1, -1) : m[2];
  if (host.startsWith('-') || (m[1] ?? '').startsWith('-')) throw new UsageError(`invalid ssh URL ${url}: host and user may not start with '-'`);
  const port = m[3] === undefined ? undefined : Number(m[3]);
  if (port !== undefined && (port < 1 || port > 65535)) throw new UsageError(`invalid port in ${url}`);
  let path = m[4];
  if (path === '/~' || path === '/~/') path = '.';
  else if (path.startsWith('/~/')) path = path.slice(3);
  if (path.length > 1) path = path.replace(/\/+$/, '');
  return { url, user: m[1], host, port, path };
}

/** Single-quote `s` for a POSIX shell (also safe for csh and fish login shells). */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A quoted path that no command can mistake for an option. */
function qp(path: string): string {
  return shq(path.startsWith('-') ? `./${path}` : path);
}

function lastLine(s: string): string {
  const lines = s.split('\n').map((l) => l.trim()).filter(Boolean);
  return lines[lines.length - 1] ?? '';
}

/**
 * ssh's own authentication failure ("Permission denied (publickey,…)") as one STORE_AUTH error naming
 * the host, whichever step met it; undefined for any other failure.
 */
function sshAuthError(label: string, stderr: string): ThinarchiveError | undefined {
  const line = stderr.split('\n').map((l) => l.trim()).find((l) => /^(\S+: )?Permission denied \(|Too many authentication failures/.test(l));
  if (!line) return undefined;
  return new ThinarchiveError('STORE_AUTH', `${label} rejected the credentials: ssh authentication failed (${line}); check the key (-o IdentityFile=KEY) and the remote user's authorized_keys`);
}

/** A remote failure as one line, with an IO_* code when the message shows the cause. */
function remoteError(what: string, stderr: string, status: number | null): ThinarchiveError {
  const line = lastLine(stderr);
  let code: ErrorCode = 'REMOTE_FAILED';
  if (/no space left/i.test(line)) code = 'IO_ENOSPC';
  else if (/permission denied|operation not permitted/i.test(line)) code = 'IO_EACCES';
  else if (/no such file|no such directory|not a directory/i.test(line)) code = 'IO_ENOENT';
  else if (/read-only file system/i.test(line)) code = 'IO_EROFS';
  const reason = line || (status === null ? 'the remote command was killed' : `remote command failed with status ${status}`);
  return new ThinarchiveError(code, `${what}: ${reason}`, 'runtime');
}

interface RunResult {
  status: number | null;
  stdout: Buffer;
  stderr: string;
}

/** How to reach one host with ssh: argv, and the optional shared (multiplexed) connection. */
export class SshConnection {
  private controlDir: string | undefined;
  private master: ChildProcess | undefined;
  private masterReady: Promise<void> | undefined;
  private readonly children = new Set<ChildProcess>();
  private readonly waiters: (() => void)[] = [];
  /** Removes the control directory if the process exits without `close` (the master then ends by itself). */
  private readonly onExit = (): void => {
    if (this.controlDir) rmSync(this.controlDir, { recursive: true, force: true });
  };

  constructor(readonly target: Omit<SshTarget, 'path'>, private readonly opts: StoreOptions = {}) {}

  /** `user@host:port` for messages. */
  get label(): string {
    return `${this.target.user ? `${this.target.user}@` : ''}${this.target.host}${this.target.port ? `:${this.target.port}` : ''}`;
  }

  private baseArgs(): string[] {
    const a: string[] = [];
    if (this.target.port) a.push('-p', String(this.target.port));
    if (this.target.user) a.push('-l', this.target.user);
    a.push(...(this.opts.sshOptions ?? []));
    return a;
  }

  /** The ssh binary. */
  get sshBinary(): string {
    return this.sshBin;
  }

  private get sshBin(): string {
    return this.opts.sshCommand ?? 'ssh';
  }

  /** The argv to run `command` (a POSIX sh script) on the remote host. */
  argv(script: string, opts: { mux?: boolean; tty?: boolean } = {}): string[] {
    const mux = opts.mux !== false && this.controlDir && this.master ? ['-o', `ControlPath=${posix.join(this.controlDir, 'cm')}`, '-o', 'ControlMaster=no'] : [];
    return [...this.baseArgs(), ...mux, '-e', 'none', '-T', this.target.host, `sh -c ${shq(script)}`];
  }

  /** Start the shared connection (once). Authentication errors surface here, as one line. */
  async connect(): Promise<void> {
    if (this.opts.sshMultiplex === false) return;
    // A failed start is not kept: the next call tries again (a long-lived process, the daemon, must
    // reconnect once the host is reachable again).
    this.masterReady ??= this.startMaster().catch((e: unknown) => {
      this.masterReady = undefined;
      throw e;
    });
    return this.masterReady;
  }

  private async startMaster(): Promise<void> {
    await removeDeadControlDirs();
    this.controlDir = await mkdtemp(posix.join(tmpdir(), 'ta-ssh-'));
    process.once('exit', this.onExit);
    const sock = posix.join(this.controlDir, 'cm');
    // The master's own session is `cat`: when this process ends (even killed), its stdin closes, the
    // session ends and the master exits once the multiplexed sessions are done.
    const child = spawn(this.sshBin, [...this.baseArgs(), '-M', '-o', `ControlPath=${sock}`, '-o', 'ControlPersist=no', '-e', 'none', '-T',
      this.target.host, 'cat >/dev/null'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    let exited: number | null | undefined;
    let spawnError: Error | undefined;
    child.stderr!.on('data', (b: Buffer) => { if (stderr.length < 65536) stderr += b.toString(); });
    child.on('error', (e) => { spawnError = e; });
    child.on('exit', (code) => { exited = code; });
    child.stdin!.on('error', () => {});
    for (const s of [child.stdin, child.stderr] as { unref?: () => void }[]) s.unref?.();
    child.unref();
    this.master = child;
    try {
      await this.waitForMaster(child, sock, () => ({ stderr, exited, spawnError }));
    } catch (e) {
      this.master = undefined;
      await rm(this.controlDir, { recursive: true, force: true });
      this.controlDir = undefined;
      process.off('exit', this.onExit);
      throw e;
    }
  }

  private async waitForMaster(child: ChildProcess, sock: string, state: () => { stderr: string; exited: number | null | undefined; spawnError?: Error }): Promise<void> {
    const deadline = Date.now() + 60_000;
    while (!existsSync(sock)) {
      const { stderr, exited, spawnError } = state();
      if (spawnError) throw new ThinarchiveError('SSH_FAILED', `cannot run ${this.sshBin}: ${spawnError.message}`);
      if (exited !== undefined) {
        throw sshAuthError(this.label, stderr) ?? new ThinarchiveError('SSH_CONNECT', `cannot connect to ${this.label} with ssh: ${lastLine(stderr) || `ssh exited with status ${exited}`}`);
      }
      if (Date.now() > deadline) {
        child.kill('SIGTERM');
        throw new ThinarchiveError('SSH_CONNECT', `cannot connect to ${this.label} with ssh: timed out`);
      }
      await new Promise((r) => setTimeout(r, 15));
    }
  }

  /** Start `script` remotely; stdio piped. */
  async spawn(script: string, stdin: 'pipe' | 'ignore' = 'ignore'): Promise<ChildProcess> {
    await this.connect();
    // sshd allows 10 sessions per connection by default (MaxSessions), the master's own among them;
    // beyond that ssh falls back to a new connection each time, which is slow.
    while (this.children.size >= MAX_SESSIONS) await new Promise<void>((r) => this.waiters.push(r));
    const child = spawn(this.sshBin, this.argv(script), { stdio: [stdin, 'pipe', 'pipe'] });
    this.children.add(child);
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      this.children.delete(child);
      this.waiters.shift()?.();
    };
    child.once('close', release);
    child.once('error', release);
    return child;
  }

  /** Run `script` remotely and collect its output. */
  async run(script: string, input?: Uint8Array): Promise<RunResult> {
    const child = await this.spawn(script, input ? 'pipe' : 'ignore');
    return collect(child, input);
  }

  /** Run `script`; a failure becomes one line naming `what`. Returns stdout. */
  async check(script: string, what: string): Promise<string> {
    const r = await this.run(script);
    if (r.status !== 0) throw this.failure(what, r);
    return r.stdout.toString();
  }

  /** The error for a failed run: ssh's own failures (status 255) name the connection. */
  failure(what: string, r: { status: number | null; stderr: string }): ThinarchiveError {
    if (r.status === 255) return sshAuthError(this.label, r.stderr) ?? new ThinarchiveError('SSH_CONNECT', `${what}: ssh to ${this.label} failed: ${lastLine(r.stderr) || 'connection lost'}`);
    return remoteError(what, r.stderr, r.status);
  }

  async close(): Promise<void> {
    for (const c of this.children) c.kill('SIGTERM');
    const m = this.master;
    this.master = undefined;
    this.masterReady = undefined;
    if (m && m.exitCode === null && m.signalCode === null) {
      const gone = new Promise<void>((r) => m.once('exit', () => r()));
      m.stdin!.end();
      const t = setTimeout(() => m.kill('SIGTERM'), 2000);
      await gone;
      clearTimeout(t);
    }
    if (this.controlDir) await rm(this.controlDir, { recursive: true, force: true });
    this.controlDir = undefined;
    process.off('exit', this.onExit);
  }
}

function collect(child: ChildProcess, input?: Uint8Array): Promise<RunResult> {
  return new Promise((resolve) => {
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => { if (stderr.length < 65536) stderr += b.toString(); });
    child.once('error', (e) => resolve({ status: 255, stdout: Buffer.alloc(0), stderr: `cannot run ssh: ${e.message}` }));
    child.once('close', (code) => resolve({ status: code, stdout: Buffer.concat(out), stderr }));
    if (input) {
      child.stdin!.on('error', () => {});
      child.stdin!.end(input);
    }
  });
}

/** `p`, or undefined when it takes longer than `ms` (the timer does not keep the process alive). */
export async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<undefined>((r) => { timer = setTimeout(() => r(undefined), ms); })]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Control directories of runs that were killed (SIGKILL leaves no chance to remove them): empty
 * (their master is gone with its socket) and over an hour old. rmdir never removes a non-empty one.
 */
async function removeDeadControlDirs(): Promise<void> {
  try {
    for (const n of await readdir(tmpdir())) {
      if (!n.startsWith('ta-ssh-')) continue;
      const p = posix.join(tmpdir(), n);
      if (Date.now() - (await stat(p)).mtimeMs > 3600_000) await rmdir(p).catch(() => {});
    }
  } catch {
    // best effort
  }
}

/**
 * The exclusive-create primitive (types.ts, markers), as a shell condition: `content` goes to the
 * temporary file `tmp` (noclobber), which `ln` (no -f: never replaces, atomic) links to `path`. True
 * (status 0) when this created `path`; `tmp` is left for the caller to remove.
 */
function exclusiveCreate(tmp: string, path: string, content: string): string {
  return `( set -C; printf '%s' ${shq(content)} > ${qp(tmp)} ) && ln ${qp(tmp)} ${qp(path)} 2>/dev/null`;
}

/** A temporary name beside `path` for a writer of this host and process (TEMP_RE). */
function tempBeside(path: string): string {
  return `${path}.tmp-${tempHost()}-${process.pid}-${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
}

/** Wait for a child to exit; returns its status (null when killed). */
function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((r) => child.once('close', (code) => r(code)));
}

/** This host's name as it appears in temporary file names (`.NAME.tmp-HOST-PID-TIME`). */
export function tempHost(): string {
  return hostname().replace(/[^A-Za-z0-9.-]/g, '_').replace(/_/g, '-') || 'host';
}

export class SshStore implements ArchiveStore {
  readonly conn: SshConnection;
  private readonly root: string;
  private ddMode: Promise<'gnu' | 'posix'> | undefined;

  constructor(readonly target: SshTarget, readonly opts: StoreOptions = {}) {
    this.conn = new SshConnection(target, opts);
    this.root = target.path;
  }

  get url(): string {
    return this.target.url;
  }

  private urlFor(remotePath: string): string {
    const t = this.target;
    const base = `ssh://${t.user ? `${t.user}@` : ''}${t.host.includes(':') ? `[${t.host}]` : t.host}${t.port ? `:${t.port}` : ''}`;
    return `${base}${remotePath.startsWith('/') ? '' : '/~/'}${remotePath}`;
  }

  private remotePathOf(a: StoredArchive): string {
    return parseSshUrl(a.path).path;
  }

  async listChains(): Promise<ChainListing[]> {
    return this.list(false);
  }

  /**
   * The chains; with `missingOk` a store directory that does not exist yet holds none. `only` limits
   * the listing to one chain directory (plus archives in the root, when the root is a chain).
   */
  private async list(missingOk: boolean, only?: string): Promise<ChainListing[]> {
    const r = qp(this.root);
    const script = [
      // Whether ranged reads can use GNU dd (found out here to save a round trip later).
      `${DD_PROBE} && echo 'D gnu' || echo 'D posix'`,
      `cd ${r} 2>/dev/null || { if [ -e ${r} ]; then echo "cannot enter ${this.root.replace(/[^\w./ -]/g, '?')}: permission denied or not a directory" >&2; else ${missingOk ? 'exit 0' : "echo 'no such directory' >&2"}; fi; exit 3; }`,
      `for f in [0-9]*.tna [0-9]*.tna.age; do [ -f "$f" ] && printf 'A . %s %s\\n' "$(wc -c < "$f")" "$f"; done`,
      `for d in ${only && CHAIN_RE.test(only) ? only : CHAIN_GLOB}; do [ -d "$d" ] || continue; printf 'C %s\\n' "$d";`,
      `  for f in "$d"/[0-9]*.tna "$d"/[0-9]*.tna.age; do [ -f "$f" ] && printf 'A %s %s %s\\n' "$d" "$(wc -c < "$f")" "\${f#*/}"; done; done`,
      'exit 0',
    ].join('\n');
    const out = await this.conn.check(script, `cannot read store ${this.url}`);
    const rootArchives: StoredArchive[] = [];
    const chains = new Map<string, StoredArchive[]>();
    const rootChain = posix.basename(this.root);
    for (const line of out.split('\n')) {
      let m: RegExpExecArray | null;
      if ((m = /^D (gnu|posix)$/.exec(line))) {
        const mode = m[1] as 'gnu' | 'posix';
        this.ddMode ??= Promise.resolve(mode);
      } else if ((m = /^C (\S+)$/.exec(line)) && CHAIN_RE.test(m[1])) {
        if (!chains.has(m[1])) chains.set(m[1], []);
      } else if ((m = /^A (\S+) +(\d+) (\S+)$/.exec(line))) {
        const nm = NAME_RE.exec(m[3]);
        if (!nm) continue;
        const inRoot = m[1] === '.';
        if (!inRoot && !CHAIN_RE.test(m[1])) continue;
        const chainId = inRoot ? rootChain : m[1];
        const remote = inRoot ? posix.join(this.root, m[3]) : posix.join(this.root, m[1], m[3]);
        const a: StoredArchive = { name: m[3], path: this.urlFor(remote), chainId, sequence: Number(nm[1]), archiveId: nm[2], size: Number(m[2]) };
        if (inRoot) rootArchives.push(a);
        else chains.get(m[1])!.push(a);
      }
    }
    if (rootArchives.length > 0) return [{ chainId: rootChain, dir: this.url, archives: sortArchives(rootArchives) }];
    return [...chains.keys()].sort().map((c) => ({ chainId: c, dir: this.urlFor(posix.join(this.root, c)), archives: sortArchives(chains.get(c)!) }));
  }

  async onlyChain(): Promise<ChainListing> {
    return onlyChainOf(this.url, await this.listChains());
  }

  async chainArchives(chainId: string): Promise<StoredArchive[]> {
    const chains = await this.list(true, chainId);
    return chains.find((c) => c.chainId === chainId)?.archives ?? [];
  }

  /**
   * A script printing the temporary files in every chain directory (or one chain's: `chains`, a chain
   * id) (`T chain/name`) and those not modified for STALE_MINUTES (`O chain/name`). Runs in a
   * subshell: the caller's directory is kept.
   */
  private tempsScript(chains = CHAIN_GLOB): string {
    return [
      `( cd ${qp(this.root)} || exit 0`,
      `for d in ${chains}; do [ -d "$d" ] || continue;`,
      `  for f in "$d"/.*.tna.tmp-* "$d"/.*.tna.age.tmp-* "$d"/.*.seq.tmp-* "$d"/.lease.*.tmp-*; do [ -f "$f" ] && printf 'T %s\\n' "$f"; done;`,
      `  find "$d" ! -name "$d" -prune \\( -name '.*.tna.tmp-*' -o -name '.*.tna.age.tmp-*' -o -name '.*.seq.tmp-*' -o -name '.lease.*.tmp-*' \\) -mmin +${STALE_MINUTES} 2>/dev/null | sed 's/^/O /';`,
      'done )',
    ].join('\n');
  }

  /** From tempsScript's output: the remote paths of temporary files whose writers are gone. */
  private staleTemps(out: string): string[] {
    const me = tempHost();
    const stale = new Set<string>();
    for (const line of out.split('\n')) {
      const m = /^([TO]) (.+)$/.exec(line);
      if (!m) continue;
      const t = TEMP_RE.exec(posix.basename(m[2]));
      if (!t) continue;
      if (m[1] === 'O' || (t[1] === me && !pidExists(Number(t[2])))) stale.add(posix.join(this.root, m[2]));
    }
    return [...stale];
  }

  async sweep(chainId: string): Promise<string[]> {
    checkChainId(chainId);
    const dir = posix.join(this.root, chainId);
    const stale = this.staleTemps(await this.conn.check(this.tempsScript(chainId), `cannot list temporary files in ${this.urlFor(dir)}`));
    if (stale.length) await this.conn.check(`rm -f ${stale.map(qp).join(' ')}`, `cannot remove temporary files in ${this.urlFor(dir)}`);
    return stale.map((p) => this.urlFor(p));
  }

  async createArchive(chainId: string, sequence: number, archiveId: string, opts: CreateArchiveOptions = {}): Promise<PendingArchive> {
    checkChainId(chainId);
    const name = archiveFileName(sequence, archiveId, opts.encrypted);
    if (!NAME_RE.test(name)) throw new UsageError(`invalid archive name ${name}`);
    const dir = posix.join(this.root, chainId);
    const finalPath = posix.join(dir, name);
    const tmp = posix.join(dir, `.${name}.tmp-${tempHost()}-${process.pid}-${Date.now().toString(36)}`);
    const url = this.urlFor(finalPath);
    // One session, no round trip before the data flows: create the chain directory (exit 3 if that
    // fails), list the temporary files (removed at commit or abort when their writers are gone), then
    // stream into the temporary file and sync it.
    const writer = await this.conn.spawn([
      `mkdir -p ${qp(dir)} || exit 3`,
      this.tempsScript(),
      `set -C; cat > ${qp(tmp)} && { sync ${qp(tmp)} 2>/dev/null || sync; }`,
    ].join('\n'), 'pipe');
    const claim = posix.join(dir, claimFileName(sequence));
    return new SshPendingArchive(this.conn, writer, url, tmp, finalPath, dir, {
      dirUrl: this.urlFor(dir),
      stale: (out) => this.staleTemps(out).filter((p) => p !== tmp),
      claim: {
        path: claim, tmp: tempBeside(claim), archiveId, replaces: !!opts.replaces, content: () => claimText(archiveId, opts.leaseToken ?? null),
        conflict: () => resolveClaimConflict({ store: this, chainId, sequence, archiveId, where: this.urlFor(claim), log: opts.log }),
        lost: (holder) => claimLost(this.url, chainId, sequence, holder),
        busy: () => sequenceTaken(this.url, chainId, sequence, '', this.urlFor(claim), false, 'another send claiming it at this moment'),
      },
    });
  }

  async createMarker(chainId: string, name: string, content: string): Promise<boolean> {
    checkMarker(chainId, name);
    const dir = posix.join(this.root, chainId);
    const path = posix.join(dir, name);
    const tmp = tempBeside(path);
    const r = await this.conn.run([
      `mkdir -p ${qp(dir)} || exit 3`,
      `if ${exclusiveCreate(tmp, path, content)}; then rm -f ${qp(tmp)}; sync ${qp(dir)} 2>/dev/null || sync; exit 0; fi`,
      `rm -f ${qp(tmp)}; [ -e ${qp(path)} ] && exit 17; exit 4`,
    ].join('\n'));
    if (r.status === 0) return true;
    if (r.status === 17) return false;
    throw this.conn.failure(r.status === 3 ? `cannot create chain directory ${this.urlFor(dir)}` : `cannot create ${this.urlFor(path)}`, r);
  }

  async readMarker(chainId: string, name: string): Promise<string | undefined> {
    checkMarker(chainId, name);
    const p = qp(posix.join(this.root, chainId, name));
    // Status 44: there is no such marker (the second cat reports any other failure).
    const r = await this.conn.run(`cat ${p} 2>/dev/null && exit 0; [ -e ${p} ] || exit 44; cat ${p}`);
    if (r.status === 44) return undefined;
    if (r.status !== 0) throw this.conn.failure(`cannot read ${this.urlFor(posix.join(this.root, chainId, name))}`, r);
    return r.stdout.toString();
  }

  async listMarkers(chainId: string, prefix: string): Promise<string[]> {
    checkChainId(chainId);
    const dir = posix.join(this.root, chainId);
    const out = await this.conn.check(`cd ${qp(dir)} 2>/dev/null || exit 0; for f in ${shq(prefix)}*; do [ -f "$f" ] && printf '%s\\n' "$f"; done; exit 0`,
      `cannot read ${this.urlFor(dir)}`);
    return out.split('\n').filter((n) => n.startsWith(prefix) && MARKER_RE.test(n)).sort();
  }

  async deleteMarker(chainId: string, name: string): Promise<void> {
    checkMarker(chainId, name);
    const path = posix.join(this.root, chainId, name);
    await this.conn.check(`rm -f ${qp(path)}`, `cannot delete ${this.urlFor(path)}`);
  }

  private dd(): Promise<'gnu' | 'posix'> {
    this.ddMode ??= this.conn.run(`${DD_PROBE} && echo gnu || echo posix`)
      .then((r) => (r.stdout.toString().trim() === 'gnu' ? 'gnu' : 'posix'));
    return this.ddMode;
  }

  async openArchive(a: StoredArchive): Promise<ByteSource> {
    const path = this.remotePathOf(a);
    let size = a.size;
    if (size === undefined) {
      const out = await this.conn.check(`wc -c < ${qp(path)}`, `cannot open archive ${a.path}`);
      size = Number(out.trim());
      if (!Number.isFinite(size)) throw new ThinarchiveError('REMOTE_FAILED', `cannot open archive ${a.path}: unexpected size ${out.trim()}`);
    }
    return new SshByteSource(this.conn, a.path, path, size, await this.dd());
  }

  /** Open one archive named by URL (`ssh://host/path/…/NAME.tna`), whatever directory it is in. */
  async openArchiveUrl(url: string): Promise<{ archive: StoredArchive; source: ByteSource }> {
    const t = parseSshUrl(url);
    const name = posix.basename(t.path);
    const m = NAME_RE.exec(name);
    const archive: StoredArchive = { name, path: url, chainId: posix.basename(posix.dirname(t.path)), sequence: m ? Number(m[1]) : 0, archiveId: m ? m[2] : '' };
    return { archive, source: await this.openArchive(archive) };
  }

  async deleteArchive(a: StoredArchive): Promise<void> {
    const path = this.remotePathOf(a);
    await this.conn.check(`rm ${qp(path)} && { sync ${qp(posix.dirname(path))} 2>/dev/null || sync; }`, `cannot delete ${a.path}`);
  }

  async checkDeletable(archives: StoredArchive[]): Promise<void> {
    const dirs = [...new Set(archives.map((a) => posix.dirname(this.remotePathOf(a))))];
    if (dirs.length === 0) return;
    const script = dirs.map((d) => `{ test -w ${qp(d)} || { echo ${qp(`${d}: not writable`)} >&2; exit 1; }; }`).join(' && ');
    await this.conn.check(script, 'cannot delete archives');
  }

  async close(): Promise<void> {
    await this.conn.close();
  }
}

class SshPendingArchive implements PendingArchive {
  readonly sink: ArchiveSink;
  private done = false;
  private failure: unknown;

  private stdout = '';

  constructor(private readonly conn: SshConnection, private readonly writer: ChildProcess, readonly path: string,
    private readonly tmp: string, private readonly finalPath: string, private readonly dir: string,
    private readonly extra: {
      dirUrl: string; stale: (out: string) => string[];
      claim: {
        path: string; tmp: string; archiveId: string; replaces: boolean; content: () => string;
        conflict: () => Promise<'mine' | 'retry'>; lost: (holder: string) => ThinarchiveError; busy: () => ThinarchiveError;
      };
    }) {
    let stderr = '';
    writer.stderr!.on('data', (b: Buffer) => { if (stderr.length < 65536) stderr += b.toString(); });
    writer.stdout!.on('data', (b: Buffer) => { if (this.stdout.length < 1 << 20) this.stdout += b.toString(); });
    writer.stdin!.on('error', (e) => { this.failure ??= e; });
    // The status once ssh has exited and its stderr is read (not waiting for our end of stdin).
    const exited = new Promise<number | null>((r) => {
      writer.once('exit', (code) => {
        writer.stdin!.destroy();
        r(code);
      });
      writer.once('error', (e) => {
        stderr += `\ncannot run ssh: ${e.message}`;
        r(255);
      });
    });
    const stderrDone = new Promise<void>((r) => writer.stderr!.once('close', () => r()));
    this.status = Promise.all([exited, stderrDone]).then(([st]) => ({ status: st, stderr }));
    const self = this;
    const gone = (): boolean => self.done || !!self.failure || self.writer.stdin!.destroyed || self.writer.exitCode !== null || self.writer.signalCode !== null;
    this.sink = {
      async write(chunk: Uint8Array): Promise<void> {
        const w = self.writer.stdin!;
        if (gone()) throw await self.writeError();
        // Wait until the chunk is handed to the pipe (the write callback), not only queued: the
        // archive writer reuses the chunk's memory afterwards (ArchiveSink).
        let written = false;
        await new Promise<void>((resolve) => {
          let settled = false;
          const fin = (): void => {
            if (settled) return;
            settled = true;
            w.off('close', fin);
            self.writer.off('exit', fin);
            resolve();
          };
          w.write(chunk, (e) => {
            if (!e) written = true;
            fin();
          });
          w.once('close', fin);
          self.writer.once('exit', fin);
          if (gone()) fin();
        });
        if (!written) throw await self.writeError();
      },
    };
  }

  private readonly status: Promise<{ status: number | null; stderr: string }>;

  /** The error to report when the writer is gone: the remote's reason if it gave one. */
  private async writeError(): Promise<ThinarchiveError> {
    const s = await within(this.status, 5000);
    if (s && s.status !== 0) return this.statusError(s);
    return new ThinarchiveError('REMOTE_FAILED', `cannot write ${this.path}: the connection to ${this.conn.label} was lost`);
  }

  /** The writer's failure: exit 3 is the chain directory that could not be created. */
  private statusError(s: { status: number | null; stderr: string }): ThinarchiveError {
    return this.conn.failure(s.status === 3 ? `cannot create chain directory ${this.extra.dirUrl}` : `cannot write ${this.path}`, s);
  }

  /** `rm -f` of the temporary files of dead writers the write session found ('' when none). */
  private rmStale(): string {
    const stale = this.extra.stale(this.stdout);
    return stale.length ? `rm -f ${stale.map(qp).join(' ')}; ` : '';
  }

  /** PID of the local ssh process streaming the archive (tests kill it to simulate a dropped link). */
  get writerPid(): number | undefined {
    return this.writer.pid;
  }

  async commit(): Promise<void> {
    if (this.done) throw new UsageError(`${this.path} was already committed or aborted`);
    if (this.failure) throw await this.writeError();
    this.writer.stdin!.end();
    const s = await this.status;
    if (s.status !== 0) throw this.statusError(s);
    const t = qp(this.tmp);
    const f = qp(this.finalPath);
    const c = this.extra.claim;
    const [cp, ct, id] = [qp(c.path), qp(c.tmp), qp(c.archiveId)];
    // Claim the sequence (exit 18 when another archive has it; resolved by claims.ts: an orphan of a
    // gone writer is removed and the claim made again), then publish at once; a claim this script
    // made is removed again when the archive does not become visible. Right after the publish the
    // claim must still be ours (exit 20: a stalled writer whose claim was removed as an orphan
    // withdraws its archive).
    const claimPart = (): string => [
      'claimed=0',
      `if ${exclusiveCreate(c.tmp, c.path, c.content())}; then claimed=1; rm -f ${ct}`,
      `else rm -f ${ct}; [ -f ${cp} ] || exit 3; h=$(head -n 1 ${cp}); ${c.replaces ? ':' : `if [ "$h" != ${id} ]; then exit 18; fi`}; fi`,
    ].join('\n');
    const publishPart = [
      `if ln ${t} ${f} 2>/dev/null; then :; elif [ -e ${f} ]; then rm -f ${t}; exit 17; else ln ${t} ${f} || { [ $claimed = 1 ] && rm -f ${cp}; exit 3; }; fi`,
      c.replaces ? '' : `h=$(head -n 1 ${cp} 2>/dev/null); if [ "$h" != ${id} ]; then rm -f ${f}; printf 'H %s\\n' "$h"; exit 20; fi`,
      `rm -f ${t}`,
      `sync ${qp(this.dir)} 2>/dev/null || sync`,
    ].join('\n');
    // Test hook (claims.ts): stop between the claim and the publish.
    const hook = claimHooks.afterClaim;
    let r: Awaited<ReturnType<SshConnection['run']>> | undefined;
    for (let attempt = 0; ; attempt++) {
      r = await this.conn.run([this.rmStale(), claimPart(), hook ? '[ $claimed = 1 ] && exit 19' : publishPart].join('\n'));
      if (r.status === 19) {
        await hook!();
        r = await this.conn.run(['claimed=1', publishPart].join('\n'));
      }
      if (r.status !== 18) break;
      if ((await c.conflict()) === 'mine') {
        // The claim names this archive (a retried request): publish.
        r = await this.conn.run(['claimed=0', publishPart].join('\n'));
        break;
      }
      if (attempt === 4) throw c.busy();
    }
    if (r!.status === 20) throw c.lost(/^H (\S*)$/m.exec(r!.stdout.toString())?.[1] ?? '');
    if (r!.status === 17) throw new UnsafeError('ARCHIVE_EXISTS', `${this.path} already exists; not replacing it`);
    if (r!.status !== 0) throw this.conn.failure(`cannot commit ${this.path}`, r!);
    this.done = true;
  }

  async abort(): Promise<void> {
    if (this.done) return;
    if (this.writer.exitCode === null && this.writer.signalCode === null) {
      this.writer.kill('SIGTERM');
      await exitOf(this.writer);
    }
    const r = await this.conn.run(`${this.rmStale()}rm -f ${qp(this.tmp)}; rmdir ${qp(this.dir)} 2>/dev/null; exit 0`);
    if (r.status !== 0) throw this.conn.failure(`cannot remove ${this.tmp} on ${this.conn.label}`, r);
  }
}

/** Ranged reads and streams of one remote file. */
class SshByteSource implements ByteSource {
  private readonly cache = new Map<number, Buffer>();
  private readonly streams = new Set<ChildProcess>();

  constructor(private readonly conn: SshConnection, readonly label: string, private readonly path: string, readonly size: number,
    private readonly dd: 'gnu' | 'posix') {}

  private async fetch(offset: number, len: number): Promise<Buffer> {
    if (len <= 0 || offset >= this.size) return Buffer.alloc(0);
    const p = qp(this.path);
    const script = this.dd === 'gnu'
      ? `dd if=${p} bs=65536 iflag=skip_bytes,count_bytes skip=${offset} count=${len} status=none`
      : `tail -c +${offset + 1} ${p} | head -c ${len}`;
    const r = await this.conn.run(script);
    if (r.status !== 0) throw this.conn.failure(`cannot read archive ${this.label}`, r);
    return r.stdout;
  }

  private async windowAt(w: number): Promise<Buffer> {
    const hit = this.cache.get(w);
    if (hit) {
      this.cache.delete(w);
      this.cache.set(w, hit);
      return hit;
    }
    const b = await this.fetch(w * WINDOW, Math.min(WINDOW, this.size - w * WINDOW));
    this.cache.set(w, b);
    while (this.cache.size > CACHE_WINDOWS) this.cache.delete(this.cache.keys().next().value!);
    return b;
  }

  async read(offset: number, len: number): Promise<Uint8Array> {
    len = Math.max(0, Math.min(len, this.size - offset));
    if (len === 0) return Buffer.alloc(0);
    if (len > WINDOW) return this.fetch(offset, len);
    const first = Math.floor(offset / WINDOW);
    const last = Math.floor((offset + len - 1) / WINDOW);
    if (first === last) return (await this.windowAt(first)).subarray(offset - first * WINDOW, offset - first * WINDOW + len);
    const a = await this.windowAt(first);
    const b = await this.windowAt(last);
    return Buffer.concat([a.subarray(offset - first * WINDOW), b.subarray(0, offset + len - last * WINDOW)]);
  }

  async *stream(start = 0): AsyncIterable<Uint8Array> {
    const p = qp(this.path);
    const child = await this.conn.spawn(start > 0 ? `tail -c +${start + 1} ${p}` : `cat ${p}`);
    this.streams.add(child);
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => { if (stderr.length < 65536) stderr += b.toString(); });
    const status = exitOf(child);
    let finished = false;
    try {
      for await (const chunk of child.stdout! as AsyncIterable<Buffer>) yield chunk;
      const s = await status;
      if (s !== 0) throw this.conn.failure(`cannot read archive ${this.label}`, { status: s, stderr });
      finished = true;
    } finally {
      this.streams.delete(child);
      if (!finished && child.exitCode === null) child.kill('SIGTERM');
    }
  }

  async close(): Promise<void> {
    this.cache.clear();
    for (const c of this.streams) c.kill('SIGTERM');
  }
}
