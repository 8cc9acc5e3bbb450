/** Human-readable output and the progress line. */
import { formatBytes, UsageError } from '../api/core.js';
import type {
  GroupPoint,
  ApplyResult, ArchiveInfo, ListedChain, RecoverResult, RemoteApplyResult, SendResult, VerifyGroupResult, VerifyResult, ZeroStats,
} from '../api/index.js';

export { formatBytes };

/** "65536", "64K", "64KiB", "1M", "2G" -> bytes. */
export function parseSize(s: string): number | undefined {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(s.trim());
  if (!m) return undefined;
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const n = Number(m[1]) * mult;
  return Number.isSafeInteger(n) ? n : undefined;
}

/** One line on what a remote apply (send --apply-remote) did, from its --json result. */
export function printRemoteApply(r: RemoteApplyResult): string {
  const res = r.result as { applied?: unknown[]; skipped?: unknown[]; state?: { sequence?: number; archiveId?: string } } | string;
  if (typeof res !== 'object' || res === null) return `applied on ${r.host} to ${r.target}`;
  const state = res.state ? `; target now at sequence ${res.state.sequence} (archive ${res.state.archiveId})` : '';
  return `applied on ${r.host} to ${r.target}: ${res.applied?.length ?? 0} archive(s) applied, ${res.skipped?.length ?? 0} skipped${state}`;
}

function rate(bytes: number, seconds: number): string {
  return seconds > 0 ? `${formatBytes(bytes / seconds)}/s` : '-';
}

/** send --dry-run prints at most this many extents. */
const DRY_RUN_LINES = 50;

export function printSend(r: SendResult): string {
  const kind = r.full ? 'full' : 'incremental';
  if (r.dryRun) {
    const lines = [
      `dry run: ${kind} archive, sequence ${r.sequence} of chain ${r.chainId}`,
      `  extents: ${r.extents}; would read ${formatBytes(r.dataBytes)} (${r.dataBytes} B); unmap ${formatBytes(r.unmapBytes)}`,
    ];
    const list = r.extentList ?? [];
    for (const e of list.slice(0, DRY_RUN_LINES)) {
      const blocks = e.blockCount === 1 ? `block ${e.firstBlock}` : `blocks ${e.firstBlock}..${e.firstBlock + e.blockCount - 1}`;
      lines.push(`    ${e.kind.padEnd(5)} ${blocks} (${formatBytes(e.bytes)})`);
    }
    if (r.extents > Math.min(list.length, DRY_RUN_LINES)) lines.push(`    ... ${r.extents - Math.min(list.length, DRY_RUN_LINES)} more extents`);
    return lines.join('\n');
  }
  return [
    `sent ${kind} archive ${r.archiveId} (sequence ${r.sequence} of chain ${r.chainId})`,
    r.path ? `  file: ${r.path}` : r.remoteApply ? `  streamed to thinarchive apply on ${r.remoteApply.host}` : '  to standard output',
    `  read ${formatBytes(r.dataBytes + r.zeroBytes)}: ${formatBytes(r.rawBytes)} data, ${formatBytes(r.zeroBytes)} zero; unmapped ${formatBytes(r.unmapBytes)}`,
    `  archive ${formatBytes(r.archiveBytes)} (data compressed to ${r.rawBytes ? ((100 * r.storedBytes) / r.rawBytes).toFixed(1) : '0'}%) in ${r.seconds.toFixed(2)} s, ${rate(r.dataBytes + r.zeroBytes, r.seconds)}`,
  ].join('\n');
}

export function printApply(r: ApplyResult, zeroing: string): string {
  const lines: string[] = [];
  for (const id of r.skipped) lines.push(`skipped ${id} (already applied)`);
  for (const a of r.applied) {
    lines.push(`applied ${a.archiveId} (sequence ${a.sequence}): ${formatBytes(a.dataBytes)} written, ${formatBytes(a.zeroBytes)} zeroed in ${a.seconds.toFixed(2)} s, ${rate(a.dataBytes + a.zeroBytes, a.seconds)}`);
    if (a.verify) lines.push(`  read back ${a.verify.blocksChecked} blocks (${formatBytes(a.verify.bytesRead)} read) in ${a.verify.seconds.toFixed(2)} s: all as written`);
  }
  if (r.applied.length === 0) lines.push(`nothing to apply: ${r.target} is at archive ${r.state.archiveId} (sequence ${r.state.sequence})`);
  else lines.push(`${r.target} (${r.targetKind}) is at archive ${r.state.archiveId} (sequence ${r.state.sequence}); zeroing: ${zeroing}`);
  return lines.join('\n');
}

/** A verify finding in one line; the location is in the message when it names the block, otherwise in brackets. */
function findingLine(f: VerifyResult['findings'][number]): string {
  const named = f.block !== undefined && f.message.includes(`block ${f.block}`);
  const where = named ? '' : [f.offset !== undefined ? `offset ${f.offset}` : '', f.block !== undefined ? `block ${f.block}` : ''].filter(Boolean).join(', ');
  return `${f.code} (${f.detail}) ${f.archive}${where ? ` [${where}]` : ''}: ${f.message}`;
}

/** verify --group: one line per point (ok, INCOMPLETE or DAMAGED), its bad members, the findings, the summary. */
export function printVerifyGroup(r: VerifyGroupResult): string {
  const lines: string[] = [];
  for (const p of r.points) {
    const verdict = p.ok ? 'ok  ' : p.complete ? 'DAMAGED' : 'INCOMPLETE';
    lines.push(`${verdict} ${r.group}  ${p.frozenAt}  ${p.id}  ${p.members.length} member${p.members.length > 1 ? 's' : ''}`);
    for (const m of p.members.filter((x) => !x.ok)) {
      const why = m.status !== 'complete' ? m.status : `${m.findings.length} finding${m.findings.length > 1 ? 's' : ''} in the archives its restore reads`;
      lines.push(`      ${m.volume}  sequence ${m.sequence}  archive ${m.archiveId}: ${why}`);
    }
  }
  for (const f of r.findings) lines.push(`  ${findingLine(f)}`);
  const bad = r.points.filter((p) => !p.ok).length;
  const sampled = r.mode === 'sample' ? ` (sampled ${r.samplePercent}%)` : '';
  lines.push(`${r.ok ? 'verified' : 'verification FAILED'}${sampled}: group "${r.group}", ${r.points.length} point(s), ${bad} not ok; ${r.archives} archive(s) of the member chains, `
    + `${r.findings.length} finding(s), ${formatBytes(r.bytesRead)} read in ${r.seconds.toFixed(2)} s`);
  return lines.join('\n');
}

export function printVerify(r: VerifyResult): string {
  const lines: string[] = [];
  for (const a of r.archives) {
    const what = a.archiveId ? `sequence ${a.sequence} ${a.archiveId}` : '';
    lines.push(`${a.ok ? 'ok  ' : 'FAIL'} ${a.archive} ${what}`.trimEnd());
  }
  for (const f of r.findings) lines.push(`  ${findingLine(f)}`);
  const sampled = r.mode === 'sample' ? ` (sampled ${r.samplePercent}%: ${r.recordsChecked} of ${r.dataRecords} data records)` : r.mode === 'structure' ? ' (structure only)' : '';
  lines.push(`${r.ok ? 'verified' : 'verification FAILED'}${sampled}: ${r.archives.length} archive(s), ${r.findings.length} finding(s), ${formatBytes(r.bytesRead)} read in ${r.seconds.toFixed(2)} s`);
  return lines.join('\n');
}

export function printInfo(r: ArchiveInfo): string {
  const h = r.header;
  const t = r.trailer;
  return [
    `archive:     ${r.archive}`,
    `format:      ${h.major}.${h.minor}`,
    `archive id:  ${h.archiveId}`,
    `kind:        ${h.full ? 'full' : 'incremental'}`,
    `parent:      ${h.parentId ?? '-'}`,
    `chain:       ${h.chainId} sequence ${h.sequence}`,
    `volume:      ${h.meta.volume.name} ${h.volumeUuid} ${formatBytes(h.volumeSize)} (${h.volumeSize} B)`,
    `block size:  ${formatBytes(h.blockSize)} (source chunk ${formatBytes(h.sourceChunkSize)})`,
    `created:     ${new Date(h.createdMs).toISOString()} by ${h.meta.tool}`,
    h.meta.base ? `base:        ${JSON.stringify(h.meta.base)}` : '',
    h.meta.snapshot ? `snapshot:    ${JSON.stringify(h.meta.snapshot)}` : '',
    `map:         ${r.map.extentCount} extents: ${r.map.dataBlocks} data, ${r.map.zeroBlocks} zero, ${r.map.unmapBlocks} unmap blocks`,
    `records:     ${t.recordCount} (${t.dataBlocks} data blocks, ${t.zeroBlocks} zero blocks found), ${t.indexCount} index frames`,
    `payload:     ${formatBytes(t.rawBytes)} stored as ${formatBytes(t.storedBytes)}`,
    `size:        ${formatBytes(r.bytes)} (${r.bytes} B)`,
    `digest:      sha256 ${Buffer.from(t.digest).toString('hex')}`,
  ].filter(Boolean).join('\n');
}

export function printList(chains: ListedChain[]): string {
  if (chains.length === 0) return 'no chains';
  const lines: string[] = [];
  for (const c of chains) {
    lines.push(`chain ${c.chainId}  volume ${c.volume ?? '?'} ${c.volumeUuid ?? ''}  host ${c.host ?? '?'}  (${c.dir})`);
    const l = c.lease;
    if (l) {
      const who = `host ${l.host} pid ${l.pid} (${l.job !== null ? `job ${l.job}` : 'a one-shot send'}, volume ${l.volume ?? '?'})`;
      lines.push(`  lease: ${{
        held: `held by ${who} until ${l.expires}`,
        expired: `expired ${l.expires} (held by ${who})`,
        released: `free (released ${l.renewed} by ${who})`,
        'holder-gone': `stale (held by ${who} until ${l.expires}, but that process is gone)`,
      }[l.state]}`);
    }
    const v = c.verified;
    if (v) lines.push(`  last verify --against: ${v.ok ? 'ok' : 'FAILED'} ${v.at}, ${v.target} (${v.mode}) at sequence ${v.sequence}: ${v.blocksChecked} blocks, ${v.mismatchedBlocks} mismatched`);
    for (const a of c.archives) {
      const merged = a.merged ? `  merged ${a.merged.fromSequence}..${a.merged.toSequence}` : '';
      lines.push(`  ${String(a.sequence).padStart(4)}  ${a.full ? 'full' : 'incr'}  ${a.created ?? '?'}  ${formatBytes(a.bytes).padStart(10)}  ${a.archiveId}  ${a.status}${merged}`);
    }
  }
  return lines.join('\n');
}

/** Group points (list): one line per point, one per member that is not complete. '' when there are none. */
export function printGroups(points: readonly GroupPoint[]): string {
  if (!points.length) return '';
  const lines = ['group points:'];
  for (const p of points) {
    const missing = p.members.filter((m) => m.status !== 'complete');
    lines.push(`  ${p.name}  ${p.frozenAt}  ${p.id}  ${p.members.length} member${p.members.length > 1 ? 's' : ''}  ${p.quiesce.method} ${p.quiesce.freezeMs} ms  `
      + `${p.complete ? 'complete' : `INCOMPLETE (${missing.length} of ${p.members.length} missing or unreadable)`}`);
    for (const m of missing) lines.push(`      ${m.volume}  sequence ${m.sequence}  archive ${m.archiveId}: ${m.status}`);
  }
  return lines.join('\n');
}

/** Progress on stderr, only when it is a terminal: bytes, rate, ETA. */
export class Progress {
  /** The progress line on the terminal now, if any: cleared before any other text goes to stderr. */
  private static showing: Progress | undefined;
  private readonly enabled = !!process.stderr.isTTY;
  private readonly start = performance.now();
  private last = 0;
  constructor(private readonly label: string) {}
  /** Clear the progress line, if one is showing (before an error or "interrupted" is printed). */
  static clearLine(): void {
    Progress.showing?.done();
  }
  update(done: number, total: number | undefined): void {
    if (!this.enabled) return;
    Progress.showing = this;
    const now = performance.now();
    if (now - this.last < 250) return;
    this.last = now;
    const secs = (now - this.start) / 1000;
    const r = secs > 0 ? done / secs : 0;
    let line = `${this.label}: ${formatBytes(done)}`;
    if (total) line += ` of ${formatBytes(total)} (${((100 * done) / total).toFixed(0)}%)`;
    line += `, ${formatBytes(r)}/s`;
    if (total && r > 0 && done < total) line += `, ETA ${Math.ceil((total - done) / r)} s`;
    process.stderr.write(`\r${line}\x1b[K`);
  }
  done(): void {
    if (this.enabled && this.last > 0) process.stderr.write('\r\x1b[K');
    this.last = 0;
    if (Progress.showing === this) Progress.showing = undefined;
  }
}

/** An option parser for an integer from `min` to `max`; a UsageError names the option otherwise. */
export function intOption(name: string, min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`${name} must be an integer from ${min} to ${max}`);
    return n;
  };
}

/**
 * How the zeroed and unmapped ranges reached the target, in one wording with units: "5.00 MiB
 * punched/discarded, 1.00 MiB zero-ranged"; "nothing written" when no zeroing was needed (a new target
 * already reads as zeroes, or there was nothing to zero).
 */
export function describeZeroStats(z: ZeroStats): string {
  const parts: string[] = [];
  if (z.punched) parts.push(`${formatBytes(z.punched)} punched/discarded`);
  if (z.zeroedRange) parts.push(`${formatBytes(z.zeroedRange)} zero-ranged`);
  if (z.zeroedOut) parts.push(`${formatBytes(z.zeroedOut)} zeroed out`);
  if (z.written) parts.push(`${formatBytes(z.written)} written as zeroes`);
  return parts.join(', ') || 'nothing written';
}

/** One line saying what recovery did (for the CLI). */
export function describeRecovery(r: RecoverResult): string {
  const st = r.state ? `archive ${r.state.archiveId || '(none)'} (sequence ${r.state.sequence}${r.state.status === 'applying' ? ', itself interrupted' : ''})` : 'no recorded state';
  const what = r.interrupted ? `the interrupted apply of archive ${r.interrupted.archiveId} (sequence ${r.interrupted.sequence})` : '';
  switch (r.action) {
    case 'none': return r.interrupted ? `${r.target}: ${what} has no undo journal; applying that archive again completes it` : `${r.target}: nothing to recover (at ${st})`;
    case 'rolled-back': return `${r.target}: rolled back ${what} with the undo journal (${r.entries} entries, ${r.bytesRestored} B restored); back at ${st}`;
    case 'removed-created': return `${r.target}: removed the image created by ${what}`;
    case 'stale-journal-removed': return `${r.target}: removed a stale undo journal; the target is at ${st}`;
    case 'restored-snapshot': return `${r.target}: rolled back ${what} from the rollback snapshot ${r.snapshot}; back at ${st}`;
    case 'stale-snapshot-removed': return `${r.target}: removed a leftover rollback snapshot ${r.snapshot}; the target is at ${st}`;
  }
}

/** The command-line flag of a commander option key: `remoteStateDir` -> `--remote-state-dir`. */
export function flagName(key: string): string {
  return `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}
