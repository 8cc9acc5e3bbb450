# Runs INSIDE the thin-LVM lab guest for test/lab/apply-lv.test.ts (sourced by the harness's bash,
# with set -eE -o pipefail): the scenario. Results go to $LAB_OUT/results.tsv (key TAB value) and
# $LAB_OUT/*.{json,out,err,log,txt}; the assertions are in the test.
# Env: GUEST (apply-lv-guest.mjs), THINARCHIVE_DIST (the build: dist/ or cliBuild's),
# TA_LAUNCHER (send-lv-cli.mjs: the CLI of that build), LAB_WORK, LAB_OUT.
# Node starts slowly in the guest (~0.5 s bare, ~1.7 s for the CLI): processes are few on purpose.
TA() { node "$TA_LAUNCHER" "$@"; }
G() { node "$GUEST" "$@"; }
OUT=$LAB_OUT
STORE=$LAB_WORK/store
mkdir -p "$STORE" "$LAB_WORK/bad" /mnt/src /mnt/r
rec() { printf '%s\t%s\n' "$1" "$2" >> "$OUT/results.tsv"; }
T0=$(date +%s%N)
mark() { rec "t_$1" $(( ($(date +%s%N) - T0) / 1000000 )); }
tags() { lvs --noheadings -o lv_tags "$1" | tr -d ' '; }
shadev() { sha256sum "$1" | cut -d' ' -f1; }
# run a command that may fail: record its exit status, keep its output
try() { local k=$1; shift; local rc=0; "$@" > "$OUT/$k.out" 2> "$OUT/$k.err" || rc=$?; rec "rc_$k" "$rc"; }
w() { head -c "$2" /dev/urandom > "/mnt/src/$1"; }
snap() { # a read-only thin snapshot of the source, active (no activation skip); lvm freezes the filesystem for it
  sync
  lvcreate -s -pr -kn -n "$1" vg1/src > /dev/null
}
trim() { sync; fstrim /mnt/src; } # sync first: ext4 frees deleted blocks only after the journal commit

pvcreate -ff -y /dev/ubda /dev/ubdb > /dev/null
vgcreate vg1 /dev/ubda > /dev/null
vgcreate vg2 /dev/ubdb > /dev/null
lvcreate -y -T vg1/pool -L 512M --chunksize 64k -Zn > /dev/null
lvcreate -y -T vg2/pool -L 512M --chunksize 64k > /dev/null
lvcreate -y -V 64M -T vg1/pool -n src > /dev/null
rec pool_lvs "$(lvs --reportformat json -o lv_name,discards,zero,chunk_size vg2/pool | tr -d '\n ')"
mkfs.ext4 -q /dev/vg1/src
mount /dev/vg1/src /mnt/src
mark setup

# the source's history: s0 files; s1 added, changed, deleted; s2 most data deleted (UNMAP-heavy); s3 more
w a 12M; w b 4M; w c 2M
mkdir /mnt/src/small; for i in $(seq 1 60); do head -c 6000 /dev/urandom > /mnt/src/small/f$i; done
trim; snap s0
w d 6M
dd if=/dev/urandom of=/mnt/src/b bs=1M seek=1 count=2 conv=notrunc status=none
rm /mnt/src/c
trim; snap s1
rm /mnt/src/a /mnt/src/d
w e 1M
trim; snap s2
w f 3M
head -c 1M /dev/urandom >> /mnt/src/b
rm /mnt/src/small/f1*
trim; snap s3
umount /mnt/src
for i in 0 1 2 3; do rec sha_src_$i "$(shadev /dev/vg1/s$i)"; done
mark sources

G build vg1 pool "$STORE" s0 s1 s2 s3 > "$OUT/deltas.json"
ARCH=($(ls "$STORE"/*/*.tna | sort))
rec archives "${ARCH[*]}"
mark build

# apply archive by archive to a new thin LV in vg2, keeping 2 snapshots
for i in 0 1 2 3; do
  extra=()
  [ "$i" = 0 ] && extra=(--create --pool vg2/pool)
  rec dp_rep_before_$i "$(lvs --noheadings -o data_percent vg2/replica 2>/dev/null | tr -d ' ' || echo none)"
  THINARCHIVE_LOG=info TA apply "${ARCH[$i]}" --to vg2/replica "${extra[@]}" --snapshot-target --keep 2 --json > "$OUT/apply$i.json" 2> "$OUT/apply$i.log"
  rec sha_rep_$i "$(shadev /dev/vg2/replica)"
  rc=0; fsck.ext4 -n -f /dev/vg2/replica > "$OUT/fsck$i.txt" 2>&1 || rc=$?; rec fsck_$i "$rc"
  rec lvs_$i "$(lvs --noheadings --separator ';' -o lv_name,data_percent,lv_tags vg1/s$i vg2/replica | tr -d ' ' | tr '\n' ' ')"
  mark apply$i
done

# the kept target snapshots hold the source's points in time
rec snapshots "$(lvs --noheadings --separator ';' -o lv_name,lv_attr,origin,lv_tags -S 'lv_tags=ta_snap' vg2 | tr -d ' ' | tr '\n' ' ')"
for i in 2 3; do
  lvchange -ay -K vg2/replica_ta_$i > /dev/null
  rec sha_snap_$i "$(shadev /dev/vg2/replica_ta_$i)"
  lvchange -an vg2/replica_ta_$i > /dev/null
done
mark snapshots

# re-running is a no-op (on an inactive LV: activated, then deactivated again)
lvchange -an vg2/replica
rec seqno_before_rerun "$(vgs --noheadings -o vg_seqno vg2 | tr -d ' ')"
try rerun TA apply "$STORE" --to vg2/replica --snapshot-target --keep 2 --json
rec seqno_after_rerun "$(vgs --noheadings -o vg_seqno vg2 | tr -d ' ')"
rec tags_rerun "$(tags vg2/replica)"
rec active_after_rerun "$(lvs --noheadings -o lv_active vg2/replica | tr -d ' ')"
lvchange -ay vg2/replica
mark rerun

# refusals, a corrupt payload mid-apply, zeroing details: set up, then one process runs them
# (apply-lv-guest.mjs batch: the CLI's main() in-process)
try other0 TA apply "${ARCH[0]}" --to vg2/other --create --pool vg2/pool
mount -o ro,noload /dev/vg2/replica /mnt/r
lvcreate -y -V 64M -T vg2/pool -n held > /dev/null
# holds the LV open until killed (however long the batch takes on a slow machine)
sleep 100000 < /dev/vg2/held &
HOLDER=$!
lvcreate -y -V 32M -T vg2/pool -n small > /dev/null
lvcreate -y -T vg2/pool3 -L 64M --chunksize 256k -Zn > /dev/null
lvcreate -y -V 64M -T vg2/pool3 -n nz > /dev/null
lvcreate -y -V 64M -T vg2/pool -n zt > /dev/null
lvcreate -y -T vg2/pool2 -L 64M --chunksize 64k --discards ignore > /dev/null
lvcreate -y -V 32M -T vg2/pool2 -n zi > /dev/null
lvcreate -y -V 16M -T vg2/pool -n tc > /dev/null
rec pool2 "$(lvs --reportformat json -o lv_name,discards vg2/pool2 | tr -d '\n ') $(dmsetup status vg2-pool2-tpool)"
mark batch_setup
G batch "$STORE" "${ARCH[@]}" > "$OUT/batch.json"
umount /mnt/r
kill $HOLDER 2> /dev/null || true; wait $HOLDER || true
rec tags_corrupt "$(tags vg2/other)"
mark batch

# the good copy completes the interrupted archive
try recover TA apply "${ARCH[1]}" --to vg2/other --json
rec tags_recover "$(tags vg2/other)"
rec sha_other "$(shadev /dev/vg2/other)"
mark recover

# a thick LV with old data (default zeroing)
lvcreate -y -L 64M -n thick vg2 > /dev/null
dd if=/dev/urandom of=/dev/vg2/thick bs=1M count=8 status=none
try thick TA apply "${ARCH[0]}" --to vg2/thick --force --json
rec sha_thick "$(shadev /dev/vg2/thick)"
rec tags_thick "$(tags vg2/thick)"
mark end
