/**
 * Scheduled verification (a job's `verify: {every, sample}`, docs/DAEMON.md): at that longer interval,
 * right after a successful run of the unit (in its loop, so it never overlaps the unit's sends and
 * retention), the chain in the store is verified (api `verify`: full, or sampled: structure and links
 * of every archive and a random share of its data records) and a local `apply_to` replica is compared
 * with the chain (api `verifyAgainst`, full or the same sample of blocks). A remote replica
 * (`apply_to.host`, no store) is compared with the volume's base snapshot by the hash exchange (api
 * `verifyReplica`: the replica's host hashes its blocks, only hashes cross the network). A group job's
 * points are verified whole (api `verifyGroup`: every member chain, each point complete and undamaged).
 */
import { AbortedError, verify, verifyAgainst, verifyGroup, verifyReplica } from '../api/index.js';
import { targetOf, type JobConfig } from './config.js';
import { errorInfo, storeOptionsOf, type RunContext } from './runner.js';
import type { ScheduledVerify, UnitState } from './state.js';

/** After a check that could not be done (store unreachable, replica locked), try again after at most this. */
export const VERIFY_RETRY_MS = 15 * 60_000;

/**
 * When the unit's next scheduled verification is due (ms since the epoch; 0: at the next successful
 * run), or undefined when the job has none. Never done: at once. Done: `every` after it ended. Could
 * not be done: after `every` or VERIFY_RETRY_MS, whichever is sooner.
 */
export function verifyDueAt(job: JobConfig, s: UnitState): number | undefined {
  if (!job.verify) return undefined;
  const v = s.scheduledVerify;
  if (!v) return 0;
  return Date.parse(v.at) + (v.error ? Math.min(job.verify.every, VERIFY_RETRY_MS) : job.verify.every);
}

/** Whether to verify now, after a run that succeeded (`s` is the state after it). */
export function isVerifyDue(job: JobConfig, s: UnitState, now: number): boolean {
  const due = verifyDueAt(job, s);
  return due !== undefined && (s.chainDir !== null || !!job.applyTo?.host || !!job.group) && now >= due;
}

/** One scheduled verification of the unit's chain (and local replica). An abort is thrown (nothing is recorded); anything else is in the result. */
export async function verifyUnit(job: JobConfig, s: UnitState, ctx: RunContext): Promise<ScheduledVerify> {
  const pct = job.verify?.samplePercent;
  const out: ScheduledVerify = { at: '', ok: false, mode: pct === undefined ? 'full' : 'sample', samplePercent: pct ?? null, store: null, replica: null, error: null };
  try {
    const so = await storeOptionsOf(ctx.config);
    const a = job.applyTo;
    if (job.group) {
      // every point of the group whole (verify --group): each complete and undamaged
      const r = await verifyGroup({ dir: job.to!, group: job.group.name, samplePercent: pct, signal: ctx.signal, storeOptions: so });
      const bad = r.points.find((p) => !p.ok);
      out.store = {
        ok: r.ok, archives: r.archives, findings: r.findings.length, bytesRead: r.bytesRead, recordsChecked: null, dataRecords: null,
        firstFinding: r.findings[0] ? `${r.findings[0].code}: ${r.findings[0].message}` : bad ? `GROUP_INCOMPLETE: point ${bad.id} (${bad.frozenAt}) is missing a member's archive` : null,
      };
    } else if (a?.host) {
      const target = targetOf(a.target, s.volume);
      const v = await verifyReplica({
        volume: s.volume, chain: job.name, host: a.host, target, remoteCommand: a.command, samplePercent: pct, stateDir: ctx.stateDir,
        signal: ctx.signal, storeOptions: so, log: ctx.log,
      });
      out.replica = { ok: v.ok, target, host: a.host, blocksChecked: v.blocksChecked, mismatchedBlocks: v.mismatchedBlocks, stateOk: v.stateOk };
    } else {
      const r = await verify({ inputs: [s.chainDir!], samplePercent: pct, signal: ctx.signal, storeOptions: so });
      out.store = {
        ok: r.ok, archives: r.archives.length, findings: r.findings.length, bytesRead: r.bytesRead, recordsChecked: r.recordsChecked ?? null,
        dataRecords: r.dataRecords ?? null, firstFinding: r.findings[0] ? `${r.findings[0].code}: ${r.findings[0].message}` : null,
      };
      if (a) {
        const target = targetOf(a.target, s.volume);
        const v = await verifyAgainst({ dir: s.chainDir!, against: target, samplePercent: pct, stateDir: ctx.stateDir, signal: ctx.signal, storeOptions: so });
        out.replica = { ok: v.ok, target, host: null, blocksChecked: v.blocksChecked, mismatchedBlocks: v.mismatchedBlocks, stateOk: v.stateOk };
      }
    }
  } catch (e) {
    if (ctx.signal.aborted || e instanceof AbortedError) throw e;
    const info = errorInfo(e);
    out.error = { code: info.code, message: info.message };
  }
  out.at = new Date().toISOString();
  out.ok = out.error === null && (out.store !== null || out.replica !== null) && (out.store === null || out.store.ok) && (out.replica === null || out.replica.ok);
  const l = { job: job.name, volume: s.volume, mode: out.mode };
  if (out.ok) ctx.log.info({ ...l, archives: out.store?.archives, bytesRead: out.store?.bytesRead, replicaBlocks: out.replica?.blocksChecked }, 'scheduled verification ok');
  else if (out.error) ctx.log.warn({ ...l, code: out.error.code }, `scheduled verification could not be done: ${out.error.message}`);
  else ctx.log.warn({ ...l, findings: out.store?.findings, mismatchedBlocks: out.replica?.mismatchedBlocks }, `scheduled verification FAILED: ${out.store?.firstFinding ?? `replica ${out.replica!.target}${out.replica!.host ? ` on ${out.replica!.host}` : ''}: ${out.replica!.mismatchedBlocks} blocks differ${out.replica!.stateOk ? '' : ', state not at the newest point'}`}`);
  return out;
}
