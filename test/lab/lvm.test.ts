// src/lvm against a real thin pool, in ONE boot of the thin-LVM lab: the guest runs
// test/lab/lvm-guest.mjs, which imports the compiled modules (dist/, or a fresh compile when dist/
// is older than src/) and records what happened; the assertions are here.
// If the lab cannot run here the test is skipped, except under CI where that is a failure.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync, symlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LAB_SLOT_WAIT_MS, labLeftovers, labPoolSetup, requireLab, runInLab } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');
const VG = 'lab-vg';
const POOL = 'thin-pool';

/** dist/ if it is at least as new as every src file lvm depends on; otherwise compile to a cache dir. */
function compiledDir(): { dir: string; how: string } {
  const dist = join(ROOT, 'dist');
  const sources = [
    ...readdirSync(join(ROOT, 'src')).filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts')).map((f) => join('src', f)),
    ...readdirSync(join(ROOT, 'src', 'lvm')).filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts')).map((f) => join('src', 'lvm', f)),
  ];
  const stale = sources.filter((s) => {
    const js = join(dist, s.slice('src/'.length).replace(/\.ts$/, '.js'));
    return !existsSync(js) || statSync(js).mtimeMs < statSync(join(ROOT, s)).mtimeMs;
  });
  if (stale.length === 0) return { dir: dist, how: 'dist/' };
  // Inside the project so that node_modules resolves from the compiled files.
  const out = join(ROOT, 'node_modules', '.cache', 'thinarchive-lab-dist');
  try {
    execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json'), '--outDir', out], { stdio: 'pipe' });
  } catch (e) {
    // Type errors elsewhere in src/ still emit JavaScript; only a missing lvm output is fatal.
    if (!existsSync(join(out, 'lvm', 'metadata-snap.js'))) throw e;
  }
  // The package root of those files (paths.ts: one level up) needs the native addon's build/.
  const build = join(out, '..', 'build');
  if (!existsSync(build)) symlinkSync(join(ROOT, 'build'), build);
  return { dir: out, how: `fresh tsc into ${out} (dist/ is older than ${stale.join(', ')}; npm run build refreshes it)` };
}

const SCRIPT = String.raw`
${labPoolSetup({ vg: VG, pool: POOL, poolSize: '1G', chunk: '64k' })}
lvcreate -y -V 2G -T ${VG}/${POOL} -n vol > /dev/null
node "$GUEST_SCRIPT" main
`;

interface Result {
  steps: string[];
  timings: Record<string, number>;
  totalMs: number;
  [k: string]: unknown;
}

describe('src/lvm in the thin-LVM lab', () => {
  it('reports, snapshots, the metadata snapshot discipline, thin_delta and thin_dump on a real pool', async (ctx) => {
    await requireLab(ctx);
    const t0 = performance.now();
    const compiled = compiledDir();
    const tCompile = performance.now() - t0;
    const run = await runInLab({
      script: SCRIPT,
      disks: [{ sizeBytes: 4 * 1024 ** 3 }],
      env: { THINARCHIVE_DIST: compiled.dir, GUEST_SCRIPT: join(ROOT, 'test', 'lab', 'lvm-guest.mjs'), VG, POOL },
      timeoutMs: 600_000,
    });
    const total = performance.now() - t0;
    console.log(
      `lvm lab: modules from ${compiled.how} (${(tCompile / 1000).toFixed(1)} s); boot ${(run.bootMs / 1000).toFixed(2)} s, ` +
        `guest run ${(run.durationMs / 1000).toFixed(2)} s, total ${(total / 1000).toFixed(2)} s`,
    );
    if (run.exitCode !== 0 || !run.files['result.json']) console.log(run.output, run.console.slice(-3000));
    expect(run.exitCode, run.output).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);
    const R = JSON.parse(run.files['result.json']!) as Result;
    console.log('guest step timings (ms):', JSON.stringify(R.timings), 'total', R.totalMs);
    const failed = R.steps.filter((s) => (R[s] as { error?: unknown } | undefined)?.error);
    expect(failed.map((s) => ({ s, e: R[s] }))).toEqual([]);
    const get = <T>(k: string): T => R[k] as T;

    // tools, reports, status
    expect(get<{ text: string }>('version').text).toBe('0.9.0');
    const lvs = get<{ name: string; isThinPool: boolean; isThinVolume: boolean }[]>('lvsBefore');
    expect(lvs.map((l) => l.name).sort()).toEqual(['thin-pool', 'vol']);
    expect(lvs.find((l) => l.name === 'thin-pool')!.isThinPool).toBe(true);
    expect(get<object>('statusIdle')).toMatchObject({ state: 'ok', heldRoot: null, mode: 'rw', needsCheck: false, dataTotalBlocks: 16384 });

    // dmsetup status / info -o open / message answered in-process: the same as the real dmsetup
    type Both = { native: { exitCode: number; stdout: string; stderr: string; inProcess: boolean }; dmsetup: { exitCode: number; stdout: string; stderr: string } };
    const dm = get<Record<string, Both> & { reserve: { exitCode: number; inProcess: boolean }; reserveAgain: { exitCode: number; stderr: string }; release: { exitCode: number };
      heldAfterReserve: string; heldAfterRelease: string; ms: { native: number; dmsetup: number } }>('dmNative');
    console.log('dmsetup status in-process vs dmsetup (ms, median of 5):', JSON.stringify(dm.ms), dm.poolStatus!.native.stdout.trim());
    for (const k of ['poolStatus', 'volStatus', 'tdataStatus', 'tmetaOpen']) {
      expect(dm[k]!.native, k).toEqual({ exitCode: 0, stdout: dm[k]!.dmsetup.stdout, stderr: '', inProcess: true });
      expect(dm[k]!.dmsetup.exitCode, k).toBe(0);
    }
    expect(dm.poolStatus!.native.stdout).toMatch(/^0 \d+ thin-pool \d+ \d+\/\d+ \d+\/\d+ - rw /);
    expect(dm.volStatus!.native.stdout).toMatch(/^0 \d+ thin \d+ (\d+|-)\n$/);
    expect(dm.tmetaOpen!.native.stdout).toMatch(/^[1-9]\d*\n$/);
    expect(dm.missing!.dmsetup.exitCode).toBe(1);
    expect(dm.missing!.native).toMatchObject({ exitCode: 1, stdout: '', inProcess: true });
    expect(dm.missing!.native.stderr).toContain('Device does not exist.');
    expect(dm.missing!.dmsetup.stderr).toContain('Device does not exist.');
    expect(dm.reserve).toMatchObject({ exitCode: 0, inProcess: true });
    expect(dm.heldAfterReserve).toMatch(/thin-pool \d+ \d+\/\d+ \d+\/\d+ \d+ rw /);
    expect(dm.reserveAgain.exitCode).toBe(1);
    expect(dm.reserveAgain.stderr).toMatch(/busy/i);
    expect(dm.release.exitCode).toBe(0);
    expect(dm.heldAfterRelease).toMatch(/thin-pool \d+ \d+\/\d+ \d+\/\d+ - rw /);

    // createThinSnapshot
    const snap1 = get<Record<string, unknown>>('snap1');
    const snap2 = get<Record<string, unknown>>('snap2');
    expect(snap1).toMatchObject({ name: 'snap1', origin: 'vol', pool: POOL, isThinVolume: true, activationSkip: true, active: false, tags: ['thinarchive', 'thinarchive:test=1'] });
    expect(snap2).toMatchObject({ name: 'snap2', origin: 'vol', tags: ['thinarchive'] });
    expect(snap1['uuid']).not.toBe(snap2['uuid']);
    const [id1, id2] = [snap1['thinId'] as number, snap2['thinId'] as number];

    // withMetadataSnapshot + thinDelta + thinDump
    const w = get<Record<string, unknown>>('withSnap');
    console.log('real thin_delta:\n' + (w['deltaXml'] as string) + '\nreal thin_dump:\n' + (w['dump2Xml'] as string));
    expect(w['tmeta']).toBe('/dev/mapper/lab--vg-thin--pool_tmeta');
    expect(w['heldRoot']).toBeGreaterThan(0);
    expect(w['statusRoot']).toBe(w['heldRoot']);
    expect(w['record']).toMatchObject({ state: 'held', heldRoot: w['heldRoot'], vg: VG, pool: POOL });
    expect(w['lockExists']).toBe(true);
    expect(w['deltaHeader']).toMatchObject({ snap1: id1, snap2: id2, blockSizeBytes: 65536 });
    expect(w['deltaRanges']).toEqual([
      { begin: 100, length: 1, kind: 'data' }, // rewritten
      { begin: 1000, length: 5, kind: 'unmap' }, // discarded
      { begin: 2000, length: 4, kind: 'data' }, // new
    ]);
    expect(w['dump2Header']).toMatchObject({ devId: id2, mappedBlocks: 14, blockSizeBytes: 65536 });
    expect(w['dump2Ranges']).toEqual([{ begin: 0, length: 4 }, { begin: 100, length: 1 }, { begin: 1005, length: 5 }, { begin: 2000, length: 4 }]);
    expect(w['dump1Ranges']).toEqual([{ begin: 0, length: 4 }, { begin: 100, length: 1 }, { begin: 1000, length: 10 }]);
    expect(w['missing']).toMatchObject({ code: 'THIN_DEVICE_NOT_FOUND' });
    expect(w['deltaMissing']).toMatchObject({ code: 'THIN_DEVICE_NOT_FOUND' });
    expect(get('afterWithSnap')).toEqual({ heldRoot: null, record: false, lock: false });
    const logMain = get<{ level: string; msg: string }[]>('logMain');
    expect(logMain.map((l) => l.msg)).toEqual(['reserved the metadata snapshot', 'released the metadata snapshot']);

    // someone else's reservation: refused and left alone; force releases it loudly
    expect(get('foreignRoot')).toEqual(expect.any(Number));
    expect(get<object>('foreign')).toMatchObject({ code: 'METADATA_SNAP_HELD', name: 'UnsafeError' });
    expect(get('afterForeign')).toBe(get('foreignRoot'));
    expect(get('force')).toEqual(expect.any(Number));
    expect(get<{ level: string; msg: string }[]>('logForce')[0]).toMatchObject({ level: 'warn', msg: expect.stringMatching(/^FORCE: releasing/), heldRoot: get('foreignRoot') });
    expect(get('afterForce')).toBeNull();

    // fn fails
    expect(get<object>('fnFails')).toMatchObject({ code: 'FN_BOOM', message: 'boom from fn' });
    expect(get('afterFnFails')).toEqual({ heldRoot: null, record: false });

    // SIGKILLed holder: its reservation is recognised and released by the next run
    const k = get<Record<string, unknown>>('kill9');
    expect(k['exit']).toEqual({ code: null, signal: 'SIGKILL' });
    expect(k['statusRoot']).toBe(k['root']);
    expect(k['record']).toMatchObject({ state: 'held', heldRoot: k['root'] });
    expect(k['lockLeft']).toBe(true);
    expect(k['next']).toEqual(expect.any(Number));
    const kLog = (k['log'] as { level: string; msg: string }[]).map((l) => l.msg);
    expect(kLog).toContain('removing a stale thinarchive pool lock (its process is gone)');
    expect(kLog).toContain('releasing a metadata snapshot left behind by a thinarchive process that is gone');
    expect(k['after']).toBeNull();

    // SIGTERM: released, then died of the signal
    const t = get<Record<string, unknown>>('sigterm');
    expect(t['exit']).toEqual({ code: null, signal: 'SIGTERM' });
    expect(t).toMatchObject({ after: null, record: false, lock: false });

    // two holders: serialised by the lock
    const c = get<Record<string, unknown> & { mine: { at: number; root: number } }>('contend');
    expect(c['exit']).toEqual({ code: 0, signal: null });
    expect(c['waited']).toBe(true);
    expect(c.mine.at).toBeGreaterThanOrEqual(c['childLeftAt'] as number);
    expect(c['after']).toBeNull();

    // read-only activation and reading the snapshot
    const rs = get<Record<string, unknown>>('readSnap2');
    expect(rs).toMatchObject({ dev: `/dev/${VG}/snap2`, readOnly: true, active: true, got: { 0: true, 100: true, 1005: true, 2003: true, discardedIsZero: true } });
    console.log('observed:', JSON.stringify({
      writeToReadOnlySnapshot: rs['writeAttempt'],
      foreignRefusal: (R['foreign'] as { message: string }).message,
      sigtermChildStderr: t['stderr'],
      contendWaitMs: c.mine.at - (c['askedAt'] as number),
    }, null, 1));
    expect(rs['attr']).toMatch(/^Vri-a-t--k$/);
    expect(rs['writeAttempt']).toMatch(/^(open: )?E[A-Z]+$/); // an errno: writing to the read-only device failed
    expect(rs['attrAfterDeactivate']).toMatch(/^Vri---t--k$/);

    expect(get('tags')).toEqual({ withTag: ['thinarchive', 'thinarchive:extra', 'thinarchive:test=1'], without: ['thinarchive', 'thinarchive:test=1'] });
    expect(get<Record<string, unknown>>('remove')).toMatchObject({ refused: { code: 'LV_NOT_OURS' }, left: ['snap2', 'thin-pool', 'vol'] });
    expect(get<object>('finalStatus')).toMatchObject({ state: 'ok', heldRoot: null });

  }, 330_000 + LAB_SLOT_WAIT_MS);
});
