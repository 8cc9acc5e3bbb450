# Runs INSIDE the thin-LVM lab guest for test/lab/migrate.test.ts (sourced by the harness's bash,
# -eE -o pipefail). `thinarchive migrate` of a mounted ext4 thin LV with a writer running, to a second
# VG over ssh (a private sshd on the guest's loopback):
#  M1. converges: --pause stops the writer and syncs, the final round, --cutover; the source
#      and the target hashed right after (still paused): equal. Then the source is resumed.
#  M2. the final apply fails (the remote command fails once the pause has begun): --resume runs.
#  M3. a workload that never fits --max-downtime 1ms stops at --max-rounds 3; --pause never runs.
# Results: $LAB_OUT/results.tsv (key TAB value) and $LAB_OUT/*.{out,err}.
# Env: TA_LAUNCHER, THINARCHIVE_DIST, VG, POOL, WRITER_JS.
. "$(dirname "$GUEST_SH")/guest-lib.sh"
VG2=vg2

pvcreate -q -ff -y /dev/ubdb > /dev/null
vgcreate -q "$VG2" /dev/ubdb > /dev/null
lvcreate -q -y -T "$VG2/pool" -L 700M --chunksize 64k -Zn > /dev/null
. "$(dirname "$GUEST_SH")/guest-sshd.sh"
# The remote thinarchive fails (as a failing apply does) when /run/fail-final exists.
sed -i '/^exec node/i if [ -e /run/fail-final ]; then cat > /dev/null; echo "thinarchive: injected failure of the final apply" >&2; exit 1; fi' "$LAB_WORK/ta-remote"
REMOTE=(--apply-remote ssh://root@127.0.0.1:2222 --remote-command "$LAB_WORK/ta-remote")

# The source: ext4 on a thin LV, 24 MiB of files, mounted, a writer appending 128 KiB of random data
# and syncing every 0.25 s (about 0.5 MiB/s). The filesystem is mounted through a loop device over the
# LV, as a VM's disk is used by its hypervisor: the snapshots device-mapper takes do not freeze it (a
# filesystem mounted on the LV itself is frozen for each snapshot, and its unfreeze rewrites the
# superblock after the snapshot, so the live LV never equals a snapshot byte for byte).
modprobe loop
lvcreate -q -y -V 128M -T "$VG/$POOL" -n vm > /dev/null
DISK=$(losetup -f --show "/dev/$VG/vm")
mkfs.ext4 -q -E lazy_itable_init=1,lazy_journal_init=1 "$DISK"
mkdir -p /run/vm
mount -o noinit_itable "$DISK" /run/vm
head -c $((24 * 1024 * 1024)) /dev/urandom > /run/vm/base.bin
sync
# The writer (test/lab/daemon-lv-writer.mjs, one process): every second 4 KiB appended to base.bin.log
# and a random 64 KiB block of the first 4 MiB of base.bin rewritten, both synced.
node "$WRITER_JS" /run/stop-writers /run/vm/base.bin &
WRITER=$!
# The pause stops the writer (waiting until it is stopped: kill only sends the signal) and flushes the
# page cache, as suspending a VM stops its writes. Not fsfreeze: the final round's snapshot suspends
# the device, which fails on a frozen filesystem.
PAUSE="kill -STOP $WRITER; while ! grep -q '^State:.*stopped' /proc/$WRITER/status; do sleep 0.05; done; sync"
RESUME="kill -CONT $WRITER; touch /run/resumed"
writer_size() { stat -c %s /run/vm/base.bin.log; }
mark setup

# M1: converges (a round's fixed cost, node start, snapshot, ssh, the remote LVM commands, passed 60 s
# in the guest on the loaded 2-core CI machine, so 60 s never fitted: 300 s; the first incremental is
# always made and measured before the pause)
try m1 ta migrate "$VG/vm" "${REMOTE[@]}" --remote-to "$VG2/vm" --create --pool "$VG2/pool" --max-downtime 300s --max-rounds 8 \
  --pause "$PAUSE" --resume "$RESUME" --cutover "touch /run/cutover" --json "${SSHO[@]}"
mark m1
# still paused: the writer stopped
rec m1_src_sha "$(sha "/dev/$VG/vm")"
rec m1_tgt_sha "$(sha "/dev/$VG2/vm")"
rec m1_cmp "$(cmp -l "/dev/$VG/vm" "/dev/$VG2/vm" 2>&1 | head -3 | tr '\n' ' ')"
rec m1_cutover "$(test -e /run/cutover && echo yes || echo no)"
rec m1_resumed "$(test -e /run/resumed && echo yes || echo no)"
rec m1_writer_state "$(awk '{print $3}' /proc/$WRITER/stat)"
rec m1_snaps "$(lvs --noheadings -o lv_name "$VG" | grep -c _ta_ || true)"
kill -CONT $WRITER
sleep 1

# M2: the final apply fails: --resume runs, the writer goes on
try m2 ta migrate "$VG/vm" "${REMOTE[@]}" --remote-to "$VG2/vm2" --create --pool "$VG2/pool" --max-downtime 300s --max-rounds 8 \
  --pause "touch /run/fail-final; $PAUSE" --resume "$RESUME" --cutover "touch /run/cutover2" --json "${SSHO[@]}"
rm -f /run/fail-final
mark m2
rec m2_resumed "$(test -e /run/resumed && echo yes || echo no)"
rec m2_cutover "$(test -e /run/cutover2 && echo yes || echo no)"
s1=$(writer_size); sleep 1.5; s2=$(writer_size)
rec m2_writer_grows "$([ "$s2" -gt "$s1" ] && echo yes || echo no)"
rec m2_snaps "$(lvs --noheadings -o lv_name "$VG" | grep -c _ta_ || true)"

# M3: never fits: stops at --max-rounds 3, no pause
try m3 ta migrate "$VG/vm" "${REMOTE[@]}" --remote-to "$VG2/vm3" --create --pool "$VG2/pool" --max-downtime 1ms --max-rounds 3 \
  --pause "touch /run/paused3; $PAUSE" --resume "$RESUME" --json "${SSHO[@]}"
mark m3
rec m3_paused "$(test -e /run/paused3 && echo yes || echo no)"
rec m3_snaps "$(lvs --noheadings -o lv_name "$VG" | grep -c _ta_ || true)"
s1=$(writer_size); sleep 1; s2=$(writer_size)
rec m3_writer_grows "$([ "$s2" -gt "$s1" ] && echo yes || echo no)"
touch /run/stop-writers /run/stop-writers.raw
kill -CONT $WRITER 2> /dev/null || true   # (a scenario that failed may have left it stopped: never wait on it forever)
wait $WRITER 2> /dev/null || true
umount /run/vm
losetup -d "$DISK"
