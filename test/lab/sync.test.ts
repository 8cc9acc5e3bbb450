// `thinarchive sync` (resync by hashes, docs/SYNC.md) in the thin-LVM lab, in ONE boot: a thin LV
// source (only its mapped blocks read) synced over ssh (a private sshd on the guest's loopback,
// `sync-target` run there) into a stateless copy in a thin LV of another VG with 1% of its blocks
// changed, sending about 1% of the volume; then an ordinary `send VG/LV --apply-remote` incremental
// continues from the resync point; the replica verified over ssh against the base snapshot by the same
// hash exchange (verify VG/LV --against TARGET --host); a plain loop device source (every block read)
// synced to an image.
// The guest side is test/lab/sync-guest.sh.
import { resolve, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cliBuild } from './cli-build.js';
import { removeHostTempDirs } from './host-files.js';
import { LAB_SLOT_WAIT_MS, labLeftovers, labPoolSetup, parseResults, requireLab, runInLab } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');
const MiB = 1024 * 1024;
const BS = 64 * 1024;

afterAll(removeHostTempDirs);

describe('sync in the thin-LVM lab', () => {
  it('resyncs a thin LV over ssh reading only mapped blocks and sending ~1%, continues with an ordinary incremental; a loop device source too', async (ctx) => {
    await requireLab(ctx);
    const build = cliBuild('thinarchive-lab-sync');
    const run = await runInLab({
      script: `${labPoolSetup({ vg: 'vg', pool: 'pool', poolSize: '600M', chunk: '64k' })}\n. "$GUEST_SH"\n`,
      disks: [{ sizeBytes: 1024 ** 3 }, { sizeBytes: 1024 ** 3 }],
      memMB: 768,
      env: { GUEST_SH: join(ROOT, 'test', 'lab', 'sync-guest.sh'), TA_LAUNCHER: join(ROOT, 'test', 'lab', 'send-lv-cli.mjs'), THINARCHIVE_DIST: build.dir, VG: 'vg', POOL: 'pool' },
      timeoutMs: 1_500_000, // a safety net: 11-12 min on the CI machine
    });
    const F = run.files;
    const R = parseResults(F['results.tsv'] ?? '');
    const diag = (): string => `${run.output.slice(-3000)}\n${JSON.stringify(R, null, 1)}\n${Object.entries(F).filter(([k]) => k.endsWith('.err')).map(([k, v]) => `${k}: ${v}`).join('\n')}`;
    const times = Object.fromEntries(Object.entries(R).filter(([k]) => k.startsWith('t_')).map(([k, v]) => [k.slice(2), Number(v)]));
    console.log(`sync lab: boot ${(run.bootMs / 1000).toFixed(1)} s, guest ${(run.durationMs / 1000).toFixed(1)} s, waited ${(run.waitMs / 1000).toFixed(1)} s; timeline (ms) ${JSON.stringify(times)}`);
    expect(run.exitCode, diag()).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);

    // A. thin LV source over ssh
    expect(R['rc_a_sync'], diag()).toBe('0');
    const a = JSON.parse(F['a_sync.out']!);
    console.log('thin LV sync:', JSON.stringify({ sourceSide: a.sourceSide, targetSide: a.targetSide, bytesSent: a.bytesSent, bytesReceived: a.bytesReceived, dataBlocks: a.dataBlocks, unmapBlocks: a.unmapBlocks, seconds: a.seconds }));
    expect(R['a_tgt_sha_before']).not.toBe(R['a_src_sha']);
    expect(R['a_tgt_sha']).toBe(R['a_src_sha']);
    expect(a).toMatchObject({ sourceKind: 'lv', targetKind: 'lv', blockSize: BS, blocks: 4096, dataBlocks: 41, unmapBlocks: 1, sameBlocks: 4096 - 42 });
    // Only the mapped quarter was read at the source (and the 41 differing blocks again for the archive).
    expect(a.sourceSide.blocksHashed).toBe(1024);
    expect(a.sourceSide.bytesRead).toBe(64 * MiB + 41 * BS);
    expect(a.targetSide.bytesRead).toBe(256 * MiB);
    // About 1% of the volume sent (random data: incompressible), hashes for the rest.
    expect(a.archive.dataBytes).toBe(41 * BS);
    expect(a.bytesSent / (256 * MiB)).toBeGreaterThan(0.0099);
    expect(a.bytesSent / (256 * MiB)).toBeLessThan(0.011);
    expect(a.bytesReceived).toBeGreaterThanOrEqual(4096 * 8);
    expect(a.bytesReceived).toBeLessThan(4096 * 8 + 16384);
    // The target state tags name the resync archive; the source's new snapshot is the chain's base.
    expect(R['a_tags']).toContain(`ta_archive_${a.archive.archiveId}`);
    expect(a.lv).toMatchObject({ vg: 'vg', lv: 'vol', chain: 'default' });
    expect(R['a_snaps']).toContain(a.lv.snapshot);
    expect(R['a_snaps']).not.toContain('ta_pending');
    // The block written where the source is unmapped was discarded: the replica is as thin as the source.
    const dp = (s: string): number[] => s.trim().split(' ').map(Number);
    const [srcDp, tgtBefore] = dp(R['a_dp_before']!);
    const [, tgtAfter] = dp(R['a_dp_after']!);
    expect(tgtBefore).toBeGreaterThan(srcDp);
    expect(tgtAfter).toBeLessThanOrEqual(srcDp + 0.01);

    // The ordinary incremental from the resync point.
    expect(R['rc_a_send'], diag()).toBe('0');
    const inc = JSON.parse(F['a_send.out']!);
    expect(inc).toMatchObject({ full: false, sequence: 2, parentId: a.archive.archiveId, chainId: a.archive.chainId });
    expect(inc.remoteApply.result.state).toMatchObject({ sequence: 2 });
    expect(R['a_tgt_sha2']).toBe(R['a_src_sha2']);
    // A second sync of the equal pair sends nothing but frames; one base snapshot remains.
    expect(R['rc_a_sync2'], diag()).toBe('0');
    const a2 = JSON.parse(F['a_sync2.out']!);
    expect(a2).toMatchObject({ dataBlocks: 0, unmapBlocks: 0 });
    expect(a2.targetSide.previousState).toMatchObject({ status: 'clean', sequence: 2, chainId: a.archive.chainId });
    expect(a2.bytesSent).toBeLessThan(4096);
    expect(R['a_tgt_sha3']).toBe(R['a_src_sha2']);
    expect(R['a_snaps2']).toBe('1');

    // C. verify --host: full and sampled equal; two overwritten blocks found; no base, refused.
    expect(R['rc_c_full'], diag()).toBe('0');
    const cf = JSON.parse(F['c_full.out']!);
    console.log('replica verify over ssh:', JSON.stringify({ blocksChecked: cf.blocksChecked, sourceBytesRead: cf.sourceBytesRead, targetBytesRead: cf.targetBytesRead, bytesReceived: cf.bytesReceived, seconds: cf.seconds }));
    expect(cf).toMatchObject({ ok: true, volume: 'vg/vol', chain: 'default', targetKind: 'lv', mode: 'full', blocks: 4096, blocksChecked: 4096, mismatchedBlocks: 0, stateOk: true });
    expect(cf.snapshot).toBe(`vg/${a2.lv.snapshot}`);
    expect(cf.archiveId).toBe(a2.archive.archiveId);
    expect(cf.state).toMatchObject({ status: 'clean', archiveId: a2.archive.archiveId });
    expect(cf.sourceBytesRead).toBe(256 * MiB);
    expect(cf.bytesReceived).toBeGreaterThanOrEqual(4096 * 8);
    expect(cf.bytesReceived).toBeLessThan(4096 * 8 + 4096);
    expect(R['rc_c_sample'], diag()).toBe('0');
    const cs = JSON.parse(F['c_sample.out']!);
    expect(cs).toMatchObject({ ok: true, mode: 'sample', samplePercent: 10, seed: 7, mismatchedBlocks: 0 });
    expect(cs.blocksChecked).toBeGreaterThan(300);
    expect(cs.blocksChecked).toBeLessThan(520);
    expect(cs.sourceBytesRead).toBe(cs.blocksChecked * BS);
    expect(R['rc_c_bad'], diag()).toBe('3');
    const cb = JSON.parse(F['c_bad.out']!);
    expect(cb).toMatchObject({ ok: false, mismatchedBlocks: 2, stateOk: true });
    expect(cb.findings.map((f: { block: number }) => f.block)).toEqual([100, 3000]);
    expect(R['rc_c_bad_text'], diag()).toBe('3');
    expect(F['c_bad_text.out']).toMatch(/TARGET_MISMATCH \(BLOCK_HASH\): block 100 \(byte 6553600\): the snapshot has xxh64 [0-9a-f]{16}, the replica [0-9a-f]{16}/);
    expect(F['c_bad_text.out']).toMatch(/verification FAILED: 4096 of 4096 blocks checked/);
    expect(R['rc_c_nochain'], diag()).toBe('1');
    expect(F['c_nochain.err']!.trim()).toMatch(/^thinarchive: .*NO_BASE_SNAPSHOT|^thinarchive: vg\/vol has no base snapshot in chain other/);
    expect(F['c_nochain.err']!.trim().split('\n')).toHaveLength(1);
    // The base snapshot, inactive before, was activated for the comparison and deactivated after.
    expect(R['c_snap_active_before']).toBe('[]');
    expect(R['c_snap_active']).toBe('[]');

    // B. a plain loop device: every block read.
    expect(R['rc_b_sync'], diag()).toBe('0');
    const b = JSON.parse(F['b_sync.out']!);
    console.log('loop device sync:', JSON.stringify({ sourceSide: b.sourceSide, targetSide: b.targetSide, bytesSent: b.bytesSent, dataBlocks: b.dataBlocks, seconds: b.seconds }));
    expect(R['b_loop']).toMatch(/^\/dev\/loop\d+$/);
    expect(R['b_tgt_sha']).toBe(R['b_src_sha']);
    expect(b).toMatchObject({ sourceKind: 'blockdev', targetKind: 'image', dataBlocks: 10, unmapBlocks: 0, blocks: 1024 });
    expect(b.sourceSide.blocksHashed).toBe(1024);
    expect(b.sourceSide.bytesRead).toBe(64 * MiB + 10 * BS);
    expect(b.bytesSent / (64 * MiB)).toBeLessThan(0.011);
  }, LAB_SLOT_WAIT_MS + 600_000);
});
