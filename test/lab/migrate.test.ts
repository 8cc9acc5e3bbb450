// `thinarchive migrate` in the thin-LVM lab, in ONE boot: a mounted ext4 thin LV (through a loop device, as
// a VM's disk) with a writer running,
// migrated to a thin LV of another VG over ssh (a private sshd on the guest's loopback). It converges:
// after the pause the target's sha256 equals the source's, the pause is measured and reported, the
// final round read back at the target; a failing final apply runs --resume (the writer goes on); a
// workload that never fits --max-downtime stops at --max-rounds without pausing. The snapshots migrate
// made are gone each time. The guest side is test/lab/migrate-guest.sh.
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cliBuild } from './cli-build.js';
import { removeHostTempDirs } from './host-files.js';
import { LAB_SLOT_WAIT_MS, labLeftovers, labPoolSetup, parseResults, requireLab, runInLab } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');

afterAll(removeHostTempDirs);

describe('migrate in the thin-LVM lab', () => {
  it('migrates a mounted ext4 thin LV with a writer over ssh: converges, equal after the pause; a failed final round resumes; a never-converging one stops', async (ctx) => {
    await requireLab(ctx);
    const build = cliBuild('thinarchive-lab-migrate');
    const run = await runInLab({
      script: `${labPoolSetup({ vg: 'vg', pool: 'pool', poolSize: '600M', chunk: '64k' })}\n. "$GUEST_SH"\n`,
      disks: [{ sizeBytes: 1024 ** 3 }, { sizeBytes: 1024 ** 3 }],
      memMB: 768,
      env: { GUEST_SH: join(ROOT, 'test', 'lab', 'migrate-guest.sh'), TA_LAUNCHER: join(ROOT, 'test', 'lab', 'send-lv-cli.mjs'), THINARCHIVE_DIST: build.dir, VG: 'vg', POOL: 'pool', WRITER_JS: join(ROOT, 'test', 'lab', 'daemon-lv-writer.mjs') },
      timeoutMs: 1_500_000, // a safety net: 14 min on the CI machine (stop 24), past 15 here with 2 guests and a test run beside it
    });
    const F = run.files;
    const R = parseResults(F['results.tsv'] ?? '');
    const diag = (): string => `${run.output.slice(-3000)}\n${JSON.stringify(R, null, 1)}\n${Object.entries(F).filter(([k]) => k.endsWith('.err') || k.endsWith('.out')).map(([k, v]) => `${k}: ${v.slice(0, 3000)}`).join('\n')}`;
    const times = Object.fromEntries(Object.entries(R).filter(([k]) => k.startsWith('t_')).map(([k, v]) => [k.slice(2), Number(v)]));
    console.log(`migrate lab: boot ${(run.bootMs / 1000).toFixed(1)} s, guest ${(run.durationMs / 1000).toFixed(1)} s, waited ${(run.waitMs / 1000).toFixed(1)} s; timeline (ms) ${JSON.stringify(times)}`);
    expect(run.exitCode, diag()).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);

    // M1: converged
    expect(R['rc_m1'], diag()).toBe('0');
    const m1 = JSON.parse(F['m1.out']!);
    console.log('migrate rounds:', JSON.stringify(m1.rounds.map((r: { round: number; kind: string; bytesSent: number; seconds: number; predictedNextSeconds?: number }) =>
      [r.round, r.kind, r.bytesSent, +r.seconds.toFixed(2), r.predictedNextSeconds === undefined ? null : +r.predictedNextSeconds.toFixed(2)])), 'pause', m1.pauseSeconds);
    expect(R['m1_tgt_sha'], R['m1_cmp']).toBe(R['m1_src_sha']);
    expect(m1.rounds[0].kind).toBe('full');
    expect(m1.rounds[m1.rounds.length - 1].kind).toBe('final');
    expect(m1.rounds.length).toBeGreaterThanOrEqual(3);
    // the first copy carried the 24 MiB file; the incrementals only what the writer added
    expect(m1.rounds[0].dataBytes).toBeGreaterThan(24 * 1024 * 1024);
    for (const r of m1.rounds.slice(1)) expect(r.dataBytes).toBeLessThan(m1.rounds[0].dataBytes / 4);
    expect(m1.pauseSeconds).toBeGreaterThan(0);
    expect(m1.pauseSeconds).toBeGreaterThanOrEqual(m1.rounds[m1.rounds.length - 1].seconds);
    expect(m1.verified.blocks).toBeGreaterThan(0);
    expect(R['m1_cutover']).toBe('yes');
    expect(R['m1_resumed']).toBe('no');
    expect(R['m1_writer_state']).toBe('T'); // stopped by --pause, not resumed
    expect(m1.removed.length).toBe(1);
    expect(R['m1_snaps']).toBe('0');

    // M2: the final apply failed: --resume ran, no cutover, the writer goes on, nothing left behind
    expect(R['rc_m2']).toBe('1');
    const m2 = JSON.parse(F['m2.out']!);
    expect(m2.error.code).toBe('REMOTE_APPLY_FAILED');
    expect(m2.error.message).toMatch(/injected failure of the final apply/);
    expect(R['m2_resumed']).toBe('yes');
    expect(R['m2_cutover']).toBe('no');
    expect(R['m2_writer_grows']).toBe('yes');
    expect(R['m2_snaps']).toBe('0');

    // M3: never converging: stopped before any pause
    expect(R['rc_m3']).toBe('1');
    const m3 = JSON.parse(F['m3.out']!);
    expect(m3.error.code).toBe('MIGRATE_NOT_CONVERGING');
    expect(m3.error.message).toMatch(/the source was not paused/);
    expect(R['m3_paused']).toBe('no');
    expect(R['m3_snaps']).toBe('0');
    expect(R['m3_writer_grows']).toBe('yes');
  }, LAB_SLOT_WAIT_MS + 600_000);
});
