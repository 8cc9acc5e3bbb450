/**
 * The daemon's commands (docs/DAEMON.md): config check, daemon, run, status. Registered by main.ts.
 */
import type { Command } from 'commander';
import { checkConfig, DEFAULT_CONFIG } from '../daemon/config.js';
import type { CliContext } from './chain-commands.js';

export function registerDaemonCommands(program: Command, ctx: CliContext): void {
  const config = program.command('config').description('the daemon configuration');
  config
    .command('check')
    .description(`check the configuration: every problem with its line (exit 2), nothing printed and exit 0 when valid`)
    .option('--config <file>', `configuration file (default ${DEFAULT_CONFIG})`, DEFAULT_CONFIG)
    .option('--json', 'print the problems as JSON')
    .action(async (o) => {
      const r = await checkConfig(o.config);
      if (o.json) ctx.json({ file: o.config, ok: r.problems.length === 0, problems: r.problems });
      else for (const p of r.problems) ctx.err(`${o.config}:${p.line}: ${p.message}`);
      if (r.problems.length) process.exitCode = 2;
    });
}
