// `send VG/LV` of a volume that grows and shrinks, applied to an LV target and to images; and
// `send VG/LV --to -` piped into `apply - --to IMAGE`. ONE boot of the thin-LVM lab runs
// test/lab/send-lv-resize-guest.sh; the assertions are here:
//   - every archive of the resized chain, applied to an image on the host archive by archive, gives
//     an image of the snapshot's size and sha256 (growth: the new area arrives; shrink: ranges
//     clamped; growth over an area cut off before: the area reads as the volume reads);
//   - the same chain applied in the guest to an LV target: a grown archive is refused until the
//     target is extended; then the target's first SIZE bytes equal the snapshot;
//   - a pipe chain (full + an incremental with a discard) gives an image equal to each snapshot.
// If the lab cannot run here the test is skipped, except under CI where that is a failure.
import { execFileSync } from 'node:child_process';
import { mkdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { SendLvResult } from '../../src/commands/send-lv.js';
import { cliBuild } from './cli-build.js';
import { hostTempDir, removeHostTempDirs, sha256File } from './host-files.js';
import { LAB_SLOT_WAIT_MS, labLeftovers, labPoolSetup, parseResults, requireLab, runInLab } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');
const MiB = 1024 * 1024;
const BLOCK = 65536;

// The host directories (stores, images) go when the file's tests end, passed or failed.
afterAll(removeHostTempDirs);

describe('send VG/LV: resized volumes, LV targets and pipes in the thin-LVM lab', () => {
  it('grow, shrink and grow again reach an image and an LV target intact; send --to - | apply - works', async (ctx) => {
    await requireLab(ctx);
    const t0 = performance.now();
    const build = cliBuild('thinarchive-lab-resize');
    const host = await hostTempDir('ta-lab-resize-');
    const store = join(host, 'store');
    const images = join(host, 'images');
    mkdirSync(store);
    mkdirSync(images);
    const launcher = join(ROOT, 'test', 'lab', 'send-lv-cli.mjs');
    const run = await runInLab({
      script: `${labPoolSetup({ poolSize: '512M', chunk: '64k' })}. "$GUEST_SH"\n`,
      disks: [{ sizeBytes: 1024 * MiB }, { sizeBytes: 512 * MiB }],
      env: {
        THINARCHIVE_DIST: build.dir, TA_LAUNCHER: launcher, GUEST_SH: join(ROOT, 'test', 'lab', 'send-lv-resize-guest.sh'),
        STORE: store, IMG_DIR: images, THINARCHIVE_STATE_DIR: join(host, 'state'),
      },
      timeoutMs: 900_000, // 120-240 s measured on a 2-core host at load 4-14; user-mode Linux slows down a lot on a loaded one
    });
    const tLab = performance.now() - t0;
    const F = run.files;
    const R = parseResults(F['results.tsv'] ?? '');
    if (run.exitCode !== 0) {
      const errs = Object.entries(F).filter(([k]) => k.endsWith('.err')).map(([k, v]) => `--- ${k}\n${v.slice(-2000)}`);
      console.log(run.output.slice(-4000), run.console.slice(-2000), R, errs.join('\n'));
    }
    expect(run.exitCode, run.output.slice(-4000)).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);
    const sent = (k: string): SendLvResult => JSON.parse(F[`send-${k}.json`]!) as SendLvResult;
    const rows: string[] = [];

    // --- the resized chain: sizes, what each incremental carries
    const sizes = [64, 96, 48, 80].map((m) => m * MiB);
    const sends = ['0', '1', '2', '3'].map(sent);
    sends.forEach((s, i) => {
      expect(s).toMatchObject({ full: i === 0, sequence: i, volumeSize: sizes[i], managed: true, warnings: [] });
      expect(Number(R[`size_${i}`]), `snapshot ${i} size`).toBe(sizes[i]);
      rows.push(`send ${i}: volume ${s.volumeSize / MiB} MiB, data ${s.dataBytes / MiB} MiB, unmap ${s.unmapBytes / MiB} MiB, archive ${s.archiveBytes} B`);
    });
    expect(sends[0]!.dataBytes).toBe((32 + 20 + 24) * BLOCK);
    // growth: the new area's data (30 + 6 blocks) and the changed 4 blocks, nothing else
    expect(sends[1]!.dataBytes).toBe((30 + 6 + 4) * BLOCK);
    // shrink: the 4 changed blocks; nothing past the new end (the cut-off data is not "unmapped" data of the volume)
    expect(sends[2]!.dataBytes).toBe(4 * BLOCK);
    // growth over the area cut off before (blocks 768-1279): lvreduce kept the pool's mappings, so the
    // volume reads its old data at 1000-1023 and 1100-1129 again, and 1200-1207 is new: all DATA; the
    // rest of the area UNMAP, whatever the target held there
    expect(sends[3]!.dataBytes).toBe((24 + 30 + 8) * BLOCK);
    expect(sends[3]!.unmapBytes).toBe((512 - 24 - 30 - 8) * BLOCK);

    // --- applied to an image on the host, archive by archive
    const env = { ...process.env, THINARCHIVE_DIST: build.dir };
    const ta = (...args: string[]): string => execFileSync(process.execPath, [launcher, ...args], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const image = join(images, 'vol.img');
    for (const [i, s] of sends.entries()) {
      ta('apply', s.path!, '--to', image, ...(i === 0 ? ['--create'] : []), '--json');
      expect(statSync(image).size, `image size after archive ${i}`).toBe(sizes[i]);
      expect(await sha256File(image), `image after archive ${i} vs snapshot ${i}`).toBe(R[`sha_${i}`]);
    }

    // --- applied to vg2/replica in the guest: archive 0 (--create), archive 1 refused on the 64 MiB LV,
    // then (extended to 96 MiB) archives 1-3 in one apply: its first 80 MiB equal snapshot 3
    expect(R['rc_apply-0'], F['apply-0.err']).toBe('0');
    expect(R['rsha_0'], 'vg2/replica after archive 0 vs snapshot 0').toBe(R['sha_0']);
    expect(R['rc_apply-1-small'], F['apply-1-small.err']).toBe('4');
    expect(F['apply-1-small.err']!.trim()).toMatch(new RegExp(`target vg2/replica has ${64 * MiB} bytes, the volume needs ${96 * MiB}: grow it`));
    expect(R['rc_apply-123'], F['apply-123.err']).toBe('0');
    const ap = JSON.parse(F['apply-123.out']!) as { applied: { sequence: number; dataBytes: number; zeroBytes: number }[] };
    expect(ap.applied.map((a) => a.sequence)).toEqual([1, 2, 3]);
    expect(R['rsize_3']).toBe(String(96 * MiB));
    expect(R['rsha_3'], 'the first 80 MiB of vg2/replica after archive 3 vs snapshot 3').toBe(R['sha_3']);
    rows.push(`LV target: ${ap.applied.map((a) => `archive ${a.sequence} wrote ${a.dataBytes / MiB} MiB, zeroed ${a.zeroBytes / MiB} MiB`).join('; ')}; `
      + 'sha256 of its first 80 MiB = snapshot 3');
    expect(R['replica_tags']).toMatch(new RegExp(`ta_seq_3.*ta_size_${80 * MiB}|ta_size_${80 * MiB}.*ta_seq_3`));

    // --- the pipe chain
    for (const i of [0, 1]) {
      expect(R[`pipe_rc_${i}`], `${F[`pipe-send-${i}.err`]}\n${F[`pipe-apply-${i}.err`]}`).toBe('0 0');
      const [sha, size] = R[`pipe_img_${i}`]!.split(' ');
      expect(Number(size)).toBe(32 * MiB);
      expect(sha, `pipe image after round ${i} vs snapshot`).toBe(R[`sha_pipe${i}`]);
      const ap = JSON.parse(F[`pipe-apply-${i}.out`]!) as { applied: { sequence: number; dataBytes: number; zeroBytes: number }[] };
      expect(ap.applied.map((a) => a.sequence)).toEqual([i]);
      rows.push(`pipe round ${i}: wrote ${ap.applied[0]!.dataBytes / MiB} MiB, zeroed ${ap.applied[0]!.zeroBytes / MiB} MiB; image sha256 = snapshot's`);
    }
    // the discard of round 1 arrived as zeroing
    expect(JSON.parse(F['pipe-apply-1.out']!).applied[0].zeroBytes).toBe(10 * BLOCK);
    expect(R['lvs_final']!.trim().split(' ')).toEqual(['pipe', 'pipe_ta_pipe_1', 'pool', 'vol', 'vol_ta_default_3']);

    console.log([
      `send-lv-resize lab: CLI from ${build.how}; boot ${(run.bootMs / 1000).toFixed(2)} s, guest ${(run.durationMs / 1000).toFixed(1)} s, `
        + `host checks ${((performance.now() - t0 - tLab) / 1000).toFixed(1)} s`,
      `guest timeline (ms): ${Object.entries(R).filter(([k]) => k.startsWith('t_')).map(([k, v]) => `${k.slice(2)} ${v}`).join(', ')}`,
      ...rows,
    ].join('\n'));
  }, 700_000 + LAB_SLOT_WAIT_MS);
});
