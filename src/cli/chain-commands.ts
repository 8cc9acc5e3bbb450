/**
 * The chain-management commands (restore, merge, prune) and the chain-aware variants of verify
 * (--against) and apply (--repair): options, calls and human-readable output. Registered by main.ts.
 */
import { Command, Option } from 'commander';
import { EXIT_CODE, parseDuration, UsageError, type Logger } from '../api/core.js';
import { merge, mount, prune, pruneGroup, repair, restore, restoreGroup, serve, umount, verifyAgainst, verifyReplica } from '../api/operations.js';
import type { MergeResult, ServeResult, PruneGroupResult, PruneResult, RepairResult, RestoreResult, StoreOptions, TargetFinding, VerifyAgainstResult, VerifyReplicaResult } from '../api/index.js';
import { describeZeroStats, flagName, formatBytes, intOption, Progress } from './output.js';

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
  /** The global store options as arguments (for a server process mount starts). */
  storeArgs?: () => string[];
  /** mount: the -o values given after the command name (mount options, not ssh options). */
  mountOptions?: () => string[];
  /** argv that runs this CLI again (for the server process of mount). */
  selfCommand?: string[];
}

function seqOption(name: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new UsageError(`${name} must be a sequence number`);
    return Number(v);
  };
}

const rate = (bytes: number, seconds: number): string => (seconds > 0 ? `${formatBytes(bytes / seconds)}/s` : '-');

/** Lines of a comparison's findings: adjacent mismatching blocks of one kind make one line (the JSON keeps every block). */
function targetFindingLines(fs: TargetFinding[], mismatchedBlocks: number, whose: string): string[] {
  const lines: string[] = [];
  for (let i = 0; i < fs.length; i++) {
    const f = fs[i];
    if (f.code === 'TARGET_MISMATCH' && f.block !== undefined) {
      let j = i;
      while (j + 1 < fs.length && fs[j + 1].code === f.code && fs[j + 1].detail === f.detail && fs[j + 1].block === fs[j].block! + 1) j++;
      if (j > i) {
        const last = fs[j];
        const end = last.offset! + (last.offset! - fs[j - 1].offset!);
        lines.push(`  ${f.code} (${f.detail}): blocks ${f.block}..${last.block} (bytes ${f.offset}..${end - 1}, ${j - i + 1} blocks): `
          + (f.detail === 'NOT_ZERO' ? 'expected zeroes, read data' : `block checksums differ from ${whose}`));
        i = j;
        continue;
      }
    }
    // The location is in the message when it names the block; otherwise in brackets.
    const named = f.block !== undefined && f.message.includes(`block ${f.block}`);
    const where = named ? '' : [f.offset !== undefined ? `offset ${f.offset}` : '', f.block !== undefined ? `block ${f.block}` : ''].filter(Boolean).join(', ');
    lines.push(`  ${f.code} (${f.detail})${where ? ` [${where}]` : ''}: ${f.message}`);
  }
  if (mismatchedBlocks > fs.filter((f) => f.code === 'TARGET_MISMATCH').length) lines.push(`  ... ${mismatchedBlocks} mismatched blocks in all`);
  return lines;
}

export function printVerifyReplica(r: VerifyReplicaResult): string {
  const mode = r.mode === 'sample' ? `sample ${r.samplePercent}% (seed ${r.seed})` : 'full';
  const lines = [`replica ${r.target} (${r.targetKind}) on ${r.host} against ${r.snapshot}, archive ${r.archiveId} (sequence ${r.sequence}); ${mode}`];
  lines.push(r.state ? `  recorded state: ${r.state.status} at ${r.state.archiveId || '-'} (sequence ${r.state.sequence})${r.stateOk ? '' : ' -- does not name the base snapshot\'s archive'}` : '  recorded state: none');
  lines.push(...targetFindingLines(r.findings, r.mismatchedBlocks, 'the snapshot\'s'));
  lines.push(`${r.ok ? 'verified' : 'verification FAILED'}: ${r.blocksChecked} of ${r.blocks} blocks checked (block size ${formatBytes(r.blockSize)}), ${r.mismatchedBlocks} mismatched; `
    + `read ${formatBytes(r.sourceBytesRead)} here and ${formatBytes(r.targetBytesRead)} there, received ${formatBytes(r.bytesReceived)} of hashes in ${r.seconds.toFixed(2)} s`);
  return lines.join('\n');
}

export function printVerifyAgainst(r: VerifyAgainstResult): string {
  const lines: string[] = [];
  const mode = r.mode === 'sample' ? `sample ${r.samplePercent}%` : r.mode;
  lines.push(`target ${r.target} (${r.targetKind}) against chain ${r.chainId}, newest archive ${r.newestArchiveId} (sequence ${r.newestSequence}); ${mode}`);
  if (r.state) lines.push(`  recorded state: ${r.state.status} at ${r.state.archiveId || '-'} (sequence ${r.state.sequence})${r.stateOk ? '' : ' -- does not name the newest archive'}`);
  else lines.push('  recorded state: none');
  lines.push(...targetFindingLines(r.findings, r.mismatchedBlocks, 'the chain\'s'));
  lines.push(`${r.ok ? 'verified' : 'verification FAILED'}: ${r.blocksChecked} of ${r.blocks} blocks checked (${r.blocksRead} read), `
    + `${r.mismatchedBlocks} mismatched; read ${formatBytes(r.bytesRead)} of the target and ${formatBytes(r.archiveBytesRead)} of archive metadata in ${r.seconds.toFixed(2)} s, ${rate(r.bytesRead, r.seconds)}`);
  return lines.join('\n');
}

export function printServe(r: ServeResult): string {
  return [
    `stopped serving ${r.address}: ${r.connections} connections, ${r.requests} requests, ${formatBytes(r.bytesRead)} read, `
      + `${formatBytes(r.bytesWritten)} written to the overlay, ${r.readErrors} reads failed (EIO), ${r.protocolErrors} clients disconnected for protocol violations`,
    ...r.keptOverlays.map((k) => `  kept the overlay of point ${k.sequence} (archive ${k.archiveId}): ${formatBytes(k.dataBytes)} written, ${formatBytes(k.zeroBytes)} zeroed, in ${k.overlay}`),
  ].join('\n');
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
  for (const s of r.swept) lines.push(`  removed ${s} (left by a writer that is gone)`);
  for (const m of r.merges) lines.push(`  ${r.dryRun ? 'would merge' : 'merged'} ${m.points.join(', ')} into one archive holding ${m.keeps}${m.path ? `: ${m.path}` : ''}`);
  for (const d of r.deletes) lines.push(`  ${r.dryRun ? 'would delete' : 'deleted'} ${d}`);
  if (!r.dryRun) lines.push(`done in ${r.seconds.toFixed(2)} s`);
  return lines.join('\n');
}

export function printPruneGroup(r: PruneGroupResult): string {
  const pts = (ps: PruneGroupResult['kept']): string => ps.map((p) => `${p.id} (${p.frozenAt}${p.complete ? '' : ', incomplete'})`).join(', ');
  const lines = [`group "${r.group}": ${r.dryRun ? 'would keep' : 'kept'} ${r.kept.length} point${r.kept.length === 1 ? '' : 's'}: ${pts(r.kept)}`];
  lines.push(r.dropped.length ? `${r.dryRun ? 'would drop' : 'dropped'} ${r.dropped.length}: ${pts(r.dropped)}` : 'every point stays');
  for (const c of r.chains) lines.push(...printPrune({ ...c, dryRun: r.dryRun, seconds: 0 }).split('\n').filter((l) => !l.startsWith('done in')).map((l) => `  ${l}`));
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
  if (o.host !== undefined) return runVerifyReplica(inputs, o, ctx);
  const remoteOnly = ['chain', 'remoteCommand', 'remoteStateDir', 'seed'].filter((k) => o[k] !== undefined);
  if (remoteOnly.length) throw new UsageError(`${remoteOnly.map(flagName).join(', ')} go${remoteOnly.length > 1 ? '' : 'es'} with --host (a replica on another host)`);
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

/** verify VG/LV --against TARGET --host ssh://HOST: a remote replica against the LV's base snapshot. */
async function runVerifyReplica(inputs: string[], o: Record<string, unknown>, ctx: CliContext): Promise<void> {
  if (inputs.length !== 1) throw new UsageError('verify --host takes one thin LV (VG/LV): the source whose base snapshot the replica must equal');
  if (o.changedOnly) throw new UsageError('--changed-only does not go with --host: a remote replica is checked in full or by --sample');
  if (o.seed !== undefined && o.sample === undefined) throw new UsageError('--seed goes with --sample');
  if (!/^ssh:\/\//.test(o.host as string)) throw new UsageError(`--host must be an ssh:// URL (ssh://[user@]host[:port]), got ${JSON.stringify(o.host)}`);
  const res = await verifyReplica({
    volume: inputs[0], chain: o.chain as string | undefined, host: o.host as string, target: o.against as string, remoteCommand: o.remoteCommand as string | undefined,
    remoteStateDir: o.remoteStateDir as string | undefined, samplePercent: o.sample as number | undefined, seed: o.seed as number | undefined,
    stateDir: o.stateDir as string | undefined, wait: !!o.wait, signal: ctx.signal, log: ctx.log, storeOptions: ctx.storeOptions?.(),
  });
  if (o.json) ctx.json(res);
  else ctx.out(printVerifyReplica(res));
  if (!res.ok) process.exitCode = ctx.verifyExit;
}

/** apply DIR --to TARGET --repair. */
export async function runRepair(inputs: string[], o: Record<string, unknown>, ctx: CliContext): Promise<void> {
  const bad = ['create', 'pool', 'snapshotTarget', 'keep', 'force'].filter((k) => o[k] !== undefined && o[k] !== false);
  if (bad.length) throw new UsageError(`--repair does not go with ${bad.map(flagName).join(', ')}`);
  const { repairInputs } = await import('../api/index.js');
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
    .option('--state-dir <dir>', 'with --against: where block-device target state is kept; with --host: where the snapshot chain\'s locks are')
    .option('--wait', 'with --against: when a writer (apply, restore, repair, recover) holds the target, wait for it instead of failing with TARGET_LOCKED')
    .option('--host <ssh://host>', 'with --against: the target is a replica on that host, compared with the base snapshot of the thin LV named (verify VG/LV --against TARGET --host ssh://HOST) by block hashes')
    .option('--chain <name>', 'with --host: the LV\'s managed snapshot chain (default "default"; a daemon job\'s chain is the job name)')
    .option('--remote-command <cmd>', 'with --host: the thinarchive command on that host (default "thinarchive")')
    .option('--remote-state-dir <dir>', 'with --host: the remote side\'s --state-dir')
    .addOption(new Option('--seed <n>', 'with --host and --sample: the sample\'s seed (default random)').argParser(intOption('--seed', 0, 0x7fffffff)));
}

export function registerChainCommands(program: Command, ctx: CliContext): void {
  program
    .command('restore')
    .description('build the volume as of any archive of a chain, reading each block once; with --group, every member of a group point')
    .argument('<dir>', 'store (directory, ssh:// or s3:// URL) or chain directory')
    .option('--at <point>', 'sequence number, archive id or time (ISO 8601); default: the newest archive. With --group: a group point id (or a unique prefix) or a time; default: the newest complete point')
    .option('--to <target>', 'image file, block device, or VG/LV')
    .option('--group <name>', 'restore every member of a point of this consistency group (refused when a member\'s archive is missing: GROUP_INCOMPLETE)')
    .option('--to-vg <vg>', 'with --group: restore each member into VG/<its LV name>')
    .option('--create', 'create a new sparse image, or with --pool a new thin LV')
    .option('--pool <VG/POOL>', 'thin pool --create makes a new LV target in')
    .option('--force', 'overwrite a target that holds data of no or another chain')
    .option('--state-dir <dir>', 'where block-device target state is kept')
    .option('--wait', 'when another thinarchive process holds the target, wait for it instead of failing with TARGET_LOCKED')
    .option('--json', 'print the result as JSON')
    .action(async (dir: string, o) => {
      if (o.group !== undefined || o.toVg !== undefined) {
        if (o.group === undefined || o.toVg === undefined) throw new UsageError('--group and --to-vg go together');
        if (o.to !== undefined) throw new UsageError('--to does not go with --group (members go to --to-vg VG)');
        const progress = new Progress('restore');
        const res = await restoreGroup({
          dir, group: o.group, at: o.at, toVg: o.toVg, create: !!o.create, pool: o.pool, force: !!o.force, stateDir: o.stateDir, wait: !!o.wait, signal: ctx.signal,
          log: ctx.log, storeOptions: ctx.storeOptions?.(), onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal),
        });
        progress.done();
        if (o.json) ctx.json(res);
        else {
          ctx.err(`group "${res.group}" point ${res.point.id} (${res.point.frozenAt}): ${res.members.length} member${res.members.length > 1 ? 's' : ''} restored`);
          for (const m of res.members) ctx.err(`  ${m.volume} -> ${printRestore(m).split('\n')[0]}`);
        }
        return;
      }
      if (o.to === undefined) throw new UsageError("required option '--to <target>' not specified (or --group NAME --to-vg VG)");
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
    .command('serve')
    .description('serve the volume as of any point of a chain over NBD (read-only unless --writable) until SIGINT/SIGTERM')
    .argument('<dir>', 'store (directory, ssh:// or s3:// URL) or chain directory')
    .option('--at <point>', 'the default export: sequence number, archive id or time (ISO 8601); default: the newest archive')
    .option('--socket <path>', 'listen on this unix socket')
    .option('--listen <host:port>', 'listen on this TCP address (PORT or :PORT alone: 127.0.0.1)')
    .option('--writable', 'accept writes into a copy-on-write overlay file, discarded when the server stops unless --keep-overlay (the archives are never written)')
    .option('--overlay-dir <dir>', 'with --writable: where the overlay files go (default: the temporary directory)')
    .option('--keep-overlay <dir>', 'with --writable: keep each point\'s written overlay in this directory when the server stops, and resume the overlays kept there')
    .addOption(new Option('--cache <n>', 'decoded records cached per export (each up to 4 MiB)').argParser(intOption('--cache', 2, 4096)).default(8))
    .option('--json', 'print the result as JSON when the server stops')
    .action(async (dir: string, o) => {
      const res = await serve({
        dir, at: o.at, socket: o.socket, listen: o.listen, writable: !!o.writable, overlayDir: o.overlayDir, keepOverlay: o.keepOverlay, cacheRecords: o.cache,
        signal: ctx.signal, log: ctx.log, storeOptions: ctx.storeOptions?.(),
        onReadError: (e) => ctx.err(`thinarchive: warning: export ${JSON.stringify(e.exportName)}: a read of ${e.length} bytes at ${e.offset} failed and was answered EIO: ${e.code ? `${e.code}: ` : ''}${e.message}`),
        onListening: (l) => ctx.err(`serving chain ${l.chainId} point ${l.sequence} (${formatBytes(l.volumeSize)}${l.writable ? `, writable overlay${l.resumedOverlay ? ` resumed from ${o.keepOverlay}` : o.keepOverlay !== undefined ? ` kept in ${o.keepOverlay}` : ''}` : ', read-only'}) at ${l.uri}; exports: "" (default), ${l.points.join(', ')}`),
      });
      if (o.json) ctx.json(res);
      else ctx.err(printServe(res));
      for (const f of res.keepFailures) ctx.err(`thinarchive: the overlay of point ${f.sequence} could not be kept in ${o.keepOverlay}: ${f.message}`);
      if (res.keepFailures.length) process.exitCode = EXIT_CODE.runtime;
    });

  program
    .command('mount')
    .description('mount a point of a chain through the kernel NBD client (read-only; ext4 noload, xfs norecovery) until umount')
    .argument('<dir>', 'store (directory, ssh:// or s3:// URL) or chain directory')
    .argument('<mountpoint>', 'an existing directory')
    .option('--at <point>', 'sequence number, archive id or time (ISO 8601); default: the newest archive')
    .addOption(new Option('--partition <n>', 'mount partition N of the volume').argParser(intOption('--partition', 1, 128)))
    .option('--writable', 'mount read-write; writes go to the server\'s overlay and are discarded by umount')
    .option('--state-dir <dir>', 'where the mount record is kept (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive)')
    .option('--json', 'print the mount record as JSON')
    .addHelpText('after', '\n  -o OPTIONS after the command name are mount options (added to ro,noload / ro,norecovery);\n  ssh options (-o) for the store go before it: thinarchive -o Port=2222 mount ssh://... /mnt')
    .action(async (dir: string, mountpoint: string, o) => {
      const res = await mount({
        dir, mountpoint, at: o.at, partition: o.partition, writable: !!o.writable, stateDir: o.stateDir, options: ctx.mountOptions?.().join(','),
        serveCommand: ctx.selfCommand, serveArgs: ctx.storeArgs?.(), storeOptions: ctx.storeOptions?.(), log: ctx.log, signal: ctx.signal,
      });
      if (o.json) ctx.json(res);
      else ctx.err(`mounted point ${res.sequence} (archive ${res.archiveId}) of chain ${res.chainId}: ${res.mountedDevice} (${res.fsType}, ${res.mountOptions}) on ${res.mountpoint}; server pid ${res.serverPid}`);
    });

  program
    .command('umount')
    .description('undo a mount: unmount, disconnect the NBD device, stop its server')
    .argument('<mountpoint>')
    .option('--state-dir <dir>', 'where the mount record is kept (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive)')
    .option('--json', 'print the result as JSON')
    .action(async (mountpoint: string, o) => {
      const res = await umount({ mountpoint, stateDir: o.stateDir, log: ctx.log });
      if (o.json) ctx.json(res);
      else ctx.err(`unmounted ${res.mountpoint}, disconnected ${res.nbdDevice}${res.serverGone ? ' (its server had already stopped)' : ', server stopped'}`);
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
    .description('keep the newest N points (and/or those within a time), merging what kept points need; with --group, whole points of a consistency group')
    .argument('<dir>', 'store (directory, ssh:// or s3:// URL) or chain directory')
    .addOption(new Option('--keep <n>', 'keep the N newest points').argParser(seqOption('--keep')))
    .option('--keep-within <duration>', 'keep every point created within DURATION (45s, 90m, 12h, 30d, 2w)')
    .addOption(new Option('--keep-hourly <n>', 'keep the newest point of each of the last N hours (UTC) that have one').argParser(seqOption('--keep-hourly')))
    .addOption(new Option('--keep-daily <n>', 'the same per day').argParser(seqOption('--keep-daily')))
    .addOption(new Option('--keep-weekly <n>', 'the same per ISO week').argParser(seqOption('--keep-weekly')))
    .addOption(new Option('--keep-monthly <n>', 'the same per month').argParser(seqOption('--keep-monthly')))
    .addOption(new Option('--keep-yearly <n>', 'the same per year').argParser(seqOption('--keep-yearly')))
    .option('--group <name>', 'DIR is a store: the rules count whole points of this consistency group, and every member chain keeps or drops a point together')
    .option('--dry-run', 'print the plan, change nothing')
    .addOption(new Option('--level <n>', 'zstd compression level of merged archives (1..19)').argParser(intOption('--level', 1, 19)).default(3))
    .option('--json', 'print the result as JSON')
    .action(async (dir: string, o) => {
      const opts = {
        dir, keep: o.keep, keepWithin: o.keepWithin !== undefined ? parseDuration(o.keepWithin) : undefined, dryRun: !!o.dryRun, level: o.level,
        keepHourly: o.keepHourly, keepDaily: o.keepDaily, keepWeekly: o.keepWeekly, keepMonthly: o.keepMonthly, keepYearly: o.keepYearly,
        signal: ctx.signal, storeOptions: ctx.storeOptions?.(),
      };
      if (o.group !== undefined) {
        const res = await pruneGroup({ ...opts, group: o.group });
        if (o.json) ctx.json(res);
        else ctx.out(printPruneGroup(res));
        return;
      }
      const res = await prune(opts);
      if (o.json) ctx.json(res);
      else ctx.out(printPrune(res));
    });
}
