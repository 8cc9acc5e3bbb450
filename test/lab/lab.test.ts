// One boot of the thin-LVM lab that exercises everything thinarchive relies on: a thin pool, a thin
// LV with ext4, two thin snapshots, lvs JSON, the pool's status line, a held metadata snapshot,
// thin_delta between the snapshots, activation of a snapshot with -K, and node reading it inside.
// If the lab cannot run here the test is skipped, except under CI where that is a failure.
import { describe, expect, it } from 'vitest';
import { LAB_SLOT_WAIT_MS, labLeftovers, labPoolSetup, requireLab, runInLab } from './lab.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

// Everything below runs inside the guest (bash -eE -o pipefail). Results go to $LAB_OUT.
const SCRIPT = String.raw`
${labPoolSetup({ vg: 'vg', pool: 'pool', disk: '/dev/ubda', poolSize: '3G', chunk: '64k' })}
lvcreate -y -V 4G -T vg/pool -n vol
test -b /dev/vg/vol
mkfs.ext4 -q -E nodiscard,lazy_itable_init=1 /dev/vg/vol
mkdir -p "$LAB_WORK/mnt"
mount -o nodiscard /dev/vg/vol "$LAB_WORK/mnt"
head -c $((4 * 1024 * 1024)) /dev/urandom > "$LAB_WORK/mnt/a"
echo hello > "$LAB_WORK/mnt/b"
sync
lvcreate -s -n snap1 vg/vol
# change the origin: overwrite 1 MiB in the middle of a (-> different), add c (-> right_only)
dd if=/dev/urandom of="$LAB_WORK/mnt/a" bs=1M seek=1 count=1 conv=notrunc status=none
head -c $((2 * 1024 * 1024)) /dev/urandom > "$LAB_WORK/mnt/c"
sync
lvcreate -s -n snap2 vg/vol
umount "$LAB_WORK/mnt"

lvm version > "$LAB_OUT/lvm-version.txt"
lvs --reportformat json --units b --nosuffix \
  -o lv_name,lv_uuid,thin_id,pool_lv,origin,lv_size,chunk_size,data_percent,metadata_percent,lv_attr,lv_tags vg \
  > "$LAB_OUT/lvs.json"
echo "--- lvs json"; cat "$LAB_OUT/lvs.json"

id1=$(lvs --noheadings -o thin_id vg/snap1 | tr -d ' ')
id2=$(lvs --noheadings -o thin_id vg/snap2 | tr -d ' ')
echo "snap1=$id1 snap2=$id2"

dmsetup status vg-pool-tpool > "$LAB_OUT/status-before.txt"
dmsetup message vg-pool-tpool 0 reserve_metadata_snap
dmsetup status vg-pool-tpool > "$LAB_OUT/status-held.txt"
thin_delta -m --snap1 "$id1" --snap2 "$id2" /dev/mapper/vg-pool_tmeta > "$LAB_OUT/delta.xml"
thin_dump -m --dev-id "$id2" /dev/mapper/vg-pool_tmeta > "$LAB_OUT/dump-snap2.xml"
dmsetup message vg-pool-tpool 0 release_metadata_snap
dmsetup status vg-pool-tpool > "$LAB_OUT/status-after.txt"
echo "--- dmsetup status"; cat "$LAB_OUT/status-before.txt" "$LAB_OUT/status-held.txt" "$LAB_OUT/status-after.txt"
echo "--- thin_delta"; cat "$LAB_OUT/delta.xml"

lvs --noheadings -o lv_attr vg/snap1 > "$LAB_OUT/snap1-attr-before.txt"
lvchange -ay -K vg/snap1
lvs --noheadings -o lv_attr vg/snap1 > "$LAB_OUT/snap1-attr-after.txt"
node -e '
  const fs = require("fs"), crypto = require("crypto");
  const fd = fs.openSync(process.argv[1], "r");
  const buf = Buffer.alloc(1 << 20);
  let off = 0;
  while (off < buf.length) { const n = fs.readSync(fd, buf, off, buf.length - off, off); if (n === 0) break; off += n; }
  console.log(off, crypto.createHash("sha256").update(buf.subarray(0, off)).digest("hex"));
' /dev/vg/snap1 > "$LAB_OUT/node-sha.txt"
head -c 1048576 /dev/vg/snap1 | sha256sum > "$LAB_OUT/shell-sha.txt"
echo "--- sha"; cat "$LAB_OUT/node-sha.txt" "$LAB_OUT/shell-sha.txt"
`;

interface LvsRow {
  lv_name: string;
  lv_uuid: string;
  thin_id: string | number;
  pool_lv: string;
  origin: string;
  lv_size: string | number;
  chunk_size: string | number;
  lv_attr: string;
}

/** `dmsetup status` of a thin-pool: field 6 (0-based) is the held metadata root. */
function heldRoot(statusLine: string): string {
  const f = statusLine.trim().split(/\s+/);
  expect(f[2]).toBe('thin-pool');
  return f[6]!;
}

describe('thin-LVM lab', () => {
  it('boots once and runs pool, snapshots, lvs, dmsetup, thin_delta and node inside', async (ctx) => {
    await requireLab(ctx);
    const t0 = performance.now();
    const run = await runInLab({ script: SCRIPT, disks: [{ sizeBytes: 4 * GiB }], timeoutMs: 600_000 });
    const total = performance.now() - t0;
    console.log(
      `lab timings: boot ${(run.bootMs / 1000).toFixed(2)} s, guest run ${(run.durationMs / 1000).toFixed(2)} s, ` +
        `runInLab total ${(total / 1000).toFixed(2)} s`,
    );
    if (run.exitCode !== 0) console.log(run.output, run.console);
    expect(run.exitCode, run.output).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);

    const f = run.files;
    console.log(f['lvm-version.txt']);
    console.log('lvs json:', f['lvs.json']);
    // lvs JSON: 2.03.16 prints every value as a string; json_std (2.03.17+) would print numbers.
    const lvs = JSON.parse(f['lvs.json']!) as { report: { lv: LvsRow[] }[] };
    const rows = lvs.report[0]!.lv;
    const byName = new Map(rows.map((r) => [r.lv_name, r]));
    expect([...byName.keys()].sort()).toEqual(['pool', 'snap1', 'snap2', 'vol']);
    const pool = byName.get('pool')!;
    const vol = byName.get('vol')!;
    const snap1 = byName.get('snap1')!;
    const snap2 = byName.get('snap2')!;
    expect(pool.lv_attr).toMatch(/^t/);
    expect(Number(pool.lv_size)).toBe(3 * GiB);
    expect(Number(pool.chunk_size)).toBe(64 * 1024);
    expect(vol.lv_attr).toMatch(/^V/);
    expect(vol.pool_lv).toBe('pool');
    expect(Number(vol.lv_size)).toBe(4 * GiB);
    for (const s of [snap1, snap2]) {
      expect(s.origin).toBe('vol');
      expect(s.lv_attr).toMatch(/^V.{8}k/); // activation-skip flag
      expect(s.lv_uuid).toMatch(/^[\w-]{38}$/);
    }
    const id1 = Number(snap1.thin_id);
    const id2 = Number(snap2.thin_id);
    expect(Number.isInteger(id1) && Number.isInteger(id2) && id1 !== id2).toBe(true);
    expect(run.output).toContain(`snap1=${id1} snap2=${id2}`);

    // dmsetup status: held root '-' before, a block number while held, '-' after release.
    console.log('dmsetup status:', f['status-before.txt']!.trim(), '|', f['status-held.txt']!.trim());
    expect(heldRoot(f['status-before.txt']!)).toBe('-');
    expect(heldRoot(f['status-held.txt']!)).toMatch(/^\d+$/);
    expect(heldRoot(f['status-after.txt']!)).toBe('-');

    // thin_delta: different (the overwritten MiB of a, fs metadata), right_only (the new file c).
    const delta = f['delta.xml']!;
    console.log('thin_delta:', delta);
    expect(delta).toMatch(/<superblock [^>]*data_block_size="128"/);
    expect(delta).toContain(`<diff left="${id1}" right="${id2}">`);
    expect(delta).toMatch(/<different begin="\d+" length="\d+"\/>/);
    expect(delta).toMatch(/<right_only begin="\d+" length="\d+"\/>/);
    expect(delta).not.toMatch(/<left_only /);
    const blocks = (kind: string): number =>
      [...delta.matchAll(new RegExp(`<${kind} begin="\\d+" length="(\\d+)"/>`, 'g'))].reduce((a, m) => a + Number(m[1]), 0);
    // >= 1 MiB overwritten and 2 MiB added, in 64 KiB blocks
    expect(blocks('different') + blocks('right_only')).toBeGreaterThanOrEqual(48);
    expect(blocks('right_only')).toBeGreaterThanOrEqual(32);
    expect(f['dump-snap2.xml']).toMatch(new RegExp(`<device dev_id="${id2}"`));

    // activation with -K, then node reads 1 MiB of the snapshot
    expect(f['snap1-attr-before.txt']!.trim()).toMatch(/^V...-/); // not active
    expect(f['snap1-attr-after.txt']!.trim()).toMatch(/^V...a/);
    const [nodeBytes, nodeSha] = f['node-sha.txt']!.trim().split(/\s+/);
    const shellSha = f['shell-sha.txt']!.trim().split(/\s+/)[0];
    expect(nodeBytes).toBe(String(MiB));
    expect(nodeSha).toMatch(/^[0-9a-f]{64}$/);
    expect(nodeSha).toBe(shellSha);
    // sha256 of 1 MiB of zeros: the snapshot must hold the ext4 superblock, not nothing
    expect(nodeSha).not.toBe('30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58');

    console.log(`lab test total ${((performance.now() - t0) / 1000).toFixed(2)} s`);
  }, 330_000 + LAB_SLOT_WAIT_MS);
});
