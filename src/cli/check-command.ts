/**
 * `thinarchive check`: the monitoring plugin (src/daemon/check.ts). Its exit codes follow the
 * Nagios/Icinga plugin convention (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), for this command only;
 * main.ts turns any failure of it into `THINARCHIVE UNKNOWN - <reason>` and exit 3.
 */
import { Option, type Command } from 'commander';
import { UsageError } from '../api/core.js';
import type { PoolThresholdSettings } from '../api/index.js';
import { DEFAULT_CONFIG } from '../daemon/config-path.js';
import type { CliContext } from './chain-commands.js';

function percentOption(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || n < 0 || n > 100) throw new UsageError(`${name} must be a number from 0 to 100, got ${JSON.stringify(v)}`);
    return n;
  };
}

export function registerCheckCommand(program: Command, ctx: CliContext): void {
  program
    .command('check')
    .description('monitoring plugin (Nagios/Icinga): thin pools and replication lag; one line "THINARCHIVE <STATE> - ...", exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN')
    .option('--config <file>', `configuration file (default ${DEFAULT_CONFIG} when it exists): its pools, jobs and state`)
    .option('--pool <VG/POOL>', 'check this thin pool only (repeatable); without it: every pool holding a configured volume, and every job\'s lag', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .addOption(new Option('--warn-data <n>', 'WARNING above N% data usage (default 80, or the configuration\'s pools)').argParser(percentOption('--warn-data')))
    .addOption(new Option('--crit-data <n>', 'CRITICAL above N% data usage (default 90)').argParser(percentOption('--crit-data')))
    .addOption(new Option('--warn-metadata <n>', 'WARNING above N% metadata usage (default 70)').argParser(percentOption('--warn-metadata')))
    .addOption(new Option('--crit-metadata <n>', 'CRITICAL above N% metadata usage (default 80)').argParser(percentOption('--crit-metadata')))
    .option('--json', 'print the whole report as JSON (README, "check") instead of the line')
    .action(async (o) => {
      const override: PoolThresholdSettings = {
        warn: { ...(o.warnData !== undefined ? { data: o.warnData } : {}), ...(o.warnMetadata !== undefined ? { metadata: o.warnMetadata } : {}) },
        crit: { ...(o.critData !== undefined ? { data: o.critData } : {}), ...(o.critMetadata !== undefined ? { metadata: o.critMetadata } : {}) },
      };
      const { runCheck } = await import('../daemon/check.js');
      const r = await runCheck({ config: o.config, pools: o.pool, override, log: ctx.log, signal: ctx.signal });
      if (o.json) ctx.json(r);
      else ctx.out(r.line);
      process.exitCode = r.exitCode;
    });
}
