# Runs INSIDE the thin-LVM lab guest (see test/lab/daemon-lv.test.ts), sourced by the harness's bash
# (-eE -o pipefail). One `thinarchive daemon` keeps mounted ext4 thin LVs ($VMS, a writer on each)
# replicated every 5 s into a directory store (job "dir") and into replica LVs of a second VG through
# a remote apply over ssh (job "rep", a private sshd on the guest's loopback), plus a raw LV under a
# short retention grid (job "grid") and an LV that is removed while the daemon runs. The host test
# reads the checkpoints: at each one the daemon is held (a reload to a long interval), and the base
# snapshot of every chain is hashed with its archive id, and the replica LVs. Then: the ssh destination down for several cycles, SIGKILL of
# the daemon at $KILLS random moments, a final checkpoint, status/metrics, a bad configuration, SIGTERM.
# Everything observed goes to $LAB_OUT; the host restores the store's points and asserts.
#
# Env: TA_LAUNCHER (node script running the CLI), WAIT_HELPER (daemon-lv-wait.mjs), WRITER
# (daemon-lv-writer.mjs), THINARCHIVE_DIST, STORE, STATE, VG,
# VMS (the filesystems' LV names, space-separated), CHECKPOINTS (before the outage), AFTER
# (checkpoints after it), KILLS, SAMPLE_EVERY (seconds between samples of thinarchive's snapshots).

ta() { node "$TA_LAUNCHER" "$@"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
T0=$(now_ms)
event() { echo "$1 $(now_ms)" >> "$LAB_OUT/events.txt"; }
VG2=vg2
CONF=$LAB_WORK/thinarchive.yml
K=$LAB_WORK/ssh

# --- pools, volumes, filesystems, writers ---------------------------------------------------------
pvcreate -q -ff -y /dev/ubdb > /dev/null
vgcreate -q "$VG2" /dev/ubdb > /dev/null
lvcreate -q -y -T "$VG2/pool" -L 1G -Zn > /dev/null
for v in $VMS; do
  lvcreate -q -y -V 64M -T "$VG/pool" -n "$v" > /dev/null
  mkfs.ext4 -q -E lazy_itable_init=1,lazy_journal_init=1 "/dev/$VG/$v"
  mkdir -p "/run/m/$v"
  mount -o noinit_itable "/dev/$VG/$v" "/run/m/$v"
  head -c $((6 * 1024 * 1024)) /dev/urandom > "/run/m/$v/base.bin"
  head -c $((4 * 1024 * 1024)) /dev/urandom > "/run/m/$v/data.bin"
done
for v in gone ret; do
  lvcreate -q -y -V 16M -T "$VG/pool" -n "$v" > /dev/null
  dd if=/dev/urandom of="/dev/$VG/$v" bs=1M count=4 seek=2 conv=fsync status=none
done
sync

# The writers, one process (test/lab/daemon-lv-writer.mjs): every second, on each filesystem, 4 KiB
# appended and a random 64 KiB block of data.bin rewritten, synced, until /run/stop-writers exists;
# a random 64 KiB block of the raw LV of the retention job until /run/stop-writers.raw exists.
node "$WRITER" /run/stop-writers $(for v in $VMS; do printf '/run/m/%s/data.bin ' "$v"; done) --raw "/dev/$VG/ret" &
WRITERS=$!

# --- the "remote" host: loopback, a private sshd, a command wrapper with the guest's environment ---
ip link set lo up
mkdir -p "$K" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$K/host"
ssh-keygen -q -t ed25519 -N '' -f "$K/client"
cp "$K/client.pub" "$K/authorized_keys"
cat > "$K/sshd_config" <<EOF
Port 2222
ListenAddress 127.0.0.1
HostKey $K/host
PidFile $K/sshd.pid
AuthorizedKeysFile $K/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 64:30:128
LogLevel ERROR
SetEnv SHLVL=1
EOF
echo "[127.0.0.1]:2222 $(cut -d' ' -f1,2 "$K/host.pub")" > "$K/known_hosts"
sshd_start() { /usr/sbin/sshd -f "$K/sshd_config" -E "$K/sshd.log"; }
sshd_stop() { kill "$(cat "$K/sshd.pid")"; while ssh_ok; do sleep 0.2; done; }
ssh_ok() { ssh -p 2222 -i "$K/client" -o UserKnownHostsFile="$K/known_hosts" -o BatchMode=yes -o ConnectTimeout=15 root@127.0.0.1 true 2> /dev/null; }
sshd_start
# sshd gives remote commands a minimal environment: the wrapper restores what the lab's commands need
# (its own state directory: the receiving side's target locks and journals)
cat > "$LAB_WORK/ta-remote" <<EOF
#!/bin/bash
export PATH='$PATH' LVM_SYSTEM_DIR='$LVM_SYSTEM_DIR' DM_DISABLE_UDEV=1 LVM_SUPPRESS_FD_WARNINGS=1
export MODPROBE_OPTIONS='$MODPROBE_OPTIONS' HOME='$HOME' LC_ALL=C THINARCHIVE_STATE_DIR='$LAB_WORK/remote-state'
export THINARCHIVE_DIST='$THINARCHIVE_DIST'
exec node '$TA_LAUNCHER' "\$@"
EOF
chmod +x "$LAB_WORK/ta-remote"

cat > "$CONF" <<EOF
state_dir: $STATE
max_concurrent_runs: 2
ssh_options: [IdentityFile=$K/client, UserKnownHostsFile=$K/known_hosts, BatchMode=yes, ConnectTimeout=15]
metrics:
  listen: 127.0.0.1:9811
jobs:
  - name: dir
    volumes: [$(for v in $VMS; do printf '%s/%s, ' "$VG" "$v"; done)$VG/gone]
    every: 5s
    to: $STORE
    retry: { attempts: 2, initial: 1s, max: 2s }
  - name: rep
    volumes: ["$VG/vm*"]
    every: 5s
    apply_to:
      host: ssh://root@127.0.0.1:2222
      target: "$VG2/{lv}"
      command: $LAB_WORK/ta-remote
      args: [--create-if-missing, --pool, $VG2/pool]
    retry: { attempts: 2, initial: 1s, max: 2s }
  - name: grid
    volumes: [$VG/ret]
    every: 5s
    to: $STORE
    keep: { last: 3 }
EOF
ta config check --config "$CONF" > "$LAB_OUT/config-check.txt" 2>&1
CONF_RUN=$LAB_WORK/run.yml
CONF_HOLD=$LAB_WORK/hold.yml
cp "$CONF" "$CONF_RUN"
sed 's/every: 5s/every: 1h/' "$CONF" > "$CONF_HOLD"

daemon_start() {
  # node itself in the background (not a function's subshell): $! is the daemon the signals must reach
  node "$TA_LAUNCHER" daemon --config "$CONF" 2>> "$LAB_OUT/daemon.log" &
  DAEMON=$!
  event "daemon-start $DAEMON"
}
daemon_start

# Thinarchive's snapshots, sampled every $SAMPLE_EVERY s while the daemon runs: "ms name tags" lines.
( while [ ! -e /run/stop-sampler ]; do
    t=$(now_ms)
    lvs --noheadings -o lv_name,lv_tags "$VG" 2> /dev/null | awk -v t="$t" '$1 ~ /_ta_/ { print t, $1, $2 }' >> "$LAB_OUT/ta-snapshots.txt" || true
    sleep "$SAMPLE_EVERY"
  done ) &
SAMPLER=$!

# checkpoint NAME: hold the daemon (a reload to a 1 h interval: runs in progress finish, none starts),
# wait until no unit runs, then hash each chain's base snapshot (the newest committed one: not
# pending) with its archive id, and the replica LVs; then reload back to the 5 s interval. The writers
# go on all the time: a snapshot of a mounted ext4 differs from its origin (the freeze during the
# snapshot writes the superblock), so the points are compared with the base snapshots.
reloads=0
reload() {
  local n=0
  # (a SIGHUP while the daemon starts would be kept for after its start: wait, to count the reloads)
  until grep -q "\"pid\":$DAEMON,.*\"msg\":\"daemon started\"" "$LAB_OUT/daemon.log"; do
    sleep 0.2; n=$((n + 1))
    if [ "$n" -gt 600 ]; then echo "daemon $DAEMON never started" >&2; return 1; fi
  done
  cp "$1" "$CONF"
  kill -HUP "$DAEMON"
  reloads=$((reloads + 1))
  n=0
  while [ "$(grep -c '"msg":"configuration reloaded"' "$LAB_OUT/daemon.log")" -lt "$reloads" ]; do
    sleep 0.2; n=$((n + 1))
    if [ "$n" -gt 600 ]; then echo "reload $1: never confirmed" >&2; return 1; fi
  done
}
# wait_daemon ready SINCE_MS UNIT... | wait_daemon idle: through the daemon's status socket
# (on a timeout the daemon's last log lines go to stderr too: the test's failure message shows them)
wait_daemon() { node "$WAIT_HELPER" "$STATE" "$@" || { echo "the daemon's log, last lines:" >&2; tail -n 30 "$LAB_OUT/daemon.log" | cut -c1-400 >&2; return 1; }; }
LAST_CP=$(now_ms)
# every unit but the removed volume's: "LV JOB" separated by |, and as "JOB VG/LV" words for wait_daemon
UNITS_ALL="$(for v in $VMS; do printf '%s dir|%s rep|' "$v" "$v"; done)ret grid"
DIR_UNITS=(); for v in $VMS; do DIR_UNITS+=("dir $VG/$v"); done
ALL_UNITS=("${DIR_UNITS[@]}"); for v in $VMS; do ALL_UNITS+=("rep $VG/$v"); done; ALL_UNITS+=("grid $VG/ret")
# checkpoint NAME [UNIT...]: once those units (default: all but the removed volume) have a new point
checkpoint() {
  local name=$1 lv job line snap n=0 i
  shift
  [ "$#" -gt 0 ] || set -- "${ALL_UNITS[@]}"
  wait_daemon ready "$LAST_CP" "$@"
  reload "$CONF_HOLD"
  wait_daemon idle
  # one lvs for every base (the newest committed snapshot of each volume and chain), one lvchange to
  # activate them all, one to deactivate them
  lvs --noheadings -o lv_name,lv_tags "$VG" > "$LAB_WORK/cp.lvs"
  local names=() bases=() lines
  IFS='|' read -ra lines <<< "$UNITS_ALL"
  for line in "${lines[@]}"; do
    set -- $line; lv=$1; job=$2
    snap=$(awk -v p="${lv}_ta_${job}_" 'index($1, p) == 1 && $2 !~ /ta_pending/ { n = substr($1, length(p) + 1); if (n + 0 >= best) { best = n + 0; name = $1; tags = $2 } } END { print name, tags }' "$LAB_WORK/cp.lvs")
    set -- $snap
    [ -n "${1:-}" ] || continue
    names+=("$VG/$1")
    bases+=("$lv $job $1 $(echo "${2:-}" | tr ',' '\n' | sed -n 's/^ta_archive_//p')")
  done
  lvchange -ay -K "${names[@]}"
  : > "$LAB_OUT/$name.hashes"
  for i in "${!bases[@]}"; do
    set -- ${bases[$i]}
    echo "base ${bases[$i]} $(sha256sum < "/dev/$VG/$3" | cut -d' ' -f1)" >> "$LAB_OUT/$name.hashes"
  done
  lvchange -an "${names[@]}"
  for lv in $VMS; do
    if [ -e "/dev/$VG2/$lv" ]; then echo "replica $lv rep - - $(sha256sum < "/dev/$VG2/$lv" | cut -d' ' -f1)" >> "$LAB_OUT/$name.hashes"; fi
  done
  reload "$CONF_RUN"
  LAST_CP=$(now_ms)
  event "checkpoint $name"
}
pause() { sleep "$(( 2 + RANDOM % 4 )).$(( RANDOM % 10 ))"; }

# --- cycles with checkpoints; the removed volume -------------------------------------------------
for i in $(seq 1 "$CHECKPOINTS"); do
  pause
  checkpoint "cp$i"
  if [ "$i" = 1 ]; then lvremove -q -f "$VG/gone" > /dev/null; event removed-gone; fi
done

# --- the ssh destination down for several cycles, then back ---------------------------------------
sshd_stop
event outage-start
from=$(wc -l < "$LAB_OUT/daemon.log")
# until every replica unit has failed (after its retries) since the destination went down
for v in $VMS; do
  n=0
  until tail -n +"$from" "$LAB_OUT/daemon.log" | grep "\"job\":\"rep\",\"volume\":\"$VG/$v\"" | grep -q '"msg":"run failed'; do
    sleep 1; n=$((n + 1))
    if [ "$n" -gt 600 ]; then echo "rep $v never failed during the outage" >&2; exit 1; fi
  done
done
event outage-failed
checkpoint outage "${DIR_UNITS[@]}"   # the directory store goes on meanwhile
sleep 6
sshd_start
event outage-end
for i in $(seq 1 "$AFTER"); do
  pause
  checkpoint "after$i"
done

# --- SIGKILL at random moments, each followed by a restart ----------------------------------------
for i in $(seq 1 "$KILLS"); do
  # a restart takes seconds before the first runs start: 2 to 12 s lands in runs as often as not
  sleep "$(( 2 + RANDOM % 10 )).$(( RANDOM % 10 ))"
  kill -KILL "$DAEMON"
  wait "$DAEMON" 2> /dev/null || true
  event "killed $i"
  daemon_start
done

# --- the end: a quiet checkpoint of every unit, status, metrics, a bad config, SIGTERM ------------
touch /run/stop-writers.raw
sync
event ret-stopped
checkpoint final
ta status --config "$CONF" --json > "$LAB_OUT/status.json"
node -e 'fetch("http://127.0.0.1:9811/metrics").then((r) => r.text()).then((t) => process.stdout.write(t))' > "$LAB_OUT/metrics.txt"
printf 'jobs:\n  - name: x\n    volumes: [%s/vm1]\n    every: 5s\n    to: %s\n    keep_forever: true\n' "$VG" "$STORE" > "$LAB_WORK/bad.yml"
rc=0; ta daemon --config "$LAB_WORK/bad.yml" > "$LAB_OUT/bad.out" 2> "$LAB_OUT/bad.err" || rc=$?
echo "$rc" > "$LAB_OUT/bad.rc"
# SIGTERM while runs are in progress (the checkpoint reloaded to 5 s): within 10 s; what an aborted
# run could not clean up in time (the stop deadline) the next start settles
t=$(now_ms)
kill -TERM "$DAEMON"
rc=0; wait "$DAEMON" || rc=$?
echo "$rc $(( $(now_ms) - t )) $t" > "$LAB_OUT/sigterm.txt"
dmsetup status "$(echo "$VG" | sed 's/-/--/g')-pool-tpool" | awk '{print $7}' > "$LAB_OUT/held-after-term.txt"
lvs --noheadings -o vg_name,lv_name,lv_tags "$VG" > "$LAB_OUT/lvs-after-term.txt"
event terminated
t=$(now_ms)
daemon_start
wait_daemon ready "$t" "${ALL_UNITS[@]}"
reload "$CONF_HOLD"
wait_daemon idle
kill -TERM "$DAEMON"
wait "$DAEMON"
event stopped
touch /run/stop-sampler
wait "$SAMPLER"
touch /run/stop-writers
wait "$WRITERS"
dmsetup status "$(echo "$VG" | sed 's/-/--/g')-pool-tpool" | awk '{print $7}' > "$LAB_OUT/held-root.txt"
lvs --noheadings -o vg_name,lv_name,lv_tags "$VG" "$VG2" > "$LAB_OUT/lvs-end.txt"
for v in $VMS; do umount "/run/m/$v"; done
event end
