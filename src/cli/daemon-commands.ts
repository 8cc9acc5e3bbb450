/**
 * The daemon's commands (docs/DAEMON.md): config check, daemon, run, status. Registered by main.ts.
 */
import type { Command } from 'commander';
import { DEFAULT_CONFIG } from '../daemon/config-path.js';
import type { StatusReport } from '../daemon/daemon.js';
import { EXIT_CODE, formatDuration } from '../api/core.js';
import type { CliContext } from './chain-commands.js';
import { formatBytes } from './output.js';

/** After SIGTERM, how long the exit may wait for a metadata snapshot's release (ms from the signal). */
const RELEASE_WAIT_UNTIL_MS = 8000;

/** pino JSON on standard error (THINARCHIVE_LOG sets the level; info by default for the daemon). */
async function daemonLogger() {
  const { pino } = await import('pino');
  return pino({ level: process.env.THINARCHIVE_LOG || 'info', base: { pid: process.pid } }, pino.destination(2));
}

function ago(iso: string | null, now: number): string {
  if (!iso) return '-';
  const s = Math.round((now - Date.parse(iso)) / 1000);
  return s < 0 ? `in ${dur(-s)}` : `${dur(s)} ago`;
}
const dur = formatDuration;

/** The scheduled verification (else the last one of any kind): "ok full 3h ago", "FAILED sample 2m ago". */
function verified(u: StatusReport['units'][number], now: number): string {
  const v = u.scheduledVerify ?? u.lastVerify;
  return v ? `${v.ok ? 'ok' : 'FAILED'} ${v.mode} ${ago(v.at, now)}` : '-';
}

export function printStatus(r: StatusReport): string {
  const now = Date.parse(r.generated);
  const head = r.daemon ? `daemon pid ${r.daemon.pid}, up since ${r.daemon.startedAt}` : 'no daemon running: from the state file';
  const rows = [['JOB', 'VOLUME', 'STATE', 'LAST ATTEMPT', 'LAST SUCCESS', 'LAG', 'BYTES', 'TOOK', 'NEXT', 'CHAIN', 'VERIFIED', 'LAST ERROR']];
  for (const u of r.units) {
    rows.push([
      u.job, u.volume, u.state, ago(u.lastAttempt, now), ago(u.lastSuccess, now), u.lagSeconds === null ? '-' : dur(u.lagSeconds),
      u.bytes === null ? '-' : formatBytes(u.bytes), u.durationSeconds === null ? '-' : `${u.durationSeconds.toFixed(1)}s`, ago(u.nextRun, now),
      u.chainLength === null ? '-' : String(u.chainLength), verified(u, now), u.lastError && u.state === 'failing' ? `${u.lastError.code}: ${u.lastError.message}` : '-',
    ]);
  }
  const w = rows[0].map((_, i) => Math.max(...rows.map((x) => x[i].length)));
  return [head, ...rows.map((x) => x.map((c, i) => (i === x.length - 1 ? c : c.padEnd(w[i]))).join('  '))].join('\n');
}

export function registerDaemonCommands(program: Command, ctx: CliContext): void {
  const config = program.command('config').description('the daemon configuration');
  config
    .command('check')
    .description('check the configuration: every problem with its line (exit 2); nothing printed and exit 0 when valid')
    .option('--config <file>', `configuration file (default ${DEFAULT_CONFIG})`, DEFAULT_CONFIG)
    .option('--json', 'print the problems as JSON')
    .action(async (o) => {
      const { checkConfig } = await import('../daemon/config.js');
      const r = await checkConfig(o.config);
      if (o.json) ctx.json({ file: o.config, ok: r.problems.length === 0, problems: r.problems });
      else for (const p of r.problems) ctx.err(`${o.config}:${p.line}: ${p.message}`);
      if (r.problems.length) process.exitCode = EXIT_CODE.usage;
    });

  program
    .command('daemon')
    .description('run every job of the configuration on schedule (SIGTERM stops within 10 s, SIGHUP reloads the configuration)')
    .option('--config <file>', `configuration file (default ${DEFAULT_CONFIG})`, DEFAULT_CONFIG)
    .action(async (o) => {
      // The daemon handles its own signals (main.ts's abort-on-signal is for one-shot commands). A
      // signal that comes while the daemon starts (reading the configuration and the state, listing
      // volumes: seconds on a busy host) is kept and acted on once it has started, never lost nor fatal.
      for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.removeAllListeners(s);
      const early: string[] = [];
      const keep = (s: string) => (): void => { early.push(s); };
      for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, keep(s));
      const log = await daemonLogger();
      const { Daemon } = await import('../daemon/daemon.js');
      const d = await Daemon.create(o.config, log);
      await d.start();
      for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.removeAllListeners(s);
      let stoppedAt: number | undefined;
      // Never exit while this process holds a pool's metadata snapshot (an aborted run releases it in
      // seconds), as long as that keeps the exit within about 8 s of the signal.
      const exit = async (code: number): Promise<never> => {
        await d.metadataSnapshotsReleased(RELEASE_WAIT_UNTIL_MS - (performance.now() - (stoppedAt ?? performance.now())));
        process.exit(code);
      };
      await new Promise<void>((resolve) => {
        const stop = (signal: string): void => {
          log.info({ signal }, 'stopping');
          stoppedAt ??= performance.now();
          // Hard deadline: whatever still runs after 6.5 s does not hold the exit (the promise is 10 s;
          // on a loaded machine the signal's delivery and the exit itself took 0.7 s beyond a 9.5 s
          // deadline and 2.1 s beyond an 8 s one in the lab), except a pool's metadata snapshot
          // being released (below). The runs get 5.5 s (Daemon.stop), the state, sockets and alerts
          // the rest. The next start settles what an aborted run left.
          setTimeout(() => {
            log.warn({}, 'stop deadline passed: exiting');
            void exit(0);
          }, 6500).unref();
          d.stop().then(resolve, resolve);
        };
        process.on('SIGTERM', () => stop('SIGTERM'));
        process.on('SIGINT', () => stop('SIGINT'));
        process.on('SIGHUP', () => { void d.reload(); });
        for (const s of early) process.emit(s as NodeJS.Signals, s as NodeJS.Signals);
      });
      // Nothing of ours is left running: do not wait for lingering handles (ssh masters, timers of aborted runs).
      setTimeout(() => void exit(Number(process.exitCode ?? 0)), 1500).unref();
    });

  program
    .command('run')
    .description('one run of a job now, for every volume (or one): send, retention, replica; state recorded for status (cron, systemd timers; refused while a daemon runs)')
    .argument('<job>', 'job name in the configuration')
    .option('--volume <VG/LV|PATH>', 'only this volume (or image) of the job')
    .option('--config <file>', `configuration file (default ${DEFAULT_CONFIG})`, DEFAULT_CONFIG)
    .option('--take-lease', "take the chain's lease over even while another writer holds it (CHAIN_LEASED); only when that writer is gone")
    .option('--json', 'print the outcomes as JSON')
    .action(async (job: string, o) => {
      const { runJobOnce } = await import('../daemon/daemon.js');
      const res = await runJobOnce(o.config, job, o.volume, ctx.log, ctx.signal, !!o.takeLease);
      if (o.json) ctx.json(res);
      else {
        for (const r of res) {
          const x = r.outcome;
          ctx.err((x.ok
            ? `${r.job} ${r.volume}: ok, ${formatBytes(x.bytes)} in ${x.seconds.toFixed(1)}s${x.attempts > 1 ? ` (${x.attempts} attempts)` : ''}, chain of ${x.chainLength ?? '?'} points`
            : `${r.job} ${r.volume}: failed after ${x.attempts} attempt${x.attempts > 1 ? 's' : ''}: ${x.error!.code}: ${x.error!.message}`)
            + (r.recorded ? '' : ' (not recorded in the state file: a daemon started meanwhile)'));
        }
      }
      const failed = res.find((r) => !r.outcome.ok);
      if (failed) {
        const cls = failed.outcome.error!.exitClass;
        process.exitCode = cls in EXIT_CODE ? EXIT_CODE[cls as keyof typeof EXIT_CODE] : 1;
      }
      // An alert delivery still in flight after run's bounded wait (kept in alerts-state.json) does not hold the exit.
      setTimeout(() => process.exit(process.exitCode ?? 0), 1000).unref();
    });

  program
    .command('status')
    .description('per job and volume: state, last attempt and success, last error, lag, bytes, duration, next run, chain length')
    .option('--config <file>', `configuration file (default ${DEFAULT_CONFIG})`, DEFAULT_CONFIG)
    .option('--json', 'print as JSON (docs/DAEMON.md, "status --json")')
    .action(async (o) => {
      const { readStatus } = await import('../daemon/daemon.js');
      const r = await readStatus(o.config);
      if (o.json) ctx.json(r);
      else ctx.out(printStatus(r));
    });
}
