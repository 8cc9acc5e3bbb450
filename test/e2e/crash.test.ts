/**
 * Crash safety of apply on image targets (issue 5, docs/JOURNAL.md): `apply` is killed with SIGKILL
 * at many random points - after a random number of target writes and journal flushes
 * (THINARCHIVE_TEST_KILL_AFTER_WRITES, a test-only hook of the CLI) or after a random delay once the
 * undo journal exists - and then recovered, by `thinarchive recover` or by running the same apply
 * again. Afterwards the image must be byte-identical (sha256) to the volume state its state file
 * names: the previous one, or a later one of the chain - never a mix.
 *
 * Scenarios, on 4 MiB volumes with 4 KiB blocks (hundreds of records, so that kills land mid-write):
 * - chain: a target at sequence 0 gets the incrementals 1 and 2 (writes, zeroed and unmapped blocks);
 * - force: a target at sequence 2 is overwritten by a full archive of another, smaller volume (the
 *   image shrinks: its tail is journaled before the truncation);
 * - create: the chain 0..2 onto a new image (rolling back removes the image);
 * - no-undo: --no-undo, killed; recover refuses (NO_UNDO, exit 4) and applying again completes it.
 */
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, REPO, run, runOk, sha256, show, sleep, spawnCli, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, POOL_BLOCK, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';
import { writeFileSync } from 'node:fs';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 4 * MiB;
/** Kill points per scenario: 190 here + 10 LV points in test/lab/crash-lv.test.ts = 200 (the issue asks for at least 200). */
const POINTS = { chain: 86, force: 48, create: 36, noUndo: 20 };
const PARALLEL = 4;

type Scenario = keyof typeof POINTS;

interface Fixture {
  /** sha256 of each volume state, by archive id */
  shaOf: Map<string, string>;
  chainDir: string;
  a0: string;
  a1: string;
  a2: string;
  full: string;
  /** a target image at sequence 0 and at sequence 2 (with their state files) */
  at0: string;
  at2: string;
}

describe('apply killed with SIGKILL at random points, then recovered (image targets)', () => {
  let dir: TempDir;
  let fx: Fixture;
  /** the library calls the CLI makes, from dist/ (as the CLI runs them) */
  let lib: { recover: typeof import('../../src/api/index.js').recover; apply: typeof import('../../src/commands/apply.js').apply };

  beforeAll(async () => {
    lib = {
      recover: ((await import(join(REPO, 'dist', 'api', 'index.js'))) as typeof import('../../src/api/index.js')).recover,
      apply: ((await import(join(REPO, 'dist', 'commands', 'apply.js'))) as typeof import('../../src/commands/apply.js')).apply,
    };
    dir = await tempDir('crash');
    const rand = prng(42);
    const src = dir.join('src.img');
    const m = new VolumeModel(src, SIZE);
    const store = dir.join('store');
    const shaOf = new Map<string, string>();
    const send = async (extra: string[]): Promise<string> => {
      const r = JSON.parse((await runOk(['send', '--image', src, '--to', store, '--json', '--level', '1', ...extra])).stdout);
      shaOf.set(r.archiveId, await sha256(src));
      return r.path as string;
    };
    // sequence 0: scattered text and noise
    for (let i = 0; i < 40; i++) m.write(Math.floor(rand() * (SIZE / (4 * KiB) - 16)) * 4 * KiB, i % 3 ? textBytes(rand, (1 + Math.floor(rand() * 12)) * 4 * KiB) : noiseBytes(8 * KiB));
    m.snapshotDelta();
    const a0 = await send(['--block-size', '4K']);
    const incr = async (parent: string, step: number): Promise<string> => {
      for (let i = 0; i < 30; i++) m.write(Math.floor(rand() * (SIZE / (4 * KiB) - 16)) * 4 * KiB, textBytes(rand, (1 + Math.floor(rand() * 10)) * 4 * KiB));
      for (let i = 0; i < 6; i++) m.punch(Math.floor(rand() * (SIZE / POOL_BLOCK - 2)) * POOL_BLOCK, POOL_BLOCK * (1 + (i % 2)));
      for (let i = 0; i < 4; i++) m.writeZeroes(Math.floor(rand() * (SIZE / (4 * KiB) - 4)) * 4 * KiB, 8 * KiB);
      const delta = dir.join(`delta-${step}.xml`);
      writeFileSync(delta, m.snapshotDelta());
      return send(['--changes', delta, '--parent', parent]);
    };
    const a1 = await incr(a0, 1);
    const a2 = await incr(a1, 2);
    m.close();
    // another volume, 3 MiB: a full archive that overwrites (and shrinks) a target with --force
    const other = dir.join('other.img');
    const o = new VolumeModel(other, 3 * MiB);
    for (let i = 0; i < 50; i++) o.write(Math.floor(rand() * 700) * 4 * KiB, textBytes(rand, 4 * KiB * (1 + Math.floor(rand() * 8))));
    o.close();
    const fr = JSON.parse((await runOk(['send', '--image', other, '--to', dir.join('store-other'), '--json', '--level', '1', '--block-size', '4K'])).stdout);
    shaOf.set(fr.archiveId, await sha256(other));
    const at0 = dir.join('at0.img');
    await runOk(['apply', a0, '--to', at0, '--create']);
    const at2 = dir.join('at2.img');
    await runOk(['apply', a0, a1, a2, '--to', at2, '--create']);
    fx = { shaOf, chainDir: join(a0, '..'), a0, a1, a2, full: fr.path, at0, at2 };
    expect(new Set(shaOf.values()).size).toBe(4);
  });

  afterAll(async () => {
    await dir?.remove();
  });

  const idOf = (path: string): string => /-([0-9a-f-]{36})\.tna$/.exec(path)![1]!;

  /** The image is exactly the volume state its state file names (and the state is clean). */
  async function expectConsistent(img: string, what: string): Promise<string | null> {
    const stateFile = `${img}.thinarchive.json`;
    if (!existsSync(img)) {
      expect(existsSync(stateFile), `${what}: state file without image`).toBe(false);
      return null;
    }
    const st = JSON.parse(readFileSync(stateFile, 'utf8'));
    expect(st.status, `${what}: ${JSON.stringify(st)}`).toBe('clean');
    expect(await sha256(img), `${what}: image differs from archive ${st.archiveId}`).toBe(fx.shaOf.get(st.archiveId));
    expect(existsSync(`${img}.thinarchive.undo`), `${what}: journal left behind`).toBe(false);
    return st.archiveId as string;
  }

  function copyTarget(from: string, to: string): void {
    copyFileSync(from, to);
    copyFileSync(`${from}.thinarchive.json`, `${to}.thinarchive.json`);
  }

  async function killPoint(scenario: Scenario, i: number, rand: () => number): Promise<{ via: string; at: string | null; killed: boolean }> {
    const img = dir.join(`${scenario}-${i}.img`);
    let args: string[];
    let expectNext: string;
    if (scenario === 'chain' || scenario === 'noUndo') {
      copyTarget(fx.at0, img);
      args = ['apply', fx.chainDir, '--to', img, ...(scenario === 'noUndo' ? ['--no-undo'] : [])];
      expectNext = idOf(fx.a2);
    } else if (scenario === 'force') {
      copyTarget(fx.at2, img);
      args = ['apply', fx.full, '--to', img, '--force'];
      expectNext = idOf(fx.full);
    } else {
      args = ['apply', fx.chainDir, '--to', img, '--create'];
      expectNext = idOf(fx.a2);
    }
    // Half the points: after N writes/flushes (deterministic, spread over the whole apply);
    // the other half: a random delay after the journal (or, without one, the state) appears.
    const byCount = i % 2 === 0;
    const env = byCount ? { THINARCHIVE_TEST_KILL_AFTER_WRITES: String(1 + Math.floor(rand() * (scenario === 'force' ? 120 : 260))) } : undefined;
    const child = spawnCli(args, { env });
    const done = collect(child, 60_000);
    if (!byCount) {
      const journal = `${img}.thinarchive.undo`;
      const t0 = Date.now();
      const marker = scenario === 'noUndo' ? `${img}.thinarchive.json` : journal;
      const before = scenario === 'noUndo' ? readFileSync(marker, 'utf8') : '';
      while (child.exitCode === null && Date.now() - t0 < 20_000) {
        if (scenario === 'noUndo' ? readFileSync(marker, 'utf8') !== before : existsSync(marker)) break;
        await sleep(1);
      }
      await sleep(Math.floor(rand() * 40));
      child.kill('SIGKILL');
    }
    const r = await done;
    const killed = r.signal === 'SIGKILL';
    if (!killed) expect(r.code, show(r)).toBe(0);
    const what = `${scenario} #${i} (${byCount ? `after ${env!.THINARCHIVE_TEST_KILL_AFTER_WRITES} writes` : 'timer'})`;
    // Node starts slowly: one point in eight recovers through the CLI, the others through the
    // library calls the CLI makes (recover(), apply()), in this process.
    const viaCli = i % 8 < 2;
    if (scenario === 'noUndo') {
      if (viaCli) {
        const rec = await run(['recover', img]);
        expect([0, 4], show(rec)).toContain(rec.code);
        if (rec.code === 4) expect(rec.stderr).toMatch(/apply that archive again to complete it/);
        await runOk(args);
      } else {
        await lib.recover({ target: img }).catch((e: { code?: string }) => expect(e.code).toBe('NO_UNDO'));
        await lib.apply({ inputs: [fx.chainDir], to: img, noUndo: true });
      }
      expect(await expectConsistent(img, what)).toBe(expectNext);
      return { via: 'apply', at: expectNext, killed };
    }
    // Recover by `recover` (the previous state, or the next when the kill came after the new state
    // was durable) or by applying again (which rolls back first and then completes).
    if (i % 4 < 2 || scenario === 'create') {
      if (viaCli) {
        const rec = await run(['recover', img]);
        expect(rec.code, `${what}: ${show(rec)}`).toBe(0);
      } else {
        await lib.recover({ target: img });
      }
      const at = await expectConsistent(img, what);
      return { via: 'recover', at, killed };
    }
    if (viaCli || i % 8 === 2) {
      const again = await run(args);
      expect(again.code, `${what}: ${show(again)}`).toBe(0);
      if (killed && /rolled back/.test(again.stderr)) expect(again.stderr).toMatch(/^recovered first: .*rolled back the interrupted apply/m);
    } else {
      const res = await lib.apply({ inputs: args.slice(1, args.indexOf('--to')), to: img, force: args.includes('--force') });
      if (res.recovered) expect(['rolled-back', 'stale-journal-removed']).toContain(res.recovered.action);
    }
    expect(await expectConsistent(img, what)).toBe(expectNext);
    return { via: 'apply', at: expectNext, killed };
  }

  it(`${Object.values(POINTS).reduce((a, b) => a + b)} kill points: every target ends at the previous or a later state, byte-identical`, async () => {
    const t0 = performance.now();
    const jobs: [Scenario, number][] = [];
    for (const s of Object.keys(POINTS) as Scenario[]) for (let i = 0; i < POINTS[s]; i++) jobs.push([s, i]);
    const rand = prng(7);
    const outcomes: { scenario: Scenario; via: string; at: string | null; killed: boolean }[] = [];
    let next = 0;
    let failed = false;
    await Promise.all(Array.from({ length: PARALLEL }, async () => {
      while (next < jobs.length && !failed) {
        const [s, i] = jobs[next++]!;
        try {
          outcomes.push({ scenario: s, ...(await killPoint(s, i, rand)) });
        } catch (e) {
          failed = true;
          throw e;
        }
      }
    }));
    const count = (f: (o: (typeof outcomes)[number]) => boolean): number => outcomes.filter(f).length;
    const killed = count((o) => o.killed);
    const summary = {
      points: outcomes.length, killed,
      rolledBackToPrevious: count((o) => o.via === 'recover' && (o.at === idOf(fx.a0) || o.at === idOf(fx.a2) && o.scenario === 'force' || o.at === null)),
      seconds: ((performance.now() - t0) / 1000).toFixed(1),
    };
    console.log('crash test (images):', JSON.stringify(summary));
    expect(outcomes).toHaveLength(jobs.length);
    // Most points must really interrupt an apply (not run before it started or after it ended).
    expect(killed).toBeGreaterThanOrEqual(Math.floor(jobs.length * 0.75));
    // Each recovery outcome occurs: rolled back to the previous state, and completed to the next.
    expect(count((o) => o.scenario === 'chain' && o.via === 'recover' && o.at === idOf(fx.a0))).toBeGreaterThan(0);
    expect(count((o) => o.scenario === 'chain' && o.via === 'recover' && o.at === idOf(fx.a1))).toBeGreaterThan(0);
    expect(count((o) => o.scenario === 'force' && o.via === 'recover' && o.at === idOf(fx.a2))).toBeGreaterThan(0);
    expect(count((o) => o.scenario === 'create' && o.at === null)).toBeGreaterThan(0);
  }, 1_200_000); // 111-341 s measured on 2 shared cores
});
