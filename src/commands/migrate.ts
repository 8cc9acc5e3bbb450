/**
 * migrate: move a thin LV that stays in use to another place (a local target, or a target on another
 * host over ssh) with a short pause: round 0 copies everything (a full send onto a new target with
 * --create, or a `sync` by hashes onto an existing one), then rounds of incrementals while the source
 * is written, each measured (bytes, seconds, rate). When the predicted next round fits --max-downtime,
 * it runs --pause, sends the final incremental (applied, flushed and read back against its checksums
 * before it is committed), runs --cutover and reports the measured pause. Rounds that stop shrinking,
 * or --max-rounds, end it before any pause. A failure after --pause runs --resume. The managed
 * snapshots of its chain (default "migrate") are removed at the end, whatever happened.
 *
 * The rounds themselves are `send VG/LV` / `sync` into an apply: the api composes them (it is the
 * layer that combines commands) and hands them here as `round`.
 */
import { spawn } from 'node:child_process';
import { ThinarchiveError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { createLvmExec, runLvmCommand, type LvmExec } from '../lvm/exec.js';
import { assertLvmName } from '../lvm/names.js';
import { listLvs, removeLv } from '../lvm/tools.js';
import { checkChainName, classifyChainSnapshots, TAG_OURS } from '../source/snapshot-chain.js';

export const DEFAULT_MIGRATE_CHAIN = 'migrate';

/** What one round moved. */
export interface RoundOutcome {
  archiveId: string;
  sequence: number;
  /** bytes of the volume carried as data */
  dataBytes: number;
  /** bytes sent (the archive) */
  bytesSent: number;
  /** what the target side reported (its apply or sync result) */
  target: unknown;
}

export type RoundRunner = (r: { index: number; kind: 'first' | 'incremental' | 'final' }) => Promise<RoundOutcome>;

export interface MigrateRound extends RoundOutcome {
  round: number;
  kind: 'full' | 'sync' | 'incremental' | 'final';
  /** when the round started, seconds since the migration started */
  startedAt: number;
  seconds: number;
  /** bytes sent per second */
  rate: number;
  /** after an incremental: the predicted length of the next round (the pause, if it is the final one) */
  predictedNextSeconds?: number;
}

export interface MigrateOptions {
  /** VG/LV: a thin LV */
  source: string;
  /** What the first round is: a full send onto a target it creates, or a sync onto an existing one. */
  first: 'full' | 'sync';
  round: RoundRunner;
  /** default 5000 */
  maxDowntimeMs?: number;
  /** rounds in all, the first one included, before the final one; default 10 */
  maxRounds?: number;
  pause?: string;
  resume?: string;
  cutover?: string;
  chain?: string;
  exec?: LvmExec;
  log?: Logger;
  signal?: AbortSignal;
  onRound?: (r: MigrateRound) => void;
  /** Tests: the clock rounds are timed with, in milliseconds (default performance.now). */
  clock?: () => number;
}

export interface MigrateResult {
  source: string;
  rounds: MigrateRound[];
  /** from the start of --pause to the end of --cutover (the final round in between) */
  pauseSeconds: number;
  /** the final round's read-back check at the target */
  verified: { blocks: number; bytesRead: number } | null;
  /** snapshots removed at the end */
  removed: string[];
  seconds: number;
}

/** Run a hook command with sh -c; its output is logged; a failure says which and why. */
async function hook(what: string, cmd: string, log: Logger): Promise<void> {
  const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
    const c = spawn('sh', ['-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    c.stdout!.on('data', (b: Buffer) => log.info({ hook: what, out: b.toString().trimEnd() }, 'hook output'));
    c.stderr!.on('data', (b: Buffer) => { if (err.length < 4096) err += b.toString(); });
    c.once('error', (e) => resolve({ code: 127, err: e.message }));
    c.once('close', (code) => resolve({ code, err }));
  });
  if (r.code !== 0) {
    const line = r.err.split('\n').map((l) => l.trim()).filter(Boolean).pop() ?? '';
    throw new ThinarchiveError('MIGRATE_HOOK_FAILED', `--${what} command failed (${r.code === null ? 'killed' : `exit ${r.code}`})${line ? `: ${line}` : ''}`);
  }
}

function verifiedOf(target: unknown): { blocks: number; bytesRead: number } | null {
  const applied = (target as { applied?: { verify?: { blocksChecked: number; bytesRead: number } }[] } | undefined)?.applied;
  const v = applied?.[applied.length - 1]?.verify;
  return v ? { blocks: v.blocksChecked, bytesRead: v.bytesRead } : null;
}

export async function migrate(o: MigrateOptions): Promise<MigrateResult> {
  const clock = o.clock ?? (() => performance.now());
  const t0 = clock();
  const now = (): number => (clock() - t0) / 1000;
  const m = /^([^/]+)\/([^/]+)$/.exec(o.source);
  if (!m) throw new UsageError(`migrate moves a thin LV: VG/LV, got ${JSON.stringify(o.source)}`);
  assertLvmName(m[1], 'VG');
  assertLvmName(m[2], 'LV');
  const maxDowntime = (o.maxDowntimeMs ?? 5000) / 1000;
  const maxRounds = o.maxRounds ?? 10;
  if (!(maxDowntime > 0)) throw new UsageError('--max-downtime must be above 0');
  if (!Number.isInteger(maxRounds) || maxRounds < 2) throw new UsageError('--max-rounds must be an integer of at least 2 (the first copy and one incremental)');
  const chain = o.chain ?? DEFAULT_MIGRATE_CHAIN;
  checkChainName(chain);
  const log = o.log ?? silentLogger;
  const exec = o.exec ?? (o.log ? createLvmExec({ logger: o.log }) : runLvmCommand);
  const rounds: MigrateRound[] = [];
  const run = async (kind: MigrateRound['kind']): Promise<MigrateRound> => {
    o.signal?.throwIfAborted();
    const startedAt = now();
    const out = await o.round({ index: rounds.length, kind: kind === 'full' || kind === 'sync' ? 'first' : kind === 'final' ? 'final' : 'incremental' });
    const seconds = now() - startedAt;
    const r: MigrateRound = { ...out, round: rounds.length, kind, startedAt, seconds, rate: out.bytesSent / Math.max(seconds, 1e-6) };
    rounds.push(r);
    log.info({ round: r.round, kind, bytesSent: r.bytesSent, seconds }, 'migrate round');
    return r;
  };
  let result: MigrateResult | undefined;
  try {
    await run(o.first);
    let ready = false;
    while (!ready) {
      if (rounds.length >= maxRounds) {
        const last = rounds[rounds.length - 1];
        throw new ThinarchiveError('MIGRATE_NOT_CONVERGING', `migrate stopped after ${rounds.length} rounds (--max-rounds ${maxRounds}): the last round sent ${last.bytesSent} bytes in ${last.seconds.toFixed(2)} s, `
          + `the next was predicted to take ${(last.predictedNextSeconds ?? NaN).toFixed(2)} s, more than --max-downtime ${maxDowntime} s; the source was not paused`);
      }
      const prev = rounds[rounds.length - 1];
      const r = await run('incremental');
      // A round costs a fixed part (snapshot, metadata, session) and a part that grows with its bytes.
      // The transfer rate: the best seen; the fixed part: the least an incremental took beyond its bytes.
      const rate = Math.max(...rounds.map((x) => x.rate));
      const incs = rounds.filter((x) => x.kind === 'incremental');
      const fixed = Math.max(0, Math.min(...incs.map((x) => x.seconds - x.bytesSent / rate)));
      // What the source dirtied per second between the last two snapshots, for as long as this round took.
      const dirtyRate = r.bytesSent / Math.max(r.startedAt - prev.startedAt, 1e-6);
      r.predictedNextSeconds = fixed + (dirtyRate * r.seconds) / rate;
      o.onRound?.(r);
      if (r.predictedNextSeconds <= maxDowntime) ready = true;
      else if (incs.length >= 2 && r.bytesSent >= incs[incs.length - 2].bytesSent) {
        throw new ThinarchiveError('MIGRATE_NOT_CONVERGING', `migrate stopped at round ${r.round}: it sent ${r.bytesSent} bytes, not less than the round before (${incs[incs.length - 2].bytesSent}): `
          + `the source is written faster than it is copied; the next round was predicted to take ${r.predictedNextSeconds.toFixed(2)} s, more than --max-downtime ${maxDowntime} s; the source was not paused`);
      }
    }
    // The pause: from here on, any failure resumes the source.
    const pausedAt = now();
    let final: MigrateRound;
    try {
      if (o.pause) await hook('pause', o.pause, log);
      final = await run('final');
      if (o.cutover) await hook('cutover', o.cutover, log);
    } catch (e) {
      if (o.resume) {
        try {
          await hook('resume', o.resume, log);
        } catch (re) {
          log.warn({ err: (re as Error).message }, 'the --resume command failed too');
          throw ThinarchiveError.prefixed(e as ThinarchiveError, `${(re as Error).message}; and before that: `);
        }
      }
      throw e;
    }
    const pauseSeconds = now() - pausedAt;
    result = { source: o.source, rounds, pauseSeconds, verified: verifiedOf(final.target), removed: [], seconds: 0 };
  } finally {
    const removed = await removeChainSnapshots(m[1], m[2], chain, exec, log);
    if (removed.length) log.info({ removed }, 'removed the snapshots migrate made');
    if (result) result.removed = removed;
  }
  result.seconds = now();
  return result;
}

/** Remove every managed snapshot of `chain` of VG/LV (migrate's own chain: nothing else uses it). */
async function removeChainSnapshots(vg: string, lv: string, chain: string, exec: LvmExec, log: Logger): Promise<string[]> {
  const out: string[] = [];
  try {
    const lvs = await listLvs(vg, { exec });
    const origin = lvs.find((l) => l.name === lv && !l.hidden);
    if (!origin) return out;
    const s = classifyChainSnapshots(lvs, origin.uuid, chain);
    for (const l of [...(s.base ? [s.base.lv] : []), ...s.pending.map((p) => p.lv), ...s.olderBases]) {
      await removeLv(vg, l.name, { exec, requireTag: TAG_OURS, known: l });
      out.push(l.name);
    }
  } catch (e) {
    log.warn({ err: (e as Error).message }, 'could not remove the snapshots migrate made');
  }
  return out;
}
