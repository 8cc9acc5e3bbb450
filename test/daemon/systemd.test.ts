// contrib/systemd: systemd-analyze verify accepts the units (the only complaint allowed is that
// /usr/bin/thinarchive is not installed on the test machine).
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const DIR = resolve(__dirname, '..', '..', 'contrib', 'systemd');
describe('contrib/systemd units', () => {
  it('pass systemd-analyze verify', () => {
    // systemd-analyze comes with the systemd package (.ci/run installs it): its absence fails the test.
    expect(spawnSync('systemd-analyze', ['--version']).status, 'systemd-analyze is not installed').toBe(0);
    const d = mkdtempSync(join(tmpdir(), 'ta-systemd-'));
    try {
      copyFileSync(join(DIR, 'thinarchive.service'), join(d, 'thinarchive.service'));
      copyFileSync(join(DIR, 'thinarchive-run@.service'), join(d, 'thinarchive-run@.service'));
      copyFileSync(join(DIR, 'thinarchive-run@.service'), join(d, 'thinarchive-run@vms.service'));
      copyFileSync(join(DIR, 'thinarchive-run@.timer'), join(d, 'thinarchive-run@vms.timer'));
      const r = spawnSync('systemd-analyze', ['verify', './thinarchive.service', './thinarchive-run@vms.service', './thinarchive-run@vms.timer'], { cwd: d, encoding: 'utf8' });
      const complaints = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.trim() && !/Command \/usr\/bin\/thinarchive is not executable/.test(l));
      expect(complaints).toEqual([]);
      expect(execFileSync('grep', ['^CapabilityBoundingSet=', join(DIR, 'thinarchive.service')], { encoding: 'utf8' })).toContain('CAP_SYS_ADMIN');
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
