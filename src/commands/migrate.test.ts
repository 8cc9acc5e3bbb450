// migrate's rounds, prediction and hooks with a scripted round runner and clock (the LVM side and real
// rounds are in test/lab/migrate.test.ts). The hooks are real shell commands writing marker files.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { migrate, type RoundRunner } from './migrate.js';
import type { LvmExec } from '../lvm/exec.js';

const dir = mkdtempSync(join(tmpdir(), 'ta-migrate-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const MB = 1_000_000;

/** lvs answers with no LVs: there are no snapshots to remove. */
const exec: LvmExec = (async () => ({ stdout: JSON.stringify({ report: [{ lv: [] }] }), stderr: '', exitCode: 0 })) as unknown as LvmExec;

/** Rounds that send `bytes[i]` at `rate` bytes/s plus `fixed` seconds, on a fake clock; the final one may fail. */
function scripted(bytes: number[], o: { rate?: number; fixed?: number; failFinal?: boolean } = {}): { round: RoundRunner; clock: () => number; kinds: string[] } {
  let t = 0;
  const kinds: string[] = [];
  const rate = o.rate ?? 100 * MB;
  const fixed = o.fixed ?? 0.5;
  return {
    clock: () => t,
    kinds,
    round: async ({ index, kind }) => {
      kinds.push(kind);
      if (kind === 'final' && o.failFinal) throw new Error('the final apply failed');
      const b = bytes[Math.min(index, bytes.length - 1)];
      t += (fixed + b / rate) * 1000;
      return { archiveId: `a${index}`, sequence: index, dataBytes: b, bytesSent: b, target: kind === 'final' ? { applied: [{ verify: { blocksChecked: 3, blocksRead: 3, bytesRead: 196608, mismatchedBlocks: 0, first: null, seconds: 0 } }] } : {} };
    },
  };
}

const hooks = (name: string): { pause: string; resume: string; cutover: string; files: (k: string) => boolean } => ({
  pause: `touch ${join(dir, `${name}.paused`)}`,
  resume: `touch ${join(dir, `${name}.resumed`)}`,
  cutover: `touch ${join(dir, `${name}.cutover`)}`,
  files: (k) => existsSync(join(dir, `${name}.${k}`)),
});

describe('migrate rounds', () => {
  it('pauses once the predicted final round fits --max-downtime, and reports every round and the pause', async () => {
    // 4 GB full (40.5 s), then the writer's share shrinks: 400 MB (4.5 s: next predicted 0.9 s),
    // 45 MB (0.95 s: next predicted 0.55 s), then the final round
    const s = scripted([4000 * MB, 400 * MB, 45 * MB, 6 * MB]);
    const h = hooks('ok');
    const r = await migrate({ source: 'vg/vm', first: 'full', round: s.round, clock: s.clock, exec, maxDowntimeMs: 700, pause: h.pause, resume: h.resume, cutover: h.cutover });
    expect(s.kinds).toEqual(['first', 'incremental', 'incremental', 'final']);
    expect(r.rounds.map((x) => x.kind)).toEqual(['full', 'incremental', 'incremental', 'final']);
    expect(r.rounds[1].predictedNextSeconds).toBeCloseTo(0.9, 1);
    expect(r.rounds[2].predictedNextSeconds).toBeCloseTo(0.55, 1);
    expect(r.rounds[0].rate).toBeCloseTo(4000 * MB / 40.5, -3);
    // the pause: the final round (0.56 s) and the hooks (real processes, on the fake clock: no time)
    expect(r.pauseSeconds).toBeCloseTo(0.56, 5);
    expect(r.verified).toEqual({ blocks: 3, bytesRead: 196608 });
    expect([h.files('paused'), h.files('cutover'), h.files('resumed')]).toEqual([true, true, false]);
  });

  it('stops before pausing when the rounds stop shrinking', async () => {
    // the writer keeps up with the copy: 3000, 2900, then 3100 MB
    const s = scripted([4000 * MB, 3000 * MB, 2900 * MB, 3100 * MB]);
    const h = hooks('flat');
    const e = await migrate({ source: 'vg/vm', first: 'sync', round: s.round, clock: s.clock, exec, maxDowntimeMs: 1000, pause: h.pause, resume: h.resume }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'MIGRATE_NOT_CONVERGING' });
    expect((e as Error).message).toMatch(/^migrate stopped at round 3: it sent 3100000000 bytes, not less than the round before \(2900000000\).*the source was not paused$/);
    expect(s.kinds).toEqual(['first', 'incremental', 'incremental', 'incremental']);
    expect([h.files('paused'), h.files('resumed')]).toEqual([false, false]);
  });

  it('stops at --max-rounds', async () => {
    const s = scripted([4000 * MB, 1000 * MB, 900 * MB, 800 * MB, 700 * MB]);
    const e = await migrate({ source: 'vg/vm', first: 'full', round: s.round, clock: s.clock, exec, maxDowntimeMs: 1000, maxRounds: 3 }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'MIGRATE_NOT_CONVERGING' });
    expect((e as Error).message).toMatch(/^migrate stopped after 3 rounds \(--max-rounds 3\)/);
    expect(s.kinds).toEqual(['first', 'incremental', 'incremental']);
  });

  it('runs --resume when the final round fails, and when --pause itself fails', async () => {
    const s = scripted([4000 * MB, 10 * MB, 1 * MB], { failFinal: true });
    const h = hooks('fail');
    await expect(migrate({ source: 'vg/vm', first: 'full', round: s.round, clock: s.clock, exec, maxDowntimeMs: 5000, pause: h.pause, resume: h.resume, cutover: h.cutover }))
      .rejects.toThrow('the final apply failed');
    expect([h.files('paused'), h.files('resumed'), h.files('cutover')]).toEqual([true, true, false]);

    const s2 = scripted([4000 * MB, 10 * MB, 1 * MB]);
    const h2 = hooks('pausefail');
    const e = await migrate({ source: 'vg/vm', first: 'full', round: s2.round, clock: s2.clock, exec, maxDowntimeMs: 5000, pause: 'echo cannot suspend >&2; exit 3', resume: h2.resume }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'MIGRATE_HOOK_FAILED', message: '--pause command failed (exit 3): cannot suspend' });
    expect(h2.files('resumed')).toBe(true);
    expect(s2.kinds).not.toContain('final');
  });

  it('refuses bad options before any round', async () => {
    const s = scripted([1]);
    await expect(migrate({ source: 'vm', first: 'full', round: s.round, exec })).rejects.toThrow(/VG\/LV/);
    await expect(migrate({ source: 'vg/vm', first: 'full', round: s.round, exec, maxRounds: 1 })).rejects.toThrow(/--max-rounds must be an integer of at least 2/);
    expect(s.kinds).toEqual([]);
  });
});
