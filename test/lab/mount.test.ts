// `thinarchive mount` / `umount` in the thin-LVM lab (the guest kernel ships nbd.ko), in ONE boot: a
// chain of three points of an ext4 filesystem on a thin LV (two sent while mounted, one unmounted),
// all three points mounted at once through the kernel NBD client and their files compared with what
// the filesystem held at each point, fsck -n clean on the point sent unmounted, read-only mounts
// refusing writes, a partitioned volume (--partition), --writable writing into the overlay only (the
// archives' sha256 unchanged, the next mount does not see the writes), an xfs volume mounted with norecovery,
// a kernel without the NBD client (NBD_UNAVAILABLE), and umount leaving no mount, device, server or
// record behind. The guest side is test/lab/mount-guest.sh.
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runOk } from '../helpers/cli.js';
import { cliBuild } from './cli-build.js';
import { hostTempDir, removeHostTempDirs } from './host-files.js';
import { LAB_SLOT_WAIT_MS, labLeftovers, labPoolSetup, parseResults, requireLab, runInLab } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');
const VG = 'vg';
const POOL = 'pool';

afterAll(removeHostTempDirs);

describe('mount and umount in the thin-LVM lab', () => {
  it('mounts every point of a chain of an ext4 thin LV read-only (noload), --writable into the overlay, an xfs one (norecovery), and umount undoes it all', async (ctx) => {
    await requireLab(ctx);
    const build = cliBuild('thinarchive-lab-mount');
    const host = await hostTempDir('ta-lab-mount-');
    const store = join(host, 'store');
    mkdirSync(store);
    // A partitioned volume, made on the host: an MBR with one Linux partition at 1 MiB holding ext4.
    const disk = join(host, 'disk.img');
    const fsImg = join(host, 'fs.img');
    mkdirSync(join(host, 'fs'));
    writeFileSync(join(host, 'fs', 'p.txt'), 'inside partition one\n');
    writeFileSync(fsImg, '');
    execFileSync('truncate', ['-s', '20M', fsImg]);
    execFileSync('mkfs.ext4', ['-q', '-d', join(host, 'fs'), fsImg]);
    execFileSync('truncate', ['-s', '40M', disk]);
    const mbr = Buffer.alloc(512);
    mbr[446 + 4] = 0x83; // type: Linux
    mbr.writeUInt32LE(2048, 446 + 8); // first sector
    mbr.writeUInt32LE(40960, 446 + 12); // sectors
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    const fd = openSync(disk, 'r+');
    writeSync(fd, mbr, 0, 512, 0);
    writeSync(fd, readFileSync(fsImg), 0, 20 * 1024 * 1024, 2048 * 512);
    closeSync(fd);
    const pstore = join(host, 'pstore');
    await runOk(['send', '--image', disk, '--to', pstore]);
    const run = await runInLab({
      script: `${labPoolSetup({ vg: VG, pool: POOL, poolSize: '512M', chunk: '64k' })}\nexport THINARCHIVE_STATE_DIR="$LAB_WORK/state"\n. "$GUEST_SH"\n`,
      disks: [{ sizeBytes: 1024 ** 3 }],
      memMB: 768,
      env: {
        GUEST_SH: join(ROOT, 'test', 'lab', 'mount-guest.sh'), TA_LAUNCHER: join(ROOT, 'test', 'lab', 'send-lv-cli.mjs'), THINARCHIVE_DIST: build.dir,
        VG, POOL, STORE: store, PSTORE: pstore,
      },
      timeoutMs: 900_000, // 440 s on a loaded CI machine
    });
    const F = run.files;
    const R = parseResults(F['results.tsv'] ?? '');
    const diag = (): string => `${run.output.slice(-3000)}\n${JSON.stringify(R, null, 1)}\n${Object.entries(F).filter(([k]) => k.endsWith('.err')).map(([k, v]) => `${k}: ${v}`).join('\n')}`;
    const times = Object.fromEntries(Object.entries(R).filter(([k]) => k.startsWith('t_')).map(([k, v]) => [k.slice(2), Number(v)]));
    console.log(`mount lab: boot ${(run.bootMs / 1000).toFixed(1)} s, guest ${(run.durationMs / 1000).toFixed(1)} s, waited ${(run.waitMs / 1000).toFixed(1)} s; timeline (ms) ${JSON.stringify(times)}`);
    expect(run.exitCode, diag()).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);

    expect(R['nbd_loaded_before']).toBe('no'); // mount loaded the module itself
    // without the module (modprobe fails): NBD_UNAVAILABLE, exit 1, one line naming the userland way; nothing left
    expect(R['rc_mount_nonbd'], diag()).toBe('1');
    expect(F['mount_nonbd.err']).toMatch(/^thinarchive: this kernel has no NBD client \(modprobe nbd failed\); serve the point instead and use a userland client: .*nbdfuse.*\n$/);
    expect(R['nonbd_mounted']).toBe('0|0');
    for (const p of [0, 1, 2]) {
      expect(R[`rc_mount_${p}`], diag()).toBe('0');
      const rec = JSON.parse(F[`mount_${p}.out`]!) as { sequence: number; fsType: string; mountOptions: string; nbdDevice: string };
      // (point 0 is mounted with -o noatime: added to the read-only options)
      expect(rec).toMatchObject({ sequence: p, fsType: 'ext4', mountOptions: p === 0 ? 'ro,noload,noatime' : 'ro,noload', nbdDevice: `/dev/nbd${p}` });
      expect(R[`mounted_files_${p}`], `point ${p}`).toBe(R[`files_${p}`]);
      expect(R[`files_${p}`]).toMatch(/a\.txt/);
      expect(R[`mountinfo_${p}`]).toMatch(new RegExp(`^/dev/nbd${p} /run/m${p} ext4 ro,`));
      expect(R[`ro_write_${p}`]).toBe('refused');
      expect(R[`rc_umount_${p}`], diag()).toBe('0');
    }
    expect(R['servers']).toBe('3');
    expect(R['records']).toBe('%2Frun%2Fm0.json %2Frun%2Fm0.log %2Frun%2Fm1.json %2Frun%2Fm1.log %2Frun%2Fm2.json %2Frun%2Fm2.log ');
    // the points differ, as the filesystem did
    expect(new Set([R['files_0'], R['files_1'], R['files_2']]).size).toBe(3);
    expect(R['rc_fsck_1'], F['fsck_1.out']).toBe('0');
    // after umount: no mount, the devices disconnected (size 0), no record, no server
    expect(R['after_umount']).toBe('0 0 0 0 0 0');

    expect(R['rc_mount_w'], diag()).toBe('0');
    expect(R['w_read']).toBe('written through the overlay');
    expect(R['w_mountinfo']).toMatch(/ ext4 rw,/);
    expect(R['rc_umount_w']).toBe('0');
    expect(R['r_files']).toBe(R['files_2']); // the overlay was discarded
    expect(R['archives_after']).toBe(R['archives_before']);
    expect(R['archives_before']!.trim().split(' ')).toHaveLength(3);

    expect(R['rc_umount_none']).toBe('2');
    expect(F['umount_none.err']).toMatch(/^thinarchive: \/run\/m2 was not mounted by thinarchive mount/);
    expect(R['rc_mount_bad']).toBe('2');
    expect(F['mount_bad.err']).toMatch(/^thinarchive: no archive with sequence 9/);
    expect(R['left']).toBe('|0|0 0 ');

    // a partitioned volume: --partition 1 mounts the partition; the whole volume has no filesystem
    expect(R['rc_mount_p'], diag()).toBe('0');
    expect(JSON.parse(F['mount_p.out']!)).toMatchObject({ mountedDevice: '/dev/nbd0p1', fsType: 'ext4' });
    expect(R['p_read']).toBe('inside partition one');
    expect(R['rc_umount_p']).toBe('0');
    expect(R['rc_mount_whole']).toBe('1');
    expect(F['mount_whole.err']).toMatch(/^thinarchive: no filesystem found on \/dev\/nbd0 \(a partitioned volume\? use --partition N\)\n$/);
    expect(R['rc_mount_p9']).toBe('1');
    expect(F['mount_p9.err']).toMatch(/^thinarchive: the volume has no partition 9/);
    expect(R['p_left']).toBe('|0|0 0 ');

    // xfs: mounted read-only with norecovery, the files as they were when sent
    expect(R['rc_mount_x'], diag()).toBe('0');
    expect(JSON.parse(F['mount_x.out']!)).toMatchObject({ fsType: 'xfs', mountOptions: expect.stringMatching(/(^|,)ro,.*norecovery|norecovery.*(^|,)ro(,|$)/) });
    expect(R['x_mountinfo']).toMatch(/ xfs ro,.*norecovery/);
    expect(R['x_mounted_files']).toBe(R['x_files']);
    expect(R['x_files']).toMatch(/x\.txt/);
    expect(R['rc_umount_x']).toBe('0');
  }, LAB_SLOT_WAIT_MS + 480_000);
});
