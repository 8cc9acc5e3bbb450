// `apply ... --to VG/LV` against real thin pools, in ONE boot of the thin-LVM lab. Two VGs on two
// disks: vg1 holds a thin LV with ext4 and real files; vg2 an empty thin pool. Archives are made
// from read-only thin snapshots of the source with the image-based send (`send --image /dev/vg1/sN`,
// incrementals from a thin_delta captured through the lvm layer, so fstrim'ed blocks arrive as UNMAP)
// and applied to vg2/replica (--create --pool, --snapshot-target --keep 2) after each send. The guest
// runs the bash scenario apply-lv-guest.sh (helpers in apply-lv-guest.mjs; the refusals run the CLI's
// main() in one process there, as node starts slowly in the guest) and records what it saw in
// $LAB_OUT/results.tsv; the assertions are here.
// If the lab cannot run here the test is skipped, except under CI where that is a failure.
// The CLI and the helpers run dist/, or a fresh compile of src/ in a cache when dist/ is older
// (cliBuild: never a rebuild of dist/ itself, which other test files are running at the same time).
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cliBuild } from './cli-build.js';
import { LAB_SLOT_WAIT_MS, labLeftovers, parseResults, requireLab, runInLab } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');

const MiB = 1024 * 1024;
const VOL = 64 * MiB;

// The scenario is test/lab/apply-lv-guest.sh, sourced by the harness's bash.
const SCRIPT = '. "$GUEST_SH"\n';


describe('apply --to VG/LV in the thin-LVM lab', () => {
  it('replicates an ext4 thin LV chain into a thin LV in another VG: state tags, discards, snapshots, refusals, resume', async (ctx) => {
    await requireLab(ctx);
    const t0 = performance.now();
    const build = cliBuild('thinarchive-lab-apply-lv');
    const how = `CLI from ${build.how}`;
    const run = await runInLab({
      script: SCRIPT,
      disks: [{ sizeBytes: 2 * 1024 ** 3 }, { sizeBytes: 2 * 1024 ** 3 }],
      env: { GUEST: join(ROOT, 'test', 'lab', 'apply-lv-guest.mjs'), GUEST_SH: join(ROOT, 'test', 'lab', 'apply-lv-guest.sh'),
        THINARCHIVE_DIST: build.dir, TA_LAUNCHER: join(ROOT, 'test', 'lab', 'send-lv-cli.mjs') },
      // ~85 s on an idle 2-CPU host; user-mode Linux slows down a lot when the host is busy
      timeoutMs: 900_000, // 85-216 s measured; CI once needed more than 280 s
    });
    const total = performance.now() - t0;
    const F = run.files;
    const R = parseResults(F['results.tsv'] ?? '');
    console.log(`apply-lv lab: ${how}; boot ${(run.bootMs / 1000).toFixed(2)} s, guest ${(run.durationMs / 1000).toFixed(2)} s, total ${(total / 1000).toFixed(2)} s`);
    if (run.exitCode !== 0) console.log(run.output.slice(-6000), run.console.slice(-3000), R);
    expect(run.exitCode, run.output.slice(-4000)).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);
    const json = <T = Record<string, unknown>>(f: string): T => JSON.parse(F[f]!) as T;
    const times = Object.fromEntries(Object.entries(R).filter(([k]) => k.startsWith('t_')).map(([k, v]) => [k.slice(2), Number(v)]));
    console.log('guest timeline (ms since set-up start):', JSON.stringify(times));
    console.log('target pool:', R['pool_lvs']);
    console.log('thin_delta summaries (pool blocks):', F['deltas.json']!.trim());
    /** `lvs -o lv_name,data_percent,lv_tags vg1/sN vg2/replica` -> by name */
    const lvsAt = (i: number): Record<string, { dp: number; tags: string[] }> => Object.fromEntries(R[`lvs_${i}`]!.trim().split(' ').map((l) => {
      const [name, dp, tags] = l.split(';');
      return [name === 'replica' ? 'replica' : 'source', { dp: Number(dp), tags: (tags ?? '').split(',').filter(Boolean) }];
    }));

    // --- the chain, archive by archive
    interface SendRes { archiveId: string; sequence: number; dataBytes: number; unmapBytes: number; zeroBytes: number; archiveBytes: number }
    interface ApplyRes {
      applied: { sequence: number; dataBytes: number; zeroBytes: number; seconds: number }[];
      zeroing: Record<string, number>; lv: Record<string, unknown>;
      snapshots: { created: { name: string }[]; removed: string[]; kept: { name: string }[] };
    }
    const sends = [0, 1, 2, 3].map((i) => json<SendRes>(`send_s${i}.json`));
    const table: string[] = [];
    const gap: number[] = [];
    for (const i of [0, 1, 2, 3]) {
      const send = sends[i]!;
      const ap = json<ApplyRes>(`apply${i}.json`);
      const at = lvsAt(i);
      gap.push(at['source']!.dp - at['replica']!.dp);
      table.push(`#${i}: send ${(send.dataBytes / MiB).toFixed(2)} MiB data, ${(send.unmapBytes / MiB).toFixed(2)} MiB unmap, ${(send.zeroBytes / MiB).toFixed(2)} MiB zero; `
        + `apply ${ap.applied.map((a) => `${(a.dataBytes / MiB).toFixed(2)} MiB written, ${(a.zeroBytes / MiB).toFixed(2)} MiB zeroed, ${a.seconds.toFixed(2)} s`).join(', ')}; `
        + `zeroing ${JSON.stringify(ap.zeroing)}; data% source ${at['source']!.dp} replica ${R[`dp_rep_before_${i}`]} -> ${at['replica']!.dp}; fsck ${R[`fsck_${i}`]}; `
        + `snapshots +${ap.snapshots.created.map((s) => s.name).join(',')} -${ap.snapshots.removed.join(',') || 'none'}`);
      expect(send.sequence).toBe(i);
      expect(R[`sha_rep_${i}`], `sha256 of the replica after archive ${i}`).toBe(R[`sha_src_${i}`]);
      expect(R[`fsck_${i}`], F[`fsck${i}.txt`]).toBe('0');
      expect(ap.applied.map((a) => a.sequence)).toEqual([i]);
      expect(ap.lv).toMatchObject({ vg: 'vg2', lv: 'replica', thin: true, pool: 'pool', zeroing: 'discard', discardUnit: 65536, created: i === 0 });
      expect(ap.snapshots.created.map((s) => s.name)).toEqual([`replica_ta_${i}`]);
      expect(ap.snapshots.kept.map((s) => s.name)).toEqual(i === 0 ? ['replica_ta_0'] : [`replica_ta_${i}`, `replica_ta_${i - 1}`]);
      expect(ap.snapshots.removed).toEqual(i >= 2 ? [`replica_ta_${i - 2}`] : []);
      // the state tags: clean at archive i
      const tags = at['replica']!.tags;
      expect(tags).toEqual(expect.arrayContaining(['ta_fmt_1', 'ta_state_clean', `ta_seq_${i}`, `ta_archive_${send.archiveId}`, 'ta_bs_65536', `ta_size_${VOL}`, 'ta_created']));
      expect(tags.filter((t) => t.startsWith('ta_applying'))).toEqual([]);
      // only the replica's data is mapped: never more than the source, which also maps blocks of zeroes
      expect(at['replica']!.dp).toBeLessThanOrEqual(at['source']!.dp + 0.2);
      if (i === 0) expect(ap.zeroing).toEqual({ punched: 0, zeroedRange: 0, zeroedOut: 0, written: 0 }); // fresh LV: zeroing skipped
      else if (send.unmapBytes + send.zeroBytes > 0) expect(ap.zeroing['punched'], 'UNMAP ranges were discarded').toBe(send.unmapBytes + send.zeroBytes);
      if (i > 0) expect(ap.zeroing['written']).toBe(0);
    }
    console.log(table.join('\n'));
    // UNMAP really unmaps: the replica's mapped size follows the source's down. The gap between them
    // is blocks the source maps but holds zeroes in (ext4's journal, zeroed inode tables): it grows
    // only by what an archive carries as ZERO (mapped zeroes at the source, unmapped at the replica).
    expect(sends[2]!.unmapBytes, 'archive 2 is UNMAP-heavy').toBeGreaterThan(10 * MiB);
    const dropped = Number(R['dp_rep_before_2']) - lvsAt(2)['replica']!.dp;
    expect(dropped, 'replica data% drop on the UNMAP-heavy archive').toBeGreaterThan((0.8 * 100 * (sends[2]!.unmapBytes - sends[2]!.dataBytes)) / VOL);
    for (let i = 1; i < gap.length; i++) {
      const zeroPct = (100 * sends[i]!.zeroBytes) / VOL;
      expect(gap[i]! - gap[i - 1]!, `source - replica data%: ${gap.join(', ')}; archive ${i} ZERO ${zeroPct.toFixed(2)}%`).toBeLessThan(zeroPct + 1.5);
      expect(gap[i]! - gap[i - 1]!, `source - replica data%: ${gap.join(', ')}`).toBeGreaterThan(-1.5);
    }
    const log2 = F['apply2.log']!.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string });
    expect(log2.map((l) => l.msg)).toEqual(expect.arrayContaining(['zeroing on the thin LV: whole chunks discarded (unmapped), unaligned head/tail zeroed out', 'target snapshot taken', 'old target snapshot removed (--keep)']));

    // the kept snapshots: read-only thin snapshots of the replica, tagged, holding the source's points in time
    const snaps = R['snapshots']!.trim().split(' ').map((l) => l.split(';'));
    expect(snaps.map((s) => s[0]).sort()).toEqual(['replica_ta_2', 'replica_ta_3']);
    for (const s of snaps) {
      expect(s[1]).toMatch(/^Vri/);
      expect(s[2]).toBe('replica');
      expect(s[3]!.split(',')).toEqual(expect.arrayContaining(['ta_snap', `ta_seq_${s[0]!.slice(-1)}`, `ta_archive_${sends[Number(s[0]!.slice(-1))]!.archiveId}`]));
      expect(s[3]).toMatch(/ta_snapof_/);
    }
    expect(R['sha_snap_2']).toBe(R['sha_src_2']);
    expect(R['sha_snap_3']).toBe(R['sha_src_3']);

    // re-running: a no-op, no metadata change, the LV deactivated again
    expect(R['rc_rerun'], F['rerun.err']).toBe('0');
    expect(json<{ applied: unknown[]; skipped: string[] }>('rerun.out')).toMatchObject({ applied: [], skipped: sends.map((x) => x.archiveId) });
    expect(R['seqno_after_rerun']).toBe(R['seqno_before_rerun']);
    expect(R['tags_rerun']).toBe(lvsAt(3)['replica']!.tags.join(','));
    expect(R['active_after_rerun']).toBe('');

    // refusals: exit 4, one line
    const refused = (k: string, re: RegExp): void => {
      expect(R[`rc_${k}`], `${k}: ${F[`${k}.err`]}`).toBe('4');
      expect(F[`${k}.err`]!.trim().split('\n')).toHaveLength(1);
      expect(F[`${k}.err`]).toMatch(re);
    };
    refused('mounted', /in use \(mounted or held open exclusively\)/);
    // (3: the other holder, and this process's two descriptors, one of them O_DIRECT)
    refused('heldopen', /open elsewhere \(device-mapper open count 3, 2 of them this process's\)/);
    refused('small', new RegExp(`has ${32 * MiB} bytes, the volume needs ${VOL}: grow it`));
    refused('exists', /exists already/);
    refused('skipzero', /does not zero newly provisioned chunks/);
    refused('wrongstate', /the target holds archive .* \(sequence 0 of chain/);
    console.log('refusals:\n  ' + ['mounted', 'heldopen', 'small', 'exists', 'skipzero', 'wrongstate'].map((k) => F[`${k}.err`]!.trim()).join('\n  '));

    // a corrupt payload mid-apply leaves the applying state; the good copy completes it
    expect(R['rc_other0'], F['other0.err']).toBe('0');
    const batch = json<Record<string, Record<string, any>>>('batch.json');
    console.log('corrupt:', JSON.stringify(batch['corrupted']), '->', F['corrupt.err']!.trim());
    expect(R['rc_corrupt'], F['corrupt.err']).toBe('3');
    expect(F['corrupt.err']).toMatch(/PAYLOAD|hash|checksum|corrupt/i);
    const tc = R['tags_corrupt']!.split(',');
    const [a0, a1] = [sends[0]!.archiveId, sends[1]!.archiveId];
    expect(tc).toEqual(expect.arrayContaining(['ta_state_applying', `ta_applying_${a1}`, 'ta_applyingseq_1', `ta_archive_${a0}`, 'ta_seq_0', `ta_applyingparent_${a0}`]));
    expect(tc).not.toContain('ta_state_clean');
    expect(R['rc_recover'], F['recover.err']).toBe('0');
    expect(json<{ applied: { sequence: number }[] }>('recover.out').applied.map((a) => a.sequence)).toEqual([1]);
    expect(R['sha_other']).toBe(R['sha_src_1']);
    expect(R['tags_recover']).toMatch(/ta_state_clean/);
    expect(R['tags_recover']).not.toMatch(/ta_applying/);

    // thick LV: default zeroing (over old data), no snapshots
    expect(R['rc_thick'], F['thick.err']).toBe('0');
    const thick = json<{ lv: { thin: boolean; zeroing: string }; zeroing: Record<string, number> }>('thick.out');
    console.log('thick LV zeroing:', JSON.stringify(thick.zeroing));
    expect(thick.lv).toMatchObject({ thin: false, zeroing: 'default' });
    expect(R['sha_thick']).toBe(R['sha_src_0']);
    expect(R['tags_thick']).toMatch(/ta_state_clean/);

    // zeroing on a thin LV, in detail
    const { zerocheck: z, zeroignore: zi, tagcommit: tcm } = batch;
    console.log('zerocheck:', JSON.stringify({ ...z, log: undefined }), '\nzeroignore:', JSON.stringify(zi), '\npool2:', R['pool2'], '\ntagcommit:', JSON.stringify(tcm));
    expect(z['zeroedReadsZero']).toBe(true);
    expect([z['headKept'], z['middleKept'], z['tailKept']]).toEqual([true, true, true]);
    // 4 MiB discarded; the 52 KiB head, 4 KiB tail and an 8 KiB range inside one chunk zeroed out
    expect(z['stats']).toEqual({ punched: 4 * MiB, zeroedRange: 0, zeroedOut: 52 * 1024 + 4096 + 8192, written: 0 });
    expect(z['before'] - z['after']).toBeCloseTo(((4 * MiB) / (64 * MiB)) * 100, 1); // 4 MiB of 64 MiB unmapped
    expect(z['partialDiscard']).toEqual({ ok: true, stillOldData: true }); // why head and tail need BLKZEROOUT
    expect(zi['report']).toMatchObject({ zeroing: 'zeroout', noDiscardReason: 'pool vg2/pool2 has discards=ignore' });
    expect(zi['readsZero']).toBe(true);
    expect(zi['stats']).toMatchObject({ punched: 0, zeroedOut: 2 * MiB });
    expect(zi['after']).toBeGreaterThan(zi['before']); // zeroing out allocates
    expect(zi['directDiscard']).toBe('EOPNOTSUPP');
    expect((zi['log'] as { level: string; msg: string }[]).some((l) => l.level === 'warn' && /BLKZEROOUT/.test(l.msg))).toBe(true);
    // one metadata commit per state change, read back equal
    expect(tcm).toMatchObject({ before: null, seqnoSteps: [1, 1], back1Equal: true, back2Equal: true });
  }, 630_000 + LAB_SLOT_WAIT_MS);
});
