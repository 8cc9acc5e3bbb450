// The pool watch, `check` and the pool guard on real thin pools, in ONE boot of the thin-LVM lab: the
// guest runs test/lab/pool-watch-guest.sh (two pools watched by a real dmeventd; data filled past 80 %
// and 90 % and freed by fstrim and lvremove; a 2 MiB metadata area filled past its thresholds and
// freed; base snapshots whose origin is rewritten; a send at the critical level; the daemon's gauges;
// a second daemon sampling every 2 s through the data phase, its pool_warning, pool_critical and
// pool_ok alerts recorded by an exec hook; a metadata snapshot held by another program; pools that
// cannot be read). Here, on the host, every
// check line is compared with the perfdata computed from the pool status read just before it, and
// the pinned bytes with what thin_dump of the base snapshot and its origin say.
// If the lab cannot run here the test is skipped, except under CI where that is a failure.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cliBuild } from './cli-build.js';
import { hostTempDir, removeHostTempDirs } from './host-files.js';
import { LAB_SLOT_WAIT_MS, labFile, labLeftovers, requireLab, runInLab, type LabRun } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');
const VG = 'lab-vg';
const POOL = 'thin-pool';
const MPOOL = 'mpool';
const A = `${VG}/${POOL}`;
const B = `${VG}/${MPOOL}`;
const MiB = 1024 * 1024;

/** The thresholds the guest's configuration gives each pool (B: its own metadata levels). */
const LEVELS: Record<string, { wd: number; cd: number; wm: number; cm: number }> = {
  [A]: { wd: 80, cd: 90, wm: 70, cm: 80 },
  [B]: { wd: 80, cd: 90, wm: 30, cm: 40 },
};

afterAll(removeHostTempDirs);

/** virtual block -> data block of one thin_dump document (range and single mappings), and its block size. */
function mappings(xml: string): { map: Map<number, number>; blockBytes: number } {
  const blockBytes = Number(/data_block_size="(\d+)"/.exec(xml)![1]) * 512;
  const map = new Map<number, number>();
  for (const m of xml.matchAll(/<range_mapping origin_begin="(\d+)" data_begin="(\d+)" length="(\d+)"/g)) {
    for (let i = 0; i < Number(m[3]); i++) map.set(Number(m[1]) + i, Number(m[2]) + i);
  }
  for (const m of xml.matchAll(/<single_mapping origin_block="(\d+)" data_block="(\d+)"/g)) map.set(Number(m[1]), Number(m[2]));
  return { map, blockBytes };
}

describe('pool watch, check and the pool guard in the thin-LVM lab', () => {
  it('check follows the pools from OK to WARNING to CRITICAL and back with exact perfdata; the guard refuses a send; pinned bytes match thin_dump', async (ctx) => {
    await requireLab(ctx);
    const build = cliBuild('thinarchive-lab-pool');
    const host = await hostTempDir('ta-lab-pool-');
    const store = join(host, 'store');
    mkdirSync(store);
    const run: LabRun = await runInLab({
      script: `. "$GUEST_SCRIPT"\n`,
      disks: [{ sizeBytes: 1024 ** 3 }],
      env: {
        THINARCHIVE_DIST: build.dir, TA_LAUNCHER: join(ROOT, 'test', 'lab', 'send-lv-cli.mjs'), GUEST_SCRIPT: join(ROOT, 'test', 'lab', 'pool-watch-guest.sh'),
        VG, POOL, MPOOL, STORE: store,
      },
      timeoutMs: 1_800_000, // a few minutes on an idle machine; UML slows down a lot on a loaded one (16 min seen in a full run here, 20 with a third guest beside it)
    });
    expect(run.exitCode, `${run.output}\n--- console:\n${run.console.slice(-3000)}`).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);
    const file = labFile(run);
    console.log(`pool-watch lab: boot ${(run.bootMs / 1000).toFixed(1)} s, guest ${(run.durationMs / 1000).toFixed(1)} s; timings (ms): ${file('timings.txt').replace(/\n/g, ', ')}`);

    /** The pools' status before check LABEL: data and metadata used/total of A and B (of those active). */
    const status = (label: string): Record<string, { data: [number, number]; meta: [number, number]; line: string }> => {
      const [a, b] = file(`status-${label}.txt`).split('\n');
      const parse = (line: string) => {
        const f = line.trim().split(/\s+/);
        const frac = (s: string): [number, number] => s.split('/').map(Number) as [number, number];
        return { meta: frac(f[4]!), data: frac(f[5]!), line };
      };
      // '-': the pool was not active
      return Object.fromEntries(([[A, a!], [B, b!]] as const).filter(([, l]) => l.trim() !== '-').map(([p, l]) => [p, parse(l)]));
    };
    const pct = ([used, total]: [number, number]): string => ((100 * used) / total).toFixed(2);
    /** Bytes the base snapshot of `pool` maps that its origin does not map to the same block, from the dumps of LABEL. */
    const pinned = (label: string, pool: string): number => {
      const name = pool.split('/')[1];
      const base = mappings(file(`dump-${label}-${name}-base.xml`));
      const origin = mappings(file(`dump-${label}-${name}-origin.xml`)).map;
      let n = 0;
      for (const [v, d] of base.map) if (origin.get(v) !== d) n++;
      return n * base.blockBytes;
    };
    /** A check's printed line (or, for a check run with --json, its report's line and exit code, which must agree). */
    const out = (label: string): { rc: number; line: string; state: string; summary: string; perf: string } => {
      let line = file(`check-${label}.out`);
      if (line.startsWith('{')) {
        const r = JSON.parse(line) as { line: string; exitCode: number };
        expect(r.exitCode, label).toBe(Number(file(`check-${label}.rc`)));
        line = r.line;
      }
      expect(line.split('\n'), `check ${label} prints one line`).toHaveLength(1);
      const m = /^THINARCHIVE (OK|WARNING|CRITICAL|UNKNOWN) - (.*?)(?: \| (.*))?$/.exec(line);
      expect(m, line).not.toBeNull();
      return { rc: Number(file(`check-${label}.rc`)), line, state: m![1]!, summary: m![2]!, perf: m![3] ?? '' };
    };
    /**
     * The pools' perfdata check LABEL must print (pools in name order), from the status before it and the
     * pinned bytes of the dumps of `dumpsOf`; `noPinned` pools print none. Lag items and a time to full
     * (it depends on how long the run took) are compared apart.
     */
    const poolPerf = (label: string, pools: string[], dumpsOf: string | null, levels = LEVELS, noPinned: string[] = []): string => {
      const st = status(label);
      return pools.sort().map((p) => {
        const l = levels[p]!;
        const items = [`${p}:data=${pct(st[p]!.data)}%;${l.wd};${l.cd};0;100`, `${p}:metadata=${pct(st[p]!.meta)}%;${l.wm};${l.cm};0;100`];
        if (dumpsOf && !noPinned.includes(p)) items.push(`${p}:pinned=${pinned(dumpsOf, p)}B;;;0`);
        return items.join(' ');
      }).join(' ');
    };
    const lagItems = (perf: string): string[] => perf.split(' ').filter((x) => /:lag=/.test(x));
    const poolItems = (perf: string): string => perf.split(' ').filter((x) => !/:lag=|:seconds_to_full=/.test(x)).join(' ');
    const fullChecks: Record<string, { state: string; dumps: string | null; noPinned?: string[] }> = {
      ok0: { state: 'OK', dumps: 'ok0' }, pin1: { state: 'OK', dumps: 'pin1' }, pin2: { state: 'OK', dumps: 'pin2' },
      unmonitored: { state: 'WARNING', dumps: 'pin2' }, warn: { state: 'WARNING', dumps: 'warn' }, crit: { state: 'CRITICAL', dumps: 'crit' },
      freed: { state: 'OK', dumps: 'freed' }, mwarn: { state: 'WARNING', dumps: 'mwarn' }, mcrit: { state: 'CRITICAL', dumps: 'mcrit' },
      mfreed: { state: 'OK', dumps: 'mfreed' }, held0: { state: 'OK', dumps: 'mfreed', noPinned: [A] }, held: { state: 'WARNING', dumps: 'mfreed', noPinned: [A] },
      released: { state: 'OK', dumps: 'mfreed' },
    };
    const rows: string[] = [];
    for (const [label, want] of Object.entries(fullChecks)) {
      const c = out(label);
      expect(c.state, `${label}: ${c.line}\n${file(`check-${label}.err`)}`).toBe(want.state);
      expect(c.rc, label).toBe({ OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3 }[want.state]);
      expect(poolItems(c.perf), `perfdata of ${label}`).toBe(poolPerf(label, [A, B], want.dumps, LEVELS, want.noPinned));
      // one lag item per volume of the job: every 1h, so warning above 3 h and critical above 10 h
      expect(lagItems(c.perf).sort(), label).toEqual([expect.stringMatching(/^j:lab-vg\/mvol:lag=\d+s;10800;36000;0$/), expect.stringMatching(/^j:lab-vg\/vol:lag=\d+s;10800;36000;0$/)]);
      rows.push(`${label}: ${c.line}`);
    }

    // OK: what was checked
    expect(out('ok0').summary).toMatch(/^lab-vg\/mpool data \d+\.\d\d%, metadata \d+\.\d\d%; lab-vg\/thin-pool data \d+\.\d\d%, metadata \d+\.\d\d%; 2 volumes within their lag$/);
    // pinned: nothing right after the send; then exactly the rewritten and discarded chunks of the origin
    expect(pinned('ok0', A)).toBe(0);
    expect(pinned('ok0', B)).toBe(0);
    expect(pinned('pin1', A)).toBe(4 * MiB);
    expect(pinned('pin2', A)).toBe((4 + 8 + 1) * MiB);
    expect(out('pin2').summary).toContain('lab-vg/thin-pool data');
    const okJson = JSON.parse(file('check-ok0.out')) as { pools: { pool: string; autoextend: Record<string, unknown>; whenFull: string; mode: string }[] };
    for (const p of okJson.pools) {
      expect(p.autoextend, p.pool).toMatchObject({ armed: true, threshold: 99, percent: 20, monitored: true, reasons: [], required: true });
      expect(p.mode).toBe('rw');
    }
    expect(Object.fromEntries(okJson.pools.map((p) => [p.pool, p.whenFull]))).toEqual({ [A]: 'error', [B]: 'queue' });
    expect(file('monitor.txt')).toMatch(/thin-pool\s+monitored\s+error/);

    // autoextend: a pool dmeventd does not watch is a warning
    expect(out('unmonitored').summary).toBe('lab-vg/thin-pool WARNING: autoextend is not armed: dmeventd does not monitor the pool ("not monitored")');

    // data: warning above 80 %, critical above 90 %, the command line's threshold wins over the configuration
    const dataA = (label: string): string => pct(status(label)[A]!.data);
    expect(out('warn').summary).toBe(`lab-vg/thin-pool WARNING: data ${dataA('warn')}% > 80% (warning)`);
    expect(out('crit').summary).toBe(`lab-vg/thin-pool CRITICAL: data ${dataA('crit')}% > 90% (critical)`);
    const flags = out('critflags');
    expect(flags.rc).toBe(1);
    // (a time to full is printed when the pool filled between two samples: compared apart, as above)
    expect(flags.summary).toBe(`lab-vg/thin-pool WARNING: data ${dataA('critflags')}% > 80% (warning)`);
    expect(flags.line).toMatch(/^THINARCHIVE WARNING - /);
    expect(poolItems(flags.perf)).toBe(poolPerf('critflags', [A], 'crit', { [A]: { ...LEVELS[A]!, cd: 95 } }));
    for (const x of flags.perf.split(' ').filter((i) => /:seconds_to_full=/.test(i))) expect(x).toMatch(/^lab-vg\/thin-pool:seconds_to_full=\d+s;;;0$/);
    const critJson = JSON.parse(file('check-crit.out')) as { state: string; exitCode: number; pools: { pool: string; condition: { state: string; values: { dataPercent: number } } }[] };
    expect(critJson).toMatchObject({ state: 'CRITICAL', exitCode: 2 });
    expect(critJson.pools.find((p) => p.pool === A)!.condition).toMatchObject({ state: 'CRITICAL' });

    // the guard: refused (exit 4, POOL_CRITICAL, by how much) before any snapshot, by send and by a job run
    expect(file('refused.rc'), file('refused.err')).toBe('4');
    const over = (Number(dataA('crit')) - 90).toFixed(2);
    expect(file('refused.err')).toBe(`thinarchive: thin pool ${A} is critical: data usage is ${dataA('crit')}%, ${over} points above the critical threshold of 90% (--max-data-percent). `
      + 'No snapshot was created: a snapshot keeps the blocks the volume overwrites and could fill the pool. Free or add space (lvextend, fstrim, lvremove), '
      + 'or raise the threshold (pools.<VG/POOL>.crit in the daemon configuration)');
    expect(file('run-refused.rc')).toBe('4');
    const runOut = JSON.parse(file('run-refused.json')) as { volume: string; outcome: { ok: boolean; error?: { code: string } } }[];
    expect(runOut.find((r) => r.volume === `${VG}/vol`)!.outcome).toMatchObject({ ok: false, error: { code: 'POOL_CRITICAL' } });
    expect(file('lvs-after-refused.txt')).toBe(file('lvs-before-refused.txt'));
    expect(file('lvs-after-refused.txt')).not.toContain('ta_pending');

    // freed by fstrim and lvremove: back to OK
    expect(Number(dataA('freed'))).toBeLessThan(80);

    // the watching daemon (pool_sample_every: 2s) alerted through its exec hook: warning, critical, ok,
    // in that order, for the pool, with the data usage it sampled (nothing wrote to the pool between the
    // check and its sample); its unit's failed run and its own start and stop are the only other events
    const events = file('events.txt').split('\n').map((l) => {
      const [event, pool, ...json] = l.split(' ');
      return { event: event!, pool: pool!, e: JSON.parse(json.join(' ')) as { event: string; severity: string; status: string; pool: string | null; job: string | null; values: { dataPercent: number }; message: string } };
    });
    const poolEvents = events.filter((x) => x.e.pool !== null);
    expect(poolEvents.map((x) => [x.event, x.pool, x.e.event, x.e.pool, x.e.job])).toEqual([
      ['pool_warning', A, 'pool_warning', A, null], ['pool_critical', A, 'pool_critical', A, null], ['pool_ok', A, 'pool_ok', A, null],
    ]);
    const [pw, pc, po] = poolEvents.map((x) => x.e);
    expect(pw).toMatchObject({ severity: 'warning', status: 'firing' });
    expect(pw!.values.dataPercent).toBeCloseTo(Number(dataA('warn')), 1);
    expect(pw!.message).toBe(`pool ${A}: data ${pw!.values.dataPercent.toFixed(2)}% > 80% (warning)`);
    expect(pc).toMatchObject({ severity: 'critical', status: 'firing' });
    expect(pc!.values.dataPercent).toBeCloseTo(Number(dataA('crit')), 1);
    expect(pc!.message).toBe(`pool ${A}: data ${pc!.values.dataPercent.toFixed(2)}% > 90% (critical)`);
    expect(po).toMatchObject({ severity: 'ok', status: 'resolved' });
    expect(po!.values.dataPercent).toBeCloseTo(Number(dataA('freed')), 1);
    expect(po!.values.dataPercent).toBeLessThan(80);
    const others = events.filter((x) => x.e.pool === null);
    expect(others.map((x) => x.event)).toEqual(expect.arrayContaining(['daemon_started', 'daemon_stopped']));
    // its unit's run, refused before any snapshot (the chain's base was sent to another store)
    expect(others.filter((o) => !o.event.startsWith('daemon_')).map((x) => [x.event, x.e.job, x.e.message])).toEqual([
      ['chain_broken', 'j', expect.stringMatching(new RegExp(`^j ${VG}/vol: the chain does not continue: PARENT_NOT_IN_STORE: `))],
    ]);
    expect(file('watch-daemon.rc')).toBe('0');
    expect(file('fstrim.txt')).toMatch(/trimmed/);

    // metadata of the small area: warning above 30 %, critical above 40 % (the configuration's levels for it)
    const metaB = (label: string): string => pct(status(label)[B]!.meta);
    expect(out('mwarn').summary).toBe(`lab-vg/mpool WARNING: metadata ${metaB('mwarn')}% > 30% (warning)`);
    expect(out('mcrit').summary).toBe(`lab-vg/mpool CRITICAL: metadata ${metaB('mcrit')}% > 40% (critical)`);
    expect(Number(metaB('mfreed'))).toBeLessThan(30);
    expect(pinned('mcrit', B)).toBeGreaterThan(0); // the rewrites of mvol pin blocks of its base too

    // a metadata snapshot held by another program: not yet a problem, then a warning after 2 s; no pinned bytes meanwhile
    expect(out('held0').summary).not.toContain('held');
    expect(out('held').summary).toMatch(/^lab-vg\/thin-pool WARNING: a metadata snapshot \(root \d+\) has been held by another program for \d+s \(more than 2s\): it costs metadata space and thinarchive sends on this pool are refused until it is released$/);
    const heldJson = JSON.parse(file('check-held.out')) as { pools: { pool: string; heldMetadataSnapshot: unknown; pinned: { bytes: null; error: string } }[] };
    const heldA = heldJson.pools.find((p) => p.pool === A)!;
    expect(heldA.heldMetadataSnapshot).toMatchObject({ holder: 'other', maxSeconds: 2 });
    expect(heldA.pinned).toMatchObject({ bytes: null, error: expect.stringMatching(/already has a metadata snapshot .* another program/) });

    // pools that cannot be read: UNKNOWN, exit 3, the reason in the line
    expect(out('nosuch')).toMatchObject({ rc: 3, line: `THINARCHIVE UNKNOWN - ${VG}/nosuch UNKNOWN: cannot read the pool: thin pool ${VG}/nosuch not found` });
    expect(out('notpool')).toMatchObject({ rc: 3, line: expect.stringMatching(/^THINARCHIVE UNKNOWN - lab-vg\/vol UNKNOWN: cannot read the pool: lab-vg\/vol is not a thin pool \(attr Vwi-a-t.--\)$/) });
    const inactive = out('inactive');
    expect(inactive.rc).toBe(3);
    expect(inactive.summary).toMatch(/^lab-vg\/mpool UNKNOWN: cannot read the pool: thin pool lab-vg\/mpool is not active \(no device-mapper device lab--vg-mpool-tpool\)/);
    expect(poolItems(inactive.perf)).toBe(poolPerf('inactive', [A], 'mfreed'));

    // the daemon's gauges, from its first sample
    expect(file('metrics-got.txt')).toBe('1');
    // and it stopped on SIGTERM (a daemon left running would sample the pools under the later checks)
    expect(file('daemon.rc')).toBe('0');
    expect(file('daemon-stopped.txt')).toBe('1');
    const metrics = file('metrics.txt');
    const gauge = (name: string, pool: string): number => Number(new RegExp(`^${name}\\{pool="${pool.replace('/', '\\/')}"\\} (\\S+)$`, 'm').exec(metrics)?.[1]);
    const stm = file('status-metrics.txt').split('\n').map((l) => l.trim().split(/\s+/));
    for (const [i, p] of [A, B].entries()) {
      const frac = (s: string): number => { const [u, t] = s.split('/').map(Number); return (100 * u!) / t!; };
      expect(gauge('thinarchive_pool_data_percent', p), p).toBeCloseTo(frac(stm[i]![5]!), 9);
      expect(gauge('thinarchive_pool_metadata_percent', p), p).toBeCloseTo(frac(stm[i]![4]!), 9);
      expect(gauge('thinarchive_pool_pinned_bytes', p), p).toBe(pinned('pin2', p));
    }

    console.log([
      ...rows, ...['nosuch', 'notpool', 'inactive', 'critflags'].map((l) => `${l}: ${out(l).line}`),
      `refused: ${file('refused.err')}`, `metadata filled by ${file('metafill-snapshots.txt')} snapshots`,
    ].join('\n'));
  }, 2_100_000 + LAB_SLOT_WAIT_MS);
});
