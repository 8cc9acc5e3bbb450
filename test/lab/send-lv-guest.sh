# Runs INSIDE the thin-LVM lab guest (see test/lab/send-lv.test.ts), sourced by the harness's bash
# (-eE -o pipefail). Drives the real CLI (`ta`) against a real thin pool: an ext4 filesystem on a thin
# LV, a full send, incrementals while a writer appends to the mounted origin (the last one at the same
# time as a send of another LV on the pool), a dry run, a send killed with SIGKILL and the send after
# it, and a refused send. Everything it observes goes to $LAB_OUT (send
# results as JSON, snapshot hashes and sizes, lvs / dmsetup state); the host applies and asserts.
#
# Env: TA_LAUNCHER (node script running the CLI), REPO, VG, POOL, STORE, STORE2, THINARCHIVE_STATE_DIR.

ta() { node "$TA_LAUNCHER" "$@"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
T0=$(now_ms)
timing() { echo "$1 $(( $(now_ms) - T0 ))" >> "$LAB_OUT/timings.txt"; }
TPOOL="$(echo "$VG" | sed 's/-/--/g')-$(echo "$POOL" | sed 's/-/--/g')-tpool"
MNT=/run/vol
held_root() { dmsetup status "$TPOOL" | awk '{print $7}'; }
lv_names() { lvs --noheadings -o lv_name "$VG" | awk '{print $1}' | sort | tr '\n' ' '; }
# the snapshot a send's JSON result names
snap_of() { sed -n '/^  "snapshot": {/,/}/s/^    "name": "\(.*\)",$/\1/p' "$LAB_OUT/send-$1.json"; }

# snapinfo LABEL LV: hash and size an inactive snapshot (activated read-only for the read), as JSON.
snapinfo() {
  local label=$1 lv=$2 sha
  lvchange -ay -K "$VG/$lv"
  sha=$(sha256sum "/dev/$VG/$lv" | cut -d' ' -f1)
  # (no process substitution: the guest has no /dev/fd)
  set -- $(lvs --noheadings --units b --nosuffix -o lv_size,data_percent,thin_id,lv_attr "$VG/$lv")
  lvchange -an "$VG/$lv"
  printf '{"label":"%s","lv":"%s","sha256":"%s","size":%s,"dataPercent":%s,"thinId":%s,"attr":"%s"}\n' \
    "$label" "$lv" "$sha" "$1" "$2" "$3" "$4" > "$LAB_OUT/snap-$label.json"
}

# send_vol LABEL [ARGS...]: `ta send $VG/vol --to $STORE --json`, result and log (info) kept
send_vol() {
  local label=$1; shift
  THINARCHIVE_LOG=info ta send "$VG/vol" --to "$STORE" --json "$@" > "$LAB_OUT/send-$label.json" 2> "$LAB_OUT/send-$label.err"
}

# A writer appending 4 KiB to a file on the mounted origin, each write synced, until stopped.
writer_start() {
  rm -f /run/writer-count /run/writer-count.tmp /run/stop-writer
  ( n=0; while [ ! -e /run/stop-writer ]; do
      dd if=/dev/urandom of="$MNT/live.bin" bs=4k count=1 oflag=append conv=notrunc,fsync status=none
      # written aside and renamed: a reader never sees the file truncated and empty
      n=$((n + 1)); echo "$n" > /run/writer-count.tmp; mv /run/writer-count.tmp /run/writer-count
      sleep 0.05
    done ) &
  WRITER=$!
  sleep 0.3
}
writer_count() { cat /run/writer-count 2> /dev/null || echo 0; }
writer_stop() { touch /run/stop-writer; wait "$WRITER"; }

# ---------------------------------------------------------------------------------------------
lvcreate -q -y -V 256M -T "$VG/$POOL" -n vol > /dev/null
lvcreate -q -y -V 32M -T "$VG/$POOL" -n vol2 > /dev/null
# Inode tables and journal are left unwritten (they read as zeroes on a thin LV) and the kernel is told
# not to zero them in the background: no write happens that the test does not make.
mkfs.ext4 -q -E lazy_itable_init=1,lazy_journal_init=1 "/dev/$VG/vol"
mkdir -p "$MNT"
mount -o noinit_itable "/dev/$VG/vol" "$MNT"
head -c $((20 * 1024 * 1024)) /dev/urandom > "$MNT/random.bin"
seq 1 1000000 > "$MNT/numbers.txt"
mkdir -p "$MNT/zoneinfo" "$MNT/src"
cp -r /usr/share/zoneinfo/Europe /usr/share/zoneinfo/Africa "$MNT/zoneinfo/"
cp -r "$REPO/src/." "$MNT/src/"
head -c $((12 * 1024 * 1024)) /dev/urandom > "$MNT/doomed.bin"
dd if=/dev/urandom of="/dev/$VG/vol2" bs=1M count=6 seek=8 status=none conv=fsync
sync
timing setup

send_vol 0
snapinfo 0 "$(snap_of 0)"
timing full

# Three rounds: add, change, delete, fstrim, sync; send while the writer appends to the origin. The
# third send runs at the same time as a send of vol2 (the same pool; vol2 goes to its own store).
for round in 1 2 3; do
  head -c $((3 * 1024 * 1024)) /dev/urandom > "$MNT/new-$round.bin"
  cp -r /usr/share/zoneinfo/Australia "$MNT/zoneinfo/Australia-$round"
  dd if=/dev/urandom of="$MNT/random.bin" bs=64k seek=$((round * 40)) count=16 conv=notrunc status=none
  echo "round $round" >> "$MNT/numbers.txt"
  case $round in
    1) rm "$MNT/doomed.bin" ;;
    2) rm "$MNT/new-1.bin"; rm -r "$MNT/zoneinfo/Africa" ;;
    3) rm "$MNT/new-2.bin"; rm -r "$MNT/zoneinfo/Australia-1" ;;
  esac
  sync  # commits the deletes: blocks freed in a running journal transaction are not trimmed yet
  fstrim -v "$MNT" > "$LAB_OUT/fstrim-$round.txt"
  sync
  writer_start
  before=$(writer_count)
  if [ "$round" = 3 ]; then
    THINARCHIVE_LOG=info ta send "$VG/vol2" --to "$STORE2" --json > "$LAB_OUT/send-v2.json" 2> "$LAB_OUT/send-v2.err" &
    V2=$!
    rc=0; send_vol "$round" || rc=$?
    rc2=0; wait "$V2" || rc2=$?
    echo "$rc $rc2" > "$LAB_OUT/both-rc.txt"
    [ "$rc" = 0 ]
  else
    send_vol "$round"
  fi
  after=$(writer_count)
  writer_stop
  echo "$before $after" > "$LAB_OUT/writer-$round.txt"
  snapinfo "$round" "$(snap_of "$round")"
  timing "round$round"
done
[ "$rc2" = 0 ] && snapinfo v2 "$(snap_of v2)"

# With the filesystem remounted read-only nothing writes to vol (a snapshot's freeze and thaw write
# to a read-write ext4), so a dry run must count exactly the data of the next send, and leave nothing
# behind. That next send is killed with SIGKILL while writing its archive; the one after it cleans
# up, succeeds, and sends what the dry run counted.
head -c $((24 * 1024 * 1024)) /dev/urandom > "$MNT/big.bin"
rm "$MNT/new-3.bin"
sync
fstrim "$MNT"
mount -o remount,ro "$MNT"
echo "$(lv_names)" > "$LAB_OUT/lvs-before-dry.txt"
send_vol dry --dry-run
echo "$(lv_names)" > "$LAB_OUT/lvs-after-dry.txt"
held_root > "$LAB_OUT/held-after-dry.txt"
timing dry
CHAIN=$(sed -n 's/^  "chainId": "\(.*\)",$/\1/p' "$LAB_OUT/send-0.json")
node "$TA_LAUNCHER" send "$VG/vol" --to "$STORE" > /dev/null 2>&1 &  # not `ta`: $! must be node itself
KPID=$!
got=
for _ in $(seq 1 1500); do
  got=$(find "$STORE/$CHAIN" -maxdepth 1 -name '.*.tmp-*' -size +1024k 2> /dev/null | head -1)
  [ -z "$got" ] && kill -0 "$KPID" 2> /dev/null || break
  sleep 0.01
done
kill -9 "$KPID" || true
wait "$KPID" || true
{
  echo "tmp=$got"
  echo "held=$(held_root)"
  echo "pending=$(lvs --noheadings -o lv_name,lv_tags "$VG" | awk '$2 ~ /ta_pending/ {print $1}' | tr '\n' ' ')"
  echo "reservations=$(ls "$THINARCHIVE_STATE_DIR/reservations" 2> /dev/null | tr '\n' ' ')"
} > "$LAB_OUT/killed.txt"
send_vol 4
mount -o remount,rw "$MNT"
echo "$(lv_names)" > "$LAB_OUT/lvs-after-kill.txt"
snapinfo 4 "$(snap_of 4)"
timing kill

# Refused (POOL_CRITICAL): the pool's data usage is above --max-data-percent; nothing is created.
rc=0; ta send "$VG/vol" --to "$STORE" --max-data-percent 1 2> "$LAB_OUT/refused.err" || rc=$?
echo "$rc" > "$LAB_OUT/refused-rc.txt"
echo "$(lv_names)" > "$LAB_OUT/lvs-after-refused.txt"
timing refused

# Killed between reserving the metadata snapshot and recording its root (made here by hand: the
# reservation record of a dead process in state "reserving", and the snapshot reserved). While another
# program has the metadata device open the next send refuses (exit 4); once nothing has it open, the
# next send releases the snapshot (almost surely the dead process's) and goes on. Dry runs: they
# reserve like a send and leave the chain as it is.
DMPOOL="$(echo "$VG" | sed 's/-/--/g')-$(echo "$POOL" | sed 's/-/--/g')"
mkdir -p "$THINARCHIVE_STATE_DIR/reservations"
printf '{"version":1,"vg":"%s","pool":"%s","state":"reserving","heldRoot":null,"pid":%s,"bootId":"%s","startTime":null,"time":"%s"}\n' \
  "$VG" "$POOL" "$(sh -c 'echo $$')" "$(cat /proc/sys/kernel/random/boot_id)" "$(date -u +%FT%TZ)" > "$THINARCHIVE_STATE_DIR/reservations/$DMPOOL.json"
dmsetup message "$TPOOL" 0 reserve_metadata_snap
exec 7< "/dev/mapper/${DMPOOL}_tmeta"
rc=0; ta send "$VG/vol" --to "$STORE" --dry-run > /dev/null 2> "$LAB_OUT/reserving-open.err" || rc=$?
exec 7<&-
echo "$rc $(held_root)" > "$LAB_OUT/reserving-open.txt"
rc=0; THINARCHIVE_LOG=warn ta send "$VG/vol" --to "$STORE" --dry-run > /dev/null 2> "$LAB_OUT/reserving-closed.err" || rc=$?
echo "$rc $(held_root) $(ls "$THINARCHIVE_STATE_DIR/reservations" | tr '\n' ' ')" > "$LAB_OUT/reserving-closed.txt"
timing reserving

lvs --noheadings -o lv_name,lv_attr,lv_tags "$VG" > "$LAB_OUT/lvs-final-tags.txt"
held_root > "$LAB_OUT/held-final.txt"
umount "$MNT"
