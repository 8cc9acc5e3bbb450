/**
 * The chain-management commands (restore, merge, prune) and the chain-aware variants of verify
 * (--against) and apply (--repair): options, calls and human-readable output. Registered by main.ts.
 */
import { Command, Option } from 'commander';
import {
  merge, parseDuration, prune, repair, repairInputs, restore, UsageError, verifyAgainst,
  type Logger, type MergeResult, type PruneResult, type RepairResult, type RestoreResult, type StoreOptions, type VerifyAgainstResult,
} from '../api/index.js';
import { describeZeroStats, formatBytes, intOption, Progress } from './output.js';

export interface CliContext {
  json: (value: unknown) => void;
  out: (text: string) => void;
  err: (text: string) => void;
  signal: AbortSignal;
  log: Logger;
  /** exit code for "verification failed" */
  verifyExit: number;
  /** Options for remote stores (set by main.ts from the global options). */
  storeOptions?: () => StoreOptions;
}

function seqOption(name: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new UsageError(`${name} must be a sequence number`);
    return Number(v);
  };
}

const rate = (bytes: number, seconds: number): string => (seconds > 0 ? `${formatBytes(bytes / seconds)}/s` : '-');

export function printVerifyAgainst(r: VerifyAgainstResult): string {
  const lines: string[] = [];
  const mode = r.mode === 'sample' ? `sample ${r.samplePercent}%` : r.mode;
  lines.push(`target ${r.target} (${r.targetKind}) against chain ${r.chainId}, newest archive ${r.newestArchiveId} (sequence ${r.newestSequence}); ${mode}`);
  if (r.state) lines.push(`  recorded state: ${r.state.status} at ${r.state.archiveId || '-'} (sequence ${r.state.sequence})${r.stateOk ? '' : ' -- does not name the newest archive'}`);
  else lines.push('  recorded state: none');
  const fs = r.findings;
  for (let i = 0; i < fs.length; i++) {
    const f = fs[i];
    if (f.code === 'TARGET_MISMATCH' && f.block !== undefined) {
      // Adjacent mismatching blocks of one kind make one line (the JSON keeps every block).
      let j = i;
      while (j + 1 < fs.length && fs[j + 1].code === f.code && fs[j + 1].detail === f.detail && fs[j + 1].block === fs[j].block! + 1) j++;
      if (j > i) {
        const last = fs[j];
        const end = last.offset! + (last.offset! - fs[j - 1].offset!);
        lines.push(`  ${f.code} (${f.detail}): blocks ${f.block}..${last.block} (bytes ${f.offset}..${end - 1}, ${j - i + 1} blocks): `
          + (f.detail === 'NOT_ZERO' ? 'expected zeroes, read data' : 'block checksums differ from the chain\'s'));
        i = j;
        continue;
      }
    }
    // The location is in the message when it names the block; otherwise in brackets.
    const named = f.block !== undefined && f.message.includes(`block ${f.block}`);
    const where = named ? '' : [f.offset !== undefined ? `offset ${f.offset}` : '', f.block !== undefined ? `block ${f.block}` : ''].filter(Boolean).join(', ');
    lines.push(`  ${f.code} (${f.detail})${where ? ` [${where}]` : ''}: ${f.message}`);
  }
  if (r.mismatchedBlocks > r.findings.filter((f) => f.code === 'TARGET_MISMATCH').length) lines.push(`  ... ${r.mismatchedBlocks} mismatched blocks in all`);
  lines.push(`${r.ok ? 'verified' : 'verification FAILED'}: ${r.blocksChecked} of ${r.blocks} blocks checked (${r.blocksRead} read), `
    + `${r.mismatchedBlocks} mismatched; read ${formatBytes(r.bytesRead)} of the target and ${formatBytes(r.archiveBytesRead)} of archive metadata in ${r.seconds.toFixed(2)} s, ${rate(r.bytesRead, r.seconds)}`);
  return lines.join('\n');
}

export function printRestore(r: RestoreResult): string {
  const lines = [
    `restored ${r.target} (${r.targetKind}) to archive ${r.archiveId} (sequence ${r.sequence} of chain ${r.chainId})`,
    `  ${formatBytes(r.dataBytes)} written, ${formatBytes(r.zeroBytes)} to read as zeroes (${describeZeroStats(r.zeroing)}) in ${r.seconds.toFixed(2)} s`,
    `  read ${formatBytes(r.bytesRead)} of archives (each record once):`,
  ];
  for (const a of r.archives) lines.push(`    sequence ${String(a.sequence).padStart(4)} ${a.archiveId}: ${a.records} records, ${formatBytes(a.bytesRead)}${a.rereads ? `, ${a.rereads} re-read` : ''}`);
  return lines.join('\n');
}

export function printMerge(r: MergeResult): string {
  const lines = [
    `merged sequences ${r.merged.fromSequence}..${r.merged.toSequence} (${r.merged.archives} archives) into ${r.full ? 'a synthetic full' : 'an incremental'} archive ${r.archiveId} (sequence ${r.sequence})`,
    `  file: ${r.path}, ${formatBytes(r.archiveBytes)} (${formatBytes(r.rawBytes)} of data); read ${formatBytes(r.bytesRead)} in ${r.seconds.toFixed(2)} s`,
  ];
  for (const d of r.deleted) lines.push(`  deleted ${d}`);
  return lines.join('\n');
}

export function printPrune(r: PruneResult): string {
  const lines = [`${r.dryRun ? 'dry run: would keep' : 'kept'} points ${r.kept.map((k) => k.sequence).join(', ')} of chain ${r.chainId}; `
    + (r.dropped.length ? `points no longer restorable: ${r.dropped.join(', ')}` : 'every point stays restorable')];
  for (const l of r.leftovers) lines.push(`  ${r.dryRun ? 'would delete' : 'deleted'} leftover ${l}`);
  for (const m of r.merges) lines.push(`  ${r.dryRun ? 'would merge' : 'merged'} ${m.points.join(', ')} into one archive holding ${m.keeps}${m.path ? `: ${m.path}` : ''}`);
  for (const d of r.deletes) lines.push(`  ${r.dryRun ? 'would delete' : 'deleted'} ${d}`);
  if (!r.dryRun) lines.push(`done in ${r.seconds.toFixed(2)} s`);
  return lines.join('\n');
}

export function printRepair(r: RepairResult): string {
  return [
    `repaired ${r.target} (${r.targetKind}) to archive ${r.archiveId} (sequence ${r.sequence} of chain ${r.chainId})`,
    `  ${r.blocksChecked} blocks compared, ${r.badBlocks} differed: ${r.blocksWritten} rewritten (${formatBytes(r.bytesWritten)}), ${r.blocksZeroed} zeroed`,
    `  read ${formatBytes(r.targetBytesRead)} of the target once and ${formatBytes(r.archiveBytesRead)} of archives (${r.records} records) in ${r.seconds.toFixed(2)} s`,
  ].join('\n');
}

/** verify DIR --against TARGET (called by the verify command when --against is given). */
export async function runVerifyAgainst(inputs: string[], o: Record<string, unknown>, ctx: CliContext): Promise<void> {
  if (inputs.length !== 1) throw new UsageError('verify --against takes one store or chain directory');
  const progress = new Progress('verify');
  const res = await verifyAgainst({
    dir: inputs[0], against: o.against as string, changedOnly: !!o.changedOnly, samplePercent: o.sample as number | undefined,
    stateDir: o.stateDir as string | undefined, wait: !!o.wait, signal: ctx.signal, storeOptions: ctx.storeOptions?.(), onProgress: (p) => progress.update(p.blocksDone, p.blocks),
  });
  progress.done();
  if (o.json) ctx.json(res);
  else ctx.out(printVerifyAgainst(res));
  if (!res.ok) process.exitCode = ctx.verifyExit;
}

/** apply DIR --to TARGET --repair. */
export async function runRepair(inputs: string[], o: Record<string, unknown>, ctx: CliContext): Promise<void> {
  const bad = ['create', 'pool', 'snapshotTarget', 'keep', 'force'].filter((k) => o[k] !== undefined && o[k] !== false);
  if (bad.length) throw new UsageError(`--repair does not go with ${bad.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')}`);
  const res = await repair({ dir: repairInputs(inputs), to: o.to as string, stateDir: o.stateDir as string | undefined, wait: !!o.wait, signal: ctx.signal, log: ctx.log, storeOptions: ctx.storeOptions?.() });
  if (o.json) ctx.json(res);
  else ctx.err(printRepair(res));
}

function percent(v: string): number {
  const n = Number(v.replace(/%$/, ''));
  if (!Number.isFinite(n) || n <= 0 || n > 100) throw new UsageError('--sample must be a percentage above 0 and at most 100');
  return n;
}

/** The options verify gets for --against. */
export function addVerifyAgainstOptions(cmd: Command): Command {
  return cmd
    .option('--against <target>', 'compare this image, block device or VG/LV with the chain\'s newest state (checksums only)')
    .option('--changed-only', 'with --against: only the blocks the newest archive touches')
    .addOption(new Option('--sample <percent>', 'with --against: a random PERCENT of the blocks; without: the structure and links of every archive and a random PERCENT of its data records').argParser(percent))
    .option('--state-dir <dir>', 'with --against: where block-device target state is kept')
    .option('--wait', 'with --against: when a writer (apply, restore, repair, recover) holds the target, wait for it instead of failing with TARGET_LOCKED');
}

export function registerChainCommands(program: Command, ctx: CliContext): void {
  program
    .command('restore')
    .description('build the volume as of any archive of a chain, reading each block once')
    .argument('<dir>', 'store (directory, ssh:// or s3:// URL) or chain directory')
    .option('--at <point>', 'sequence number, archive id or time (ISO 8601); default: the newest archive')
    .requiredOption('--to <target>', 'image file, block device, or VG/LV')
    .option('--create', 'create a new sparse image, or with --pool a new thin LV')
    .option('--pool <VG/POOL>', 'thin pool --create makes a new LV target in')
    .option('--force', 'overwrite a target that holds data of no or another chain')
    .option('--state-dir <dir>', 'where block-device target state is kept')
    .option('--wait', 'when another thinarchive process holds the target, wait for it instead of failing with TARGET_LOCKED')
    .option('--json', 'print the result as JSON')
    .action(async (dir: string, o) => {
      const progress = new Progress('restore');
      const res = await restore({
        dir, at: o.at, to: o.to, create: !!o.create, pool: o.pool, force: !!o.force, stateDir: o.stateDir, wait: !!o.wait, signal: ctx.signal, log: ctx.log, storeOptions: ctx.storeOptions?.(),
        onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal),
      });
      progress.done();
      if (o.json) ctx.json(res);
      else ctx.err(printRestore(res));
    });

  program
    .command('merge')
    .description('consolidate consecutive archives of a chain into one equivalent archive')
    .argument('<dir>', 'store (directory, ssh:// or s3:// URL) or chain directory')
    .addOption(new Option('--from <seq>', 'sequence of the first archive to merge').argParser(seqOption('--from')).makeOptionMandatory())
    .addOption(new Option('--to <seq>', 'sequence of the last archive to merge').argParser(seqOption('--to')).makeOptionMandatory())
    .option('--out <store>', 'write the merged archive to another store (the originals stay)')
    .option('--keep-originals', 'keep the merged archives in the store (readers use the merged one)')
    .addOption(new Option('--level <n>', 'zstd compression level (1..19)').argParser(intOption('--level', 1, 19)).default(3))
    .option('--json', 'print the result as JSON')
    .action(async (dir: string, o) => {
      const res = await merge({ dir, from: o.from, to: o.to, out: o.out, keepOriginals: !!o.keepOriginals, level: o.level, signal: ctx.signal, storeOptions: ctx.storeOptions?.() });
      if (o.json) ctx.json(res);
      else ctx.err(printMerge(res));
    });

  program
    .command('prune')
    .description('keep the newest N points (and/or those within a time), merging what kept points need')
    .argument('<dir>', 'store (directory, ssh:// or s3:// URL) or chain directory')
    .addOption(new Option('--keep <n>', 'keep the N newest points').argParser(seqOption('--keep')))
    .option('--keep-within <duration>', 'keep every point created within DURATION (45s, 90m, 12h, 30d, 2w)')
    .addOption(new Option('--keep-hourly <n>', 'keep the newest point of each of the last N hours (UTC) that have one').argParser(seqOption('--keep-hourly')))
    .addOption(new Option('--keep-daily <n>', 'the same per day').argParser(seqOption('--keep-daily')))
    .addOption(new Option('--keep-weekly <n>', 'the same per ISO week').argParser(seqOption('--keep-weekly')))
    .addOption(new Option('--keep-monthly <n>', 'the same per month').argParser(seqOption('--keep-monthly')))
    .addOption(new Option('--keep-yearly <n>', 'the same per year').argParser(seqOption('--keep-yearly')))
    .option('--dry-run', 'print the plan, change nothing')
    .addOption(new Option('--level <n>', 'zstd compression level of merged archives (1..19)').argParser(intOption('--level', 1, 19)).default(3))
    .option('--json', 'print the result as JSON')
    .action(async (dir: string, o) => {
      const res = await prune({
        dir, keep: o.keep, keepWithin: o.keepWithin !== undefined ? parseDuration(o.keepWithin) : undefined, dryRun: !!o.dryRun, level: o.level,
        keepHourly: o.keepHourly, keepDaily: o.keepDaily, keepWeekly: o.keepWeekly, keepMonthly: o.keepMonthly, keepYearly: o.keepYearly,
        signal: ctx.signal, storeOptions: ctx.storeOptions?.(),
      });
      if (o.json) ctx.json(res);
      else ctx.out(printPrune(res));
    });
}
