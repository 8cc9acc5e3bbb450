// Regenerates the real LVM outputs under fixtures/lvm/ (see fixtures/lvm/README.md) in one boot of
// the thin-LVM lab. Runs only on purpose:
//
//   THINARCHIVE_CAPTURE_LVM_FIXTURES=1 npx vitest run test/lab/lvm-fixtures.test.ts
//
// The unit tests of src/lvm/ read these files; regenerating them changes uuids, so the tests must
// not depend on values other than the ones the script below makes deterministic (names, sizes,
// block layout).
import { copyFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { labAvailable, labPoolSetup, runInLab } from './lab.js';

const FIXTURES = resolve(__dirname, '..', '..', 'fixtures', 'lvm');
const wanted = process.env['THINARCHIVE_CAPTURE_LVM_FIXTURES'] === '1';

// Deterministic layout, 64 KiB pool blocks (dd with oflag=direct writes whole blocks):
//   before snap1: blocks 0-3, 100, 1000-1009 of vol
//   then:         rewrite block 100, write 2000-2003, discard 1000-1004
//   snap2
const SCRIPT = String.raw`
${labPoolSetup({ vg: 'lab-vg', pool: 'thin-pool', poolSize: '1G', chunk: '64k' })}
VG=lab-vg; POOL=thin-pool; TPOOL=lab--vg-thin--pool-tpool; TMETA=/dev/mapper/lab--vg-thin--pool_tmeta
lvcreate -y -V 2G -T $VG/$POOL -n vol
w() { dd if=/dev/urandom of=/dev/$VG/vol bs=64k seek=$1 count=$2 oflag=direct status=none; }
w 0 4; w 100 1; w 1000 10
lvcreate -s -n snap1 --addtag thinarchive --addtag 'thinarchive:base=1' $VG/vol
w 100 1; w 2000 4
blkdiscard -o $((1000 * 65536)) -l $((5 * 65536)) /dev/$VG/vol
lvcreate -s -n snap2 $VG/vol

F=lv_name,vg_name,lv_uuid,thin_id,pool_lv,origin,lv_size,chunk_size,data_percent,metadata_percent,lv_attr,lv_tags,lv_active
lvm version > "$LAB_OUT/lvm-version.txt"
thin_delta -V > "$LAB_OUT/thin-tools-version.txt"
lvs --reportformat json --units b --nosuffix -o $F $VG > "$LAB_OUT/lvs.json"
lvs -a --reportformat json --units b --nosuffix -o $F $VG > "$LAB_OUT/lvs-all.json"
vgs --reportformat json --units b --nosuffix -o vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_attr,vg_tags > "$LAB_OUT/vgs.json"

# errors: stderr and exit code of commands that fail
cap() {
  local name=$1; shift
  printf '%s\n' "$@" > "$LAB_OUT/err-$name.argv"
  set +e; trap - ERR
  "$@" > "$LAB_OUT/err-$name.stdout" 2> "$LAB_OUT/err-$name.stderr"; echo $? > "$LAB_OUT/err-$name.rc"
  set -e
}
cap lvs-no-vg lvs --reportformat json --units b --nosuffix -o $F no-such-vg
cap dmsetup-status-no-dev dmsetup status no--such-pool-tpool
cap release-none dmsetup message $TPOOL 0 release_metadata_snap
cap delta-no-msnap thin_delta -m --snap1 2 --snap2 3 $TMETA

dmsetup status $TPOOL > "$LAB_OUT/status-idle.txt"
dmsetup message $TPOOL 0 reserve_metadata_snap
dmsetup status $TPOOL > "$LAB_OUT/status-held.txt"
cap reserve-twice dmsetup message $TPOOL 0 reserve_metadata_snap
id1=$(lvs --noheadings -o thin_id $VG/snap1 | tr -d ' ')
id2=$(lvs --noheadings -o thin_id $VG/snap2 | tr -d ' ')
echo "$id1 $id2" > "$LAB_OUT/snap-ids.txt"
thin_delta -m --snap1 $id1 --snap2 $id2 $TMETA > "$LAB_OUT/delta-snap1-snap2.xml"
thin_dump -m --dev-id $id1 $TMETA > "$LAB_OUT/dump-snap1.xml"
thin_dump -m --dev-id $id2 $TMETA > "$LAB_OUT/dump-snap2.xml"
thin_dump -m --dev-id 77 $TMETA > "$LAB_OUT/dump-unknown-dev.xml"
thin_dump -m $TMETA > "$LAB_OUT/dump-all.xml"
cap delta-unknown-dev thin_delta -m --snap1 77 --snap2 $id2 $TMETA
cap dump-live thin_dump --dev-id $id2 $TMETA
dmsetup message $TPOOL 0 release_metadata_snap

cap lvchange-ay-K-pr lvchange -ay -K -pr $VG/snap2
lvchange -pr $VG/snap1
cap lvchange-pr-again lvchange -pr $VG/snap1
lvchange -ay -K $VG/snap1
lvs --reportformat json --units b --nosuffix -o $F $VG/snap1 > "$LAB_OUT/lvs-snap1-active-ro.json"
cap lvcreate-exists lvcreate -s -n snap2 $VG/vol
cap lvremove-active-no-y lvremove $VG/snap1

# a pool that ran out of data space, in error_if_no_space mode
lvcreate -y -T $VG/small -L 8M --errorwhenfull y -Zn
lvcreate -y -V 64M -T $VG/small -n big
set +e; dd if=/dev/zero of=/dev/$VG/big bs=1M count=16 oflag=direct status=none; set -e
dmsetup status lab--vg-small-tpool > "$LAB_OUT/status-out-of-data-space.txt"
lvs --reportformat json --units b --nosuffix -o $F $VG/small > "$LAB_OUT/lvs-pool-full.json"
`;

describe.skipIf(!wanted)('capture fixtures/lvm (THINARCHIVE_CAPTURE_LVM_FIXTURES=1)', () => {
  it('boots the lab and saves real outputs', async () => {
    const avail = await labAvailable();
    if (!avail.ok) throw new Error(`lab not available: ${avail.reason}`);
    const out = await mkdtemp(join(tmpdir(), 'thinarchive-lvmfx-'));
    try {
      const run = await runInLab({ script: SCRIPT, disks: [{ sizeBytes: 4 * 1024 ** 3 }], outDir: out, timeoutMs: 170_000 });
      if (run.exitCode !== 0) console.log(run.output);
      expect(run.exitCode).toBe(0);
      // err-NAME.{argv,rc,stdout,stderr} -> one entry of errors.json; everything else as is.
      const errors: Record<string, { argv: string[]; exitCode: number; stdout: string; stderr: string }> = {};
      for (const name of (await readdir(out)).sort()) {
        const m = /^err-(.+)\.(argv|rc|stdout|stderr)$/.exec(name);
        if (!m) {
          await copyFile(join(out, name), join(FIXTURES, name));
          continue;
        }
        const e = (errors[m[1]!] ??= { argv: [], exitCode: -1, stdout: '', stderr: '' });
        const text = await readFile(join(out, name), 'utf8');
        if (m[2] === 'argv') e.argv = text.split('\n').filter((l) => l !== '');
        else if (m[2] === 'rc') e.exitCode = Number(text.trim());
        else e[m[2] as 'stdout' | 'stderr'] = text;
      }
      await writeFile(join(FIXTURES, 'errors.json'), `${JSON.stringify(errors, null, 2)}\n`);
      await writeFile(join(FIXTURES, 'capture-log.txt'), run.output);
      console.log(`captured ${Object.keys(run.files).length} outputs (${Object.keys(errors).length} failures in errors.json) into ${FIXTURES} in ${(run.durationMs / 1000).toFixed(1)} s`);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  }, 180_000);
});
