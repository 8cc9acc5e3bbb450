/**
 * The command line: parses arguments, calls the commands, prints results, maps errors to exit codes.
 * The only place that prints or exits. Exit codes are documented in README.md ("Exit codes").
 */
import { Command, CommanderError, Option } from 'commander';
import { pino } from 'pino';
import {
  apply, close, DEFAULT_CHAIN, DEFAULT_MAX_DATA_PERCENT, DEFAULT_MAX_METADATA_PERCENT, endWritable, info, journalHooks, list, remoteApplyDestination, send,
  targetHooks, ThinarchiveError, TOOL_VERSION, UsageError, verify, writableSink, recover, EXIT_CODE,
  type RemoteApplyResult, type SendVolumeResult, type StoreOptions, type WriteProgress,
} from '../api/index.js';
import { registerCheckCommand } from './check-command.js';
import { registerDaemonCommands } from './daemon-commands.js';
import { registerAlertCommands } from './alert-commands.js';
import { addVerifyAgainstOptions, registerChainCommands, runRepair, runVerifyAgainst, type CliContext } from './chain-commands.js';
import {
  describeRecovery, describeZeroStats, intOption, parseSize, printApply, printInfo, printList, printRemoteApply, printSend, printVerify, Progress,
} from './output.js';

export const EXIT = { ok: 0, runtime: 1, usage: 2, verify: 3, unsafe: 4, internal: 70, interrupted: 130 } as const;


const controller = new AbortController();
/** JSON-lines log on standard error, at the level THINARCHIVE_LOG names (off by default). */
const log = pino({ level: process.env.THINARCHIVE_LOG || 'silent', base: undefined }, pino.destination(2));

/** Standard input, opened only when an archive is actually read from it. */
const stdin: AsyncIterable<Uint8Array> = { [Symbol.asyncIterator]: () => process.stdin[Symbol.asyncIterator]() };
let interrupted = false;

function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}
function err(text: string): void {
  process.stderr.write(text.endsWith('\n') ? text : `${text}\n`);
}
function json(value: unknown, toStderr = false): void {
  // Byte arrays (digests) print as hex strings, as in the text output.
  const text = JSON.stringify(value, function (this: Record<string, unknown>, key, v) {
    const raw = this[key];
    return raw instanceof Uint8Array ? Buffer.from(raw).toString('hex') : v;
  }, 2) + '\n';
  if (toStderr) process.stderr.write(text);
  else process.stdout.write(text);
}

function sizeOption(name: string) {
  return (v: string): number => {
    const n = parseSize(v);
    if (n === undefined) throw new UsageError(`${name}: cannot read size ${JSON.stringify(v)} (examples: 65536, 64K, 1M)`);
    return n;
  };
}

const chainCtx: CliContext = { json: (v) => json(v), out, err, signal: controller.signal, log, verifyExit: EXIT.verify };

function buildProgram(): Command {
  const program = new Command();
  program
    .name('thinarchive')
    .description('Back up and replicate thin LVM volumes as self-describing, checksummed, compressed archives')
    .version(TOOL_VERSION)
    .showHelpAfterError(false)
    .configureOutput({
      writeErr: (s) => process.stderr.write(s),
      writeOut: (s) => process.stdout.write(s),
      // commander's "error: ..." (and a "(Did you mean ...?)" line) as the project's one line.
      outputError: (s, write) => write(`thinarchive: ${commanderMessage(s)}\n`),
    })
    // Descriptions wrap to the width (80 when not a terminal), also beside long option names.
    .configureHelp({ minWidthToWrap: 24 })
    .exitOverride();
  // Options for remote stores, accepted before or after the command name.
  program
    .option('-o, --ssh-option <option>', 'ssh:// stores and --apply-remote: pass "-o OPTION" to ssh (repeatable; e.g. Ciphers=aes128-gcm@openssh.com, Compression=yes, IdentityFile=KEY, Port=2222)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--s3-endpoint <url>', 's3:// stores: the S3 endpoint URL (default: from AWS_ENDPOINT_URL or the AWS config)')
    .addOption(new Option('--retain-days <n>', 's3:// stores: object-lock retention of new archives, in days').argParser(intOption('--retain-days', 1, 36500)));
  const storeOptions = (): StoreOptions => {
    const g = program.opts();
    return { sshOptions: (g.sshOption as string[]).flatMap((x) => ['-o', x]), s3Endpoint: g.s3Endpoint, retainDays: g.retainDays };
  };
  chainCtx.storeOptions = storeOptions;

  program
    .command('send')
    .description('write a full or incremental archive of a thin LV (VG/LV: managed snapshots), a user-managed snapshot, or an image')
    .argument('[volume]', 'thin LV to send, as VG/LV (the newest state, through a managed snapshot)')
    .option('--image <path>', 'image file or block device to archive instead of an LV')
    .option('--to <store|->', "store: a directory, ssh://[user@]host[:port]/path or s3://bucket/prefix; or '-' for standard output")
    .option('--apply-remote <ssh://host>', 'instead of --to: replicate, running "thinarchive apply -" on that host over ssh (ssh://[user@]host[:port])')
    .option('--remote-to <target>', 'with --apply-remote: the remote target (image path, block device or VG/LV)')
    .option('--remote-command <cmd>', 'with --apply-remote: the thinarchive command on the remote host (default "thinarchive")')
    .option('--remote-arg <arg>', 'with --apply-remote: an argument for the remote apply, e.g. --create (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--full', 'LV: a full archive even when the chain has a base snapshot')
    .option('--chain <name>', `LV: chain name, one per destination (default "${DEFAULT_CHAIN}")`)
    .option('--snapshot <vg/snap>', 'send this user-managed thin snapshot (nothing is created or removed)')
    .option('--base <vg/snap>', 'with --snapshot: the older snapshot the incremental starts from (needs --parent)')
    .addOption(new Option('--max-data-percent <n>', `LV: refuse when the pool's data usage is above N% (default ${DEFAULT_MAX_DATA_PERCENT})`).argParser(intOption('--max-data-percent', 0, 100)))
    .addOption(new Option('--max-metadata-percent <n>', `LV: refuse when the pool's metadata usage is above N% (default ${DEFAULT_MAX_METADATA_PERCENT})`).argParser(intOption('--max-metadata-percent', 0, 100)))
    .option('--force-release', "LV: release a pool metadata snapshot held by another program (it will read garbage)")
    .option('--state-dir <dir>', 'LV: where locks and reservation records are kept (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive)')
    .option('--changes <delta.xml>', 'image: thin_delta XML of what changed since the parent (incremental)')
    .option('--parent <archive|dir>', 'image or --snapshot: the archive this one follows (a store directory: its newest archive)')
    .addOption(new Option('--block-size <size>', 'image: block size of a new chain (power of two, 4K..4M)').argParser(sizeOption('--block-size')))
    .addOption(new Option('--level <n>', 'zstd compression level (1..19)').argParser(intOption('--level', 1, 19)).default(3))
    .option('--name <name>', 'image: volume name recorded in the header (default: the image file name)')
    .option('--volume-uuid <uuid>', 'image: stable volume UUID for a new chain (default: random)')
    .option('--dry-run', 'print what would be written, without reading any data (an LV send snapshots and removes the snapshot)')
    .option('--force', "with --to -: write the archive even when standard output is a terminal")
    .option('--take-lease', "a store: take the chain's lease over even while another writer holds it (CHAIN_LEASED); only when that writer is gone")
    .option('--json', 'print the result as JSON')
    .action(async (volume: string | undefined, o) => {
      const lvFlags = ['full', 'chain', 'snapshot', 'base', 'maxDataPercent', 'maxMetadataPercent', 'forceRelease', 'stateDir'];
      const imageFlags = ['changes', 'blockSize', 'name', 'volumeUuid'];
      const flag = (k: string): string => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
      const lvSend = volume !== undefined || o.snapshot !== undefined;
      if (lvSend === (o.image !== undefined)) {
        throw new UsageError(lvSend ? 'send either a volume (VG/LV or --snapshot) or --image, not both' : 'name what to send: VG/LV, --snapshot VG/SNAP or --image PATH');
      }
      const misplaced = (lvSend ? imageFlags : lvFlags).filter((k) => o[k] !== undefined);
      if (misplaced.length) throw new UsageError(`${misplaced.map(flag).join(', ')} ${misplaced.length > 1 ? 'do' : 'does'} not go with ${lvSend ? 'an LV send' : '--image'}`);
      if ((o.to === undefined) === (o.applyRemote === undefined)) throw new UsageError(o.to === undefined ? 'name where the archive goes: --to STORE|- or --apply-remote ssh://HOST' : '--to and --apply-remote do not go together');
      const remoteFlags = ['remoteTo', 'remoteCommand'].filter((k) => o[k] !== undefined).concat(o.remoteArg.length ? ['remoteArg'] : []);
      if (o.applyRemote === undefined && remoteFlags.length) throw new UsageError(`${remoteFlags.map(flag).join(', ')} go${remoteFlags.length > 1 ? '' : 'es'} with --apply-remote`);
      if (o.applyRemote !== undefined && o.remoteTo === undefined) throw new UsageError('--apply-remote needs --remote-to TARGET (an image path, block device or VG/LV on the remote host)');
      const toStdout = o.to === '-';
      if (o.force && !toStdout) throw new UsageError('--force goes with --to - (standard output)');
      if (o.takeLease && (o.to === undefined || toStdout)) throw new UsageError('--take-lease goes with --to STORE (a pipe has no lease)');
      if (toStdout && !o.dryRun && process.stdout.isTTY && !o.force) {
        throw new UsageError('standard output is a terminal: redirect it (--to - > FILE, or a pipe), or add --force to write the archive there');
      }
      const progress = new Progress('send');
      const remote = o.applyRemote === undefined ? undefined
        : remoteApplyDestination({ host: o.applyRemote, target: o.remoteTo, remoteCommand: o.remoteCommand, remoteArgs: o.remoteArg, storeOptions: storeOptions() });
      const to = remote ? remote.dest : toStdout ? { sink: writableSink(process.stdout), label: 'standard output', end: () => endWritable(process.stdout) } : o.to;
      const onProgress = (p: WriteProgress): void => progress.update(p.bytesRead, p.bytesTotal);
      const res = lvSend
        ? await send({
          volume, snapshot: o.snapshot, base: o.base, parent: o.parent, to, full: o.full, chain: o.chain, maxDataPercent: o.maxDataPercent,
          maxMetadataPercent: o.maxMetadataPercent, forceRelease: !!o.forceRelease, stateDir: o.stateDir, dryRun: !!o.dryRun, level: o.level,
          log, signal: controller.signal, onProgress, storeOptions: storeOptions(), takeLease: !!o.takeLease,
        })
        : await send({
          image: o.image, changes: o.changes, parent: o.parent, blockSize: o.blockSize, level: o.level, name: o.name,
          volumeUuid: o.volumeUuid, dryRun: !!o.dryRun, signal: controller.signal, to, onProgress, storeOptions: storeOptions(), takeLease: !!o.takeLease,
        });
      const applied: RemoteApplyResult | undefined = remote?.result();
      if (applied) res.remoteApply = applied;
      progress.done();
      if (o.json) json(res, toStdout && !o.dryRun);
      else {
        err(printSend(res));
        if (applied) err(printRemoteApply(applied));
        if ('snapshot' in res) {
          const r = res as SendVolumeResult;
          const snap = (x: { vg: string; name: string; thinId: number }): string => `${x.vg}/${x.name} (thin id ${x.thinId})`;
          err(`  snapshot ${snap(r.snapshot)}${r.base ? `, delta from ${snap(r.base)}` : ''}; pool ${r.pool}, chunk ${r.poolChunkSize} B${r.chain !== null ? `; chain "${r.chain}"` : ''}`);
          if (r.recovered.length) err(`  made base after an interrupted send: ${r.recovered.join(', ')}`);
          if (r.removed.length) err(`  removed: ${r.removed.join(', ')}`);
          for (const w of r.warnings) err(`  warning: ${w}`);
        }
      }
    });

  program
    .command('apply')
    .description('replay archives onto an image file, a block device or a logical volume (VG/LV)')
    .argument('<archives...>', "archive files or URLs, stores/chains (directories, ssh:// or s3:// URLs), or '-' for standard input")
    .requiredOption('--to <target>', 'image file, block device, or VG/LV (state kept in LV tags)')
    .option('--create', 'create a new sparse image, or with --pool a new thin LV, of the volume size')
    .option('--create-if-missing', 'as --create when the target does not exist, otherwise apply to it (replication)')
    .option('--pool <VG/POOL>', 'thin pool --create makes a new LV target in')
    .option('--snapshot-target', 'LV targets: keep a read-only thin snapshot of the target after each applied archive')
    .addOption(new Option('--keep <n>', 'with --snapshot-target: keep the N newest snapshots (default: all)').argParser(intOption('--keep', 1, 1_000_000)))
    .option('--force', 'allow a full archive to overwrite a target with other or no recorded state')
    .option('--state-dir <dir>', 'where block-device target state is kept (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive)')
    .option('--no-undo', 'no undo journal / rollback snapshot: faster, but an interrupted apply can only be completed (apply again), not rolled back')
    .option('--repair', 'rewrite only the blocks whose checksums differ from the chain\'s newest state (a diverged target)')
    .option('--wait', 'when another thinarchive process holds the target (apply, restore, repair, recover, verify --against), wait for it instead of failing with TARGET_LOCKED')
    .option('--json', 'print the result as JSON')
    .action(async (archives: string[], o) => {
      if (o.repair) return runRepair(archives, o, chainCtx);
      testKillHook();
      const progress = new Progress('apply');
      const res = await apply({
        inputs: archives, to: o.to, create: !!o.create, createIfMissing: !!o.createIfMissing, force: !!o.force, stateDir: o.stateDir, stdin, noUndo: o.undo === false, wait: !!o.wait, storeOptions: storeOptions(),
        pool: o.pool, snapshotTarget: !!o.snapshotTarget, keep: o.keep,
        signal: controller.signal, log, onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal),
      });
      progress.done();
      if (res.recovered) err(`recovered first: ${describeRecovery(res.recovered)}`);
      if (o.json) json(res);
      else {
        const lines = [printApply(res, describeZeroStats(res.zeroing))];
        if (res.lv?.created) lines.push(`created thin LV ${res.lv.vg}/${res.lv.lv} in pool ${res.lv.pool}`);
        if (res.lv?.noDiscardReason) lines.push(`zeroing wrote zeroes instead of discarding: ${res.lv.noDiscardReason}`);
        for (const s of res.snapshots?.created ?? []) lines.push(`snapshot ${res.lv!.vg}/${s.name} (sequence ${s.sequence})`);
        for (const n of res.snapshots?.removed ?? []) lines.push(`removed old snapshot ${res.lv!.vg}/${n}`);
        if (res.snapshots) lines.push(`snapshots kept: ${res.snapshots.kept.map((s) => s.name).join(', ') || 'none'}`);
        err(lines.join('\n'));
      }
    });

  program
    .command('recover')
    .description('roll back a target whose apply was interrupted to its previous state (apply also does this first)')
    .argument('<target>', 'image file, block device, or VG/LV')
    .option('--state-dir <dir>', 'where block-device target state is kept (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive)')
    .option('--wait', 'when another thinarchive process holds the target (apply, restore, repair, recover, verify --against), wait for it instead of failing with TARGET_LOCKED')
    .option('--json', 'print the result as JSON')
    .action(async (target: string, o) => {
      const res = await recover({ target, stateDir: o.stateDir, log, wait: !!o.wait, signal: controller.signal });
      if (o.json) json(res);
      else err(describeRecovery(res));
    });

  addVerifyAgainstOptions(program
    .command('verify')
    .description('check archives completely: every block checksum, the structure, the digest and the chain links (--sample: a random share of the records)')
    .argument('<archives...>', "archive files or URLs, stores/chains (directories, ssh:// or s3:// URLs), or '-' for standard input"))
    .option('--json', 'print the report as JSON')
    .action(async (archives: string[], o) => {
      if (o.against !== undefined) return runVerifyAgainst(archives, o, chainCtx);
      const orphan = (['changedOnly', 'stateDir'] as const).filter((k) => o[k] !== undefined);
      if (orphan.length) throw new UsageError(`${orphan.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')} go${orphan.length > 1 ? '' : 'es'} with --against TARGET`);
      const progress = new Progress('verify');
      const res = await verify({ inputs: archives, stdin, signal: controller.signal, onProgress: (p) => progress.update(p.bytesRead, undefined), storeOptions: storeOptions(), samplePercent: o.sample });
      progress.done();
      if (o.json) json(res);
      else out(printVerify(res));
      if (!res.ok) process.exitCode = EXIT.verify;
    });

  program
    .command('info')
    .description("show an archive's header, map and trailer (reads no payload)")
    .argument('<archive>', "archive file or URL, a store or chain (its newest archive), or '-' for standard input")
    .option('--json', 'print as JSON')
    .action(async (archive: string, o) => {
      const res = await info({ archive, stdin, storeOptions: storeOptions() });
      if (o.json) json(res);
      else out(printInfo(res));
    });

  program
    .command('list')
    .description('list the chains and archives of a store')
    .argument('<store>', 'store: a directory, ssh://[user@]host[:port]/path or s3://bucket/prefix')
    .option('--json', 'print as JSON')
    .action(async (dir: string, o) => {
      const res = await list({ dir, storeOptions: storeOptions() });
      if (o.json) json(res);
      else out(printList(res));
    });
  registerChainCommands(program, chainCtx);
  registerDaemonCommands(program, chainCtx);
  registerAlertCommands(program, chainCtx);
  registerCheckCommand(program, chainCtx);
  return program;
}

/**
 * Test-only (crash tests, docs/JOURNAL.md): THINARCHIVE_TEST_KILL_AFTER_WRITES=N kills this process
 * with SIGKILL after N target writes and undo-journal flushes of an apply, counted together.
 */
function testKillHook(): void {
  const n = Number(process.env.THINARCHIVE_TEST_KILL_AFTER_WRITES ?? '');
  if (!Number.isInteger(n) || n <= 0) return;
  let count = 0;
  const tick = (): void => {
    if (++count >= n) process.kill(process.pid, 'SIGKILL');
  };
  targetHooks.afterWrite = tick;
  journalHooks.afterFlush = tick;
}

/** How long a command may take to stop after SIGINT/SIGTERM before it is ended regardless. */
const INTERRUPT_GRACE_MS = 10_000;

/** commander's error text ("error: unknown option '--x'\n(Did you mean --y?)\n") as one line without "error: ". */
function commanderMessage(s: string): string {
  return s.replace(/^error:\s*/i, '').split('\n').map((l) => l.trim()).filter(Boolean).join(' ');
}

/**
 * A failure: one line on stderr ("thinarchive: ..."), and with --json also a JSON error object on
 * standard output (README, "JSON output"). Returns the exit code.
 */
function fail(wantJson: boolean, code: string, exitClass: string, exit: number, message: string, printLine = true): number {
  Progress.clearLine();
  if (printLine) err(`thinarchive: ${message}`);
  if (wantJson) json({ error: { code, exitClass, exit, message } }, jsonErrorsToStderr);
  return exit;
}

/**
 * `check` follows the monitoring-plugin convention even when it fails: `THINARCHIVE UNKNOWN - <reason>`
 * on standard output (with --json the JSON error object instead) and exit 3, whatever the failure.
 */
function checkUnknown(e: unknown, wantJson: boolean): number {
  const reason = interrupted ? 'interrupted'
    : e instanceof CommanderError ? commanderMessage(e.message)
      : e instanceof ThinarchiveError ? e.message : `internal error: ${(e as Error)?.message ?? String(e)}`;
  Progress.clearLine();
  if (!wantJson) out(`THINARCHIVE UNKNOWN - ${reason.replace(/[\r\n]+/g, ' ').replace(/\|/g, '/')}`);
  else json({ error: { code: e instanceof ThinarchiveError ? e.code : 'USAGE', exitClass: e instanceof ThinarchiveError ? e.exitClass : 'usage', exit: 3, message: reason } }, false);
  return 3;
}

/** send --to - --json: standard output carries the archive, so the JSON (result or error) goes to stderr. */
let jsonErrorsToStderr = false;

export async function main(argv: string[]): Promise<number> {
  const args = argv.slice(2);
  const wantJson = args.includes('--json');
  const toIdx = args.indexOf('--to');
  jsonErrorsToStderr = args[0] === 'send' && toIdx >= 0 && args[toIdx + 1] === '-';
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) {
      // Second signal: stop now, by the signal itself (worker threads inside a native call would
      // delay process.exit). Temporary files left behind are removed by the next run.
      process.removeAllListeners(signal);
      process.kill(process.pid, signal);
      return;
    }
    interrupted = true;
    controller.abort();
    // Every command stops promptly: one still running after INTERRUPT_GRACE_MS (a call deaf to the
    // signal) is ended here. What that leaves is what a crash leaves, which every command survives
    // (temporary files go at the next run; an apply's undo journal is rolled back by recover or the
    // next apply); nothing partial is ever under an archive's final name.
    setTimeout(() => {
      process.exit(fail(wantJson, 'ABORTED', 'interrupted', EXIT.interrupted, 'interrupted'));
    }, INTERRUPT_GRACE_MS).unref();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.stdout.on('error', () => {});
  try {
    if (argv.length <= 2) {
      buildProgram().outputHelp({ error: true });
      return EXIT.usage;
    }
    await buildProgram().parseAsync(argv);
    await close();
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (e) {
    await close();
    const helpShown = e instanceof CommanderError && ['commander.helpDisplayed', 'commander.version', 'commander.help'].includes(e.code);
    if (!helpShown && args.find((a) => !a.startsWith('-')) === 'check') return checkUnknown(e, wantJson);
    if (interrupted) return fail(wantJson, 'ABORTED', 'interrupted', EXIT.interrupted, 'interrupted');
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return EXIT.ok;
      // commander has printed its message already (outputError: one line).
      return fail(wantJson, 'USAGE', 'usage', EXIT.usage, commanderMessage(e.message), false);
    }
    if (e instanceof ThinarchiveError) return fail(wantJson, e.code, e.exitClass, EXIT_CODE[e.exitClass], e.message);
    const detail = process.env.THINARCHIVE_DEBUG ? `\n${(e as Error)?.stack}` : ' (set THINARCHIVE_DEBUG=1 for details)';
    Progress.clearLine();
    err(`thinarchive: internal error: ${(e as Error)?.message ?? String(e)}${detail}`);
    if (wantJson) json({ error: { code: 'INTERNAL', exitClass: 'internal', exit: EXIT.internal, message: `internal error: ${(e as Error)?.message ?? String(e)}` } }, jsonErrorsToStderr);
    return EXIT.internal;
  }
}

