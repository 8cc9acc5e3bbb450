// The lab harness itself: exit codes and output, results, timeouts that leave nothing running,
// a guest that never reports, temp files removed, two labs at once, lab slots, and a disk kept
// across boots.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deadPid } from '../helpers/host.js';
import { ciSet, LAB_SLOT_WAIT_MS, labAvailable, LabError, labLeftovers, labPoolSetup, runInLab } from './lab.js';

const avail = await labAvailable();
if (!avail.ok && !ciSet()) console.warn(`thin-LVM lab harness tests skipped: ${avail.reason}`);

describe.skipIf(!avail.ok && !ciSet())('lab harness', () => {
  let parent: string;
  beforeAll(async () => {
    if (!avail.ok) throw new Error(`the thin-LVM lab is not available under CI: ${avail.reason}`);
    parent = await mkdtemp(join(tmpdir(), 'thinarchive-labh-'));
  }, 120_000 + LAB_SLOT_WAIT_MS);
  afterAll(async () => {
    if (parent) await rm(parent, { recursive: true, force: true });
  }, 120_000 + LAB_SLOT_WAIT_MS);

  it('returns the script exit code, its output, env, results; removes its files', async () => {
    const run = await runInLab({
      workDir: parent,
      disks: [{ sizeBytes: 1 << 30 }, { sizeBytes: 1 << 30 }],
      env: { GREETING: "it's a lab" },
      script: [
        'echo "to stdout $GREETING"',
        'echo "to stderr" >&2',
        'echo "disks=$LAB_DISKS"',
        'test -b /dev/ubda && test -b /dev/ubdb',
        'node -p "process.version" > "$LAB_OUT/node.txt"',
        'mkdir -p "$LAB_OUT/sub" && echo nested > "$LAB_OUT/sub/x.txt"',
        'false',
        'echo never',
      ].join('\n'),
    });
    expect(run.exitCode).toBe(1);
    expect(run.output).toContain("to stdout it's a lab\nto stderr\n");
    expect(run.output).toContain('disks=/dev/ubda /dev/ubdb');
    expect(run.output).toMatch(/lab: line 7: command exited 1: false/);
    expect(run.output).not.toContain('never');
    expect(run.files['node.txt']!.trim()).toBe(process.version);
    expect(run.files['sub/x.txt']).toBe('nested\n');
    expect(run.bootMs).toBeGreaterThan(0);
    expect(labLeftovers(run.pid)).toEqual([]);
    expect(existsSync(run.runDir)).toBe(false);
    for (const p of run.diskPaths) expect(existsSync(p)).toBe(false);
    expect(await readdir(parent)).toEqual([]);
  }, 120_000 + LAB_SLOT_WAIT_MS);

  it('kills the whole UML process group on timeout', async () => {
    // The timeout counts from the kernel's start: 40 s leaves a loaded machine's boot (more than 20 s
    // seen on CI under the full suite) time to reach the script, and the kill must follow it promptly.
    const err = await runInLab({ workDir: parent, script: 'echo started; sleep 1000 & sleep 1000', timeoutMs: 40_000 }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LabError);
    expect((err as LabError).message).toMatch(/timed out after 40000 ms/);
    expect((err as LabError).partial.output).toContain('started');
    expect((err as LabError).partial.durationMs).toBeGreaterThanOrEqual(40_000);
    expect((err as LabError).partial.durationMs).toBeLessThan(49_000);
    expect(labLeftovers((err as LabError).partial.pid)).toEqual([]);
    expect(await readdir(parent)).toEqual([]);
  }, 120_000 + LAB_SLOT_WAIT_MS);

  it('reports a guest that ends without the exit marker, with the last output lines', async () => {
    const err = await runInLab({ workDir: parent, script: 'echo about to halt; halt -f' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LabError);
    expect((err as LabError).message).toMatch(/without a LAB_EXIT marker/);
    expect((err as LabError).message).toContain('about to halt');
  }, 120_000 + LAB_SLOT_WAIT_MS);

  it('runs two labs at once', async () => {
    const script = `${labPoolSetup({ poolSize: '512M', chunk: '64k' })}
lvcreate -y -V 1G -T vg/pool -n vol
dd if=/dev/urandom of=/dev/vg/vol bs=1M count=8 status=none
lvs --noheadings -o lv_name vg | tr -d ' ' | sort | tr '\\n' ' '`;
    const runs = await Promise.all(
      [0, 1].map(() => runInLab({ workDir: parent, script, disks: [{ sizeBytes: 1 << 30 }] })),
    );
    for (const r of runs) {
      expect(r.exitCode, r.output).toBe(0);
      expect(r.output).toContain('pool vol ');
      expect(labLeftovers(r.pid)).toEqual([]);
    }
    expect(await readdir(parent)).toEqual([]);
  }, 120_000 + LAB_SLOT_WAIT_MS);

  it('runs no more guests at once than there are lab slots; a dead process\'s slot is taken over', async () => {
    const slots = join(parent, 'slots');
    const saved = { dir: process.env['THINARCHIVE_LAB_SLOT_DIR'], n: process.env['THINARCHIVE_LAB_SLOTS'] };
    process.env['THINARCHIVE_LAB_SLOT_DIR'] = slots;
    process.env['THINARCHIVE_LAB_SLOTS'] = '1';
    try {
      // a slot file left by a process that is gone
      const dead = deadPid();
      await mkdir(slots);
      await writeFile(join(slots, 'slot-0'), `${dead} x\n`);
      const runs = await Promise.all([0, 1].map(() => runInLab({ workDir: parent, script: 'sleep 2; echo ran' })));
      for (const r of runs) expect(r.output).toBe('ran\n');
      // one slot: the second guest started only after the first had ended
      const [first, second] = [...runs].sort((a, b) => a.waitMs - b.waitMs);
      expect(second!.waitMs, `waits ${runs.map((r) => r.waitMs.toFixed(0))} ms, runs ${runs.map((r) => r.durationMs.toFixed(0))} ms`)
        .toBeGreaterThanOrEqual(first!.waitMs + first!.durationMs);
      expect(await readdir(slots)).toEqual([]); // released
    } finally {
      for (const [k, v] of [['THINARCHIVE_LAB_SLOT_DIR', saved.dir], ['THINARCHIVE_LAB_SLOTS', saved.n]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      await rm(slots, { recursive: true, force: true });
    }
    expect(await readdir(parent)).toEqual([]);
  }, 120_000);

  it('keeps a given disk across two boots (metadata committed by the clean shutdown)', async () => {
    const disk = join(parent, 'kept.img');
    const a = await runInLab({
      workDir: parent,
      disks: [{ sizeBytes: 1 << 30, path: disk }],
      script: `${labPoolSetup({ poolSize: '512M' })}
lvcreate -y -V 1G -T vg/pool -n vol
echo persisted | dd of=/dev/vg/vol conv=fsync status=none`,
    });
    expect(a.exitCode, a.output).toBe(0);
    expect((await stat(disk)).size).toBe(1 << 30);
    const b = await runInLab({
      workDir: parent,
      disks: [{ sizeBytes: 1 << 30, path: disk }],
      script: `vgchange -ay vg >/dev/null
head -c 9 /dev/vg/vol; echo
dmsetup status vg-pool-tpool`,
    });
    expect(b.exitCode, b.output).toBe(0);
    expect(b.output).toContain('persisted\n');
    expect(existsSync(disk)).toBe(true);
    await rm(disk);
    expect(await readdir(parent)).toEqual([]);
  }, 120_000 + LAB_SLOT_WAIT_MS);
});
