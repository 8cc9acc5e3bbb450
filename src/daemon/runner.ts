/**
 * One run of one job on one volume (docs/DAEMON.md, "A run"): send (an image with change tracking,
 * or a thin LV through its managed snapshot chain named after the job) into the store or into a
 * remote apply; then retention (the grid, through prune); then, for a local replica, apply from the
 * store and `verify --against --changed-only`. A group job's run is one group send of all its volumes
 * and retention over whole points. Transient errors are retried inside the run with
 * jittered exponential backoff; permanent ones (exit class usage, verify, unsafe) fail at once.
 */
import { createHash, randomUUID } from 'node:crypto';
import { basename, join } from 'node:path';
import {
  loadKeys,
  AbortedError, apply, groupPoints, list, prune, pruneGroup, RemoteApplyError, remoteApplyDestination, send, sendGroup, ThinarchiveError, verifyAgainst,
  type ChainLeaseHolder, type Logger, type ListedChain, type PruneOptions, type SendGroupOptions, type StoreOptions,
} from '../api/index.js';
import { targetOf, type ApplyTo, type DaemonConfig, type GroupJob, type JobConfig, type KeepRules } from './config.js';
import { imageDelta } from './image-delta.js';
import type { UnitState } from './state.js';

/** The block size of image chains the daemon starts. */
export const IMAGE_BLOCK_SIZE = 64 * 1024;

export interface RunContext {
  config: DaemonConfig;
  stateDir: string;
  log: Logger;
  signal: AbortSignal;
  /** The unit's lease of the chain it writes in its store (kept between runs by the daemon). */
  lease: ChainLeaseHolder;
  /** `run --take-lease`: take the lease over even while another writer holds it. */
  takeLease?: boolean;
  /** injected for tests */
  random?: () => number;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

export interface RunOutcome {
  ok: boolean;
  error?: { code: string; message: string; exitClass: string };
  bytes: number;
  seconds: number;
  attempts: number;
  /** the unit's new state fields on success */
  chainId?: string;
  chainDir?: string | null;
  chainLength?: number | null;
  archiveId?: string;
  newestPoint?: string | null;
  verify?: { at: string; ok: boolean; mode: string };
  /** a group job: the quiesce window of the point sent, in milliseconds */
  freezeMs?: number;
}

/** The store options of a run: ssh and S3 settings, and the keys, read from their files now (a rotation needs no reload). */
export async function storeOptionsOf(c: DaemonConfig): Promise<StoreOptions> {
  const keys = await loadKeys({ recipients: c.keys.encryptTo, recipientsFiles: c.keys.recipientsFiles, identityFiles: c.keys.identityFiles, passphraseFile: c.keys.passphraseFile });
  return { sshOptions: c.sshOptions.flatMap((x) => ['-o', x]), s3Endpoint: c.s3Endpoint, ...keys };
}

/** Permanent errors fail the run at once; the rest are retried. */
/** Runtime errors a retry within the run cannot fix: a volume that does not exist (removed, renamed). */
const PERMANENT_CODES: ReadonlySet<string> = new Set(['LV_NOT_FOUND']);

export function isPermanent(e: unknown): boolean {
  if (e instanceof AbortedError) return true;
  return e instanceof ThinarchiveError && (e.exitClass === 'usage' || e.exitClass === 'verify' || e.exitClass === 'unsafe' || PERMANENT_CODES.has(e.code));
}

/** Delay before retry `attempt` (1 = the first retry): full jitter over an exponential, capped. */
export function backoffMs(attempt: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** (attempt - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new AbortedError('cancelled', signal.reason));
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new AbortedError('cancelled', signal.reason));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

export function errorInfo(e: unknown): { code: string; message: string; exitClass: string } {
  if (e instanceof ThinarchiveError) return { code: e.code, message: e.message.split('\n')[0], exitClass: e.exitClass };
  return { code: 'INTERNAL', message: String((e as Error)?.message ?? e).split('\n')[0], exitClass: 'internal' };
}

/** The hash file of an image source (per job and image). */
function hashFileOf(stateDir: string, job: string, image: string): string {
  return join(stateDir, `image-${job}-${createHash('sha256').update(image).digest('hex').slice(0, 16)}.hashes`);
}

async function findChain(to: string, chainId: string, so: StoreOptions): Promise<ListedChain | undefined> {
  return (await list({ dir: to, chainId, storeOptions: so }))[0];
}

/** A job's `keep:` as prune's options (the same rules for a chain and for a group's points). */
function pruneRules(k: KeepRules): Pick<PruneOptions, 'keep' | 'keepWithin' | 'keepHourly' | 'keepDaily' | 'keepWeekly' | 'keepMonthly' | 'keepYearly'> {
  return { keep: k.last, keepWithin: k.within, keepHourly: k.hourly, keepDaily: k.daily, keepWeekly: k.weekly, keepMonthly: k.monthly, keepYearly: k.yearly };
}

/** Local apply_to args (the same flags as `apply`): --create, --create-if-missing, --pool P, --snapshot-target, --keep N, --force, --no-undo. */
function localApplyOptions(a: ApplyTo): { create?: boolean; createIfMissing?: boolean; pool?: string; snapshotTarget?: boolean; keep?: number; force?: boolean; noUndo?: boolean } {
  const o: ReturnType<typeof localApplyOptions> = {};
  for (let i = 0; i < a.args.length; i++) {
    const x = a.args[i];
    if (x === '--create') o.create = true;
    else if (x === '--create-if-missing') o.createIfMissing = true;
    else if (x === '--snapshot-target') o.snapshotTarget = true;
    else if (x === '--force') o.force = true;
    else if (x === '--no-undo') o.noUndo = true;
    else if (x === '--pool') o.pool = a.args[++i];
    else if (x === '--keep') o.keep = Number(a.args[++i]);
    else throw new ThinarchiveError('CONFIG_INVALID', `apply_to.args: ${JSON.stringify(x)} is not an apply option the daemon passes to a local target (--create, --create-if-missing, --pool P, --snapshot-target, --keep N, --force, --no-undo)`, 'usage');
  }
  return o;
}

/** One attempt: send, retention, local replica. */
async function attempt(job: JobConfig, volume: string, prev: UnitState, ctx: RunContext): Promise<RunOutcome> {
  const started = performance.now();
  const so = await storeOptionsOf(ctx.config);
  const signal = ctx.signal;
  const log = ctx.log;
  const image = volume.startsWith('/') ? volume : undefined;
  let sent: { chainId: string; archiveId: string; archiveBytes: number; path: string | null; sequence: number; full: boolean };
  const logSent = (): void => {
    log.info({ job: job.name, volume, archiveId: sent.archiveId, sequence: sent.sequence, full: sent.full, bytes: sent.archiveBytes }, 'sent');
  };
  // What every send of a run shares; the store's sends also hold the chain's lease (a remote apply has no store).
  const common = { level: job.level, stateDir: ctx.stateDir, signal, storeOptions: so };
  const leased = { lease: ctx.lease, takeLease: ctx.takeLease };
  const lvSend = { ...common, chain: job.name, log, poolThresholds: ctx.config.pools };
  if (job.group) return groupAttempt(job, job.group, volume, { ...lvSend, takeLease: ctx.takeLease }, started);
  if (image) {
    // Incremental on the chain this daemon continues, when its newest archive holds exactly what the
    // block hashes were taken of (the hash files name that archive: right even when the state file
    // missed the last run, or the kill came between an archive's publish and its hashes' rename).
    const hashFile = hashFileOf(ctx.stateDir, job.name, image);
    let parent: string | undefined;
    const pickBase = async (ids: string[]): Promise<string | undefined> => {
      // (a store not created yet holds no chain: the full this run sends creates it)
      const chains = await list({ dir: job.to!, storeOptions: so }).catch((e: unknown) => {
        if (e instanceof ThinarchiveError && e.code === 'IO_ENOENT') return [];
        throw e;
      });
      const newest = chains.map((c) => c.archives[c.archives.length - 1]);
      const base = ids.map((id) => newest.find((a) => a?.archiveId === id)).find((a) => a !== undefined);
      parent = base?.path;
      return base?.archiveId;
    };
    const delta = await imageDelta(image, IMAGE_BLOCK_SIZE, hashFile, ctx.stateDir, pickBase, signal);
    try {
      const incremental = parent !== undefined && delta.changes !== undefined;
      const archiveId = randomUUID();
      await delta.prepare(archiveId);
      const r = await send({
        ...common, ...leased, image, to: job.to!, name: basename(image), archiveId,
        ...(incremental ? { parent, changes: delta.changes } : { blockSize: IMAGE_BLOCK_SIZE }),
      });
      await delta.commit();
      sent = r;
    } finally {
      await delta.discard();
    }
  } else if (job.applyTo?.host) {
    // apply_to.verify: the remote apply reads back what it wrote before recording its state (apply --verify)
    const verifyRemote = job.applyTo.verify;
    const target = targetOf(job.applyTo.target, volume);
    const remoteArgs = verifyRemote && !job.applyTo.args.includes('--verify') ? [...job.applyTo.args, '--verify'] : job.applyTo.args;
    const remote = remoteApplyDestination({ host: job.applyTo.host, target, remoteCommand: job.applyTo.command, remoteArgs, storeOptions: so });
    let r: Awaited<ReturnType<typeof send>>;
    try {
      r = await send({ ...lvSend, volume, to: remote.dest });
    } catch (e) {
      // The replica read back wrong: the daemon's REPLICA_MISMATCH, as for a local replica.
      if (e instanceof RemoteApplyError && e.remoteCode === 'REPLICA_MISMATCH') {
        throw new ThinarchiveError('REPLICA_MISMATCH', `replica ${target} on ${job.applyTo.host}: ${e.message}`, 'verify', { cause: e });
      }
      throw e;
    }
    sent = r;
    logSent();
    const out: RunOutcome = {
      ok: true, bytes: r.archiveBytes, seconds: (performance.now() - started) / 1000, attempts: 1, chainId: r.chainId, chainDir: null, chainLength: r.sequence + 1,
      archiveId: r.archiveId, newestPoint: new Date().toISOString(),
    };
    const checked = verifyRemote ? remoteVerified(remote.result()?.result) : undefined;
    if (checked !== undefined) out.verify = { at: new Date().toISOString(), ok: true, mode: 'changed-only' };
    if (verifyRemote && checked === undefined) log.warn({ job: job.name, volume, host: job.applyTo.host }, 'the remote apply reported no read-back check (an older thinarchive there?)');
    return out;
  } else {
    sent = await send({ ...lvSend, ...leased, volume, to: job.to! });
  }
  logSent();
  let chain = await findChain(job.to!, sent.chainId, so);
  if (job.keep && chain) {
    const r = await prune({ dir: chain.dir, ...pruneRules(job.keep), signal, storeOptions: so });
    if (r.merges.length || r.leftovers.length) {
      log.info({ job: job.name, volume, dropped: r.dropped.length, kept: r.kept.length }, 'retention');
      chain = await findChain(job.to!, sent.chainId, so);
    }
  }
  const out: RunOutcome = {
    ok: true, bytes: sent.archiveBytes, seconds: 0, attempts: 1, chainId: sent.chainId, chainDir: chain?.dir ?? null,
    chainLength: chain?.archives.length ?? null, archiveId: sent.archiveId, newestPoint: chain?.archives[chain.archives.length - 1]?.created ?? null,
  };
  if (job.applyTo && !job.applyTo.host && chain) {
    const target = targetOf(job.applyTo.target, volume);
    await apply({ inputs: [chain.dir], to: target, stateDir: ctx.stateDir, signal, log, storeOptions: so, ...localApplyOptions(job.applyTo) });
    if (job.applyTo.verify) {
      const v = await verifyAgainst({ dir: chain.dir, against: target, changedOnly: true, stateDir: ctx.stateDir, signal, storeOptions: so });
      out.verify = { at: new Date().toISOString(), ok: v.ok, mode: v.mode };
      if (!v.ok) throw new ThinarchiveError('REPLICA_MISMATCH', `replica ${target} differs from the chain after apply (${v.mismatchedBlocks} blocks; state ${v.stateOk ? 'ok' : 'not at the newest point'})`, 'verify');
    }
  }
  out.seconds = (performance.now() - started) / 1000;
  return out;
}

/**
 * One attempt of a group job: one group send of every member (each member's send holds its chain's
 * lease for its duration), then retention over whole points. The unit's chain fields describe the
 * group: the first member's chain, the number of complete points, the newest complete point's time.
 */
async function groupAttempt(job: JobConfig, g: GroupJob, volume: string, o: Omit<SendGroupOptions, 'volumes' | 'group' | 'to'>, started: number): Promise<RunOutcome> {
  const so = o.storeOptions;
  const r = await sendGroup({
    ...o, volumes: g.volumes, group: g.name, to: job.to!, ...(g.quiesce ? { quiesce: g.quiesce } : {}), ...(g.freezeTimeoutMs !== undefined ? { freezeTimeoutMs: g.freezeTimeoutMs } : {}),
  });
  const bytes = r.members.reduce((a, m) => a + m.archiveBytes, 0);
  const q = r.group.quiesce;
  o.log?.info({ job: job.name, volume, group: g.name, point: r.group.id, method: q.method, freezeMs: q.freezeMs, bytes }, 'sent group point');
  if (job.keep) {
    const p = await pruneGroup({ dir: job.to!, group: g.name, ...pruneRules(job.keep), signal: o.signal, storeOptions: so });
    if (p.dropped.length) o.log?.info({ job: job.name, volume, group: g.name, dropped: p.dropped.length, kept: p.kept.length }, 'retention');
  }
  const complete = (await groupPoints({ dir: job.to!, group: g.name, ...(so ? { storeOptions: so } : {}) })).filter((p) => p.complete);
  return {
    ok: true, bytes, seconds: (performance.now() - started) / 1000, attempts: 1, chainId: r.members[0]!.chainId, chainDir: null, chainLength: complete.length,
    archiveId: r.group.id, newestPoint: complete.at(-1)?.frozenAt ?? null, freezeMs: q.freezeMs,
  };
}

/** The blocks a remote `apply --verify --json` read back, when its result says it did (every archive it applied). */
function remoteVerified(result: unknown): number | undefined {
  const applied = (result as { applied?: { verify?: { blocksChecked?: unknown; mismatchedBlocks?: unknown } }[] } | undefined)?.applied;
  if (!Array.isArray(applied)) return undefined;
  let n = 0;
  for (const a of applied) {
    if (typeof a?.verify?.blocksChecked !== 'number' || a.verify.mismatchedBlocks !== 0) return undefined;
    n += a.verify.blocksChecked;
  }
  return n;
}

/** A run: attempts with retries. Never throws. */
export async function runUnit(job: JobConfig, volume: string, prev: UnitState, ctx: RunContext): Promise<RunOutcome> {
  const started = performance.now();
  const sleep = ctx.sleep ?? abortableSleep;
  for (let n = 1; ; n++) {
    try {
      const r = await attempt(job, volume, prev, ctx);
      const seconds = (performance.now() - started) / 1000;
      ctx.log.info({ job: job.name, volume, attempts: n, seconds: Math.round(seconds * 1000) / 1000, bytes: r.bytes }, 'run succeeded');
      return { ...r, attempts: n, seconds };
    } catch (e) {
      // Whatever a run fails with once its signal fired is the abort (the step's clean-up has run).
      const info = errorInfo(ctx.signal.aborted ? new AbortedError('cancelled', e) : e);
      const permanent = isPermanent(e) || ctx.signal.aborted;
      if (permanent || n >= job.retry.attempts) {
        ctx.log.warn({ job: job.name, volume, code: info.code, attempt: n, permanent }, `run failed: ${info.message}`);
        return { ok: false, error: info, bytes: 0, seconds: (performance.now() - started) / 1000, attempts: n };
      }
      const wait = backoffMs(n, job.retry.initialMs, job.retry.maxMs, ctx.random);
      ctx.log.warn({ job: job.name, volume, code: info.code, attempt: n, retryInMs: wait }, `transient failure, retrying: ${info.message}`);
      try {
        await sleep(wait, ctx.signal);
      } catch {
        return { ok: false, error: errorInfo(new AbortedError('cancelled')), bytes: 0, seconds: (performance.now() - started) / 1000, attempts: n };
      }
    }
  }
}
