# Runs INSIDE the thin-LVM lab guest for test/lab/sync.test.ts (sourced by the harness's bash,
# -eE -o pipefail). `thinarchive sync` (docs/SYNC.md):
#  A. a thin LV source (vg/vol, 256 MiB, 64 MiB mapped in two runs) and a stateless copy in a thin LV of
#     a second VG (vg2/replica) with 1% of the volume's blocks changed and one block written where the
#     source is unmapped, synced over ssh (a private sshd on the guest's loopback, `sync-target` run
#     there); then an ordinary `send vg/vol --apply-remote` incremental continues from the resync point.
#  C. `verify vg/vol --against vg2/replica --host ssh://…`: the replica compared with the base snapshot by
#     the same hash exchange (`verify-target` there), full and sampled; then two replica blocks overwritten
#     behind thinarchive's back are found; a chain without a base snapshot is refused.
#  B. a plain loop device source (64 MiB, fully written) synced to a local image copy with 1% changed.
# Results: $LAB_OUT/results.tsv (key TAB value) and $LAB_OUT/*.{out,err}.
# Env: TA_LAUNCHER, THINARCHIVE_DIST, VG, POOL.
. "$(dirname "$GUEST_SH")/guest-lib.sh"
# one random 64 KiB block at block index $2 of device/file $1
scribble() { dd if=/dev/urandom of="$1" bs=64K count=1 seek="$2" conv=notrunc,fsync status=none; }
VG2=vg2

# --- the second VG and the "remote" host (sshd on loopback, a wrapper with the guest's environment) ---
pvcreate -q -ff -y /dev/ubdb > /dev/null
vgcreate -q "$VG2" /dev/ubdb > /dev/null
lvcreate -q -y -T "$VG2/pool" -L 600M --chunksize 64k -Zn > /dev/null
. "$(dirname "$GUEST_SH")/guest-sshd.sh"
REMOTE=(--apply-remote ssh://root@127.0.0.1:2222 --remote-command "$LAB_WORK/ta-remote")
mark setup

# --- A. thin LV source, thin LV target over ssh -----------------------------------------------------
lvcreate -q -y -V 256M -T "$VG/$POOL" -n vol > /dev/null
lvcreate -q -y -V 256M -T "$VG2/pool" -n replica > /dev/null
# 48 MiB at 0 and 16 MiB at 128 MiB: 64 MiB mapped (25%)
dd if=/dev/urandom of="/dev/$VG/vol" bs=1M count=48 conv=fsync status=none
dd if=/dev/urandom of="/dev/$VG/vol" bs=1M count=16 seek=128 conv=fsync status=none
# the copy, by the same ranges (the target stays thin), then 41 blocks (1% of 4096) changed in it
dd if="/dev/$VG/vol" of="/dev/$VG2/replica" bs=1M count=48 conv=fsync status=none
dd if="/dev/$VG/vol" of="/dev/$VG2/replica" bs=1M count=16 skip=128 seek=128 conv=fsync status=none
for i in $(seq 0 40); do b=$(( (i * 97) % 1024 )); [ $b -lt 768 ] || b=$(( 2048 + b - 768 )); scribble "/dev/$VG2/replica" $b; done
# one block where the source is unmapped (block 3500 = 218.75 MiB)
scribble "/dev/$VG2/replica" 3500
sync
rec a_src_sha "$(sha "/dev/$VG/vol")"
rec a_tgt_sha_before "$(sha "/dev/$VG2/replica")"
rec a_dp_before "$(lvs --noheadings -o data_percent "$VG/vol" "$VG2/replica" | tr -d ' ' | tr '\n' ' ')"
mark a_prepared
try a_sync ta sync "$VG/vol" "${REMOTE[@]}" --remote-to "$VG2/replica" --json "${SSHO[@]}"
mark a_synced
rec a_tgt_sha "$(sha "/dev/$VG2/replica")"
rec a_dp_after "$(lvs --noheadings -o data_percent "$VG/vol" "$VG2/replica" | tr -d ' ' | tr '\n' ' ')"
rec a_tags "$(lvs --noheadings -o lv_tags "$VG2/replica" | tr -d ' ')"
rec a_snaps "$(lvs --noheadings -o lv_name,lv_tags "$VG" | awk '$1 ~ /_ta_/ { print $1 "|" $2 }' | tr '\n' ' ')"
# an ordinary incremental continues from the resync point
dd if=/dev/urandom of="/dev/$VG/vol" bs=1M count=2 seek=60 conv=fsync status=none
try a_send ta send "$VG/vol" "${REMOTE[@]}" --remote-to "$VG2/replica" --json "${SSHO[@]}"
mark a_sent
rec a_src_sha2 "$(sha "/dev/$VG/vol")"
rec a_tgt_sha2 "$(sha "/dev/$VG2/replica")"
# a second sync of the equal pair: nothing but hashes and an empty archive
try a_sync2 ta sync "$VG/vol" "${REMOTE[@]}" --remote-to "$VG2/replica" --json "${SSHO[@]}"
rec a_tgt_sha3 "$(sha "/dev/$VG2/replica")"
rec a_snaps2 "$(lvs --noheadings -o lv_name "$VG" | grep -c _ta_ || true)"
mark a_done

# --- C. the replica verified over ssh against the base snapshot ---------------------------------------
rec c_snap_active_before "[$(lvs --noheadings -o lv_name,lv_active "$VG" | awk '$1 ~ /_ta_/ { print $2 }' | tr -d ' \n')]"
VR=(--against "$VG2/replica" --host ssh://root@127.0.0.1:2222 --remote-command "$LAB_WORK/ta-remote")
try c_full ta verify "$VG/vol" "${VR[@]}" --json "${SSHO[@]}"
try c_sample ta verify "$VG/vol" "${VR[@]}" --sample 10 --seed 7 --json "${SSHO[@]}"
scribble "/dev/$VG2/replica" 100
scribble "/dev/$VG2/replica" 3000
sync
try c_bad ta verify "$VG/vol" "${VR[@]}" --json "${SSHO[@]}"
try c_bad_text ta verify "$VG/vol" "${VR[@]}" "${SSHO[@]}"
try c_nochain ta verify "$VG/vol" "${VR[@]}" --chain other "${SSHO[@]}"
rec c_snap_active "[$(lvs --noheadings -o lv_name,lv_active "$VG" | awk '$1 ~ /_ta_/ { print $2 }' | tr -d ' \n')]"
mark c_done

# --- B. a plain loop device source, a local image target --------------------------------------------
modprobe loop
head -c $((64 * 1024 * 1024)) /dev/urandom > "$LAB_WORK/loop.img"
LOOP=$(losetup -f --show "$LAB_WORK/loop.img")
rec b_loop "$LOOP"
cp "$LAB_WORK/loop.img" "$LAB_WORK/copy.img"
for i in $(seq 0 9); do scribble "$LAB_WORK/copy.img" $(( (i * 101) % 1024 )); done
sync
try b_sync ta sync "$LOOP" --to "$LAB_WORK/copy.img" --json
rec b_src_sha "$(sha "$LOOP")"
rec b_tgt_sha "$(sha "$LAB_WORK/copy.img")"
losetup -d "$LOOP"
mark b_done
