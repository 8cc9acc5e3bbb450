# Runs INSIDE the thin-LVM lab guest (see test/lab/group.test.ts), sourced by the harness's bash
# (-eE -o pipefail). Two thin LVs (gv/a, gv/b) striped by a device-mapper `striped` device with ext4
# on top and a writer churning files on it; then:
#   1. group sends without a freeze method (the stripe is suspended: dm-suspend), group "crash"
#   2. group sends with --freeze MOUNTPOINT (fsfreeze), group "frozen"
#   3. the same volumes sent one by one (separate sends, chain "solo"): what a group prevents
#   4. the quiesce window observed: writes block between freeze and thaw (a command pair that
#      wraps fsfreeze and records the times), and resume after
#   5. watchdog: a thaw command that hangs once, a freeze command that hangs, a SIGKILLed freeze
#      command, SIGTERM and SIGKILL of thinarchive inside the window
#   6. restore --group of a point of each group into another VG, assembled, fsck -n
#   7. one member's archive deleted: list reports the point incomplete, restore --group refuses it
#   8. a daemon group job: three runs, retention over whole points, scheduled verification of points
# Everything observed goes to $LAB_OUT; the host restores every point and runs fsck.
#
# Env: TA_LAUNCHER, STORE, POINTS (sends per group), SOLO (one-by-one pairs), THINARCHIVE_STATE_DIR.

ta() { node "$TA_LAUNCHER" "$@"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
T0=$(now_ms)
timing() { echo "$1 $(( $(now_ms) - T0 ))" >> "$LAB_OUT/timings.txt"; }
result() { printf '%s\t%s\n' "$1" "$2" >> "$LAB_OUT/results.tsv"; }
MNT=/run/gm
# Is the filesystem writable within $1 seconds? (a frozen one blocks the write)
writable_within() {
  local f="$MNT/probe-$RANDOM"
  timeout "$1" sh -c "echo x > '$f' && sync -f '$f'" && rm -f "$f"
}

# A writer churning the filesystem: new files, appends with fsync, renames, deletions. Each step's
# completion time (ms) is appended to /run/writes.log.
writer_start() {
  rm -f /run/stop-writer
  ( i=0; while [ ! -e /run/stop-writer ]; do
      i=$((i + 1)); d="$MNT/d$((i % 7))"; mkdir -p "$d"
      dd if=/dev/urandom of="$d/f$i" bs=4k count=$((1 + i % 5)) conv=fsync status=none
      [ $((i % 3)) -eq 0 ] && mv "$d/f$i" "$d/g$i"
      [ $((i % 4)) -eq 0 ] && rm -f "$MNT/d$(((i + 3) % 7))"/f* 2> /dev/null
      echo "$(( $(date +%s%N) / 1000000 ))" >> /run/writes.log
    done ) &
  WRITER=$!
  sleep 0.3
}
writer_stop() { touch /run/stop-writer; wait "$WRITER" || true; }

lvcreate -q -y -V 32M -T gv/pool -n a > /dev/null
lvcreate -q -y -V 32M -T gv/pool -n b > /dev/null
SECTORS=$(blockdev --getsz /dev/gv/a)
echo "0 $((SECTORS * 2)) striped 2 128 /dev/mapper/gv-a 0 /dev/mapper/gv-b 0" | dmsetup create stripe
mkfs.ext4 -q -E lazy_itable_init=1,lazy_journal_init=1 /dev/mapper/stripe
mkdir -p "$MNT"; mount -o commit=1 /dev/mapper/stripe "$MNT"
# the restore side: another VG and pool
pvcreate -q -ff -y /dev/ubdb > /dev/null; vgcreate -q rv /dev/ubdb > /dev/null
lvcreate -q -y -T rv/pool -L 600M -Zn > /dev/null
timing setup

writer_start
# --- 1 and 2: group sends, alternating without and with a freeze, short intervals. Their windows get
# 60 s: on a loaded machine a two-member window passed the default 10 s (FREEZE_TIMEOUT, exit 1; the
# ERR trap's line then went to the send's own .err file, as it fires inside `ta`)
for i in $(seq 1 "$POINTS"); do
  ta send gv/a gv/b --to "$STORE" --group crash --freeze-timeout 60s --json > "$LAB_OUT/crash-$i.json" 2> "$LAB_OUT/crash-$i.err"
  sleep 0.2
  ta send gv/a gv/b --to "$STORE" --group frozen --freeze "$MNT" --freeze-timeout 60s --json > "$LAB_OUT/frozen-$i.json" 2> "$LAB_OUT/frozen-$i.err"
  sleep 0.2
done
timing groups
# --- 3: one by one, each its own send (chain "solo")
for i in $(seq 1 "$SOLO"); do
  ta send gv/a --to "$STORE" --chain solo --json > "$LAB_OUT/solo-a-$i.json"
  ta send gv/b --to "$STORE" --chain solo --json > "$LAB_OUT/solo-b-$i.json"
  sleep 0.2
done
timing solo
writer_stop

# --- 4: writes block during the window and resume after (a probe writing every 20 ms)
rm -f /run/probe.log /run/stop-probe
# each line: when the write started and when it was on disk (ms): a write started after the freeze
# must not end before the thaw (the end time alone can be late: the date after it is another fork)
( while [ ! -e /run/stop-probe ]; do
    s=$(date +%s%N); echo x >> "$MNT/probe.txt"; sync -f "$MNT/probe.txt"
    echo "$(( s / 1000000 )) $(( $(date +%s%N) / 1000000 ))" >> /run/probe.log; sleep 0.02
  done ) &
PROBE=$!
sleep 0.5
ta send gv/a gv/b --to "$STORE" --group window --freeze-timeout 60s --freeze-cmd "fsfreeze -f $MNT; echo \$((\$(date +%s%N) / 1000000)) > /run/t-frozen; sleep 1" \
  --thaw-cmd "echo \$((\$(date +%s%N) / 1000000)) > /run/t-thaw; fsfreeze -u $MNT" --json > "$LAB_OUT/window.json"
sleep 0.5
touch /run/stop-probe; wait "$PROBE"
cp /run/probe.log "$LAB_OUT/probe.log"; cp /run/t-frozen "$LAB_OUT/t-frozen"; cp /run/t-thaw "$LAB_OUT/t-thaw"
timing window

# --- 5: the watchdog
# a thaw command that hangs the first time: killed after its attempt time, the second attempt thaws
t=$(now_ms)
ta send gv/a gv/b --to "$STORE" --group watchdog --freeze-timeout 20s --freeze-cmd "fsfreeze -f $MNT" \
  --thaw-cmd "if [ ! -e /run/hung-once ]; then touch /run/hung-once; sleep 1000; fi; fsfreeze -u $MNT" --json > "$LAB_OUT/thaw-hangs.json"
result thaw_hangs_ms $(( $(now_ms) - t ))
writable_within 10 && result thaw_hangs_writable yes || result thaw_hangs_writable no
# a freeze command that hangs: the watchdog kills it and thaws at --freeze-timeout
t=$(now_ms)
set +e
ta send gv/a gv/b --to "$STORE" --group watchdog --freeze-timeout 3s --freeze-cmd "fsfreeze -f $MNT; echo \$\$ > /run/hang.pid; sleep 1000" \
  --thaw-cmd "fsfreeze -u $MNT" --json > "$LAB_OUT/freeze-hangs.out" 2> "$LAB_OUT/freeze-hangs.err"
result freeze_hangs_rc $?
set -e
result freeze_hangs_ms $(( $(now_ms) - t ))
writable_within 10 && result freeze_hangs_writable yes || result freeze_hangs_writable no
# a freeze command SIGKILLed after it froze
t=$(now_ms)
set +e
ta send gv/a gv/b --to "$STORE" --group watchdog --freeze-timeout 10s --freeze-cmd "fsfreeze -f $MNT; kill -9 \$\$" \
  --thaw-cmd "fsfreeze -u $MNT" --json > "$LAB_OUT/freeze-killed.out" 2> "$LAB_OUT/freeze-killed.err"
result freeze_killed_rc $?
set -e
result freeze_killed_ms $(( $(now_ms) - t ))
writable_within 10 && result freeze_killed_writable yes || result freeze_killed_writable no
# SIGTERM to thinarchive inside the window (frozen, its freeze command still sleeping)
rm -f /run/in-window
node "$TA_LAUNCHER" send gv/a gv/b --to "$STORE" --group watchdog --freeze-timeout 60s --freeze-cmd "fsfreeze -f $MNT; touch /run/in-window; sleep 30" \
  --thaw-cmd "fsfreeze -u $MNT" --json > /dev/null 2> "$LAB_OUT/sigterm.err" &
TA=$!
for _ in $(seq 400); do [ -e /run/in-window ] && break; sleep 0.05; done
t=$(now_ms)
kill -TERM "$TA"
set +e; wait "$TA"; result sigterm_rc $?; set -e
writable_within 10 && result sigterm_writable yes || result sigterm_writable no
result sigterm_thawed_ms $(( $(now_ms) - t ))
# SIGKILL to thinarchive inside the window: only the guard process is left to thaw (timeout + 1 s)
rm -f /run/in-window
node "$TA_LAUNCHER" send gv/a gv/b --to "$STORE" --group watchdog --freeze-timeout 3s --freeze-cmd "fsfreeze -f $MNT; touch /run/in-window" \
  --thaw-cmd "fsfreeze -u $MNT" --json > /dev/null 2> "$LAB_OUT/sigkill.err" &
TA=$!
for _ in $(seq 2000); do [ -e /run/in-window ] && break; sleep 0.01; done
t=$(now_ms)
kill -KILL "$TA"
set +e; wait "$TA"; result sigkill_rc $?; set -e
writable_within 20 && result sigkill_writable yes || result sigkill_writable no
result sigkill_thawed_ms $(( $(now_ms) - t ))
# the SIGKILLed send left a pending snapshot: the next send of the volumes settles it
[ -e /run/hang.pid ] && kill -9 "$(cat /run/hang.pid)" 2> /dev/null || true
timing watchdog

# --- a group of LVs used directly (no stacked device) and no freeze method: refused
lvcreate -q -y -V 8M -T gv/pool -n c > /dev/null
set +e
ta send gv/a gv/c --to "$STORE" --group direct --freeze-timeout 60s --json > "$LAB_OUT/direct.out" 2> "$LAB_OUT/direct.err"
result direct_rc $?
set -e

umount "$MNT"
# --- 6: restore --group of the newest point of each group, assembled and checked in the guest
for g in crash frozen; do
  ta restore "$STORE" --group "$g" --to-vg rv --create --pool rv/pool --json > "$LAB_OUT/restore-$g.json"
  echo "0 $((SECTORS * 2)) striped 2 128 /dev/mapper/rv-a 0 /dev/mapper/rv-b 0" | dmsetup create "r$g"
  set +e
  e2fsck -E journal_only -y "/dev/mapper/r$g" > "$LAB_OUT/journal-$g.txt" 2>&1
  fsck.ext4 -n -f "/dev/mapper/r$g" > "$LAB_OUT/fsck-$g.txt" 2>&1
  result "fsck_group_$g" $?
  set -e
  dmsetup remove "r$g"
  lvremove -q -y rv/a rv/b > /dev/null
done
timing restore

# --- 7: one member's archive of the "window" point deleted (after the points the host checks)
# (a chain with a deleted archive no longer resolves: the host checks the points on a copy)
cp -a "$STORE" "$STORE-intact"
ta list "$STORE" --groups --json > "$LAB_OUT/groups-before.json"
LAST=$(node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).filter((p) => p.name === "window").at(-1); console.log(j.id, j.members[1].chainId, j.members[1].archiveId)' "$LAB_OUT/groups-before.json")
set -- $LAST
find "$STORE" -name "*$3*" -delete
ta list "$STORE" --groups --json > "$LAB_OUT/groups-after.json"
ta list "$STORE" > "$LAB_OUT/list-after.txt"
set +e
ta restore "$STORE" --group window --at "$1" --to-vg rv --create --pool rv/pool --json > "$LAB_OUT/restore-incomplete.out" 2> "$LAB_OUT/restore-incomplete.err"
result restore_incomplete_rc $?
set -e
lvs --noheadings -o lv_name rv | awk '{print $1}' | sort | tr '\n' ' ' > "$LAB_OUT/rv-lvs.txt"
lvs --noheadings -o lv_name gv | awk '{print $1}' | sort | tr '\n' ' ' > "$LAB_OUT/gv-lvs.txt"
timing incomplete

# --- 8: a daemon group job (its own chain "dg" and store): every 5 s one group point of gv/a and gv/b
# (the stripe suspended), the last 2 points kept, every point verified whole after each run; after
# three runs held (SIGHUP to a 1 h interval): status, the store's group points; SIGTERM; the metrics
# textfile (written after every run and at the stop)
DSTORE="$LAB_WORK/dstore"
mkdir -p "$DSTORE"
printf 'state_dir: %s\nmetrics:\n  textfile: %s\njobs:\n  - name: dg\n    volumes: [gv/a, gv/b]\n    every: 5s\n    to: %s\n    keep: {last: 2}\n    group: {name: dgroup, freeze_timeout: 60s}\n    verify: {every: 1s}\n' \
  "$LAB_WORK/dstate" "$LAB_OUT/daemon-metrics.prom" "$DSTORE" > "$LAB_WORK/daemon.yml"
node "$TA_LAUNCHER" daemon --config "$LAB_WORK/daemon.yml" 2> "$LAB_OUT/daemon.log" &
DPID=$!
for i in $(seq 1 600); do
  [ "$(grep -c 'scheduled verification' "$LAB_OUT/daemon.log" || true)" -ge 3 ] && break
  kill -0 "$DPID" 2> /dev/null || break
  sleep 1
done
# held: reloaded to a 1 h interval, the run in progress (with its verification) ends and none starts
sed -i 's/every: 5s/every: 1h/' "$LAB_WORK/daemon.yml"
kill -HUP "$DPID"
sleep 2
for i in $(seq 1 300); do
  ta status --config "$LAB_WORK/daemon.yml" --json > "$LAB_OUT/daemon-status.json"
  node -e 'process.exit(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).units.some((u) => u.state === "running") ? 1 : 0)' "$LAB_OUT/daemon-status.json" && break
  sleep 1
done
kill -TERM "$DPID"
rc=0; wait "$DPID" || rc=$?
result daemon_rc "$rc"
ta list "$DSTORE" --groups --json > "$LAB_OUT/daemon-groups.json"
timing done
