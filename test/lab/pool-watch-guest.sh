# Runs INSIDE the thin-LVM lab guest (see test/lab/pool-watch.test.ts), sourced by the harness's bash
# (-eE -o pipefail). Drives the real CLI (`ta`) against two real thin pools watched by a real dmeventd
# (autoextend configured but never reached): $POOL for data (filled past 80 % and 90 %, then freed by
# fstrim and lvremove), $MPOOL for metadata (a 2 MiB metadata area filled past its thresholds by
# snapshots whose origin is rewritten, then freed by lvremove; its levels are lowered to 30 % / 40 %
# in the configuration so that few snapshots do). Each `check` is recorded with the pool
# status lines read just before it and thin_dump of every base snapshot and its origin just after it;
# the host computes the expected perfdata and pinned bytes from those and asserts.
#
# A second daemon (pool_sample_every: 2s) watches $POOL through its data phase and records its
# pool_warning, pool_critical and pool_ok alerts by an exec hook in $LAB_OUT/events.txt.
#
# Env: TA_LAUNCHER, VG, POOL, MPOOL, STORE, THINARCHIVE_STATE_DIR.

ta() { node "$TA_LAUNCHER" "$@"; }
dm() { echo "$1" | sed 's/-/--/g'; }
TPOOL="$(dm "$VG")-$(dm "$POOL")-tpool"
TMPOOL="$(dm "$VG")-$(dm "$MPOOL")-tpool"
CFG="$LAB_WORK/thinarchive.yml"
FILL=/run/fill
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
T0=$(now_ms)
timing() { echo "$1 $(( $(now_ms) - T0 ))" >> "$LAB_OUT/timings.txt"; }
data_pct() { dmsetup status "$1" | awk '{ split($6, d, "/"); printf "%d\n", 100 * d[1] / d[2] }'; }
# MiB still to write into pool $1 (64 KiB chunks) for its data usage to pass $2 %
data_mib_to() { dmsetup status "$1" | awk -v p="$2" '{ split($6, d, "/"); n = int(d[2] * (p + 1) / 100) + 1 - d[1]; printf "%d\n", (n > 0 ? (n + 15) / 16 : 0) }'; }
meta_pct() { dmsetup status "$1" | awk '{ split($5, m, "/"); printf "%d\n", 100 * m[1] / m[2] }'; }

# lvm.conf of the guest plus monitoring and an autoextend policy that is armed but never reached.
mkdir -p "$LAB_WORK/lvmconf"
sed 's/monitoring = 0/monitoring = 1/' "$LVM_SYSTEM_DIR/lvm.conf" > "$LAB_WORK/lvmconf/lvm.conf"
printf 'activation {\n  thin_pool_autoextend_threshold = 99\n  thin_pool_autoextend_percent = 20\n}\n' >> "$LAB_WORK/lvmconf/lvm.conf"
export LVM_SYSTEM_DIR="$LAB_WORK/lvmconf"
dmeventd
ip link set lo up

pvcreate -q -ff -y /dev/ubda > /dev/null
vgcreate -q -s 1m "$VG" /dev/ubda > /dev/null
lvcreate -q -y -T "$VG/$POOL" -L 256M --chunksize 64k --poolmetadatasize 2M -Zn > /dev/null
lvcreate -q -y -T "$VG/$MPOOL" -L 256M --chunksize 64k --poolmetadatasize 2M -Zn > /dev/null
lvchange -q --errorwhenfull y "$VG/$POOL"
lvcreate -q -y -V 512M -T "$VG/$POOL" -n vol > /dev/null
lvcreate -q -y -V 512M -T "$VG/$MPOOL" -n mvol > /dev/null
dd if=/dev/urandom of="/dev/$VG/vol" bs=1M count=32 oflag=direct status=none
# 2048 chunks mapped in order: about 16 leaves of the mapping tree, each copied by one write after a snapshot
dd if=/dev/urandom of="/dev/$VG/mvol" bs=1M count=128 oflag=direct status=none
lvs --noheadings -o lv_name,seg_monitor,lv_when_full "$VG" > "$LAB_OUT/monitor.txt"

cat > "$CFG" <<EOF
state_dir: $THINARCHIVE_STATE_DIR
metrics: { listen: "127.0.0.1:9811" }
pools:
  default: { held_metadata_snapshot: 2s }
  "$VG/$MPOOL": { warn: { metadata: 30 }, crit: { metadata: 40 } }
jobs:
  - { name: j, volumes: [$VG/vol, $VG/mvol], every: 1h, to: "$STORE" }
EOF
timing setup

# dumps LABEL: thin_dump of each pool's base snapshot and its origin, under a metadata snapshot of our own
dumps() {
  local label=$1 pool tp ids
  lvs --noheadings --separator '|' -o lv_name,pool_lv,origin,thin_id,lv_tags "$VG" | sed 's/^ *//' > /run/lvs.txt
  for pool in "$POOL" "$MPOOL"; do
    tp="$(dm "$VG")-$(dm "$pool")-tpool"
    # the base (tagged thinarchive, not pending) and its origin: "BASE_ID ORIGIN_ID"
    ids=$(awk -F'|' -v p="$pool" '$2 == p && $5 ~ /(^|,)thinarchive(,|$)/ && $5 !~ /ta_pending/ { b = $4; o = $3 } { id[$1] = $4 } END { print b, id[o] }' /run/lvs.txt)
    dmsetup message "$tp" 0 reserve_metadata_snap
    thin_dump -m --dev-id "${ids% *}" "/dev/mapper/$(dm "$VG")-$(dm "$pool")_tmeta" > "$LAB_OUT/dump-$label-$pool-base.xml"
    thin_dump -m --dev-id "${ids#* }" "/dev/mapper/$(dm "$VG")-$(dm "$pool")_tmeta" > "$LAB_OUT/dump-$label-$pool-origin.xml"
    dmsetup message "$tp" 0 release_metadata_snap
  done
}

# check LABEL [ARGS...]: `ta check ARGS` with the pools' status before, its output, exit code and stderr
# (with --json among ARGS the output is the JSON report, whose `line` is what the plain check prints)
check() {
  local label=$1 rc=0; shift
  { dmsetup status "$TPOOL" 2> /dev/null || echo "-"; dmsetup status "$TMPOOL" 2> /dev/null || echo "-"; } > "$LAB_OUT/status-$label.txt"
  ta check "$@" > "$LAB_OUT/check-$label.out" 2> "$LAB_OUT/check-$label.err" || rc=$?
  echo "$rc" > "$LAB_OUT/check-$label.rc"
}

# --- a full send of both volumes makes the base snapshots; nothing pinned yet
ta run j --config "$CFG" > "$LAB_OUT/run0.out" 2>&1
check ok0 --config "$CFG" --json
dumps ok0
timing ok0

# --- the origin is rewritten (4 MiB), then more (8 MiB) and 1 MiB of it discarded: the base pins more
dd if=/dev/urandom of="/dev/$VG/vol" bs=64k count=64 seek=16 oflag=direct status=none
check pin1 --config "$CFG"
dumps pin1
dd if=/dev/urandom of="/dev/$VG/vol" bs=64k count=128 seek=200 oflag=direct status=none
blkdiscard -o $((64 * 1024 * 400)) -l $((1024 * 1024)) "/dev/$VG/vol"
check pin2 --config "$CFG"
dumps pin2
timing pinned

# --- autoextend not armed: dmeventd stops watching the pool
lvchange -q --monitor n "$VG/$POOL"
check unmonitored --config "$CFG"
lvchange -q --monitor y "$VG/$POOL"

# --- the daemon samples the pools at start: its gauges
node "$TA_LAUNCHER" daemon --config "$CFG" 2> "$LAB_OUT/daemon.err" &  # not `ta`: $! must be node itself
DAEMON=$!
got=0
for _ in $(seq 1 120); do
  if node -e 'fetch("http://127.0.0.1:9811/metrics").then(r => r.text()).then(t => { if (!/^thinarchive_pool_pinned_bytes\{pool="[^"]*mpool"\}/m.test(t)) process.exit(1); process.stdout.write(t); }, () => process.exit(1))' > "$LAB_OUT/metrics.txt" 2> /dev/null; then
    got=1; break
  fi
  sleep 0.5
done
kill -TERM "$DAEMON"
rc=0; wait "$DAEMON" || rc=$?
echo "$rc" > "$LAB_OUT/daemon.rc"
grep -c '"msg":"daemon stopped"' "$LAB_OUT/daemon.err" > "$LAB_OUT/daemon-stopped.txt" || true
echo "$got" > "$LAB_OUT/metrics-got.txt"
{ dmsetup status "$TPOOL"; dmsetup status "$TMPOOL"; } > "$LAB_OUT/status-metrics.txt"
timing daemon

# --- a second daemon watches $POOL through the data phase below, sampling every 2 s, its alerts to an
# exec hook that appends each event to $LAB_OUT/events.txt. Its one unit (job j again, so the same
# snapshot chain "j", of $VG/vol, into an empty store) is refused before any snapshot
# (PARENT_NOT_IN_STORE: the base's archive is in $STORE), so it adds no base snapshot; its own state
# directory keeps it apart from the first configuration's job j (run, send). It runs until the
# pool is OK again, then stops (its first round measures pinned space under a metadata snapshot: the
# dumps wait for that round to end).
WCFG="$LAB_WORK/watch.yml"
HOOK="$LAB_WORK/on-event"
cat > "$HOOK" <<EOF
#!/bin/sh
printf '%s %s %s\n' "\$THINARCHIVE_EVENT" "\$THINARCHIVE_POOL" "\$THINARCHIVE_EVENT_JSON" >> "$LAB_OUT/events.txt"
EOF
chmod +x "$HOOK"
mkdir -p "$LAB_WORK/wstore"
cat > "$WCFG" <<EOF
state_dir: $LAB_WORK/wstate
metrics: { listen: "127.0.0.1:9812" }
pool_sample_every: 2s
alerts: { exec: $HOOK }
jobs:
  - { name: j, volumes: [$VG/vol], every: 1h, to: "$LAB_WORK/wstore", retry: { attempts: 1 } }
EOF
node "$TA_LAUNCHER" daemon --config "$WCFG" 2> "$LAB_OUT/watch-daemon.err" &  # $! must be node itself
WATCH=$!
for _ in $(seq 1 120); do
  node -e 'fetch("http://127.0.0.1:9812/metrics").then(r => r.text()).then(t => { if (!/^thinarchive_pool_pinned_bytes\{pool="[^"]*thin-pool"\}/m.test(t)) process.exit(1); }, () => process.exit(1))' 2> /dev/null && break
  sleep 0.5
done
# wait_event NAME: until the watching daemon's hook has recorded NAME for $VG/$POOL (at most 60 s)
wait_event() {
  for _ in $(seq 1 120); do
    grep -q "^$1 $VG/$POOL " "$LAB_OUT/events.txt" 2> /dev/null && return 0
    sleep 0.5
  done
  echo "no $1 event from the watching daemon" >&2
  return 1
}
timing watch-daemon

# --- data past 80 % (raw writes to a second volume), then past 90 % (files on ext4)
lvcreate -q -y -V 512M -T "$VG/$POOL" -n fill2 > /dev/null
n=0
while [ "$(data_pct "$TPOOL")" -le 82 ]; do
  m=$(data_mib_to "$TPOOL" 82)
  dd if=/dev/urandom of="/dev/$VG/fill2" bs=1M count="$m" seek="$n" oflag=direct status=none
  n=$((n + m))
done
check warn --config "$CFG"
wait_event pool_warning
dumps warn
lvcreate -q -y -V 512M -T "$VG/$POOL" -n fill > /dev/null
mkfs.ext4 -q -E lazy_itable_init=1,lazy_journal_init=1,nodiscard "/dev/$VG/fill"
mkdir -p "$FILL"
mount -o noinit_itable "/dev/$VG/fill" "$FILL"
n=0
while [ "$(data_pct "$TPOOL")" -le 92 ]; do
  head -c $(($(data_mib_to "$TPOOL" 92) * 1024 * 1024 + 65536)) /dev/urandom > "$FILL/f$n.bin"
  sync
  n=$((n + 1))
done
check crit --config "$CFG" --json
wait_event pool_critical
dumps crit
# the command line wins over the configuration: critical at 95 % makes it a warning
check critflags --config "$CFG" --pool "$VG/$POOL" --crit-data 95
timing full

# --- at the critical level a send is refused before any snapshot is created (send, and a job run)
lvs --noheadings -o lv_name,lv_tags -S "pool_lv=$POOL" "$VG" | sort > "$LAB_OUT/lvs-before-refused.txt"
rc=0; ta send "$VG/vol" --to "$STORE" 2> "$LAB_OUT/refused.err" || rc=$?
echo "$rc" > "$LAB_OUT/refused.rc"
rc=0; ta run j --config "$CFG" --json > "$LAB_OUT/run-refused.json" 2> "$LAB_OUT/run-refused.err" || rc=$?
echo "$rc" > "$LAB_OUT/run-refused.rc"
lvs --noheadings -o lv_name,lv_tags -S "pool_lv=$POOL" "$VG" | sort > "$LAB_OUT/lvs-after-refused.txt"
timing refused

# --- free the space: delete the files and fstrim, remove the raw volume. The watching daemon is held
# (SIGSTOP) meanwhile: a sample between fstrim and lvremove would rightly see the pool at the warning
# level on its way down, and this test wants one step from critical to OK.
kill -STOP "$WATCH"
rm -f "$FILL"/f*.bin
sync
fstrim -v "$FILL" > "$LAB_OUT/fstrim.txt"
lvremove -q -y "$VG/fill2" > /dev/null
kill -CONT "$WATCH"
check freed --config "$CFG"
wait_event pool_ok
kill -TERM "$WATCH"
rc=0; wait "$WATCH" || rc=$?
echo "$rc" > "$LAB_OUT/watch-daemon.rc"
dumps freed
timing freed

# --- metadata of $MPOOL: each snapshot of mvol, then a write into each leaf of mvol's mapping tree,
# copies those leaves; past 30 % (warning) and 40 % (critical: its own levels); then the snapshots go
i=0
metafill() {
  while [ "$(meta_pct "$TMPOOL")" -le "$1" ] && [ "$i" -lt 150 ]; do
    i=$((i + 1))
    lvcreate -q -y -s -n "m$i" --addtag metafill "$VG/mvol" > /dev/null
    for off in $(seq 0 128 2047); do dd if=/dev/urandom of="/dev/$VG/mvol" bs=64k count=1 seek="$off" oflag=direct status=none; done
  done
}
metafill 32
check mwarn --config "$CFG"
dumps mwarn
metafill 42
check mcrit --config "$CFG"
dumps mcrit
echo "$i" > "$LAB_OUT/metafill-snapshots.txt"
lvremove -q -y @metafill > /dev/null
check mfreed --config "$CFG"
dumps mfreed
timing metadata

# --- a metadata snapshot held by another program: reported once held longer than 2 s
dmsetup message "$TPOOL" 0 reserve_metadata_snap
check held0 --config "$CFG"
sleep 3
check held --config "$CFG" --json
dmsetup message "$TPOOL" 0 release_metadata_snap
check released --config "$CFG"
timing held

# --- pools that cannot be read: UNKNOWN (exit 3) with the reason
check nosuch --pool "$VG/nosuch"
check notpool --pool "$VG/vol"
umount "$FILL"
lvchange -q -an "$VG/mvol"
lvchange -q -an "$VG/$MPOOL"
check inactive --config "$CFG"
timing unknown
