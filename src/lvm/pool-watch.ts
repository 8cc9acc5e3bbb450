/**
 * What the pool watch reads about one thin pool (docs/LVM.md section 8): its device-mapper status,
 * its lvs settings (when-full policy, dmeventd monitoring, metadata profile, the VG's free space) and
 * the effective autoextend configuration (`lvm config`), and whether autoextend is really armed
 * (`evaluateAutoextend`, pure).
 */
import { CommandError, ThinarchiveError, UsageError } from '../errors.js';
import { formatBytes } from '../units.js';
import { runLvmCommand } from './exec.js';
import { assertLvmName, dmName } from './names.js';
import { type PoolStatus, parsePoolStatus } from './pool-status.js';
import { POOL_FIELDS, type PoolReportRow, parsePoolReport } from './report.js';
import { poolStatus, type ToolOptions } from './tools.js';

/** The effective autoextend settings of a pool (lvm.conf, merged with its metadata profile). */
export interface AutoextendSettings {
  /** activation/thin_pool_autoextend_threshold: extend when usage goes above it; 100 means never */
  threshold: number;
  /** activation/thin_pool_autoextend_percent: by how much of its size */
  percent: number;
  /** activation/monitoring: new pools are registered with dmeventd */
  monitoring: boolean;
}

export interface PoolFacts {
  vg: string;
  pool: string;
  status: PoolStatus;
  lvs: PoolReportRow;
  autoextend: AutoextendSettings;
}

export interface AutoextendVerdict {
  armed: boolean;
  threshold: number;
  percent: number;
  /** dmeventd watches the pool (seg_monitor "monitored") */
  monitored: boolean;
  vgFreeBytes: number;
  /** the free space one extension of the data by `percent` needs (whole extents) */
  stepBytes: number;
  /** why it is not armed (empty when armed) */
  reasons: string[];
}

/**
 * Is autoextend armed, i.e. will dmeventd really extend this pool before it fills? All of: a
 * threshold below 100, a percent above 0, the pool monitored, and room in the VG for one step.
 */
export function evaluateAutoextend(f: { autoextend: AutoextendSettings; monitor: string; dataBytes: number; vgFreeBytes: number; vgExtentBytes: number }): AutoextendVerdict {
  const { threshold, percent, monitoring } = f.autoextend;
  const reasons: string[] = [];
  if (threshold >= 100) reasons.push(`activation/thin_pool_autoextend_threshold is ${threshold} (100 means never)`);
  if (percent <= 0) reasons.push(`activation/thin_pool_autoextend_percent is ${percent}`);
  const monitored = f.monitor === 'monitored';
  if (!monitored) {
    reasons.push(`dmeventd does not monitor the pool (${f.monitor ? `"${f.monitor}"` : 'no monitoring'}${monitoring ? '' : ', activation/monitoring = 0'})`);
  }
  const extent = Math.max(1, f.vgExtentBytes);
  const stepBytes = Math.ceil(Math.ceil((f.dataBytes * Math.max(0, percent)) / 100) / extent) * extent;
  if (f.vgFreeBytes <= 0) reasons.push('the volume group has no free extents');
  else if (f.vgFreeBytes < stepBytes) reasons.push(`the volume group has ${formatBytes(f.vgFreeBytes)} free, one ${percent}% step needs ${formatBytes(stepBytes)}`);
  return { armed: reasons.length === 0, threshold, percent, monitored, vgFreeBytes: f.vgFreeBytes, stepBytes, reasons };
}

/** Parse `lvm config` output (`key=value` lines) into the autoextend settings. */
export function parseAutoextendConfig(text: string): AutoextendSettings {
  const kv = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\s*([a-z_]+)\s*=\s*(.*?)\s*$/.exec(line);
    if (m) kv.set(m[1]!, m[2]!);
  }
  const int = (k: string): number => {
    const v = kv.get(k);
    if (v === undefined || !/^-?[0-9]+$/.test(v)) throw new ThinarchiveError('LVM_COMMAND', `lvm config: ${k} is ${v === undefined ? 'missing' : JSON.stringify(v)} in ${JSON.stringify(text.slice(0, 200))}`);
    return Number(v);
  };
  return { threshold: int('thin_pool_autoextend_threshold'), percent: int('thin_pool_autoextend_percent'), monitoring: int('monitoring') !== 0 };
}

/** The status of the pool's thin-pool target: `<vg>-<pool>-tpool`, or `<vg>-<pool>` for a pool without thin volumes. */
export async function readPoolStatus(vg: string, pool: string, opts?: ToolOptions): Promise<PoolStatus> {
  try {
    return await poolStatus(vg, pool, opts);
  } catch (e) {
    if (!(e instanceof ThinarchiveError && e.code === 'POOL_NOT_ACTIVE')) throw e;
    // lvm activates a pool that has no thin volume as the thin-pool target itself, without -tpool.
    let out: string;
    try {
      out = await (opts?.exec ?? runLvmCommand)(['dmsetup', 'status', dmName(vg, pool)], opts?.signal ? { signal: opts.signal } : {});
    } catch {
      throw e;
    }
    if (!/^\s*\d+\s+\d+\s+thin-pool\s/.test(out)) throw e;
    return parsePoolStatus(out);
  }
}

/** Everything the watch reads about `vg/pool` from LVM: lvs, the effective autoextend settings, dmsetup status. */
export async function readPoolFacts(vg: string, pool: string, opts?: ToolOptions): Promise<PoolFacts> {
  assertLvmName(vg, 'VG');
  assertLvmName(pool, 'pool');
  const exec = opts?.exec ?? runLvmCommand;
  const sig = opts?.signal ? { signal: opts.signal } : {};
  let lvsOut: string;
  try {
    lvsOut = await exec(['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', POOL_FIELDS.join(','), `${vg}/${pool}`], sig);
  } catch (e) {
    if (e instanceof CommandError && /Volume group .* not found/i.test(e.stderr)) throw new ThinarchiveError('LV_NOT_FOUND', `thin pool ${vg}/${pool} not found: no volume group ${vg}`);
    if (e instanceof CommandError && /Failed to find logical volume|not found/i.test(e.stderr)) throw new ThinarchiveError('LV_NOT_FOUND', `thin pool ${vg}/${pool} not found`);
    throw e;
  }
  const lvs = parsePoolReport(lvsOut);
  if (!lvs.isThinPool) throw new UsageError(`${vg}/${pool} is not a thin pool (attr ${lvs.attr})`, 'NOT_THIN_POOL');
  const cfg = ['lvm', 'config', '--typeconfig', 'full'];
  if (lvs.profile !== null) cfg.push('--mergedconfig', '--metadataprofile', lvs.profile);
  cfg.push('activation/thin_pool_autoextend_threshold', 'activation/thin_pool_autoextend_percent', 'activation/monitoring');
  const autoextend = parseAutoextendConfig(await exec(cfg, sig));
  const status = await readPoolStatus(vg, pool, opts);
  return { vg, pool, status, lvs, autoextend };
}
