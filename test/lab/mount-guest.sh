# Runs INSIDE the thin-LVM lab guest for test/lab/mount.test.ts (sourced by the harness's bash,
# -eE -o pipefail). An ext4 filesystem on a thin LV, mounted and written between sends: point 0 and
# point 2 are sent while it is mounted (their journals need recovery: the mount must use noload),
# point 1 while it is unmounted (clean: fsck -n must pass). Then each point is mounted with
# `thinarchive mount` (all three at once; the nbd module is loaded by mount itself), its files hashed,
# and unmounted;
# point 2 is mounted --writable, written, unmounted, and mounted again read-only.
# Results: $LAB_OUT/results.tsv (key TAB value) and $LAB_OUT/*.{out,err}.
# Env: TA_LAUNCHER, THINARCHIVE_DIST, VG, POOL, STORE, PSTORE (a partitioned volume), THINARCHIVE_STATE_DIR.
. "$(dirname "$GUEST_SH")/guest-lib.sh"
files() { (cd "$1" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum | tr '\n' ';'); }

lvcreate -y -V 128M -T "$VG/$POOL" -n vol > /dev/null
mkfs.ext4 -q "/dev/$VG/vol"
SRC=/run/src
mkdir -p $SRC /run/m
mount "/dev/$VG/vol" $SRC
# point 0: mounted
echo "point zero" > $SRC/a.txt
mkdir $SRC/dir && head -c 2000000 /dev/urandom > $SRC/dir/big.bin
sync
rec files_0 "$(files $SRC)"
ta send "$VG/vol" --to "$STORE" > "$OUT/send0.out" 2>&1
# point 1: unmounted (a clean filesystem)
echo "point one" > $SRC/a.txt
head -c 300000 /dev/urandom > $SRC/dir/one.bin
rm $SRC/dir/big.bin
rec files_1 "$(files $SRC)"
umount $SRC
ta send "$VG/vol" --to "$STORE" > "$OUT/send1.out" 2>&1
mount "/dev/$VG/vol" $SRC
# point 2: mounted again
echo "point two" > $SRC/b.txt
sync
rec files_2 "$(files $SRC)"
ta send "$VG/vol" --to "$STORE" > "$OUT/send2.out" 2>&1
umount $SRC
mark sends
rec archives_before "$(sha256sum "$STORE"/*/*.tna | cut -d' ' -f1 | tr '\n' ' ')"
rec nbd_loaded_before "$(test -e /sys/block/nbd0 && echo yes || echo no)"
# a kernel without the NBD client: a modprobe that fails (the module not loaded yet), one line naming the
# userland alternative, nothing mounted
mkdir -p /run/nomod /run/mx
printf '#!/bin/sh\necho "modprobe: FATAL: Module nbd not found" >&2\nexit 1\n' > /run/nomod/modprobe
chmod +x /run/nomod/modprobe
PATH="/run/nomod:$PATH" try mount_nonbd ta mount "$STORE" /run/mx --at 0
rec nonbd_mounted "$(grep -c ' /run/mx ' /proc/self/mounts || true)|$(pgrep -fc ' serve ' || true)"

# every point mounted at once (three devices, three servers)
for p in 0 1 2; do
  mkdir -p /run/m$p
  extra=; [ $p = 0 ] && extra="-o noatime"
  try mount_$p ta mount "$STORE" /run/m$p --at $p --json $extra
done
rec servers "$(pgrep -fc ' serve ' || true)"
for p in 0 1 2; do
  rec mounted_files_$p "$(files /run/m$p)"
  rec mountinfo_$p "$(grep " /run/m$p " /proc/self/mounts || true)"
  # a write to a read-only mount fails
  if touch /run/m$p/new 2> /dev/null; then rec ro_write_$p allowed; else rec ro_write_$p refused; fi
done
rec records "$(ls "$THINARCHIVE_STATE_DIR/mounts" | tr '\n' ' ')"
dev=$(sed -n 's/^  "mountedDevice": "\(.*\)",$/\1/p' "$OUT/mount_1.out")
try fsck_1 e2fsck -fn "$dev"
mark points
for p in 0 1 2; do try umount_$p ta umount /run/m$p; done
rec after_umount "$(grep -c ' /run/m[012] ' /proc/self/mounts || true) $(cat /sys/block/nbd0/size /sys/block/nbd1/size /sys/block/nbd2/size | tr '\n' ' ')$(ls "$THINARCHIVE_STATE_DIR/mounts" | wc -l) $(pgrep -fc ' serve ' || true)"
mark two
# --writable: written files are visible, the archives are not changed, and the next mount does not see them
try mount_w ta mount "$STORE" /run/m --at 2 --writable
echo "written through the overlay" > /run/m/w.txt
rm /run/m/a.txt
sync
rec w_read "$(cat /run/m/w.txt)"
rec w_mountinfo "$(grep ' /run/m ' /proc/self/mounts || true)"
try umount_w ta umount /run/m
try mount_r ta mount "$STORE" /run/m --at 2
rec r_files "$(files /run/m)"
try umount_r ta umount /run/m
rec archives_after "$(sha256sum "$STORE"/*/*.tna | cut -d' ' -f1 | tr '\n' ' ')"

mark writable
# refusals: not mounted by us; a bad point
try umount_none ta umount /run/m2
try mount_bad ta mount "$STORE" /run/m --at 9
rec left "$(ls -A "$THINARCHIVE_STATE_DIR/mounts" | tr '\n' ' ')|$(pgrep -fc ' serve ' || true)|$(cat /sys/block/nbd0/size /sys/block/nbd1/size | tr '\n' ' ')"

# a partitioned volume (PSTORE, made on the host)
try mount_p ta mount "$PSTORE" /run/m --partition 1 --json
rec p_read "$(cat /run/m/p.txt)"
try umount_p ta umount /run/m
try mount_whole ta mount "$PSTORE" /run/m
try mount_p9 ta mount "$PSTORE" /run/m --partition 9
rec p_left "$(ls -A "$THINARCHIVE_STATE_DIR/mounts" | tr '\n' ' ')|$(pgrep -fc ' serve ' || true)|$(cat /sys/block/nbd0/size /sys/block/nbd1/size | tr '\n' ' ')"

# xfs: sent while mounted; mounted read-only with norecovery (its log is never replayed), the files as sent
lvcreate -y -V 320M -T "$VG/$POOL" -n xvol > /dev/null
mkfs.xfs -q "/dev/$VG/xvol"
mkdir -p /run/xsrc
mount "/dev/$VG/xvol" /run/xsrc
head -c 500000 /dev/urandom > /run/xsrc/x.bin
echo "xfs point" > /run/xsrc/x.txt
sync
rec x_files "$(files /run/xsrc)"
ta send "$VG/xvol" --to "$LAB_WORK/xstore" > "$OUT/sendx.out" 2>&1
umount /run/xsrc
try mount_x ta mount "$LAB_WORK/xstore" /run/m --json
rec x_mounted_files "$(files /run/m)"
rec x_mountinfo "$(grep ' /run/m ' /proc/self/mounts || true)"
try umount_x ta umount /run/m
mark xfs
