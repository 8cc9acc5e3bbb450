# Runs INSIDE the thin-LVM lab guest for test/lab/classic-lv.test.ts (sourced by the harness's bash,
# -eE -o pipefail). A classic (thick) LV as a source (source/classic.ts, docs/LVM.md section 10):
#  1. vg/thick, 64 MiB linear, ext4 mounted with a writer running: a full send to a store, then three
#     incrementals (each from the base snapshot's exception table); after each, the store's chain
#     applied to an image equals the base snapshot (sha256).
#  2. A tracker made small (--tracker-size 4M) and overflowed by 12 MiB of writes: the next send is
#     refused (TRACKER_OVERFLOW, exit 4, one line, nothing made); `sync vg/thick --to IMAGE` brings the
#     image up to date by hashes and leaves a new tracker; an ordinary incremental (send --to - | apply -)
#     continues from it.
# Results: $LAB_OUT/results.tsv (key TAB value) and $LAB_OUT/*.{out,err}.
# Env: TA_LAUNCHER, THINARCHIVE_DIST, VG.
. "$(dirname "$GUEST_SH")/guest-lib.sh"
# the chain's base snapshot of vg/thick (tagged ours, not pending)
base() { lvs --noheadings -o lv_name,lv_tags "$VG" | awk '$2 ~ /(^|,)thinarchive(,|$)/ && $2 !~ /ta_pending/ { print $1 }'; }
ours() { lvs --noheadings -o lv_name,lv_tags "$VG" | awk '$2 ~ /(^|,)thinarchive(,|$)/ { print $1 }' | tr '\n' ' '; }
STORE=$LAB_WORK/store
IMG=$LAB_WORK/replica.img
mkdir -p "$STORE" /mnt/thick

lvcreate -q -y -L 64M -n thick "$VG" > /dev/null
mkfs.ext4 -q -F "/dev/$VG/thick"
mount "/dev/$VG/thick" /mnt/thick
dd if=/dev/urandom of=/mnt/thick/seed bs=1M count=8 conv=fsync status=none
# the writer: a 64 KiB record appended and one rewritten in place, every 0.2 s
( i=0; while [ ! -e /run/stop-writer ]; do
    dd if=/dev/urandom of=/mnt/thick/log bs=64K count=1 seek=$(( i % 200 )) conv=notrunc,fsync status=none 2>/dev/null || true
    dd if=/dev/urandom of=/mnt/thick/seed bs=64K count=1 seek=$(( (i * 37) % 128 )) conv=notrunc,fsync status=none 2>/dev/null || true
    i=$((i + 1)); sleep 0.2
  done ) &
WRITER=$!
mark setup

# --- 1. full, then three incrementals with the writer running ---------------------------------------
for r in 0 1 2 3; do
  [ "$r" = 0 ] || dd if=/dev/urandom of="/mnt/thick/round$r" bs=1M count=2 conv=fsync status=none
  try "send$r" ta send "$VG/thick" --to "$STORE" --json
  try "apply$r" ta apply "$STORE" --to "$IMG" --create-if-missing --json
  b=$(base)
  rec "base$r" "$b"
  rec "base_sha$r" "$(sha "/dev/$VG/$b")"
  rec "img_sha$r" "$(sha "$IMG")"
  rec "attr$r" "$(lvs --noheadings -o lv_attr,origin,lv_size "$VG/$b" | tr -s ' ' | sed 's/^ //')"
  rec "ours$r" "$(ours)"
  mark "round$r"
done

# --- 2. a small tracker overflows: refused; sync recovers; an incremental continues -----------------
try small ta send "$VG/thick" --to "$STORE" --tracker-size 4M --json
try small_apply ta apply "$STORE" --to "$IMG" --json
rec small_cow "$(lvs --noheadings --units b --nosuffix -o lv_size "$VG/$(base)" | tr -d ' ')"
touch /run/stop-writer
wait "$WRITER" || true
dd if=/dev/urandom of=/mnt/thick/flood bs=1M count=12 conv=fsync status=none
sync
rec overflow_attr "$(lvs --noheadings -o lv_attr "$VG/$(base)" | tr -d ' ')"
rec ours_before_refusal "$(ours)"
try refused ta send "$VG/thick" --to "$STORE"
rec ours_after_refusal "$(ours)"
rec img_sha_before_sync "$(sha "$IMG")"
try sync ta sync "$VG/thick" --to "$IMG" --json
b=$(base)
rec sync_base "$b"
rec sync_base_sha "$(sha "/dev/$VG/$b")"
rec sync_img_sha "$(sha "$IMG")"
rec ours_after_sync "$(ours)"
dd if=/dev/urandom of=/mnt/thick/after bs=1M count=1 conv=fsync status=none
sync
try piped bash -c "node '$TA_LAUNCHER' send '$VG/thick' --to - | node '$TA_LAUNCHER' apply - --to '$IMG' --json"
b=$(base)
rec piped_base "$b"
rec piped_base_sha "$(sha "/dev/$VG/$b")"
rec piped_img_sha "$(sha "$IMG")"
rec ours_end "$(ours)"
mark end
umount /mnt/thick
