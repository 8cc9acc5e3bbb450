/**
 * The command line: parses arguments, calls the commands, prints results, maps errors to exit codes.
 * The only place that prints or exits. Exit codes are documented in README.md ("Exit codes").
 */
import { Command, CommanderError, Option } from 'commander';
// Only what registering the commands needs is imported here (the core of the API and the operations'
// lazy entry points): each command loads its implementation, and --help and --version load none
// (docs/PERFORMANCE.md, "Start-up").
import {
  DEFAULT_CHAIN, DEFAULT_MAX_DATA_PERCENT, DEFAULT_MAX_METADATA_PERCENT, parseTrackerSize, ThinarchiveError, TOOL_VERSION, UsageError, EXIT_CODE, type Logger, type TrackerSize,
} from '../api/core.js';
import { apply, close, info, list, recover, send, verify } from '../api/operations.js';
import type { RemoteApplyResult, SendVolumeResult, StoreOptions, WriteProgress } from '../api/index.js';
import { resolve as resolvePath } from 'node:path';
import { registerCheckCommand } from './check-command.js';
import { registerDaemonCommands } from './daemon-commands.js';
import { registerAlertCommands } from './alert-commands.js';
import { addVerifyAgainstOptions, registerChainCommands, runRepair, runVerifyAgainst, type CliContext } from './chain-commands.js';
import {
  describeRecovery, describeZeroStats, flagName, intOption, parseSize, printApply, printGroups, printInfo, printList, printRemoteApply, printSend, printVerify, printVerifyGroup, Progress,
} from './output.js';

export const EXIT = { ok: 0, runtime: 1, usage: 2, verify: 3, unsafe: 4, internal: 70, interrupted: 130 } as const;


const controller = new AbortController();
const noop = (): void => {};
/**
 * JSON-lines log on standard error, at the level THINARCHIVE_LOG names (off by default). Set before
 * a command's action runs (pino is loaded only when a level is named).
 */
let log: Logger = { debug: noop, info: noop, warn: noop };
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
async function openLog(): Promise<void> {
  const level = process.env.THINARCHIVE_LOG || 'silent';
  if (level === 'silent') return;
  if (!LOG_LEVELS.includes(level)) throw new UsageError(`THINARCHIVE_LOG=${level} is not a log level (${LOG_LEVELS.join(', ')})`);
  const { pino } = await import('pino');
  log = pino({ level, base: undefined }, pino.destination(2));
  chainCtx.log = log;
}
/** Set once a command's action is about to run: only then has anything been opened that close() releases. */
let actionRan = false;

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

/** "500ms", "5s", "1.5s", "2m" -> milliseconds. */
function parseShortDuration(v: string, name: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m)$/.exec(v.trim());
  if (!m || !(Number(m[1]) > 0)) throw new UsageError(`${name}: cannot read duration ${JSON.stringify(v)} (examples: 500ms, 5s, 1.5s, 2m)`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000 }[m[2] as 'ms' | 's' | 'm'];
}

/** --tracker-size: "20%" or a size. */
function trackerSizeOption(v: string): TrackerSize {
  const t = parseTrackerSize(v, parseSize);
  if (!t) throw new UsageError(`--tracker-size: cannot read ${JSON.stringify(v)} (examples: 20%, 512M, 2G)`);
  return t;
}

function sizeOption(name: string) {
  return (v: string): number => {
    const n = parseSize(v);
    if (n === undefined) throw new UsageError(`${name}: cannot read size ${JSON.stringify(v)} (examples: 65536, 64K, 1M)`);
    return n;
  };
}

const chainCtx: CliContext = { json: (v) => json(v), out, err, signal: controller.signal, log, verifyExit: EXIT.verify };

function buildProgram(argv: string[] = process.argv): Command {
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
    .exitOverride()
    .hook('preAction', async () => {
      actionRan = true;
      await openLog();
    });
  // Options for remote stores, accepted before or after the command name.
  program
    .option('-o, --ssh-option <option>', 'ssh:// stores and --apply-remote: pass "-o OPTION" to ssh (repeatable; e.g. Ciphers=aes128-gcm@openssh.com, Compression=yes, IdentityFile=KEY, Port=2222)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--s3-endpoint <url>', 's3:// stores: the S3 endpoint URL (default: from AWS_ENDPOINT_URL or the AWS config)')
    .addOption(new Option('--retain-days <n>', 's3:// stores: object-lock retention of new archives, in days').argParser(intOption('--retain-days', 1, 36500)))
    // Encrypted archives (README "Encrypted archives"): keys only ever come from files or public recipients.
    .option('--identity <file>', 'an age identity file (AGE-SECRET-KEY-1…) that opens encrypted archives (repeatable; also $THINARCHIVE_IDENTITY)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--passphrase-file <file>', 'a file holding a passphrase: send encrypts with it; readers decrypt with it')
    .option('--encrypt-to <recipient>', 'send, merge, prune: encrypt new archives to this age recipient (age1…; repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--recipients-file <file>', 'send, merge, prune: encrypt to every recipient in this file (one age1… per line; repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[]);
  let keys: Pick<StoreOptions, 'identities' | 'recipients'> = {};
  program.hook('preAction', async () => {
    const g = program.opts();
    const env = process.env.THINARCHIVE_IDENTITY;
    const identityFiles = [...(g.identity as string[]), ...(env ? [env] : [])];
    const recipients = g.encryptTo as string[];
    const recipientsFiles = g.recipientsFile as string[];
    // (the key code loads only when a key is named: most commands never need it)
    if (identityFiles.length === 0 && recipients.length === 0 && recipientsFiles.length === 0 && g.passphraseFile === undefined) {
      keys = { identities: [], recipients: [] };
      return;
    }
    const { loadKeys } = await import('../api/index.js');
    keys = await loadKeys({ identityFiles, passphraseFile: g.passphraseFile, recipients, recipientsFiles });
  });
  // `mount`: -o after the command name are mount options; ssh options go before it.
  const split = splitMountOptions(argv.slice(2));
  const sshOptions = (): string[] => split?.ssh ?? (program.opts().sshOption as string[]);
  const storeOptions = (): StoreOptions => {
    const g = program.opts();
    return { sshOptions: sshOptions().flatMap((x) => ['-o', x]), s3Endpoint: g.s3Endpoint, retainDays: g.retainDays, ...keys };
  };
  chainCtx.storeOptions = storeOptions;
  chainCtx.mountOptions = () => split?.mount ?? [];
  // The background server of `mount` gets the same store options and key files (paths only, never keys).
  chainCtx.storeArgs = () => {
    const g = program.opts();
    return [
      ...sshOptions().flatMap((x) => ['-o', x]), ...(g.s3Endpoint ? ['--s3-endpoint', g.s3Endpoint as string] : []),
      ...(g.identity as string[]).flatMap((f) => ['--identity', resolvePath(f)]), ...(g.passphraseFile ? ['--passphrase-file', resolvePath(g.passphraseFile as string)] : []),
    ];
  };
  chainCtx.selfCommand = [process.execPath, process.argv[1]];

  program
    .command('send')
    .description('write a full or incremental archive of a thin or classic LV (VG/LV: managed snapshots), a user-managed snapshot, or an image')
    .argument('[volumes...]', 'LV to send, as VG/LV (the newest state, through a managed snapshot; thin, or classic with a classic snapshot as change tracker); several thin LVs: a consistency group (one quiesce window)')
    .option('--image <path>', 'image file or block device to archive instead of an LV')
    .option('--to <store|->', "store: a directory, ssh://[user@]host[:port]/path or s3://bucket/prefix; or '-' for standard output")
    .option('--apply-remote <ssh://host>', 'instead of --to: replicate, running "thinarchive apply -" on that host over ssh (ssh://[user@]host[:port])')
    .option('--remote-to <target>', 'with --apply-remote: the remote target (image path, block device or VG/LV)')
    .option('--remote-command <cmd>', 'with --apply-remote: the thinarchive command on the remote host (default "thinarchive")')
    .option('--remote-arg <arg>', 'with --apply-remote: an argument for the remote apply, e.g. --create (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--full', 'LV: a full archive even when the chain has a base snapshot')
    .option('--chain <name>', `LV: chain name, one per destination (default "${DEFAULT_CHAIN}")`)
    .addOption(new Option('--tracker-size <size|n%>', 'classic (thick) LV: copy-on-write space of the classic snapshot each send leaves as the change tracker, a size or a percentage of the LV (default 20%)').argParser(trackerSizeOption))
    .option('--snapshot <vg/snap>', 'send this user-managed thin snapshot (nothing is created or removed)')
    .option('--base <vg/snap>', 'with --snapshot: the older snapshot the incremental starts from (needs --parent)')
    .addOption(new Option('--max-data-percent <n>', `LV: refuse when the pool's data usage is above N% (default ${DEFAULT_MAX_DATA_PERCENT})`).argParser(intOption('--max-data-percent', 0, 100)))
    .addOption(new Option('--max-metadata-percent <n>', `LV: refuse when the pool's metadata usage is above N% (default ${DEFAULT_MAX_METADATA_PERCENT})`).argParser(intOption('--max-metadata-percent', 0, 100)))
    .option('--force-release', "LV: release a pool metadata snapshot held by another program (it will read garbage)")
    .option('--state-dir <dir>', 'LV: where locks and reservation records are kept; image: where an encrypted send records what its next incremental needs (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive)')
    .option('--changes <delta.xml>', 'image: thin_delta XML of what changed since the parent (incremental)')
    .option('--parent <archive|dir>', 'image or --snapshot: the archive this one follows (a store directory: its newest archive)')
    .addOption(new Option('--block-size <size>', 'image: block size of a new chain (power of two, 4K..4M)').argParser(sizeOption('--block-size')))
    .addOption(new Option('--level <n>', 'zstd compression level (1..19)').argParser(intOption('--level', 1, 19)).default(3))
    .option('--name <name>', 'image: volume name recorded in the header (default: the image file name)')
    .option('--volume-uuid <uuid>', 'image: stable volume UUID for a new chain (default: random)')
    .option('--dry-run', 'print what would be written, without reading any data (an LV send snapshots and removes the snapshot)')
    .option('--force', "with --to -: write the archive even when standard output is a terminal")
    .option('--take-lease', "a store: take the chain's lease over even while another writer holds it (CHAIN_LEASED); only when that writer is gone")
    .option('--group <name>', `LV: send the volumes as a consistency group of this name: every snapshot inside one quiesce window, the group recorded in each archive (several volumes without --group: group "${DEFAULT_GROUP}")`)
    .option('--freeze <mountpoint>', 'group: fsfreeze this mounted filesystem for the snapshots (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--freeze-cmd <cmd>', 'group: run this (sh -c) to quiesce before the snapshots (with --thaw-cmd)')
    .option('--thaw-cmd <cmd>', 'group: run this (sh -c) to resume after them; also run by the watchdog')
    .option('--virsh-domain <name>', 'group: quiesce the guest\'s filesystems with virsh domfsfreeze / domfsthaw')
    .option('--freeze-timeout <duration>', 'group: the watchdog thaws when the quiesce window lasts longer (default 10s)')
    .option('--json', 'print the result as JSON')
    .action(async (volumes: string[], o) => {
      const volume: string | undefined = volumes.length === 1 && o.group === undefined ? volumes[0] : undefined;
      const freezeFlags = ['freezeCmd', 'thawCmd', 'virshDomain', 'freezeTimeout'].filter((k) => o[k] !== undefined).concat(o.freeze.length ? ['freeze'] : []);
      if (volumes.length > 1 || o.group !== undefined) return sendGroupCli(volumes, o, storeOptions());
      if (freezeFlags.length) throw new UsageError(`${freezeFlags.map(flagName).join(', ')} go${freezeFlags.length > 1 ? '' : 'es'} with a group send (--group NAME, or several volumes)`);
      const lvFlags = ['full', 'chain', 'snapshot', 'base', 'maxDataPercent', 'maxMetadataPercent', 'forceRelease', 'trackerSize'];
      const imageFlags = ['changes', 'blockSize', 'name', 'volumeUuid'];
      const lvSend = volume !== undefined || o.snapshot !== undefined;
      if (lvSend === (o.image !== undefined)) {
        throw new UsageError(lvSend ? 'send either a volume (VG/LV or --snapshot) or --image, not both' : 'name what to send: VG/LV, --snapshot VG/SNAP or --image PATH');
      }
      const misplaced = (lvSend ? imageFlags : lvFlags).filter((k) => o[k] !== undefined);
      if (misplaced.length) throw new UsageError(`${misplaced.map(flagName).join(', ')} ${misplaced.length > 1 ? 'do' : 'does'} not go with ${lvSend ? 'an LV send' : '--image'}`);
      if ((o.to === undefined) === (o.applyRemote === undefined)) throw new UsageError(o.to === undefined ? 'name where the archive goes: --to STORE|- or --apply-remote ssh://HOST' : '--to and --apply-remote do not go together');
      const remoteFlags = ['remoteTo', 'remoteCommand'].filter((k) => o[k] !== undefined).concat(o.remoteArg.length ? ['remoteArg'] : []);
      if (o.applyRemote === undefined && remoteFlags.length) throw new UsageError(`${remoteFlags.map(flagName).join(', ')} go${remoteFlags.length > 1 ? '' : 'es'} with --apply-remote`);
      if (o.applyRemote !== undefined && o.remoteTo === undefined) throw new UsageError('--apply-remote needs --remote-to TARGET (an image path, block device or VG/LV on the remote host)');
      const toStdout = o.to === '-';
      if (o.force && !toStdout) throw new UsageError('--force goes with --to - (standard output)');
      if (o.takeLease && (o.to === undefined || toStdout)) throw new UsageError('--take-lease goes with --to STORE (a pipe has no lease)');
      if (toStdout && !o.dryRun && process.stdout.isTTY && !o.force) {
        throw new UsageError('standard output is a terminal: redirect it (--to - > FILE, or a pipe), or add --force to write the archive there');
      }
      const progress = new Progress('send');
      const { endWritable, remoteApplyDestination, writableSink } = await import('../api/index.js');
      const remote = o.applyRemote === undefined ? undefined
        : remoteApplyDestination({ host: o.applyRemote, target: o.remoteTo, remoteCommand: o.remoteCommand, remoteArgs: o.remoteArg, storeOptions: storeOptions() });
      const to = remote ? remote.dest : toStdout ? { sink: writableSink(process.stdout), label: 'standard output', end: () => endWritable(process.stdout) } : o.to;
      const onProgress = (p: WriteProgress): void => progress.update(p.bytesRead, p.bytesTotal);
      const res = lvSend
        ? await send({
          volume, snapshot: o.snapshot, base: o.base, parent: o.parent, to, full: o.full, chain: o.chain, trackerSize: o.trackerSize, maxDataPercent: o.maxDataPercent,
          maxMetadataPercent: o.maxMetadataPercent, forceRelease: !!o.forceRelease, stateDir: o.stateDir, dryRun: !!o.dryRun, level: o.level,
          log, signal: controller.signal, onProgress, storeOptions: storeOptions(), takeLease: !!o.takeLease,
        })
        : await send({
          image: o.image, changes: o.changes, parent: o.parent, blockSize: o.blockSize, level: o.level, name: o.name,
          volumeUuid: o.volumeUuid, stateDir: o.stateDir, dryRun: !!o.dryRun, signal: controller.signal, to, onProgress, storeOptions: storeOptions(), takeLease: !!o.takeLease,
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
          const snap = (x: { vg: string; name: string; thinId: number | null }): string => `${x.vg}/${x.name} (${x.thinId !== null ? `thin id ${x.thinId}` : 'classic'})`;
          const pool = r.pool !== null ? `pool ${r.pool}, chunk` : 'classic LV, snapshot chunk';
          err(`  snapshot ${snap(r.snapshot)}${r.base ? `, delta from ${snap(r.base)}` : ''}; ${pool} ${r.poolChunkSize} B${r.chain !== null ? `; chain "${r.chain}"` : ''}`);
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
    .option('--verify', 'read back every block each archive wrote or zeroed and compare it with the archive\'s checksums before recording the new state (REPLICA_MISMATCH, exit 3, otherwise)')
    .option('--wait', 'when another thinarchive process holds the target (apply, restore, repair, recover, verify --against), wait for it instead of failing with TARGET_LOCKED')
    .option('--json', 'print the result as JSON')
    .action(async (archives: string[], o) => {
      if (o.repair && o.verify) throw new UsageError('--repair and --verify do not go together (repair reads the whole target already)');
      if (o.repair) return runRepair(archives, o, chainCtx);
      await testKillHook();
      const progress = new Progress('apply');
      const res = await apply({
        inputs: archives, to: o.to, create: !!o.create, createIfMissing: !!o.createIfMissing, force: !!o.force, stateDir: o.stateDir, stdin, noUndo: o.undo === false, wait: !!o.wait, storeOptions: storeOptions(),
        pool: o.pool, snapshotTarget: !!o.snapshotTarget, keep: o.keep, verify: !!o.verify,
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
    .command('sync')
    .description('bring a target holding an older or unknown copy up to date by comparing block hashes: only differing blocks are sent (docs/SYNC.md)')
    .argument('<source>', 'thin LV (VG/LV: only its mapped blocks are read), classic LV (VG/LV: every block), image file or block device')
    .option('--to <target>', 'a local target: image file, block device, or VG/LV')
    .option('--apply-remote <ssh://host>', 'instead of --to: the target is on that host; "thinarchive sync-target" runs there over ssh (ssh://[user@]host[:port])')
    .option('--remote-to <target>', 'with --apply-remote: the remote target (image path, block device or VG/LV)')
    .option('--remote-command <cmd>', 'with --apply-remote: the thinarchive command on the remote host (default "thinarchive")')
    .option('--remote-state-dir <dir>', 'with --apply-remote: the remote side\'s --state-dir')
    .addOption(new Option('--block-size <size>', 'block size of the comparison and of the new chain (power of two, 4K..4M; default 64K)').argParser(sizeOption('--block-size')))
    .addOption(new Option('--level <n>', 'zstd compression level (1..19)').argParser(intOption('--level', 1, 19)).default(3))
    .option('--name <name>', 'volume name recorded in the archive header (default: the source file name)')
    .option('--volume-uuid <uuid>', 'volume UUID of the new chain (default: random)')
    .option('--save <file>', 'also write the resync archive to this new file (the --parent of the next `send --image` incremental)')
    .option('--chain <name>', `LV source: the managed snapshot chain the resync point starts (default "${DEFAULT_CHAIN}"); send VG/LV --chain NAME continues it`)
    .addOption(new Option('--tracker-size <size|n%>', 'classic LV source: copy-on-write space of the classic snapshot left as the change tracker (default 20% of the LV)').argParser(trackerSizeOption))
    .option('--state-dir <dir>', 'locks of an LV source; with --to a block device, where its state is kept (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive)')
    .option('--wait', '--to: wait for another thinarchive process holding the target instead of failing with TARGET_LOCKED')
    .option('--json', 'print the result as JSON')
    .action(async (source: string, o) => {
      if ((o.to === undefined) === (o.applyRemote === undefined)) throw new UsageError(o.to === undefined ? 'name the target: --to TARGET or --apply-remote ssh://HOST --remote-to TARGET' : '--to and --apply-remote do not go together');
      const remoteFlags = ['remoteTo', 'remoteCommand', 'remoteStateDir'].filter((k) => o[k] !== undefined);
      if (o.applyRemote === undefined && remoteFlags.length) throw new UsageError(`${remoteFlags.map(flagName).join(', ')} go${remoteFlags.length > 1 ? '' : 'es'} with --apply-remote`);
      if (o.applyRemote !== undefined && o.remoteTo === undefined) throw new UsageError('--apply-remote needs --remote-to TARGET (an image path, block device or VG/LV on the remote host)');
      if (o.applyRemote !== undefined && o.wait) throw new UsageError('--wait goes with --to');
      const { sync } = await import('../api/operations.js');
      const progress = new Progress('sync');
      const res = await sync({
        source, to: o.to, remote: o.applyRemote !== undefined ? { host: o.applyRemote, target: o.remoteTo, remoteCommand: o.remoteCommand, stateDir: o.remoteStateDir } : undefined,
        storeOptions: storeOptions(), blockSize: o.blockSize, level: o.level, name: o.name, volumeUuid: o.volumeUuid, save: o.save, stateDir: o.stateDir, wait: !!o.wait, chain: o.chain, trackerSize: o.trackerSize,
        signal: controller.signal, log, onProgress: (p) => progress.update(p.bytesRead, p.bytesTotal),
      });
      progress.done();
      if (o.json) json(res);
      else {
        const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;
        err([
          `synced ${res.source} -> ${res.target}${res.host ? ` on ${res.host}` : ''}: ${res.dataBlocks} blocks sent, ${res.unmapBlocks} unmapped, ${res.sameBlocks} of ${res.blocks} already equal (block size ${res.blockSize})`,
          `  read: source ${mib(res.sourceSide.bytesRead)}, target ${mib(res.targetSide.bytesRead)}; sent ${mib(res.bytesSent)} (archive), received ${mib(res.bytesReceived)} (hashes)`,
          `  the target now holds archive ${res.archive.archiveId} (sequence ${res.archive.sequence} of chain ${res.archive.chainId})${res.saved ? `; saved as ${res.saved}` : ''}`,
          ...(res.lv ? [`  snapshot ${res.lv.vg}/${res.lv.snapshot} is now the base of chain "${res.lv.chain}": send ${res.lv.vg}/${res.lv.lv} continues from it`] : []),
        ].join('\n'));
      }
    });

  program
    .command('migrate')
    .description('move a thin LV in use to a target with a short pause: a first copy, rounds of incrementals, then --pause, the final round, --cutover')
    .argument('<source>', 'the thin LV (VG/LV)')
    .option('--to <target>', 'a local target: image file, block device, or VG/LV')
    .option('--apply-remote <ssh://host>', 'instead of --to: the target is on that host (ssh://[user@]host[:port]); thinarchive runs there over ssh')
    .option('--remote-to <target>', 'with --apply-remote: the remote target (image path, block device or VG/LV)')
    .option('--remote-command <cmd>', 'with --apply-remote: the thinarchive command on the remote host (default "thinarchive")')
    .option('--remote-state-dir <dir>', 'with --apply-remote: the remote side\'s --state-dir')
    .option('--create', 'create the target (a new image, or with --pool a new thin LV) with a full copy; without it the target exists and the first round is a sync by hashes')
    .option('--pool <VG/POOL>', 'with --create: the thin pool of the new LV target')
    .option('--max-downtime <duration>', 'pause only when the final round is predicted to take at most this long (e.g. 500ms, 5s; default 5s)')
    .addOption(new Option('--max-rounds <n>', 'give up (the source never paused) after N rounds, the first copy included (default 10)').argParser(intOption('--max-rounds', 2, 1000)))
    .option('--pause <cmd>', 'shell command that stops the writers (e.g. "virsh suspend vm1"), run before the final round')
    .option('--resume <cmd>', 'shell command run when anything fails after --pause (e.g. "virsh resume vm1")')
    .option('--cutover <cmd>', 'shell command run after the final round is applied and checked (e.g. start the VM at the target)')
    .option('--chain <name>', 'the managed snapshot chain of the rounds (default "migrate"); its snapshots are removed at the end')
    .option('--state-dir <dir>', 'locks of the source; with --to a block device, where its state is kept')
    .addOption(new Option('--level <n>', 'zstd compression level (1..19)').argParser(intOption('--level', 1, 19)).default(1))
    .option('--json', 'print the result as JSON')
    .action(async (source: string, o) => {
      if ((o.to === undefined) === (o.applyRemote === undefined)) throw new UsageError(o.to === undefined ? 'name the target: --to TARGET or --apply-remote ssh://HOST --remote-to TARGET' : '--to and --apply-remote do not go together');
      const remoteFlags = ['remoteTo', 'remoteCommand', 'remoteStateDir'].filter((k) => o[k] !== undefined);
      if (o.applyRemote === undefined && remoteFlags.length) throw new UsageError(`${remoteFlags.map(flagName).join(', ')} go${remoteFlags.length > 1 ? '' : 'es'} with --apply-remote`);
      if (o.applyRemote !== undefined && o.remoteTo === undefined) throw new UsageError('--apply-remote needs --remote-to TARGET (an image path, block device or VG/LV on the remote host)');
      if (o.pool !== undefined && !o.create) throw new UsageError('--pool goes with --create');
      const maxDowntimeMs = o.maxDowntime === undefined ? undefined : parseShortDuration(o.maxDowntime, '--max-downtime');
      const { migrate } = await import('../api/operations.js');
      const res = await migrate({
        source, to: o.to, remote: o.applyRemote !== undefined ? { host: o.applyRemote, target: o.remoteTo, remoteCommand: o.remoteCommand, stateDir: o.remoteStateDir } : undefined,
        create: !!o.create, pool: o.pool, maxDowntimeMs, maxRounds: o.maxRounds, pause: o.pause, resume: o.resume, cutover: o.cutover, chain: o.chain,
        stateDir: o.stateDir, storeOptions: storeOptions(), level: o.level, signal: controller.signal, log,
        onRound: o.json ? undefined : (r) => err(`round ${r.round} (${r.kind}): ${r.bytesSent} bytes in ${r.seconds.toFixed(2)} s; next predicted ${r.predictedNextSeconds?.toFixed(2) ?? '?'} s`),
      });
      if (o.json) json(res);
      else {
        err([
          ...res.rounds.map((r) => `round ${r.round} (${r.kind}): ${r.bytesSent} bytes sent in ${r.seconds.toFixed(2)} s (${(r.rate / 1048576).toFixed(1)} MiB/s)`),
          `paused for ${res.pauseSeconds.toFixed(2)} s; final round read back at the target: ${res.verified ? `${res.verified.blocks} blocks` : 'not reported'}`,
          ...(res.removed.length ? [`removed: ${res.removed.join(', ')}`] : []),
        ].join('\n'));
      }
    });

  program
    .command('sync-target', { hidden: true })
    .description('the target side of sync (run by sync over ssh): hash TARGET to standard output, then apply the resync archive from standard input')
    .argument('<target>', 'image file, block device, or VG/LV')
    .addOption(new Option('--block-size <size>', 'block size').argParser(sizeOption('--block-size')).makeOptionMandatory())
    .addOption(new Option('--volume-size <bytes>', 'the source volume size').argParser(sizeOption('--volume-size')).makeOptionMandatory())
    .option('--state-dir <dir>', 'where block-device target state is kept')
    .option('--wait', 'wait for another thinarchive process holding the target')
    .option('--json', 'print the result as JSON (after the hash exchange)')
    .action(async (target: string, o) => {
      const { syncTarget, writableSink } = await import('../api/index.js');
      const res = await syncTarget({
        to: target, blockSize: o.blockSize, volumeSize: o.volumeSize, stateDir: o.stateDir, wait: !!o.wait,
        out: writableSink(process.stdout), input: stdin, signal: controller.signal, log,
      });
      json(res);
    });

  program
    .command('verify-target', { hidden: true })
    .description('the replica side of verify --host (run over ssh): hash TARGET\'s blocks to standard output (docs/SYNC.md)')
    .argument('<target>', 'image file, block device, or VG/LV')
    .addOption(new Option('--block-size <size>', 'block size').argParser(sizeOption('--block-size')).makeOptionMandatory())
    .addOption(new Option('--volume-size <bytes>', 'the source volume size').argParser(sizeOption('--volume-size')).makeOptionMandatory())
    .addOption(new Option('--sample <percent>', 'hash only the blocks the seeded sample selects').argParser((v: string) => {
      const n = Number(v);
      if (!(n > 0) || n > 100) throw new UsageError('--sample must be a percentage above 0 and at most 100');
      return n;
    }))
    .addOption(new Option('--seed <n>', 'the sample\'s seed').argParser(intOption('--seed', 0, 0x7fffffff)))
    .option('--state-dir <dir>', 'where block-device target state is kept')
    .option('--wait', 'wait for a writer holding the target')
    .action(async (target: string, o) => {
      if ((o.sample === undefined) !== (o.seed === undefined)) throw new UsageError('--sample and --seed go together');
      const { verifyTargetSide, writableSink } = await import('../api/index.js');
      await verifyTargetSide({
        to: target, blockSize: o.blockSize, volumeSize: o.volumeSize, sample: o.sample !== undefined ? { seed: o.seed, percent: o.sample } : undefined,
        stateDir: o.stateDir, wait: !!o.wait, out: writableSink(process.stdout), signal: controller.signal,
      });
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
    .option('--structure-only', 'check only the structure, reading no payload: header, map, index and trailer; an encrypted archive without --identity: its age header and chunk lengths')
    .option('--group <name>', 'verify STORE --group NAME: the member chains of the consistency group, each point reported whole (INCOMPLETE: a member\'s archive missing; DAMAGED: a finding in what a member\'s restore reads)')
    .option('--at <point>', 'with --group: only this point (its id or a unique prefix, or a time: the newest point frozen at or before it)')
    .option('--json', 'print the report as JSON')
    .action(async (archives: string[], o) => {
      if (o.against !== undefined && o.structureOnly) throw new UsageError('--structure-only does not go with --against');
      if (o.group !== undefined) return verifyGroupCli(archives, o, storeOptions());
      if (o.at !== undefined) throw new UsageError('--at goes with --group NAME');
      if (o.against !== undefined) return runVerifyAgainst(archives, o, chainCtx);
      const orphan = AGAINST_ONLY.filter((k) => o[k] !== undefined);
      if (orphan.length) throw new UsageError(`${orphan.map(flagName).join(', ')} go${orphan.length > 1 ? '' : 'es'} with --against TARGET`);
      const progress = new Progress('verify');
      const res = await verify({
        inputs: archives, stdin, signal: controller.signal, onProgress: (p) => progress.update(p.bytesRead, undefined), storeOptions: storeOptions(), samplePercent: o.sample,
        structureOnly: !!o.structureOnly,
      });
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
    .option('--groups', 'list the consistency-group points instead (oldest first), each complete or not')
    .option('--json', 'print as JSON')
    .action(async (dir: string, o) => {
      const res = await list({ dir, storeOptions: storeOptions() });
      const { listGroups } = await import('../api/index.js');
      const groups = listGroups(res);
      if (o.groups) {
        if (o.json) json(groups);
        else out(printGroups(groups) || 'no group points');
      } else if (o.json) json(res);
      else out([printList(res), printGroups(groups)].filter(Boolean).join('\n'));
    });
  program
    .command('key')
    .description('keys for encrypted archives (age X25519)')
    .command('generate')
    .description('write a new identity (age format, AGE-SECRET-KEY-1…) and print its recipient (age1…)')
    .option('--out <file>', 'write the identity to FILE (created with mode 0600, never replaced); default: standard output')
    .option('--json', 'print the recipient (and path) as JSON')
    .action(async (o) => {
      const { generateIdentity } = await import('../api/index.js');
      const r = await generateIdentity(o.out);
      if (r.identity !== undefined) {
        // As age-keygen: the identity on standard output, its recipient on standard error.
        process.stdout.write(r.identity);
        if (o.json) json({ recipient: r.recipient }, true);
        else err(`Public key: ${r.recipient}`);
      } else if (o.json) json({ recipient: r.recipient, path: r.path });
      else out(r.recipient);
    });
  registerChainCommands(program, chainCtx);
  registerDaemonCommands(program, chainCtx);
  registerAlertCommands(program, chainCtx);
  registerCheckCommand(program, chainCtx);
  return program;
}

const DEFAULT_GROUP = 'default';
/** verify's options that only go with --against TARGET (and --host). */
const AGAINST_ONLY = ['changedOnly', 'stateDir', 'host', 'chain', 'remoteCommand', 'remoteStateDir', 'seed'] as const;

/** `verify STORE --group NAME [--at POINT] [--sample P]` */
async function verifyGroupCli(archives: string[], o: Record<string, any>, storeOptions: StoreOptions): Promise<void> {
  const orphan = ['against', 'structureOnly', ...AGAINST_ONLY, 'wait'].filter((k) => o[k] !== undefined && o[k] !== false);
  if (orphan.length) throw new UsageError(`${orphan.map(flagName).join(', ')} do${orphan.length > 1 ? '' : 'es'} not go with --group`);
  if (archives.length !== 1 || archives[0] === '-') throw new UsageError('verify --group NAME takes one store (a directory, ssh:// or s3:// URL)');
  const { verifyGroup } = await import('../api/operations.js');
  const progress = new Progress('verify');
  const res = await verifyGroup({
    dir: archives[0]!, group: o.group, ...(o.at !== undefined ? { at: o.at } : {}), samplePercent: o.sample, storeOptions, signal: controller.signal,
    onProgress: (p) => progress.update(p.bytesRead, undefined),
  });
  progress.done();
  if (o.json) json(res);
  else out(printVerifyGroup(res));
  if (!res.ok) process.exitCode = EXIT.verify;
}

/** `send VG/LV VG/LV... --to STORE [--group NAME] [freeze method] [--freeze-timeout D]` */
async function sendGroupCli(volumes: string[], o: Record<string, any>, storeOptions: StoreOptions): Promise<void> {
  const bad = ['snapshot', 'base', 'parent', 'image', 'applyRemote', 'dryRun', 'changes', 'blockSize', 'name', 'volumeUuid', 'force'].filter((k) => o[k] !== undefined && o[k] !== false);
  if (bad.length) throw new UsageError(`${bad.map(flagName).join(', ')} do${bad.length > 1 ? '' : 'es'} not go with a group send`);
  if (!volumes.length) throw new UsageError('name the volumes of the group (VG/LV VG/LV ...)');
  if (o.to === undefined || o.to === '-') throw new UsageError('a group send goes to a store: --to STORE (each member is an archive of its own chain)');
  const methods = [o.freeze.length > 0, o.freezeCmd !== undefined || o.thawCmd !== undefined, o.virshDomain !== undefined].filter(Boolean).length;
  if (methods > 1) throw new UsageError('give one freeze method: --freeze MOUNTPOINT..., --freeze-cmd with --thaw-cmd, or --virsh-domain');
  if ((o.freezeCmd === undefined) !== (o.thawCmd === undefined)) throw new UsageError('--freeze-cmd and --thaw-cmd go together');
  const { quiesceSpecOf, sendGroup } = await import('../api/index.js');
  const quiesce = quiesceSpecOf({ mountpoints: (o.freeze as string[]).map((m) => resolvePath(m)), freezeCmd: o.freezeCmd, thawCmd: o.thawCmd, virshDomain: o.virshDomain });
  const { parseDuration } = await import('../api/core.js');
  const progress = new Progress('send');
  const res = await sendGroup({
    volumes, group: o.group ?? DEFAULT_GROUP, to: o.to, ...(quiesce ? { quiesce } : {}), ...(o.freezeTimeout !== undefined ? { freezeTimeoutMs: parseDuration(o.freezeTimeout) } : {}),
    full: o.full, chain: o.chain, maxDataPercent: o.maxDataPercent, maxMetadataPercent: o.maxMetadataPercent, forceRelease: !!o.forceRelease, stateDir: o.stateDir,
    level: o.level, log, signal: controller.signal, storeOptions, takeLease: !!o.takeLease,
    onProgress: (p: WriteProgress) => progress.update(p.bytesRead, p.bytesTotal),
  });
  progress.done();
  if (o.json) json(res);
  else {
    const q = res.group.quiesce;
    err(`group "${res.group.name}" point ${res.group.id}: ${res.members.length} member${res.members.length > 1 ? 's' : ''}, quiesced by ${q.method} (${q.targets.join(', ')}) for ${q.freezeMs} ms`);
    for (const m of res.members) err(`  ${printSend(m).split('\n')[0]}`);
    for (const w of res.quiesce?.warnings ?? []) err(`  warning: ${w}`);
  }
}

/**
 * Test-only (crash tests, docs/JOURNAL.md): THINARCHIVE_TEST_KILL_AFTER_WRITES=N kills this process
 * with SIGKILL after N target writes and undo-journal flushes of an apply, counted together.
 */
async function testKillHook(): Promise<void> {
  const n = Number(process.env.THINARCHIVE_TEST_KILL_AFTER_WRITES ?? '');
  if (!Number.isInteger(n) || n <= 0) return;
  const { journalHooks, targetHooks } = await import('../api/index.js');
  let count = 0;
  const tick = (): void => {
    if (++count >= n) process.kill(process.pid, 'SIGKILL');
  };
  targetHooks.afterWrite = tick;
  journalHooks.afterFlush = tick;
}

/**
 * Test-only (orphan claims, FORMAT.md §3.2): THINARCHIVE_TEST_SIGNAL_AFTER_CLAIM=KILL (or STOP) sends
 * this process SIGKILL (SIGSTOP) right after a send claimed its sequence, before the archive is published.
 */
async function testClaimHook(): Promise<void> {
  const sig = process.env.THINARCHIVE_TEST_SIGNAL_AFTER_CLAIM;
  if (sig === 'KILL' || sig === 'STOP') {
    const { claimHooks } = await import('../api/index.js');
    claimHooks.afterClaim = () => {
      process.kill(process.pid, `SIG${sig}`);
    };
  }
}

/**
 * Test-only (concurrent writers, docs/JOURNAL.md "The target lock"): THINARCHIVE_TEST_SIGNAL_AFTER_LOCK=STOP
 * sends this process SIGSTOP right after it took a target lock and recorded itself as the holder.
 */
async function testLockHook(): Promise<void> {
  if (process.env.THINARCHIVE_TEST_SIGNAL_AFTER_LOCK === 'STOP') {
    const { lockHooks } = await import('../api/index.js');
    lockHooks.afterLock = () => {
      process.kill(process.pid, 'SIGSTOP');
    };
  }
}

/**
 * For `mount` only: the -o / --ssh-option values before the command name (ssh options) and after it
 * (mount options). Undefined for every other command.
 */
function splitMountOptions(args: string[]): { ssh: string[]; mount: string[] } | undefined {
  const out = { ssh: [] as string[], mount: [] as string[] };
  let command: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    let v: string | undefined;
    if (a === '-o' || a === '--ssh-option') v = args[++i];
    else if (a.startsWith('--ssh-option=')) v = a.slice('--ssh-option='.length);
    else if (/^-o./.test(a)) v = a.slice(2);
    else if (['--s3-endpoint', '--retain-days', '--identity', '--passphrase-file', '--encrypt-to', '--recipients-file'].includes(a)) i++;
    else if (!a.startsWith('-') && command === undefined) command = a;
    if (v !== undefined) (command === undefined ? out.ssh : out.mount).push(v);
  }
  return command === 'mount' ? out : undefined;
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
    await testClaimHook();
    await testLockHook();
    await buildProgram(argv).parseAsync(argv);
    if (actionRan) await close();
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (e) {
    if (actionRan) await close();
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

