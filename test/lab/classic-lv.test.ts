// Classic (thick) LV sources in the lab, in ONE boot (guest side: test/lab/classic-guest.sh): a mounted
// ext4 classic LV with a writer running sent full and then three incrementals, each read from the
// base snapshot's copy-on-write exception table (only the changed chunks), the chain applied to an
// image equal to the base snapshot every time; a tracker that overflowed refused with
// TRACKER_OVERFLOW (exit 4) and recovered by `sync`, after which an ordinary incremental continues.
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cliBuild } from './cli-build.js';
import { removeHostTempDirs } from './host-files.js';
import { LAB_SLOT_WAIT_MS, labLeftovers, labPoolSetup, parseResults, requireLab, runInLab } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');
const BLOCKS = 1024; // 64 MiB of 64 KiB blocks

afterAll(removeHostTempDirs);

describe('classic LV sources in the lab', () => {
  it('sends a classic LV in use full and incrementally from its tracker; an overflowed tracker is refused and recovered by sync', async (ctx) => {
    await requireLab(ctx);
    const build = cliBuild('thinarchive-lab-classic');
    const run = await runInLab({
      script: `${labPoolSetup({ vg: 'vg', pool: 'pool', poolSize: '128M', chunk: '64k' })}\n. "$GUEST_SH"\n`,
      disks: [{ sizeBytes: 1024 ** 3 }],
      memMB: 512,
      env: { GUEST_SH: join(ROOT, 'test', 'lab', 'classic-guest.sh'), TA_LAUNCHER: join(ROOT, 'test', 'lab', 'send-lv-cli.mjs'), THINARCHIVE_DIST: build.dir, VG: 'vg' },
      timeoutMs: 900_000,
    });
    const F = run.files;
    const R = parseResults(F['results.tsv'] ?? '');
    const diag = (): string => `${run.output.slice(-3000)}\n${JSON.stringify(R, null, 1)}\n${Object.entries(F).filter(([k]) => k.endsWith('.err')).map(([k, v]) => `${k}: ${v}`).join('\n')}`;
    const times = Object.fromEntries(Object.entries(R).filter(([k]) => k.startsWith('t_')).map(([k, v]) => [k.slice(2), Number(v)]));
    console.log(`classic lab: boot ${(run.bootMs / 1000).toFixed(1)} s, guest ${(run.durationMs / 1000).toFixed(1)} s; timeline (ms) ${JSON.stringify(times)}`);
    expect(run.exitCode, diag()).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);

    // 1. full, then incrementals of what changed only; the image equals the base snapshot each time
    const sends = [0, 1, 2, 3].map((r) => {
      expect(R[`rc_send${r}`], diag()).toBe('0');
      expect(R[`rc_apply${r}`], diag()).toBe('0');
      return JSON.parse(F[`send${r}.out`]!);
    });
    console.log('classic sends:', JSON.stringify(sends.map((s) => ({ seq: s.sequence, full: s.full, data: s.dataBytes, zero: s.zeroBytes, archive: s.archiveBytes, seconds: s.seconds }))));
    for (const [r, s] of sends.entries()) {
      expect(s).toMatchObject({ sequence: r, full: r === 0, blockSize: 65536, volumeSize: BLOCKS * 65536, chainId: sends[0].chainId, pool: null, chain: 'default' });
      expect(s.snapshot.thinId).toBeNull();
      expect(R[`img_sha${r}`], `round ${r}: the image vs the base snapshot ${R[`base${r}`]}`).toBe(R[`base_sha${r}`]);
      // a read-only classic snapshot of thick; one snapshot of ours at a time
      expect(R[`attr${r}`]).toMatch(/^sr..a\S*\s+thick\s+/);
      expect(R[`ours${r}`]!.trim()).toBe(R[`base${r}`]);
    }
    // the full read every block; an incremental the chunks written since its base (2 MiB of files, the
    // writer's records and ext4's metadata), far less than the volume
    expect(sends[0].dataBytes + sends[0].zeroBytes).toBe(BLOCKS * 65536);
    for (const s of sends.slice(1)) {
      expect(s.dataBytes + s.zeroBytes).toBeGreaterThanOrEqual(2 << 20);
      expect(s.dataBytes + s.zeroBytes).toBeLessThan(BLOCKS * 65536 / 4);
    }

    // 2. the small tracker (one 4 MiB extent) overflowed: refused before anything is made
    expect(R['rc_small'], diag()).toBe('0');
    expect(R['rc_small_apply'], diag()).toBe('0');
    expect(R['small_cow']).toBe(String(4 << 20));
    expect(R['overflow_attr']).toMatch(/^s.{3}I/);
    expect(R['rc_refused'], diag()).toBe('4');
    expect(F['refused.err']!.trim().split('\n')).toHaveLength(1);
    expect(F['refused.err']).toMatch(/^thinarchive: .*overflowed.*thinarchive sync vg\/thick --to TARGET/);
    expect(R['ours_after_refusal']).toBe(R['ours_before_refusal']);
    // sync: only what differs sent, the image equal to the new tracker, which replaced the old one
    expect(R['rc_sync'], diag()).toBe('0');
    const sy = JSON.parse(F['sync.out']!);
    console.log('classic sync:', JSON.stringify({ sourceSide: sy.sourceSide, dataBlocks: sy.dataBlocks, sameBlocks: sy.sameBlocks, bytesSent: sy.bytesSent, seconds: sy.seconds }));
    expect(sy).toMatchObject({ sourceKind: 'lv', blockSize: 65536, blocks: BLOCKS, lv: { vg: 'vg', lv: 'thick', pool: null, chain: 'default' } });
    expect(sy.sourceSide.blocksHashed).toBe(BLOCKS);
    expect(sy.dataBlocks).toBeGreaterThanOrEqual(12 * 16);
    expect(sy.dataBlocks).toBeLessThan(BLOCKS / 2);
    expect(R['img_sha_before_sync']).not.toBe(R['sync_base_sha']);
    expect(R['sync_img_sha']).toBe(R['sync_base_sha']);
    expect(R['ours_after_sync']!.trim()).toBe(R['sync_base']);
    expect(R['sync_base']).toBe(sy.lv.snapshot);
    // an ordinary incremental continues from the resync point
    expect(R['rc_piped'], diag()).toBe('0');
    expect(R['piped_img_sha']).toBe(R['piped_base_sha']);
    expect(R['piped_base']).not.toBe(R['sync_base']);
    expect(R['ours_end']!.trim()).toBe(R['piped_base']);
  }, 960_000 + LAB_SLOT_WAIT_MS);
});
