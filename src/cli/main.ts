/**
 * The command line: parses arguments, calls the commands, prints results, maps errors to exit codes.
 * The only place that prints or exits. Exit codes are documented in README.md ("Exit codes").
 */
import { Command, CommanderError, Option } from 'commander';
import { pino } from 'pino';
import { ThinarchiveError, UsageError, type ExitClass } from '../errors.js';
import { apply } from '../commands/apply.js';
import { info } from '../commands/info.js';
import { list } from '../commands/list.js';
import { send } from '../commands/send.js';
import { verify } from '../commands/verify.js';
import { endWritable, writableSink } from '../store/stream.js';
import { describeZeroStats } from '../target/file-target.js';
import { TOOL_VERSION } from '../version.js';
import { parseSize, printApply, printInfo, printList, printSend, printVerify, Progress } from './output.js';

export const EXIT = { ok: 0, runtime: 1, usage: 2, verify: 3, unsafe: 4, internal: 70, interrupted: 130 } as const;

const exitFor: Record<ExitClass, number> = { runtime: EXIT.runtime, usage: EXIT.usage, verify: EXIT.verify, unsafe: EXIT.unsafe };

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

function intOption(name: string, min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`${name} must be an integer from ${min} to ${max}`);
    return n;
  };
}

function sizeOption(name: string) {
  return (v: string): number => {
    const n = parseSize(v);
    if (n === undefined) throw new UsageError(`${name}: cannot read size ${JSON.stringify(v)} (examples: 65536, 64K, 1M)`);
    return n;
  };
}

function buildProgram(): Command {
  const program = new Command();
  program
    .name('thinarchive')
    .description('Back up and replicate thin LVM volumes as self-describing, checksummed, compressed archives')
    .version(TOOL_VERSION)
    .showHelpAfterError(false)
    .configureOutput({ writeErr: (s) => process.stderr.write(s), writeOut: (s) => process.stdout.write(s) })
    .exitOverride();

  program
    .command('send')
    .description('write a full or incremental archive of an image file or block device')
    .requiredOption('--image <path>', 'image file or block device to archive')
    .option('--changes <delta.xml>', 'thin_delta XML of what changed since the parent (incremental)')
    .option('--parent <archive|dir>', 'the archive this one follows (a store directory: its newest archive)')
    .requiredOption('--to <dir|->', "store directory, or '-' for standard output")
    .addOption(new Option('--block-size <size>', 'block size of a new chain (power of two, 4K..4M)').argParser(sizeOption('--block-size')))
    .addOption(new Option('--level <n>', 'zstd compression level (1..19)').argParser(intOption('--level', 1, 19)).default(3))
    .option('--name <name>', 'volume name recorded in the header (default: the image file name)')
    .option('--volume-uuid <uuid>', 'stable volume UUID for a new chain (default: random)')
    .option('--dry-run', 'print what would be written, without reading any data')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const toStdout = o.to === '-';
      const progress = new Progress('send');
      const res = await send({
        image: o.image, changes: o.changes, parent: o.parent, blockSize: o.blockSize, level: o.level, name: o.name,
        volumeUuid: o.volumeUuid, dryRun: !!o.dryRun, signal: controller.signal,
        to: toStdout ? { sink: writableSink(process.stdout), label: 'standard output' } : o.to,
        onProgress: (p) => progress.update(p.bytesRead, p.bytesTotal),
      });
      progress.done();
      if (toStdout && !o.dryRun) await endWritable(process.stdout);
      if (o.json) json(res, toStdout && !o.dryRun);
      else err(printSend(res));
    });

  program
    .command('apply')
    .description('replay archives onto an image file or block device')
    .argument('<archives...>', "archive files, store/chain directories, or '-' for standard input")
    .requiredOption('--to <target>', 'image file or block device')
    .option('--create', 'create a new sparse image of the volume size')
    .option('--force', 'allow a full archive to overwrite a target with other or no recorded state')
    .option('--state-dir <dir>', 'where block-device target state is kept (default $THINARCHIVE_STATE_DIR or /var/lib/thinarchive)')
    .option('--json', 'print the result as JSON')
    .action(async (archives: string[], o) => {
      const progress = new Progress('apply');
      const res = await apply({
        inputs: archives, to: o.to, create: !!o.create, force: !!o.force, stateDir: o.stateDir, stdin,
        signal: controller.signal, log, onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal),
      });
      progress.done();
      if (o.json) json(res);
      else err(printApply(res, describeZeroStats(res.zeroing)));
    });

  program
    .command('verify')
    .description('check archives completely: every block checksum, the structure, the digest and the chain links')
    .argument('<archives...>', "archive files, store/chain directories, or '-' for standard input")
    .option('--json', 'print the report as JSON')
    .action(async (archives: string[], o) => {
      const progress = new Progress('verify');
      const res = await verify({ inputs: archives, stdin, signal: controller.signal, onProgress: (p) => progress.update(p.bytesRead, undefined) });
      progress.done();
      if (o.json) json(res);
      else out(printVerify(res));
      if (!res.ok) process.exitCode = EXIT.verify;
    });

  program
    .command('info')
    .description("show an archive's header, map and trailer (reads no payload)")
    .argument('<archive>', "archive file, or '-' for standard input")
    .option('--json', 'print as JSON')
    .action(async (archive: string, o) => {
      const res = await info({ archive, stdin });
      if (o.json) json(res);
      else out(printInfo(res));
    });

  program
    .command('list')
    .description('list the chains and archives of a store directory')
    .argument('<dir>', 'store directory')
    .option('--json', 'print as JSON')
    .action(async (dir: string, o) => {
      const res = await list({ dir });
      if (o.json) json(res);
      else out(printList(res));
    });
  return program;
}

export async function main(argv: string[]): Promise<number> {
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
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (e) {
    if (interrupted) {
      err('thinarchive: interrupted');
      return EXIT.interrupted;
    }
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return EXIT.ok;
      // commander has printed its message already.
      return EXIT.usage;
    }
    if (e instanceof ThinarchiveError) {
      err(`thinarchive: ${e.message}`);
      return exitFor[e.exitClass];
    }
    const detail = process.env.THINARCHIVE_DEBUG ? `\n${(e as Error)?.stack}` : ' (set THINARCHIVE_DEBUG=1 for details)';
    err(`thinarchive: internal error: ${(e as Error)?.message ?? String(e)}${detail}`);
    return EXIT.internal;
  }
}

