# Runs INSIDE the thin-LVM lab guest for test/lab/send-lv-resize.test.ts (sourced by the harness's bash,
# -eE -o pipefail). One boot, three stories on real thin pools, all archives made by `send VG/LV`:
#   1. resize: vg/vol is sent (full), grown (lvextend) and written in the new area, sent, shrunk
#      (lvreduce), sent, grown again, sent. The chain goes to vg2/replica (an LV target in a second
#      VG): the full archive when it is sent (--create), the grown one is refused until the target
#      is extended, the rest in one apply at the end (node starts slowly in the guest: few processes).
#   2. pipe: `send vg/pipe --to - | apply - --to IMAGE`, a full and an incremental with a discard.
# Results: $LAB_OUT/results.tsv (key TAB value), send-*.json, apply-*.{out,err}; the host asserts.
# Env: TA_LAUNCHER (node script running the CLI from $THINARCHIVE_DIST), STORE, IMG_DIR,
# THINARCHIVE_STATE_DIR.

ta() { node "$TA_LAUNCHER" "$@"; }
rec() { printf '%s\t%s\n' "$1" "$2" >> "$LAB_OUT/results.tsv"; }
T0=$(date +%s%N)
mark() { rec "t_$1" $(( ($(date +%s%N) - T0) / 1000000 )); }
# put LV BLOCK COUNT: random data at 64 KiB block BLOCK of vg/LV
put() { dd if=/dev/urandom of="/dev/vg/$1" bs=64k seek="$2" count="$3" conv=notrunc,fsync status=none; }
size_of() { lvs --noheadings --units b --nosuffix -o lv_size "$1" | tr -d ' '; }
# hash_snap KEY LV: sha256 and size of a (possibly inactive) managed snapshot of vg
hash_snap() {
  lvchange -ay -K "vg/$2"
  rec "sha_$1" "$(sha256sum "/dev/vg/$2" | cut -d' ' -f1)"
  rec "size_$1" "$(size_of "vg/$2")"
  lvchange -an "vg/$2"
}
base_name() { lvs --noheadings -o lv_name,lv_tags vg | awk -v c="ta_chain_$1" '$2 ~ c && $2 !~ /ta_pending/ {print $1}'; }
# try KEY CMD...: run, keep stdout/stderr, record the exit status
try() { local k=$1; shift; local rc=0; "$@" > "$LAB_OUT/$k.out" 2> "$LAB_OUT/$k.err" || rc=$?; rec "rc_$k" "$rc"; }
# replica_hash KEY SIZE: sha256 of the first SIZE bytes of vg2/replica (it may be larger than the volume)
replica_hash() { rec "rsha_$1" "$(head -c "$2" /dev/vg2/replica | sha256sum | cut -d' ' -f1)"; rec "rsize_$1" "$(size_of vg2/replica)"; }

pvcreate -ff -y /dev/ubdb > /dev/null
vgcreate vg2 /dev/ubdb > /dev/null
lvcreate -q -y -T vg2/pool -L 256M --chunksize 64k > /dev/null
lvcreate -q -y -V 64M -T vg/pool -n vol > /dev/null
lvcreate -q -y -V 32M -T vg/pool -n pipe > /dev/null
mark setup

# ---- 1. resize. 64 MiB = blocks 0..1023 of 64 KiB.
put vol 0 32; put vol 500 20; put vol 1000 24
send() { THINARCHIVE_LOG=info ta send vg/vol --to "$STORE" --json > "$LAB_OUT/send-$1.json" 2> "$LAB_OUT/send-$1.err"; hash_snap "$1" "$(base_name default)"; }
send 0
try apply-0 ta apply "$STORE" --to vg2/replica --create --pool vg2/pool --json
replica_hash 0 "$(size_of vg/vol)"
mark full

# grown to 96 MiB (blocks ..1535): data in the new area, up to its last block, and a change in the old
lvextend -q -y -L 96M vg/vol > /dev/null
put vol 1100 30; put vol 1530 6; put vol 100 4
send 1
try apply-1-small ta apply "$STORE" --to vg2/replica --json    # the replica is 64 MiB: refused
lvextend -q -y -L 96M vg2/replica > /dev/null
mark grow

# shrunk to 48 MiB (blocks ..767): data at 1000.. and the whole grown area are cut off
lvreduce -q -f -L 48M vg/vol > /dev/null
put vol 10 4
send 2
mark shrink

# grown again to 80 MiB (blocks ..1279), over the area cut off before: only block 1200.. is written
# now; the rest of 768..1279 must read as the volume reads there (archive 1 put other data there
# on the replica; lvreduce keeps the pool's mappings past the new end)
lvextend -q -y -L 80M vg/vol > /dev/null
put vol 1200 8
send 3
try apply-123 ta apply "$STORE" --to vg2/replica --json
replica_hash 3 "$(size_of vg/vol)"
mark regrow
rec replica_tags "$(lvs --noheadings -o lv_tags vg2/replica | tr -d ' ')"

# ---- 2. pipe: send to stdout, applied from stdin, on chain "pipe"
put pipe 0 40; put pipe 300 10
pipe_round() {
  ( set +e
    THINARCHIVE_LOG=info ta send vg/pipe --chain pipe --to - 2> "$LAB_OUT/pipe-send-$1.err" \
      | ta apply - --to "$IMG_DIR/pipe.img" "${@:2}" --json > "$LAB_OUT/pipe-apply-$1.out" 2> "$LAB_OUT/pipe-apply-$1.err"
    echo "${PIPESTATUS[*]}" > "$LAB_OUT/pipe-rc-$1.txt" )
  rec "pipe_rc_$1" "$(cat "$LAB_OUT/pipe-rc-$1.txt")"
  hash_snap "pipe$1" "$(base_name pipe)"
  rec "pipe_img_$1" "$(sha256sum "$IMG_DIR/pipe.img" | cut -d' ' -f1) $(stat -c %s "$IMG_DIR/pipe.img")"
}
pipe_round 0 --create
put pipe 20 5; blkdiscard -o $((300 * 65536)) -l $((10 * 65536)) /dev/vg/pipe
pipe_round 1
mark pipe
rec lvs_final "$(lvs --noheadings -o lv_name vg | awk '{print $1}' | sort | tr '\n' ' ')"
