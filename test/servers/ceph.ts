/**
 * A one-node Ceph cluster for S3 tests: one monitor, one memstore OSD and one radosgw (S3 gateway) on
 * 127.0.0.1, every byte of state under one temp dir, a user with fixed test keys. Recipe:
 * ../shared/SERVERS.md ("S3-compatible object storage"). Starting takes about 12 s, so one cluster
 * serves a whole `vitest run`:
 *
 * - test/servers/ceph-global.ts (a vitest globalSetup) makes a shared directory and `provide`s it; it
 *   starts nothing. The first test file that calls `useCeph()` starts the cluster there (under a lock,
 *   so parallel test files share it) and records the daemons' PIDs; the globalSetup teardown stops
 *   those PIDs and removes the directory. A run without S3 tests never starts Ceph.
 * - Without the globalSetup (a test file run on its own with another config) `useCeph()` starts a
 *   private cluster and stops it in afterAll.
 * - Daemons run in their own process group (detached, output to files) so they outlive the test
 *   worker that started them; every stop is by PID, after checking the PID still runs a Ceph daemon
 *   with our directory in its command line. Clusters left by a killed run are swept by the next one.
 *
 * `requireCeph(ctx)`/`cephOrSkip()`: when Ceph is not installed or does not start, the tests fail under
 * CI and are skipped elsewhere with the reason (like requireLab in test/lab/lab.ts).
 */
import { execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type {} from 'vitest';
import { ciSet, freePort } from '../helpers/host.js';

const run = promisify(execFile);
// The SDK's multi-line Node 20 support notice is noise in test output.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export const CEPH_ACCESS_KEY = 'THINARCHIVETESTKEY00';
export const CEPH_SECRET_KEY = 'thinarchive-test-secret-0000000000000000';
export const CEPH_REGION = 'us-east-1';
const BINARIES = ['/usr/bin/ceph-mon', '/usr/bin/ceph-osd', '/usr/bin/radosgw', '/usr/bin/radosgw-admin', '/usr/bin/monmaptool', '/usr/bin/ceph'];
const SHARED_PREFIX = 'ta-ceph-shared-';
const STATE = 'state.json';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Directory where the shared Ceph of this vitest run lives (see test/servers/ceph-global.ts). */
    cephShared: string;
  }
}

export interface CephState {
  dir: string;
  endpoint: string;
  port: number;
  monPort: number;
  pids: { mon: number; osd: number; rgw: number };
  startMs: number;
}

export interface Ceph extends CephState {
  accessKey: string;
  secretKey: string;
  region: string;
  /** AWS_* variables that make the SDK's default chain (and the CLI) reach this gateway. */
  env(): Record<string, string>;
}

export { ciSet };

export function cephAvailable(): { ok: true } | { ok: false; reason: string } {
  const missing = BINARIES.filter((b) => !existsSync(b));
  if (missing.length) return { ok: false, reason: `Ceph is not installed (missing ${missing.join(', ')}; apt-get install radosgw ceph-mon ceph-osd)` };
  return { ok: true };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** True when `pid` runs a Ceph daemon whose command line names `dir` (PIDs are reused). */
function ourDaemon(pid: number, dir: string): boolean {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmd.includes(dir) && /ceph-mon|ceph-osd|radosgw/.test(cmd);
  } catch {
    return false;
  }
}

/** Stop the daemons of a cluster by PID (TERM, then KILL), gateway first. */
export async function stopDaemons(dir: string, pids: number[]): Promise<void> {
  const ours = pids.filter((p) => p > 0 && ourDaemon(p, dir));
  for (const p of ours) {
    try {
      process.kill(p, 'SIGTERM');
    } catch {
      /* gone */
    }
  }
  const deadline = Date.now() + 10_000;
  while (ours.some((p) => ourDaemon(p, dir)) && Date.now() < deadline) await sleep(50);
  for (const p of ours) {
    if (ourDaemon(p, dir)) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
}

function httpStatus(url: string, timeoutMs = 2000): Promise<number> {
  return new Promise((resolve) => {
    const req = request(url, { method: 'GET', timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
    req.end();
  });
}

async function tail(file: string, lines = 15): Promise<string> {
  try {
    return (await readFile(file, 'utf8')).trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

function conf(dir: string, fsid: string, monPort: number, rgwPort: number): string {
  return `[global]
fsid = ${fsid}
mon_host = v1:127.0.0.1:${monPort}
public_addr = 127.0.0.1
ms_bind_msgr2 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_pool_default_pg_num = 8
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
osd_crush_update_on_start = false
osd_class_update_on_start = false
osd_objectstore = memstore
memstore_device_bytes = 4294967296
mon_data_avail_warn = 1
mon_data_avail_crit = 0
run_dir = ${dir}/run
log_file = ${dir}/log/$name.log
admin_socket = ${dir}/run/$name.asok
pid_file = ${dir}/run/$name.pid
mon_data = ${dir}/mon/$cluster-$id
osd_data = ${dir}/osd/$cluster-$id
keyring = ${dir}/keyring
[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:${rgwPort}
rgw_dns_name = 127.0.0.1
`;
}

/** Start a daemon in its own process group with output to a file; it outlives this process. */
async function daemon(cmd: string, args: string[], log: string): Promise<number> {
  const fd = openSync(log, 'a');
  try {
    const child = spawn(cmd, args, { detached: true, stdio: ['ignore', fd, fd] });
    child.unref();
    if (!child.pid) throw new Error(`cannot start ${cmd}`);
    return child.pid;
  } finally {
    closeSync(fd);
  }
}

/**
 * Run an admin command, again (up to 4 times) when it fails: Ceph 16 clients sometimes send their
 * first command before they know the cluster's fsid, and the monitor refuses it ('wrong fsid').
 * The commands used here are idempotent (`osd new UUID` returns the same id for the same UUID).
 */
async function admin(cmd: string, args: string[], ok?: RegExp): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    try {
      return (await run(cmd, args, { timeout: 60_000 })).stdout;
    } catch (e) {
      const err = e as { stderr?: string; message: string };
      if (ok && ok.test(err.stderr ?? '')) return '';
      if (attempt >= 4) throw new Error(`${cmd} ${args.join(' ')}: ${(err.stderr ?? err.message).trim().split('\n').slice(-3).join(' / ')}`);
      await sleep(500 * attempt);
    }
  }
}

/** Start a cluster in `dir` (created, must be empty); the caller stops it with stopCeph. */
export async function startCephIn(dir: string): Promise<CephState> {
  const t0 = Date.now();
  for (const d of ['mon', 'osd', 'run', 'log']) await mkdir(join(dir, d), { recursive: true });
  const fsid = randomUUID();
  const monPort = await freePort();
  const port = await freePort();
  const cfg = join(dir, 'ceph.conf');
  await writeFile(cfg, conf(dir, fsid, monPort, port));
  const c = ['-c', cfg];
  const pids = { mon: 0, osd: 0, rgw: 0 };
  const fail = async (what: string): Promise<never> => {
    const logs = await Promise.all(['mon.a', 'osd.0', 'client.rgw.a'].map(async (n) => `--- ${n}\n${await tail(join(dir, 'log', `${n}.log`), 6)}`));
    await stopDaemons(dir, Object.values(pids));
    throw new Error(`Ceph did not start: ${what}\n${logs.join('\n')}`);
  };
  try {
    await run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v1:127.0.0.1:${monPort}]`, join(dir, 'monmap')]);
    await run('ceph-mon', [...c, '--mkfs', '-i', 'a', '--monmap', join(dir, 'monmap')]);
    pids.mon = await daemon('ceph-mon', [...c, '-i', 'a', '-f'], join(dir, 'log', 'mon.out'));
    const uuid = randomUUID();
    const id = (await admin('ceph', [...c, '--connect-timeout', '20', 'osd', 'new', uuid])).trim();
    await mkdir(join(dir, 'osd', `ceph-${id}`), { recursive: true });
    await run('ceph-osd', [...c, '-i', id, '--mkfs', '--osd-uuid', uuid]);
    // The OSD would place itself in the CRUSH map at start, but Ceph 16 sometimes sends that command
    // before it knows the cluster's fsid ('wrong fsid') and then never comes up: place it here.
    await admin('ceph', [...c, '--connect-timeout', '20', 'osd', 'crush', 'add', `osd.${id}`, '1', 'root=default']);
    pids.osd = await daemon('ceph-osd', [...c, '-i', id, '-f'], join(dir, 'log', 'osd.out'));
    pids.rgw = await daemon('radosgw', [...c, '-n', 'client.rgw.a', '-f'], join(dir, 'log', 'rgw.out'));
    await admin('radosgw-admin', [...c, 'user', 'create', '--uid', 'test', '--display-name', 'thinarchive test', '--access-key', CEPH_ACCESS_KEY, '--secret', CEPH_SECRET_KEY], /exists/);
  } catch (e) {
    return fail((e as Error).message.split('\n')[0]);
  }
  const endpoint = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  while ((await httpStatus(`${endpoint}/`)) !== 200) {
    for (const [n, p] of Object.entries(pids)) if (!alive(p)) return fail(`${n} exited`);
    if (Date.now() > deadline) return fail(`the gateway at ${endpoint} did not answer within 60 s`);
    await sleep(200);
  }
  return { dir, endpoint, port, monPort, pids, startMs: Date.now() - t0 };
}

function withKeys(s: CephState): Ceph {
  return {
    ...s,
    accessKey: CEPH_ACCESS_KEY,
    secretKey: CEPH_SECRET_KEY,
    region: CEPH_REGION,
    env: () => ({
      AWS_ACCESS_KEY_ID: CEPH_ACCESS_KEY,
      AWS_SECRET_ACCESS_KEY: CEPH_SECRET_KEY,
      AWS_REGION: CEPH_REGION,
      AWS_ENDPOINT_URL_S3: s.endpoint,
      AWS_EC2_METADATA_DISABLED: 'true',
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    }),
  };
}

/** The first bucket and the first multipart upload create pools (seconds); do them once up front. */
async function warmUp(c: Ceph): Promise<void> {
  const s3 = await import('@aws-sdk/client-s3');
  const client = new s3.S3Client({
    endpoint: c.endpoint, region: c.region, forcePathStyle: true,
    credentials: { accessKeyId: c.accessKey, secretAccessKey: c.secretKey },
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
  });
  try {
    const Bucket = 'warmup';
    await client.send(new s3.CreateBucketCommand({ Bucket, ObjectLockEnabledForBucket: true }));
    const Key = 'warm';
    const u = await client.send(new s3.CreateMultipartUploadCommand({ Bucket, Key }));
    const p = await client.send(new s3.UploadPartCommand({ Bucket, Key, UploadId: u.UploadId, PartNumber: 1, Body: Buffer.alloc(5 << 20) }));
    await client.send(new s3.CompleteMultipartUploadCommand({ Bucket, Key, UploadId: u.UploadId, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: p.ETag }] } }));
    await client.send(new s3.PutObjectCommand({ Bucket, Key: 'small', Body: 'x' }));
  } finally {
    client.destroy();
  }
}

async function startWithRetry(dir: string): Promise<CephState> {
  // A fresh cluster very occasionally never gets its OSD up; one retry in a fresh directory.
  try {
    return await startCephIn(join(dir, 'c1'));
  } catch (e) {
    console.warn(`Ceph start failed, retrying once: ${(e as Error).message.split('\n')[0]}`);
    return startCephIn(join(dir, 'c2'));
  }
}

/** Start a cluster under `dir` (one retry) and warm it up; the caller stops it with stopCeph. */
export async function startAndWarm(dir: string): Promise<CephState> {
  const st = await startWithRetry(dir);
  const t = Date.now();
  try {
    await warmUp(withKeys(st));
  } catch (e) {
    await stopDaemons(st.dir, Object.values(st.pids));
    throw new Error(`Ceph started but the warm-up failed: ${(e as Error).message}`);
  }
  st.startMs += Date.now() - t;
  return st;
}

/** Stop a cluster by PID and remove its directory. */
export async function stopCeph(s: CephState, removeDir = true): Promise<void> {
  await stopDaemons(s.dir, Object.values(s.pids));
  if (removeDir) await rm(s.dir, { recursive: true, force: true });
}

/** Stop the cluster recorded in a shared directory (if any) and remove the directory. */
export async function stopShared(shared: string): Promise<void> {
  try {
    const st = JSON.parse(await readFile(join(shared, STATE), 'utf8')) as CephState;
    await stopDaemons(st.dir, Object.values(st.pids));
  } catch {
    /* nothing started */
  }
  // Daemons of a failed first attempt (c1) are stopped by startCephIn itself.
  await rm(shared, { recursive: true, force: true });
}

/** Shared directories of runs whose vitest process is gone: stop their daemons, remove them. */
export async function sweepStale(): Promise<void> {
  for (const n of readdirSync(tmpdir())) {
    if (!n.startsWith(SHARED_PREFIX) && !n.startsWith('ta-ceph-own-')) continue;
    const d = join(tmpdir(), n);
    let owner = 0;
    try {
      owner = Number(readFileSync(join(d, 'owner'), 'utf8'));
    } catch {
      continue;
    }
    if (owner && !alive(owner)) await stopShared(d);
  }
}

/** Make the shared directory for one vitest run (globalSetup). */
export async function makeSharedDir(): Promise<string> {
  await sweepStale().catch((e) => console.warn(`sweeping old Ceph test clusters failed: ${(e as Error).message}`));
  const d = await mkdtemp(join(tmpdir(), SHARED_PREFIX));
  await writeFile(join(d, 'owner'), String(process.pid));
  return d;
}

let mine: Promise<{ ok: true; ceph: Ceph } | { ok: false; reason: string }> | undefined;

async function lock(dir: string): Promise<() => Promise<void>> {
  const l = join(dir, 'lock');
  const deadline = Date.now() + 180_000;
  for (;;) {
    try {
      await mkdir(l);
      return () => rmdir(l);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      if (Date.now() > deadline) throw new Error(`waited 180 s for ${l}`);
      await sleep(100);
    }
  }
}

async function acquire(): Promise<Ceph> {
  const { afterAll, inject } = await import('vitest');
  let shared: string | undefined;
  try {
    shared = inject('cephShared');
  } catch {
    shared = undefined;
  }
  if (!shared || !existsSync(shared)) {
    // No globalSetup: a private cluster for this test file.
    const own = await mkdtemp(join(tmpdir(), 'ta-ceph-own-'));
    await writeFile(join(own, 'owner'), String(process.pid));
    afterAll(() => stopShared(own));
    const st = await startAndWarm(own);
    await writeFile(join(own, STATE), JSON.stringify(st));
    return withKeys(st);
  }
  const unlock = await lock(shared);
  try {
    const statePath = join(shared, STATE);
    if (existsSync(statePath)) {
      const st = JSON.parse(await readFile(statePath, 'utf8')) as CephState;
      if (Object.values(st.pids).every((p) => ourDaemon(p, st.dir))) return withKeys(st);
      throw new Error(`the shared Ceph in ${st.dir} is no longer running`);
    }
    const failed = join(shared, 'failed');
    if (existsSync(failed)) throw new Error(await readFile(failed, 'utf8'));
    try {
      const st = await startAndWarm(shared);
      await writeFile(statePath, JSON.stringify(st));
      return withKeys(st);
    } catch (e) {
      await writeFile(failed, (e as Error).message);
      throw e;
    }
  } finally {
    await unlock();
  }
}

/** The cluster of this run, started on first use. Never throws: `ok: false` carries the reason. */
export function useCeph(): Promise<{ ok: true; ceph: Ceph } | { ok: false; reason: string }> {
  mine ??= (async () => {
    const a = cephAvailable();
    if (!a.ok) return a;
    try {
      return { ok: true as const, ceph: await acquire() };
    } catch (e) {
      return { ok: false as const, reason: (e as Error).message };
    }
  })();
  return mine;
}

/**
 * For a test file's top level: resolves to the cluster, or to undefined when the tests must be
 * skipped (then prints the reason). Under CI an unavailable Ceph throws: the tests fail, never skip.
 */
export async function cephOrSkip(): Promise<Ceph | undefined> {
  const r = await useCeph();
  if (r.ok) return r.ceph;
  if (ciSet()) throw new Error(`Ceph radosgw is not available under CI: ${r.reason}`);
  console.warn(`S3 tests skipped: ${r.reason}`);
  return undefined;
}

/** Gate at the start of one test (like requireLab). */
export async function requireCeph(ctx: { skip: (note?: string) => void }): Promise<Ceph> {
  const c = await cephOrSkip();
  if (!c) {
    ctx.skip('Ceph radosgw not available');
    throw new Error('unreachable');
  }
  return c;
}
