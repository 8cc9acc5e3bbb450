# Sourced INSIDE a lab guest by the guest scripts (test/lab/*-guest.sh, as `. "$(dirname "$GUEST_SH")/guest-lib.sh"`):
# the helpers they share. Results go to $LAB_OUT/results.tsv (key TAB value) and $LAB_OUT/KEY.{out,err}.
# Needs: LAB_OUT, TA_LAUNCHER, THINARCHIVE_DIST. Defines: ta, OUT, rec, try, T0, mark, sha.
ta() { node "$TA_LAUNCHER" "$@"; }
OUT=$LAB_OUT
rec() { printf '%s\t%s\n' "$1" "$2" >> "$OUT/results.tsv"; }
# try KEY CMD...: run CMD, its output to KEY.out / KEY.err, its exit code recorded as rc_KEY
try() { local k=$1; shift; local rc=0; "$@" > "$OUT/$k.out" 2> "$OUT/$k.err" || rc=$?; rec "rc_$k" "$rc"; }
T0=$(date +%s%N)
# mark NAME: milliseconds since the script started, as t_NAME
mark() { rec "t_$1" $(( ($(date +%s%N) - T0) / 1000000 )); }
sha() { sha256sum "$1" | cut -d' ' -f1; }
