// Consistency groups in ONE boot of the thin-LVM lab (test/lab/group-guest.sh): two thin LVs striped
// by device-mapper with ext4 on top and a writer running; group sends without a freeze (the stripe
// suspended) and with fsfreeze, the same volumes sent one by one (THINARCHIVE_LAB_FULL=1), the quiesce window observed, the
// watchdog (hung thaw, hung and SIGKILLed freeze commands, SIGTERM and SIGKILL of thinarchive), restore
// --group, and an incomplete point.
// Here, on the host, every group point's members are restored (the library's restore, to images),
// de-striped into one filesystem image, the journal replayed and `fsck.ext4 -n -f` must pass for every
// group point; the one-by-one pairs are checked the same way, and some of them must fail (what the
// group prevents; recorded, not asserted: it depends on timing (1 of 5 pairs failed once, docs/LVM.md section 9).
// Last, prune --group on the host's copy of the store: whole points dropped, the rest still restorable;
// verify --group on it, on the store with a member deleted and on a copy with a byte changed; and a daemon
// group job (three runs, retention and scheduled verification of whole points).
import { spawnSync } from 'node:child_process';
import { closeSync, cpSync, fstatSync, ftruncateSync, openSync, readdirSync, readSync, rmSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { groupPoints, restore } from '../../src/api/index.js';
import type { GroupPoint, PruneGroupResult, SendGroupResult, SendVolumeResult, VerifyGroupResult } from '../../src/api/index.js';
import type { UnitStatus } from '../../src/daemon/daemon.js';
import { cliBuild } from './cli-build.js';
import { hostTempDir, removeHostTempDirs } from './host-files.js';
import { LAB_FULL, LAB_SLOT_WAIT_MS, labLeftovers, labPoolSetup, parseResults, requireLab, runInLab, type LabRun } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');
// Sends per group, of two groups: 2 in the suite, 4 group points in all (a group send takes 25 to 50
// s in the guest with the writer running); 10 per group, 20 points, with THINARCHIVE_LAB_FULL=1.
// The one-by-one pairs (recorded, not asserted: the failure a group prevents depends on timing)
// only run with THINARCHIVE_LAB_FULL=1.
const POINTS = LAB_FULL ? 10 : 2;
const SOLO = LAB_FULL ? 5 : 0;
// The guest's bound (a safety net): 20 points with their pairs took 15 minutes here before the daemon
// step; in the suite the 4 points, the watchdog and the daemon's three runs take about 10 on a loaded machine.
const GUEST_TIMEOUT_MS = LAB_FULL ? 3_600_000 : 1_500_000;
const STRIPE = 65536;

const SCRIPT = String.raw`
${labPoolSetup({ vg: 'gv', pool: 'pool', poolSize: '700M', chunk: '64k' })}
. "$GUEST_SCRIPT"
`;

afterAll(removeHostTempDirs);

/** Interleave two member images (64 KiB stripes) into the striped device's image. */
function destripe(a: string, b: string, out: string): void {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const fo = openSync(out, 'w');
  const buf = Buffer.alloc(STRIPE);
  try {
    let k = 0;
    for (; ; k++) {
      const n = readSync(k % 2 === 0 ? fa : fb, buf, 0, STRIPE, Math.floor(k / 2) * STRIPE);
      if (n === 0) break;
      if (!buf.subarray(0, n).every((x) => x === 0)) writeSync(fo, buf, 0, n, k * STRIPE);
    }
    ftruncateSync(fo, k * STRIPE);
  } finally {
    closeSync(fa);
    closeSync(fb);
    closeSync(fo);
  }
}

/** Restore two archives (a, b) to images, assemble, replay the journal, fsck -n: the fsck status and its output. */
async function checkPair(dir: string, a: { path: string; archiveId: string }, b: { path: string; archiveId: string }): Promise<{ status: number; out: string }> {
  const ia = join(dir, 'a.img');
  const ib = join(dir, 'b.img');
  const fs = join(dir, 'fs.img');
  for (const f of [ia, ib, fs]) rmSync(f, { force: true });
  // the copy of the store taken before an archive was deleted (group-guest.sh, step 7)
  const intact = (p: string): string => p.replace(/\/store\//, '/store-intact/');
  await restore({ dir: dirname(intact(a.path)), at: a.archiveId, to: ia, create: true });
  await restore({ dir: dirname(intact(b.path)), at: b.archiveId, to: ib, create: true });
  destripe(ia, ib, fs);
  spawnSync('e2fsck', ['-E', 'journal_only', '-y', fs], { encoding: 'utf8' });
  const r = spawnSync('fsck.ext4', ['-n', '-f', fs], { encoding: 'utf8' });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

describe('consistency groups in the thin-LVM lab', () => {
  it('group points restore to a filesystem fsck passes; the watchdog thaws; incomplete points are refused', async (ctx) => {
    await requireLab(ctx);
    const build = cliBuild();
    const host = await hostTempDir('ta-lab-group-');
    const store = join(host, 'store');
    spawnSync('mkdir', ['-p', store]);
    const run = await runInLab({
      script: SCRIPT,
      disks: [{ sizeBytes: 1024 ** 3 }, { sizeBytes: 1024 ** 3 }],
      env: {
        THINARCHIVE_DIST: build.dir, TA_LAUNCHER: join(ROOT, 'test', 'lab', 'send-lv-cli.mjs'), GUEST_SCRIPT: join(ROOT, 'test', 'lab', 'group-guest.sh'),
        STORE: store, POINTS: String(POINTS), SOLO: String(SOLO),
      },
      timeoutMs: GUEST_TIMEOUT_MS,
    });
    const F = run.files;
    // On a failure, what the guest left too: timings, results and the tail of every command's stderr
    // (a failing `ta` call's ERR-trap line is in its own .err file: the trap fires inside the function)
    const leftBehind = (r: LabRun): string => Object.entries(r.files).filter(([n]) => /\.(err|txt|tsv)$/.test(n))
      .map(([n, text]) => `--- ${n}\n${text.slice(-600)}`).join('\n');
    if (run.exitCode !== 0) console.log(run.output, run.console.slice(-3000), leftBehind(run));
    expect(run.exitCode, run.output).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);
    console.log(`guest: ${run.durationMs} ms (boot ${run.bootMs} ms); timings (ms since start): ${(F['timings.txt'] ?? '').trim().replace(/\n/g, ', ')}`);
    const R = parseResults(F['results.tsv'] ?? '');
    const json = <T>(name: string): T => {
      expect(F[name], `${name} missing`).toBeDefined();
      return JSON.parse(F[name]!) as T;
    };

    // --- the group sends: every member in the group, quiesced as asked
    const crash = Array.from({ length: POINTS }, (_, i) => json<SendGroupResult>(`crash-${i + 1}.json`));
    const frozen = Array.from({ length: POINTS }, (_, i) => json<SendGroupResult>(`frozen-${i + 1}.json`));
    for (const g of [...crash, ...frozen]) {
      expect(g.members.map((m) => `${m.volume.vg}/${m.volume.lv}`)).toEqual(['gv/a', 'gv/b']);
      expect(g.group.members.map((m) => m.archiveId)).toEqual(g.members.map((m) => m.archiveId));
      expect(g.group.quiesce.freezeMs).toBeGreaterThan(0);
    }
    expect(new Set(crash.map((g) => g.group.quiesce.method))).toEqual(new Set(['dm-suspend']));
    expect(crash[0]!.group.quiesce.targets).toEqual(['stripe']);
    expect(new Set(frozen.map((g) => g.group.quiesce.method))).toEqual(new Set(['fsfreeze']));
    const freezeMs = (gs: SendGroupResult[]): number[] => gs.map((g) => g.group.quiesce.freezeMs).sort((x, y) => x - y);
    console.log(`freeze window (ms) dm-suspend: ${freezeMs(crash).join(' ')}; fsfreeze: ${freezeMs(frozen).join(' ')}`);

    // --- every group point restores to a filesystem that fsck passes (journal replayed)
    const work = await hostTempDir('ta-lab-group-img-');
    const failures: string[] = [];
    for (const [label, g] of [...crash.map((g, i) => [`crash ${i + 1}`, g] as const), ...frozen.map((g, i) => [`frozen ${i + 1}`, g] as const)]) {
      const r = await checkPair(work, g.members[0] as Required<SendVolumeResult> & { path: string }, g.members[1] as Required<SendVolumeResult> & { path: string });
      if (r.status !== 0) failures.push(`${label}: fsck ${r.status}\n${r.out.slice(0, 1500)}`);
    }
    expect(failures, failures.join('\n')).toEqual([]);

    // --- the same volumes sent one by one: pairs that do not fsck clean (what a group prevents)
    let soloBad = 0;
    const soloOut: string[] = [];
    for (let i = 1; i <= SOLO; i++) {
      const a = json<SendVolumeResult & { path: string }>(`solo-a-${i}.json`);
      const b = json<SendVolumeResult & { path: string }>(`solo-b-${i}.json`);
      const r = await checkPair(work, a, b);
      if (r.status !== 0) soloBad++;
      soloOut.push(`pair ${i}: fsck ${r.status}`);
    }
    if (SOLO > 0) console.log(`one by one: ${soloBad} of ${SOLO} pairs fail fsck (${soloOut.join(', ')})`);
    // Not asserted: the failure depends on timing (0 of 5 pairs failed in one run, 1 of 5 in another); sends one by one may not
    // give a pair that fsck rejects after journal replay (docs/LVM.md section 9). Recorded only.

    // --- the window: no probe write completes between freeze and thaw; writes resume right after
    const frozenAt = Number(F['t-frozen']!.trim());
    const thawAt = Number(F['t-thaw']!.trim());
    const steps = F['probe.log']!.trim().split('\n').map((l) => l.split(' ').map(Number) as [number, number]);
    const writes = steps.map(([, end]) => end);
    expect(thawAt - frozenAt).toBeGreaterThanOrEqual(1000);
    expect(steps.filter(([start, end]) => start > frozenAt && end < thawAt), 'writes started while frozen and done before the thaw').toEqual([]);
    expect(steps.some(([start, end]) => start < thawAt && end >= thawAt), 'a write held until the thaw').toBe(true);
    expect(writes.filter((t) => t < frozenAt).length).toBeGreaterThan(3);
    const firstAfter = writes.find((t) => t >= thawAt);
    expect(firstAfter, 'a write after the thaw').toBeDefined();
    expect(firstAfter! - thawAt).toBeLessThan(3000); // a probe step is three process starts in the guest
    const win = json<SendGroupResult>('window.json');
    expect(win.group.quiesce.method).toBe('command');
    expect(win.group.quiesce.freezeMs).toBeGreaterThanOrEqual(thawAt - frozenAt - 50);

    // --- the watchdog
    const hung = json<SendGroupResult>('thaw-hangs.json');
    expect(hung.quiesce!.warnings.length, JSON.stringify(hung.quiesce)).toBe(1);
    expect(hung.quiesce!.warnings[0]).toMatch(/killed/);
    expect(hung.group.quiesce.freezeMs).toBeLessThan(20_000); // thawed by the second attempt, before the freeze timeout
    expect(R['thaw_hangs_writable']).toBe('yes');
    expect(R['freeze_hangs_rc']).toBe('1');
    expect(json<{ error: { code: string } }>('freeze-hangs.out').error.code, F['freeze-hangs.err']).toBe('FREEZE_TIMEOUT');
    // the watchdog ended the 3 s window (the freeze command sleeps 1000 s); the send's own start-up and
    // clean-up around it take seconds in the guest, more than 8 on a loaded CI machine
    expect(Number(R['freeze_hangs_ms'])).toBeLessThan(3000 + 30_000);
    expect(R['freeze_hangs_writable']).toBe('yes');
    expect(R['freeze_killed_rc']).toBe('1');
    expect(json<{ error: { code: string } }>('freeze-killed.out').error.code, F['freeze-killed.err']).toBe('FREEZE_FAILED');
    expect(F['freeze-killed.err']).toMatch(/SIGKILL/);
    expect(R['freeze_killed_writable']).toBe('yes');
    expect(R['sigterm_rc']).toBe('130');
    expect(R['sigterm_writable']).toBe('yes');
    expect(Number(R['sigterm_thawed_ms'])).toBeLessThan(15_000); // the freeze command sleeps 30 s, the timeout is 60 s
    expect(R['sigkill_rc']).toBe('137');
    expect(R['sigkill_writable'], 'the guard process thaws after thinarchive was SIGKILLed').toBe('yes');
    expect(Number(R['sigkill_thawed_ms'])).toBeLessThan(20_000); // the guard thaws at the 3 s timeout + 1 s; frozen for good without it
    expect(R['direct_rc']).toBe('2');
    expect(json<{ error: { code: string } }>('direct.out').error.code, F['direct.err']).toBe('GROUP_NOT_QUIESCABLE');

    // --- restore --group in the guest: every member, assembled, fsck clean
    for (const g of ['crash', 'frozen']) {
      const r = json<{ point: GroupPoint; members: { volume: string; target: string }[] }>(`restore-${g}.json`);
      expect(r.members.map((m) => [m.volume, m.target])).toEqual([['gv/a', 'rv/a'], ['gv/b', 'rv/b']]);
      expect(r.point.complete).toBe(true);
      expect(R[`fsck_group_${g}`], F[`fsck-${g}.txt`]).toBe('0');
    }

    // --- an incomplete point: listed as such, refused by restore (exit 3, nothing created)
    const before = json<GroupPoint[]>('groups-before.json');
    const after = json<GroupPoint[]>('groups-after.json');
    expect(before.every((p) => p.complete)).toBe(true);
    expect(before.filter((p) => p.name === 'frozen')).toHaveLength(POINTS);
    expect(after.filter((p) => p.name === 'frozen').every((p) => p.complete)).toBe(true);
    const lastFrozen = after.filter((p) => p.name === 'window').at(-1)!;
    expect(lastFrozen.complete).toBe(false);
    expect(lastFrozen.members.map((m) => m.status)).toEqual(['complete', 'missing']);
    expect(after.filter((p) => !p.complete).map((p) => p.id)).toEqual([lastFrozen.id]);
    expect(F['list-after.txt']).toMatch(new RegExp(`${lastFrozen.id}.*INCOMPLETE`));
    expect(R['restore_incomplete_rc']).toBe('3');
    expect(json<{ error: { code: string } }>('restore-incomplete.out').error.code, F['restore-incomplete.err']).toBe('GROUP_INCOMPLETE');
    expect(F['rv-lvs.txt']!.trim()).toBe('pool');

    // --- prune --group on the intact copy: the newest "crash" point kept, the older ones dropped in
    // both member chains, each merged into the next archive (a "frozen" point's: those chains hold
    // every group's sends); every other point stays complete and restores to a clean filesystem
    const intactStore = `${store}-intact`;
    const launcher = join(ROOT, 'test', 'lab', 'send-lv-cli.mjs');
    const ta = (...args: string[]): { status: number | null; stdout: string; stderr: string } =>
      spawnSync(process.execPath, [launcher, ...args], { env: { ...process.env, THINARCHIVE_DIST: build.dir }, encoding: 'utf8' });
    const pointsBefore = await groupPoints({ dir: intactStore });
    const listingBefore = ta('list', intactStore, '--json').stdout;
    const dry = ta('prune', intactStore, '--group', 'crash', '--keep', '1', '--dry-run', '--json');
    expect(dry.status, dry.stderr).toBe(0);
    const planned = JSON.parse(dry.stdout) as PruneGroupResult;
    expect(planned.kept.map((p) => p.id)).toEqual([crash.at(-1)!.group.id]);
    expect(planned.dropped.map((p) => p.id)).toEqual(crash.slice(0, -1).map((g) => g.group.id));
    expect(ta('list', intactStore, '--json').stdout, 'a dry run changes nothing').toBe(listingBefore);
    const pr = ta('prune', intactStore, '--group', 'crash', '--keep', '1', '--json');
    expect(pr.status, pr.stderr).toBe(0);
    const pruned = JSON.parse(pr.stdout) as PruneGroupResult;
    expect(pruned.chains).toHaveLength(2);
    for (const c of pruned.chains) expect(c.merges.length, JSON.stringify(c)).toBe(POINTS - 1);
    const pointsAfter = await groupPoints({ dir: intactStore });
    const brief = (ps: GroupPoint[]): [string, string, boolean][] => ps.map((p) => [p.name, p.id, p.complete]);
    expect(brief(pointsAfter.filter((p) => p.name === 'crash'))).toEqual([['crash', crash.at(-1)!.group.id, true]]);
    expect(brief(pointsAfter.filter((p) => p.name !== 'crash'))).toEqual(brief(pointsBefore.filter((p) => p.name !== 'crash')));
    for (const p of pointsAfter.filter((x) => x.name === 'crash' || x.name === 'frozen')) {
      const [a, b] = p.members.map((m) => ({ path: join(m.chainDir!, 'member'), archiveId: m.archiveId }));
      const r = await checkPair(work, a!, b!);
      expect(r.status, `${p.name} point ${p.id} after prune --group: fsck\n${r.out.slice(0, 1500)}`).toBe(0);
    }
    for (const dir of new Set(pointsAfter.flatMap((p) => p.members.map((m) => m.chainDir!)))) {
      const v = ta('verify', dir);
      expect(v.status, `verify ${dir}: ${v.stderr}`).toBe(0);
    }

    // --- verify --group: each point whole. The intact copy after the prune: every point ok (full and
    // sampled). The store with the deleted member: the "window" point INCOMPLETE; the later "watchdog"
    // point complete but DAMAGED in gv/b's chain (its restore reads past the gap), fine in gv/a's.
    const verifyGroup = (dir: string, ...args: string[]): { status: number | null; res: VerifyGroupResult; stderr: string } => {
      const r = ta('verify', dir, ...args, '--json');
      return { status: r.status, res: JSON.parse(r.stdout || '{}') as VerifyGroupResult, stderr: r.stderr };
    };
    const vFull = verifyGroup(intactStore, '--group', 'frozen');
    expect(vFull.status, vFull.stderr).toBe(0);
    expect(vFull.res.points.map((p) => [p.id, p.ok])).toEqual(pointsAfter.filter((p) => p.name === 'frozen').map((p) => [p.id, true]));
    expect(vFull.res.archives).toBeGreaterThan(0);
    const vSample = verifyGroup(intactStore, '--group', 'crash', '--sample', '50');
    expect(vSample.status, vSample.stderr).toBe(0);
    expect(vSample.res).toMatchObject({ ok: true, mode: 'sample', samplePercent: 50 });
    const vInc = verifyGroup(store, '--group', 'window');
    expect(vInc.status, vInc.stderr).toBe(3);
    expect(vInc.res.points.map((p) => [p.id, p.complete, p.ok])).toEqual([[lastFrozen.id, false, false]]);
    const vDog = verifyGroup(store, '--group', 'watchdog');
    expect(vDog.status, vDog.stderr).toBe(3);
    expect(vDog.res.points.length).toBeGreaterThan(0);
    for (const p of vDog.res.points) {
      expect(p.complete).toBe(true);
      expect(p.members.map((m) => [m.volume, m.ok])).toEqual([['gv/a', true], ['gv/b', false]]);
      expect(p.members[1]!.findings.map((f) => f.detail)).toContain('SEQUENCE_GAP');
    }
    expect(ta('verify', store, '--group', 'window').stdout).toMatch(new RegExp(`^INCOMPLETE window .*${lastFrozen.id}[\\s\\S]*verification FAILED`, 'm'));
    // a byte of the last "frozen" point's gv/b archive changed (on another copy): that point DAMAGED, the
    // earlier "frozen" points and the "crash" point kept (sent before it: the groups alternate) still ok
    const damaged = `${store}-damaged`;
    cpSync(intactStore, damaged, { recursive: true });
    const frozenPoints = pointsAfter.filter((p) => p.name === 'frozen');
    const victim = frozenPoints.at(-1)!.members[1]!;
    const victimFile = readdirSync(join(damaged, victim.chainId)).find((n) => n.includes(victim.archiveId))!;
    const fd = openSync(join(damaged, victim.chainId, victimFile), 'r+');
    try {
      const size = fstatSync(fd).size;
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, Math.floor(size / 2));
      b[0] = b[0]! ^ 0xff;
      writeSync(fd, b, 0, 1, Math.floor(size / 2));
    } finally {
      closeSync(fd);
    }
    const vBad = verifyGroup(damaged, '--group', 'frozen');
    expect(vBad.status, vBad.stderr).toBe(3);
    expect(vBad.res.points.map((p) => [p.id, p.ok])).toEqual(frozenPoints.map((p, i) => [p.id, i < frozenPoints.length - 1]));
    expect(vBad.res.points.at(-1)!.members[1]!.findings.some((f) => f.archive.includes(victim.archiveId))).toBe(true);
    expect(vBad.res.points.at(-1)!.members[0]!.ok).toBe(true);
    expect(verifyGroup(damaged, '--group', 'crash').status).toBe(0);

    // --- the daemon group job (group-guest.sh step 8): each run one group point of both members (the
    // stripe suspended), retention over whole points, every point verified whole; status and metrics
    expect(R['daemon_rc']).toBe('0');
    const dlog = (F['daemon.log'] ?? '').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    const sentPoints = dlog.filter((l) => l.msg === 'sent group point');
    expect(sentPoints.length, F['daemon.log']).toBeGreaterThanOrEqual(3);
    for (const l of sentPoints) expect([l.volume, l.group, l.method, (l.freezeMs as number) > 0]).toEqual(['gv/a+gv/b', 'dgroup', 'dm-suspend', true]);
    expect(dlog.filter((l) => l.msg === 'run failed' || l.msg === 'scheduled verification FAILED'), F['daemon.log']).toEqual([]);
    const dstatus = json<{ units: UnitStatus[] }>('daemon-status.json');
    expect(dstatus.units.map((u) => [u.job, u.volume, u.state, u.chainLength, u.lastError])).toEqual([['dg', 'gv/a+gv/b', 'ok', 2, null]]);
    expect(dstatus.units[0]!.scheduledVerify).toMatchObject({ ok: true, mode: 'full', store: { ok: true, findings: 0 } });
    const dpoints = json<GroupPoint[]>('daemon-groups.json');
    expect(dpoints.map((p) => [p.name, p.id, p.complete])).toEqual(sentPoints.slice(-2).map((l) => ['dgroup', l.point, true]));
    const metric = (name: string): number => Number(new RegExp(`^${name}\\{job="dg",volume="gv/a\\+gv/b"\\} (\\S+)$`, 'm').exec(F['daemon-metrics.prom'] ?? '')?.[1]);
    expect(metric('thinarchive_group_freeze_seconds')).toBeCloseTo((sentPoints.at(-1)!.freezeMs as number) / 1000, 3);
    expect(metric('thinarchive_chain_length')).toBe(2);
  }, LAB_SLOT_WAIT_MS + GUEST_TIMEOUT_MS + 300_000);
});
