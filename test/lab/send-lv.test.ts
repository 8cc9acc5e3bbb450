// `thinarchive send VG/LV` end to end on a real thin pool, in ONE boot of the thin-LVM lab: the guest
// runs test/lab/send-lv-guest.sh, which drives the CLI (an ext4 filesystem in use, a dry run, a full
// send and incrementals while a writer appends, two sends on one pool at once, a SIGKILLed send, a
// refused send) and records snapshot hashes and sizes. (A failing thin_delta and user-managed
// snapshots are covered against an emulated pool by src/commands/send-lv.test.ts.)
// Here, on the host, every archive of the chain is applied in turn to a sparse image, whose sha256
// must equal the snapshot's, whose copy must pass fsck.ext4 -n, and whose allocation must be close to
// the snapshot's mapped size.
// If the lab cannot run here the test is skipped, except under CI where that is a failure.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { SendLvResult } from '../../src/commands/send-lv.js';
import { cliBuild } from './cli-build.js';
import { hostTempDir, removeHostTempDirs, sha256File } from './host-files.js';
import { LAB_SLOT_WAIT_MS, labLeftovers, labPoolSetup, requireLab, runInLab, type LabRun } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');
const VG = 'lab-vg';
const POOL = 'thin-pool';
const CHUNK = 65536;

type SendJson = SendLvResult;
interface SnapJson {
  lv: string;
  sha256: string;
  size: number;
  dataPercent: number;
  thinId: number;
}

const SCRIPT = String.raw`
${labPoolSetup({ vg: VG, pool: POOL, poolSize: '1G', chunk: '64k' })}
export THINARCHIVE_STATE_DIR="$LAB_WORK/state"
. "$GUEST_SCRIPT"
`;

// The host directories (stores, images) go when the file's tests end, passed or failed.
afterAll(removeHostTempDirs);

describe('send VG/LV in the thin-LVM lab', () => {
  it('a chain of a full and incremental sends of a filesystem in use applies to an image identical to each snapshot', async (ctx) => {
    await requireLab(ctx);
    const t0 = performance.now();
    const build = cliBuild();
    const tBuild = performance.now() - t0;
    const host = await hostTempDir('ta-lab-send-');
    const [store, store2] = ['store', 'store2'].map((n) => join(host, n));
    for (const d of [store, store2]) mkdirSync(d!);
    const launcher = join(ROOT, 'test', 'lab', 'send-lv-cli.mjs');
    let run: LabRun;
    run = await runInLab({
      script: SCRIPT,
      disks: [{ sizeBytes: 2 * 1024 ** 3 }],
      env: {
        THINARCHIVE_DIST: build.dir, TA_LAUNCHER: launcher, GUEST_SCRIPT: join(ROOT, 'test', 'lab', 'send-lv-guest.sh'), REPO: ROOT,
        VG, POOL, STORE: store!, STORE2: store2!,
      },
      timeoutMs: 900_000, // about 90 s on an idle machine; UML slows down a lot on a loaded one
    });
    const tLab = performance.now() - t0 - tBuild;
    if (run.exitCode !== 0) console.log(run.output, run.console.slice(-3000), Object.entries(run.files).map(([k, v]) => `--- ${k}\n${v.slice(0, 3000)}`).join('\n'));
    expect(run.exitCode, run.output).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);
    const F = run.files;
    const file = (name: string): string => {
      expect(F[name], `guest result ${name} missing; output:\n${run.output}`).toBeDefined();
      return F[name]!.trim();
    };
    console.log(`guest timings (ms since start): ${(F['timings.txt'] ?? '').trim().replace(/\n/g, ', ')}`);
    const sent = (label: string): SendJson => JSON.parse(file(`send-${label}.json`)) as SendJson;
    const snap = (label: string | number): SnapJson => JSON.parse(file(`snap-${label}.json`)) as SnapJson;

    // --- the chain of vol: full, three rounds with a writer (the third alongside a send of vol2), and
    // the send after the killed one
    const sends = [0, 1, 2, 3, 4].map(String).map(sent);
    const chainId = sends[0]!.chainId;
    sends.forEach((s, i) => {
      expect(s).toMatchObject({ dryRun: false, managed: true, chain: 'default', sequence: i, chainId, full: i === 0, blockSize: CHUNK, poolChunkSize: CHUNK, warnings: [] });
      if (i > 0) {
        expect(s.parentId).toBe(sends[i - 1]!.archiveId);
        expect(s.base!.name).toBe(sends[i - 1]!.snapshot.name);
      }
      expect(s.snapshot.name).toBe(`vol_ta_default_${i}`);
      expect(snap(i).lv).toBe(s.snapshot.name);
    });
    // fstrim made discards: the incrementals unmap what was deleted
    for (const i of [1, 2, 3]) expect(sends[i]!.unmapBytes, `round ${i} unmap`).toBeGreaterThan(0);
    // the writer really was writing while the rounds' sends ran
    for (const r of [1, 2, 3]) {
      const [before, after] = file(`writer-${r}.txt`).split(' ').map(Number);
      expect(after! - before!, `writer progress during round ${r}`).toBeGreaterThan(0);
    }
    // each managed send removed the previous base
    for (const i of [1, 2, 3, 4]) expect(sends[i]!.removed).toContain(sends[i - 1]!.snapshot.name);

    // dry run (on the read-only remounted filesystem): the exact data bytes of the next send, nothing left behind
    const dry = sent('dry');
    expect(dry).toMatchObject({ dryRun: true, full: false, sequence: 4, parentId: sends[3]!.archiveId, archiveBytes: 0, removed: ['vol_ta_default_4'] });
    expect(dry.dataBytes).toBe(sends[4]!.dataBytes);
    expect(dry.unmapBytes).toBe(sends[4]!.unmapBytes);
    expect(dry.unmapBytes).toBeGreaterThan(0);
    expect(file('lvs-after-dry.txt')).toBe(file('lvs-before-dry.txt'));
    expect(file('held-after-dry.txt')).toBe('-');

    // two sends on one pool at once: both succeed, their metadata reservations do not overlap
    expect(file('both-rc.txt')).toBe('0 0');
    const holds = ['v2', '3'].map((l) => {
      const lines = file(`send-${l}.err`).split('\n').filter((x) => x.startsWith('{')).map((x) => JSON.parse(x) as { time: number; msg: string });
      const at = (msg: string): number => lines.find((x) => x.msg === msg)!.time;
      return [at('reserved the metadata snapshot'), at('released the metadata snapshot')] as const;
    });
    const [a, b] = [...holds].sort((x, y) => x[0] - y[0]);
    expect(a![1]).toBeLessThanOrEqual(b![0]);
    const v2 = sent('v2');
    expect(v2).toMatchObject({ full: true, sequence: 0, managed: true, snapshot: { name: 'vol2_ta_default_0' } });

    // SIGKILL mid-write: a pending snapshot and a temporary archive file, no metadata snapshot held;
    // the next send removes the stray and succeeds
    const killed = Object.fromEntries(file('killed.txt').split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1).trim()]));
    expect(killed['tmp'], 'the killed send had started writing its archive').toMatch(/\.tmp-/);
    expect(killed['held']).toBe('-');
    expect(killed['pending']).toBe('vol_ta_default_4');
    expect(killed['reservations']).toBe('');
    expect(sends[4]!.removed).toEqual(['vol_ta_default_4', 'vol_ta_default_3']);
    expect(file('lvs-after-kill.txt').split(' ')).toEqual([POOL, 'vol', 'vol2', 'vol2_ta_default_0', 'vol_ta_default_4']);

    // refused above the data threshold (POOL_CRITICAL), nothing created
    expect(file('refused-rc.txt'), file('refused.err')).toBe('4');
    expect(file('refused.err')).toMatch(/thin pool lab-vg\/thin-pool is critical: data usage is \d+\.\d\d%, \d+\.\d\d points above the critical threshold of 1% \(--max-data-percent\)/);
    expect(file('lvs-after-refused.txt')).toBe(file('lvs-after-kill.txt'));

    // killed between reserving the metadata snapshot and recording its root (made by hand): refused
    // while another program has the metadata device open, released by the next send once none has
    const [openRc, openHeld] = file('reserving-open.txt').split(' ');
    expect(openRc, file('reserving-open.err')).toBe('4');
    expect(openHeld).toMatch(/^\d+$/);
    expect(file('reserving-open.err')).toMatch(/died while reserving a metadata snapshot .* another process has the pool's metadata device open/);
    expect(file('reserving-closed.txt'), file('reserving-closed.err')).toBe('0 -');
    expect(file('reserving-closed.err')).toMatch(/was reserving/);

    expect(file('held-final.txt')).toBe('-');
    // the base's tags on the real LVM: ours, volume, chain, archive, sequence; read-only, not pending
    const finalLvs = Object.fromEntries(file('lvs-final-tags.txt').split('\n').map((l) => l.trim().split(/\s+/)).map(([n, attr, tags]) => [n, { attr, tags: (tags ?? '').split(',') }]));
    const baseTags = finalLvs['vol_ta_default_4']!;
    expect(baseTags.attr).toMatch(/^Vri---t/);
    expect(baseTags.tags).toEqual(expect.arrayContaining([
      'thinarchive', `ta_origin_${sends[4]!.volume.lvUuid}`, 'ta_chain_default', `ta_chainid_${chainId}`, `ta_archive_${sends[4]!.archiveId}`, 'ta_seq_4',
    ]));
    expect(baseTags.tags.filter((t) => t.startsWith('ta_time_'))).toHaveLength(1);
    expect(baseTags.tags).not.toContain('ta_pending');
    expect(baseTags.tags).toHaveLength(7);

    // --- on the host: apply each chain archive by archive; compare with the snapshots
    const env = { ...process.env, THINARCHIVE_DIST: build.dir };
    const ta = (...args: string[]): string => execFileSync(process.execPath, [launcher, ...args], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const rows: string[] = [];
    const check = async (image: string, archives: SendJson[], snaps: SnapJson[], fs: boolean): Promise<void> => {
      for (const [i, s] of archives.entries()) {
        ta('apply', s.path!, '--to', image, ...(i === 0 ? ['--create'] : []), '--json');
        const want = snaps[i]!;
        expect(await sha256File(image), `${image} after archive ${i} vs snapshot ${want.lv}`).toBe(want.sha256);
        const allocated = statSync(image).blocks * 512;
        const mapped = Math.round((want.dataPercent / 100) * want.size);
        let fsck = '';
        if (fs) {
          const copy = `${image}.fsck`;
          execFileSync('cp', ['--sparse=always', image, copy]);
          const r = spawnSync('fsck.ext4', ['-n', '-f', copy], { encoding: 'utf8' });
          rmSync(copy);
          expect(r.status, `fsck.ext4 -n after archive ${i}:\n${r.stdout}${r.stderr}`).toBe(0);
          fsck = r.stdout.trim().split('\n').at(-1)!;
        }
        // The image holds the mapped blocks minus those that are all zeroes (holes in the image).
        expect(allocated, `allocated vs mapped after archive ${i}`).toBeLessThanOrEqual(mapped + 2 * CHUNK);
        expect(allocated, `allocated vs mapped after archive ${i}`).toBeGreaterThanOrEqual(mapped * 0.9);
        rows.push(`${relative(host, image)} seq ${i}: sha256 ok; data ${s.dataBytes} unmap ${s.unmapBytes} archive ${s.archiveBytes} in ${s.seconds.toFixed(2)} s; `
          + `allocated ${allocated} mapped ${mapped} (${((100 * allocated) / mapped).toFixed(1)}%)${fsck ? `; fsck: ${fsck}` : ''}`);
      }
    };
    await check(join(host, 'vol.img'), sends, sends.map((_, i) => snap(i)), true);
    await check(join(host, 'vol2.img'), [v2], [snap('v2')], false);

    console.log([
      `send-lv lab: CLI from ${build.how} (${(tBuild / 1000).toFixed(1)} s); boot ${(run.bootMs / 1000).toFixed(2)} s, guest run ${(run.durationMs / 1000).toFixed(1)} s, `
        + `host checks ${((performance.now() - t0 - tBuild - tLab) / 1000).toFixed(1)} s`,
      `dry run: ${dry.dataBytes} data bytes, ${dry.unmapBytes} unmap; next send ${sends[4]!.dataBytes}, ${sends[4]!.unmapBytes}`,
      `refused: ${file('refused.err')}`,
      `fstrim: ${[1, 2, 3].map((r) => file(`fstrim-${r}.txt`)).join('; ')}`,
      ...rows,
    ].join('\n'));
  }, 510_000 + LAB_SLOT_WAIT_MS);
});
