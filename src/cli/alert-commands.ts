/**
 * `thinarchive notify test` (docs/ALERTS.md): a test event through every configured alert channel.
 * Registered by main.ts.
 */
import type { Command } from 'commander';
import { EXIT_CODE, ThinarchiveError } from '../api/core.js';
import { DEFAULT_CONFIG } from '../daemon/config-path.js';
import type { CliContext } from './chain-commands.js';

export function registerAlertCommands(program: Command, ctx: CliContext): void {
  const notify = program.command('notify').description('alert channels (docs/ALERTS.md)');
  notify
    .command('test')
    .description('send a test event through every configured alert channel: exit 0 when all delivered, 1 when one failed, 2 when none is configured')
    .option('--config <file>', `configuration file (default ${DEFAULT_CONFIG})`, DEFAULT_CONFIG)
    .option('--json', 'print the result per channel as JSON')
    .action(async (o) => {
      const [{ loadConfig }, { notifyTest }] = await Promise.all([import('../daemon/config.js'), import('../daemon/alerts.js')]);
      const config = await loadConfig(o.config);
      const a = config.alerts;
      if (!a?.email && !a?.webhook && !a?.exec && !a?.ping) {
        throw new ThinarchiveError('ALERTS_NOT_CONFIGURED', `${o.config}: no alert channel configured (alerts.email, alerts.webhook, alerts.exec or alerts.ping)`, 'usage');
      }
      const results = await notifyTest(a);
      const ok = results.every((r) => r.ok);
      if (o.json) ctx.json({ ok, channels: results });
      else {
        for (const r of results) {
          const what = !r.pinged ? '' : r.pinged.length ? ` (pinged ${r.pinged.join(', ')})` : ' (nothing pinged: a test does not ping the fail URL)';
          ctx.out(r.ok ? `${r.label}: ok${what}` : `${r.label}: FAILED: ${r.error}`);
        }
      }
      if (!ok) process.exitCode = EXIT_CODE.runtime;
    });
}
