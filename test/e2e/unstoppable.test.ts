/**
 * No command runs on regardless (issue 11): a store path that cannot be created fails at once in
 * one line (it used to spin at 100% CPU in Node's recursive mkdir under /proc, deaf to SIGTERM), and
 * every command ends promptly on SIGTERM/SIGINT, even one waiting on input that never comes.
 */
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { collect, expectFailure, run, sleep, spawnCli, tempDir } from '../helpers/cli.js';
import { VolumeModel } from '../helpers/volume-model.js';

describe('commands end promptly', () => {
  it.skipIf(!existsSync('/proc/self'))('send --to /proc/store fails at once in one line (exit 1)', async () => {
    const dir = await tempDir('proc');
    try {
      const img = dir.join('disk.img');
      new VolumeModel(img, 4 * 1024 * 1024);
      const started = Date.now();
      const r = await run(['send', '--image', img, '--to', '/proc/store'], { timeoutMs: 20_000 });
      expect(expectFailure(r, 1)).toMatch(/^thinarchive: cannot create chain directory \/proc\/store\/[0-9a-f-]+: no such file or directory$/);
      expect(Date.now() - started).toBeLessThan(15_000);
    } finally {
      await dir.remove();
    }
  });

  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    it(`${sig} ends a command waiting on input that never comes (exit 130, within the grace period)`, async () => {
      const child = spawnCli(['info', '-']); // stdin stays open and empty
      const done = collect(child, 30_000);
      // (after start-up: a loaded machine takes seconds to load the CLI and install its handlers)
      await sleep(4000);
      const sent = Date.now();
      child.kill(sig);
      const r = await done;
      expect(Date.now() - sent).toBeLessThan(15_000);
      expect(r.code).toBe(130);
      expect(r.stderr.trim()).toBe('thinarchive: interrupted');
    });
  }
});
