#!/usr/bin/env node
// Consistency-group benchmark (npm run bench:group-lab, issue 18) in one boot of the thin-LVM lab.
// Four 256 MiB thin LVs, each under a dm `linear` device with ext4 mounted on it (as a VM's disk sits
// under its device stack) and a writer on each (a 64 KiB file rewritten with fsync five times a second:
// writers without a pause kept the guest's CPU busy and a one-member send took 170 s).
// Each round, in turn:
//   - a group send of 1, 2 and 4 members, quiesced by fsfreeze of their mountpoints and by suspending
//     the stacked linear devices (no freeze method): the freeze window (`group.quiesce.freezeMs`, from
//     the freeze to the thaw) and the send's wall time (node start included);
//   - the same 2 and 4 volumes sent one by one (one `send` each, as a script without groups does): the
//     sum of their wall times against the group send's.
// A full group send of all four starts every chain, so every send measured is an incremental of what
// the writers changed since the last one. Every group send gets --freeze-timeout 300s: four members
// under load passed the default 10 s (the watchdog thawed and nothing was sent), and the window is
// what is measured. Environment: ROUNDS (default 3). Prints a report and writes
// bench-out/bench-group-lab.json. Needs the lab's packages and the built CLI (npm run build).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { labForBench, ROOT } from './lib/lab.mjs';

const ROUNDS = Number(process.env.ROUNDS ?? 3);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1 || ROUNDS > 9) throw new Error('ROUNDS: 1 to 9');
const SIZES = [1, 2, 4];
const METHODS = ['fsfreeze', 'dm-suspend'];
const SOLO = [2, 4];

const GUEST = String.raw`
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
rec() { printf '%s\t%s\n' "$1" "$2" >> "$LAB_OUT/results.tsv"; }
ta() { node "$TA" "$@"; }
members() { local n=$1 i; for i in $(seq 1 "$n"); do printf 'vg/m%s ' "$i"; done; }
mounts() { local n=$1 i; for i in $(seq 1 "$n"); do printf -- '--freeze /mnt/m%s ' "$i"; done; }
for i in 1 2 3 4; do
  lvcreate -q -y -V 256M -T vg/pool -n "m$i" > /dev/null
  echo "0 $(blockdev --getsz "/dev/vg/m$i") linear /dev/vg/m$i 0" | dmsetup create "s$i"
  mkfs.ext4 -q -F "/dev/mapper/s$i"
  mkdir -p "/mnt/m$i"
  mount "/dev/mapper/s$i" "/mnt/m$i"
  dd if=/dev/urandom of="/mnt/m$i/seed" bs=1M count=32 status=none
done
sync
for i in 1 2 3 4; do
  ( n=0; while [ ! -e /run/stop-writers ]; do
      dd if=/dev/urandom of="/mnt/m$i/w$(( n % 64 ))" bs=64k count=1 conv=fsync status=none 2> /dev/null; n=$(( n + 1 )); sleep 0.2
    done ) &
done
ta send $(members 4) --to "$STORE" --group start --freeze-timeout 300s --freeze /mnt/m1 --freeze /mnt/m2 --freeze /mnt/m3 --freeze /mnt/m4 --json > "$LAB_OUT/start.json"
for r in $(seq 1 "$ROUNDS"); do
  for n in 1 2 4; do
    for m in fsfreeze dm-suspend; do
      q=""; [ "$m" = fsfreeze ] && q=$(mounts "$n")
      t=$(now_ms)
      ta send $(members "$n") --to "$STORE" --group "g$n" --freeze-timeout 300s $q --json > "$LAB_OUT/group-$n-$m-$r.json"
      rec "wall_group_$n-$m-$r" $(( $(now_ms) - t ))
    done
  done
  for n in 2 4; do
    t=$(now_ms)
    for i in $(seq 1 "$n"); do ta send "vg/m$i" --to "$STORE" --json > "$LAB_OUT/solo-$n-$i-$r.json"; done
    rec "wall_solo_$n-$r" $(( $(now_ms) - t ))
  done
done
touch /run/stop-writers
wait
nproc > "$LAB_OUT/nproc.txt"
`;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const f2 = (x) => x.toFixed(2);
const span = (xs, scale = 1) => `${f2(median(xs) / scale)} (${f2(Math.min(...xs) / scale)}-${f2(Math.max(...xs) / scale)})`;

async function main() {
  const lab = await labForBench('bench:group-lab');
  if (!lab) return;
  const dir = mkdtempSync(join(tmpdir(), 'thinarchive-bench-group-'));
  try {
    const store = join(dir, 'store');
    mkdirSync(store);
    const t0 = performance.now();
    const run = await lab.runInLab({
      script: `${lab.labPoolSetup({ poolSize: '2G', chunk: '64k' })}\n${GUEST}`,
      disks: [{ sizeBytes: 3 * 1024 ** 3 }],
      env: { TA: join(ROOT, 'bin', 'thinarchive'), STORE: store, ROUNDS: String(ROUNDS), THINARCHIVE_STATE_DIR: join(dir, 'state') },
      timeoutMs: 3_600_000,
    });
    mkdirSync(join(ROOT, 'bench-out'), { recursive: true });
    writeFileSync(join(ROOT, 'bench-out', 'bench-group-lab-guest.log'), run.output);
    if (run.exitCode !== 0) throw new Error(`guest failed (exit ${run.exitCode}):\n${run.output.slice(-3000)}`);
    const F = run.files;
    const R = lab.parseResults(F['results.tsv']);
    const json = (k) => JSON.parse(F[`${k}.json`]);
    const rounds = Array.from({ length: ROUNDS }, (_, i) => i + 1);
    const lines = [];
    const say = (s) => {
      lines.push(s);
      console.log(s);
    };
    say(`group benchmark: four 256 MiB thin LVs under dm linear devices, ext4 and a writer on each; ${ROUNDS} rounds; guest boot ${f2(run.bootMs / 1000)} s, run ${f2(run.durationMs / 1000)} s`);
    say('\n1. the freeze window (freeze to thaw) and the group send, medians (min-max) over the rounds');
    say('| members | quiesce | freeze window ms | group send wall s | data sent per send, median |');
    say('|---|---|---|---|---|');
    const group = {};
    for (const n of SIZES) {
      for (const m of METHODS) {
        const res = rounds.map((r) => json(`group-${n}-${m}-${r}`));
        const freeze = res.map((x) => x.group.quiesce.freezeMs);
        const wall = rounds.map((r) => Number(R[`wall_group_${n}-${m}-${r}`]));
        const bytes = res.map((x) => x.members.reduce((a, s) => a + s.archiveBytes, 0));
        // one member without a freeze method: nothing to suspend above it, LVM's own suspend of the origin (method "lvm")
        const expected = m === 'dm-suspend' && n === 1 ? 'lvm' : m;
        if (res.some((x) => x.group.quiesce.method !== expected)) throw new Error(`group-${n}-${m}: quiesced by ${res.map((x) => x.group.quiesce.method).join(', ')}`);
        group[`${n}-${m}`] = { freeze, wall, bytes };
        say(`| ${n} | ${expected} | ${span(freeze)} | ${span(wall, 1000)} | ${(median(bytes) / 1024 ** 2).toFixed(2)} MiB |`);
      }
    }
    say('\n2. a group send against the same volumes sent one by one (wall s, node start included), medians (min-max)');
    say('| members | one by one, all sends | group send, fsfreeze | group send, dm-suspend | group / one by one (fsfreeze) |');
    say('|---|---|---|---|---|');
    const solo = {};
    for (const n of SOLO) {
      const wall = rounds.map((r) => Number(R[`wall_solo_${n}-${r}`]));
      solo[n] = wall;
      say(`| ${n} | ${span(wall, 1000)} | ${span(group[`${n}-fsfreeze`].wall, 1000)} | ${span(group[`${n}-dm-suspend`].wall, 1000)} | ${f2(median(group[`${n}-fsfreeze`].wall) / median(wall))} |`);
    }
    say(`\ntotal ${f2((performance.now() - t0) / 1000)} s (guest CPUs: ${(F['nproc.txt'] ?? '?').trim()})`);
    writeFileSync(join(ROOT, 'bench-out', 'bench-group-lab.json'), `${JSON.stringify({
      when: new Date().toISOString(), rounds: ROUNDS, bootMs: run.bootMs, guestMs: run.durationMs, group, solo, start: json('start').group.quiesce, report: lines,
    }, null, 2)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`bench:group-lab failed: ${e.message}`);
  process.exitCode = 1;
});
