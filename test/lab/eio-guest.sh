# Runs INSIDE the lab guest for test/lab/eio.test.ts (sourced by the harness's bash, set -eE -o
# pipefail): I/O errors from device-mapper during apply and send. Results go to $LAB_OUT/results.tsv
# (key TAB value) and $LAB_OUT/*.{out,err,json}; the assertions are in the test.
# Env: TA_LAUNCHER, THINARCHIVE_DIST (the CLI), A0 A1 (the archives: full, incremental), VOL_BYTES.
TA() { node "$TA_LAUNCHER" "$@"; }
OUT=$LAB_OUT
rec() { printf '%s\t%s\n' "$1" "$2" >> "$OUT/results.tsv"; }
# run a command that may fail: record its exit status, keep its output
try() { local k=$1; shift; local rc=0; "$@" > "$OUT/$k.out" 2> "$OUT/$k.err" || rc=$?; rec "rc_$k" "$rc"; }
shadev() { sha256sum "$1" | cut -d' ' -f1; }
T0=$(date +%s%N)
mark() { rec "t_$1" $(( ($(date +%s%N) - T0) / 1000000 )); }
DISK=${LAB_DISKS%% *}
S=$((VOL_BYTES / 512)) # sectors of the volume
H=$((S / 2))
STATE=$LAB_WORK/state
DEV=/dev/mapper/eio
SF="$STATE/blockdev/$(node -e 'process.stdout.write(encodeURIComponent(process.argv[1]))' "$DEV")"
# eio: sectors [0, S) of the disk. Healthy: linear. Faulty: first half linear, second half dm-flakey
# always "down" with error_writes (reads pass, every write and flush fails with EIO).
HEALTHY="0 $S linear $DISK 0"
FAULTY="0 $H linear $DISK 0
$H $((S - H)) flakey $DISK $H 0 1 1 error_writes"
table() { dmsetup reload eio --table "$1"; dmsetup resume eio; }
state() { cp "$SF.json" "$OUT/state_$1.json"; rec "statedir_$1" "$(ls -A "$STATE/blockdev" | tr '\n' ' ')"; }

dmsetup create eio --table "$HEALTHY"
mark setup
# the full archive onto the healthy device (no state yet: --force)
TA apply "$A0" --to "$DEV" --force --state-dir "$STATE" > "$OUT/apply0.out" 2> "$OUT/apply0.err"
rec sha_a0 "$(shadev "$DEV")"
state a0
mark apply0

# the incremental with the second half failing writes
table "$FAULTY"
rec table_faulty "$(dmsetup table eio | tr '\n' ';')"
try apply1 TA apply "$A1" --to "$DEV" --state-dir "$STATE"
state failed
mark apply1
table "$HEALTHY"
rec sha_failed "$(shadev "$DEV")"
try recover TA recover "$DEV" --state-dir "$STATE"
rec sha_recovered "$(shadev "$DEV")"
state recovered
mark recover
try reapply TA apply "$A1" --to "$DEV" --state-dir "$STATE"
rec sha_reapplied "$(shadev "$DEV")"
state reapplied
mark reapply

# send of a device whose second half is an error segment (every read there fails with EIO)
dmsetup create bad --table "0 $H linear $DISK $S
$H $((S - H)) error"
rec table_bad "$(dmsetup table bad | tr '\n' ';')"
SEND=$LAB_WORK/send-store
mkdir -p "$SEND"
try send TA send --image /dev/mapper/bad --to "$SEND"
rec send_left "$(cd "$SEND" && find . -mindepth 1 -type f | sort | tr '\n' ' ')"
rec send_all "$(cd "$SEND" && find . -mindepth 1 | sort | tr '\n' ' ')"
mark send
dmsetup remove bad
dmsetup remove eio
