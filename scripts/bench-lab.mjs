#!/usr/bin/env node
// Lab benchmark (npm run bench:lab): `thinarchive send VG/LV` on real thin pools in the user-mode
// Linux lab (test/lab/lab.ts), in one boot.
//   1. Cost follows the change, not the volume: a 4 GiB and a 32 GiB thin LV hold the same data
//      (DATA_MIB MiB in 1 MiB pieces at the same offsets, spread over the first 4 GiB), are sent full
//      once, then get the same 1% scattered change (64 KiB blocks at the same offsets) three times;
//      each incremental send is timed. Median and spread of the 3 are compared.
//   2. A full send of a half-empty volume (2 x DATA_MIB LV, half of it written) reads exactly the
//      mapped bytes: bytes read from the pool's data device during the send (/sys/block/dm-N/stat of
//      POOL_tdata) and read_bytes of the send process (/proc/self/io, scripts/lib/ta-io.mjs: it also
//      counts readahead into unmapped areas, which never reaches the pool) vs the mapped bytes from
//      pool metadata (the send's map) and from `lvs` (data_percent x size).
//   3. Baselines in the same boot: `dd | zstd -3` of the half-empty snapshot and of the 4 GiB one
//      (what reading the whole volume costs).
//   4. One cycle inside `thinarchive daemon` vs the one-shot CLI of 1.: the same 1% change on the same
//      volumes (a daemon per volume, every 10 s, chain "d"); wall and CPU time (with the LVM commands'),
//      and the number and total time of the LVM processes (the debug log's "lvm command" lines; the
//      dmsetup forms answered in-process by ioctls counted apart).
//   5. Against the C peer LINBIT/thin-send-recv (when thin_send is on PATH or $THIN_SEND names it; a
//      line says it was skipped otherwise): on its own snapshots of the 4 GiB and 32 GiB volumes, the
//      same kind of 1% change per round, thinarchive's incremental (`send --snapshot NEW --base OLD
//      --parent ARCHIVE --to -`, node's start included) vs `thin_send OLD NEW | zstd -3 -T0`; and a
//      full of the half-empty volume both ways. Build the peer outside the project (make EXTRA_CFLAGS=-O2).
// Environment: DATA_MIB (default 512), ROUNDS (default 3). Prints a report and writes
// bench-out/bench-lab.json. Needs the lab's packages and the built CLI (npm run build).
import { accessSync, constants, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { labForBench, ROOT } from './lib/lab.mjs';

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
const DATA_MIB = Number(process.env.DATA_MIB ?? 512);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
if (!Number.isInteger(DATA_MIB) || DATA_MIB < 16 || DATA_MIB > 1024) throw new Error('DATA_MIB: 16 to 1024');
if (!Number.isInteger(ROUNDS) || ROUNDS < 1 || ROUNDS > 9) throw new Error('ROUNDS: 1 to 9');
const CHANGE_BLOCKS = Math.round((DATA_MIB * MiB * 0.01) / BLOCK);

// node WRITER DEV fill SPAN_MIB DATA_MIB         DATA_MIB 1 MiB pieces of random data spread evenly over the first SPAN_MIB
// node WRITER DEV change SPAN_MIB DATA_MIB N SEED N 64 KiB blocks inside those pieces, chosen by SEED
const WRITER = String.raw`
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
const [dev, mode, span, data, n, seed] = process.argv.slice(1);
const stride = Math.floor(Number(span) / Number(data)) * 1048576;
const fd = openSync(dev, 'r+');
const buf = Buffer.alloc(1048576);
if (mode === 'fill') {
  for (let i = 0; i < Number(data); i++) writeSync(fd, randomFillSync(buf), 0, buf.length, i * stride);
} else {
  let s = Number(seed) >>> 0;
  const rnd = () => { s = (s + 0x6d2b79f5) >>> 0; let t = s; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
  const picked = new Set();
  while (picked.size < Number(n)) picked.add(Math.floor(rnd() * Number(data) * 16));
  const b = buf.subarray(0, 65536);
  for (const k of picked) writeSync(fd, randomFillSync(b), 0, b.length, Math.floor(k / 16) * stride + (k % 16) * 65536);
}
fsyncSync(fd);
closeSync(fd);
`;

const guestScript = (poolSetup) => String.raw`
# sectors read from the pool's data device so far (reads of unmapped blocks never get there)
tdata_read() { local st; read -r -a st < "/sys/block/dm-$(dmsetup info -c --noheadings -o minor vg-pool_tdata | tr -d ' ')/stat"; echo $(( st[2] * 512 )); }
# ta LABEL LV: a one-shot CLI send, with its LVM commands logged (debug) and its CPU time (user, sys)
ta() {
  local r0; r0=$(tdata_read)
  local TIMEFORMAT='%R %U %S'
  { time THINARCHIVE_LOG=debug TA_IO_LABEL=$1 node "$TA_IO" send "vg/$2" --to "$STORE" --json > "$LAB_OUT/send-$1.json" 2> "$LAB_OUT/send-$1.log"; } 2> "$LAB_OUT/time-$1.txt"
  rec "tdata_$1" $(( $(tdata_read) - r0 ))
}
# CPU ticks of a process and of its waited-for children (utime stime cutime cstime)
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }
sent_count() { grep -c '"msg":"sent"' "$1" || true; }
# daemon_cycles LV: a daemon with one job on the LV (chain "d", every 10 s): the first run sends the
# full; then ROUNDS times the same 1% change as the CLI rounds, each right after a run, and the CPU the
# daemon process (with its children: the LVM commands) used from the change to the end of the next run
daemon_cycles() {
  local v=$1 conf="$LAB_WORK/daemon-$1.yml" log="$LAB_OUT/daemon-$1.log" pid c0 r
  printf 'state_dir: %s\njobs:\n  - name: d\n    volumes: [vg/%s]\n    every: 10s\n    to: %s\n' "$LAB_WORK/dstate-$v" "$v" "$STORE" > "$conf"
  THINARCHIVE_LOG=debug TA_IO_LABEL="daemon-$v" node "$TA_IO" daemon --config "$conf" 2> "$log" &
  pid=$!
  while [ "$(sent_count "$log")" -lt 1 ]; do sleep 0.2; done
  for r in $(seq 1 "$ROUNDS"); do
    c0=$(cpu_ticks "$pid")
    w "$v" change 4096 "$CHANGE_BLOCKS" $(( 100 + r ))
    sync
    while [ "$(sent_count "$log")" -lt $(( r + 1 )) ]; do sleep 0.2; done
    rec "dcpu_$v-$r" $(( $(cpu_ticks "$pid") - c0 ))
  done
  rec "dticks" "$(getconf CLK_TCK)"
  kill -TERM "$pid"
  wait "$pid"
}
now() { date +%s%N; }
rec() { printf '%s\t%s\n' "$1" "$2" >> "$LAB_OUT/results.tsv"; }
w() { node --input-type=module -e "$WRITER" "/dev/vg/$1" "$2" "$3" "$DATA_MIB" "$4" "$5"; }
dp() { lvs --noheadings --units b --nosuffix -o lv_size,data_percent "vg/$1" | awk '{print $1, $2}'; }
base() { lvs --noheadings -o lv_name,origin,lv_tags vg | awk -v o="$1" '$2 == o && $3 !~ /ta_pending/ {print $1}'; }
# baseline KEY SNAP: dd of the whole (read-only) snapshot through zstd -3, time and sizes
baseline() {
  local t0 t1 out
  lvchange -ay -K "vg/$2"
  t0=$(now)
  out=$(dd if="/dev/vg/$2" bs=4M iflag=direct status=none | zstd -3 -T1 -q -c | wc -c)
  t1=$(now)
  rec "base_$1" "$(( (t1 - t0) / 1000000 )) $(blockdev --getsize64 "/dev/vg/$2") $out"
  lvchange -an "vg/$2"
}

${poolSetup}
lvcreate -q -y -V 4G -T vg/pool -n small > /dev/null 2>&1
lvcreate -q -y -V 32G -T vg/pool -n big > /dev/null 2>&1
lvcreate -q -y -V $(( 2 * DATA_MIB ))M -T vg/pool -n half > /dev/null 2>&1
t0=$(now); w small fill 4096; w big fill 4096; w half fill $(( 2 * DATA_MIB )); rec t_fill $(( ($(now) - t0) / 1000000 ))
rec dp_small "$(dp small)"; rec dp_big "$(dp big)"; rec dp_half "$(dp half)"

for v in small big half; do
  t0=$(now); ta "$v-0" "$v"; rec "wall_$v-0" $(( ($(now) - t0) / 1000000 ))
done
baseline half "$(base half)"
baseline small "$(base small)"

for r in $(seq 1 "$ROUNDS"); do
  w small change 4096 "$CHANGE_BLOCKS" "$r"; w big change 4096 "$CHANGE_BLOCKS" "$r"
  sync
  order="small big"; [ $((r % 2)) = 0 ] && order="big small"
  for v in $order; do
    t0=$(now); ta "$v-$r" "$v"; rec "wall_$v-$r" $(( ($(now) - t0) / 1000000 ))
  done
done
daemon_cycles small
daemon_cycles big
# 5. the peer (LINBIT thin-send-recv, $THIN_SEND) on its own snapshots of the same volumes and the same
# kind of change: each round, one snapshot after the change; then (in turn first) thinarchive's
# incremental between the two newest snapshots (--snapshot --base --parent, to stdout) and the
# peer's thin_send OLD NEW | zstd -3 -T0, both into wc; a full of the half-empty volume both ways
pn() { echo "p_$1_$2"; }
# peer_send KEY CMD...: wall ms and bytes out (a command that writes to stdout, counted by wc -c)
peer_send() { local key=$1 t0 out; shift; t0=$(now); out=$("$@" | wc -c); rec "$key" "$(( ($(now) - t0) / 1000000 )) $out"; }
# ta_inc KEY NEW OLD PARENT: thinarchive's incremental into /run (tmpfs: the next round's parent), its size
ta_inc() {
  local t0; t0=$(now)
  TA_IO_LABEL="$1" node "$TA_IO" send --snapshot "vg/$2" --base "vg/$3" --parent "$4" --to - > "/run/$2.tna"
  rec "$1" "$(( ($(now) - t0) / 1000000 )) $(stat -c %s "/run/$2.tna")"
}
ta_full() { TA_IO_LABEL=peer-ta-full node "$TA_IO" send --snapshot "vg/$1" --to -; }
peer_inc() { "$THIN_SEND" --send "vg/$2" "vg/$1" | zstd -3 -T0 -q -c; }
peer_full() { "$THIN_SEND" --send "vg/$1" | zstd -3 -T0 -q -c; }
if [ -n "$THIN_SEND" ]; then
  for v in small big; do
    lvcreate -q -s -n "$(pn $v 0)" "vg/$v" > /dev/null
    TA_IO_LABEL=peer-setup node "$TA_IO" send --snapshot "vg/$(pn $v 0)" --to "$STORE/peer-$v" > /dev/null
  done
  for r in $(seq 1 "$ROUNDS"); do
    w small change 4096 "$CHANGE_BLOCKS" $(( 200 + r )); w big change 4096 "$CHANGE_BLOCKS" $(( 200 + r ))
    sync
    for v in small big; do
      new=$(pn $v $r); old=$(pn $v $(( r - 1 )))
      parent="/run/$old.tna"; [ "$r" = 1 ] && parent="$STORE/peer-$v"
      lvcreate -q -s -n "$new" "vg/$v" > /dev/null
      if [ $((r % 2)) = 1 ]; then
        ta_inc "pta_$v-$r" "$new" "$old" "$parent"; peer_send "pts_$v-$r" peer_inc "$new" "$old"
      else
        peer_send "pts_$v-$r" peer_inc "$new" "$old"; ta_inc "pta_$v-$r" "$new" "$old" "$parent"
      fi
      lvremove -q -f "vg/$old" > /dev/null; rm -f "/run/$old.tna"
    done
  done
  rm -f /run/p_*.tna
  lvcreate -q -s -pr -n p_half vg/half > /dev/null
  # thin_send reads a full from an active LV (it activates only its incremental's snapshot): both
  # fulls read the read-only snapshot activated here, outside the timing (thinarchive leaves it active)
  lvchange -q -ay -K vg/p_half
  peer_send pts_full peer_full p_half
  peer_send pta_full ta_full p_half
  peer_send pts_full2 peer_full p_half
  "$THIN_SEND" --version > "$LAB_OUT/peer-version.txt" 2>&1 || true
fi
rec dp_small_end "$(dp small)"; rec dp_big_end "$(dp big)"
lvs --reportformat json --units b --nosuffix -o lv_name,lv_size,data_percent,metadata_percent vg > "$LAB_OUT/lvs.json"
`;

/** The peer's thin_send: $THIN_SEND, else on PATH; null when neither. */
function peerBinary() {
  const candidates = process.env.THIN_SEND ? [process.env.THIN_SEND] : (process.env.PATH ?? '').split(':').filter(Boolean).map((d) => join(d, 'thin_send'));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return resolve(c);
    } catch {
      // not there
    }
  }
  return null;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const f2 = (x) => x.toFixed(2);

async function main() {
  const lab = await labForBench('bench:lab');
  if (!lab) return;
  const dir = mkdtempSync(join(tmpdir(), 'thinarchive-bench-lab-'));
  try {
    const thinSend = peerBinary();
    let peerReport = null;
    const store = join(dir, 'store');
    mkdirSync(store);
    console.log(`lab benchmark: ${DATA_MIB} MiB of data per volume, ${CHANGE_BLOCKS} x 64 KiB changed per round (1%), ${ROUNDS} rounds`);
    const t0 = performance.now();
    const run = await lab.runInLab({
      script: guestScript(lab.labPoolSetup({ poolSize: `${Math.max(3, Math.ceil((3.5 * DATA_MIB) / 1024))}G`, chunk: '64k' })),
      disks: [{ sizeBytes: 8 * 1024 * MiB }],
      env: {
        TA_IO: join(ROOT, 'scripts', 'lib', 'ta-io.mjs'), TA_IO_FILE: join(dir, 'io.jsonl'), WRITER, STORE: store,
        DATA_MIB: String(DATA_MIB), CHANGE_BLOCKS: String(CHANGE_BLOCKS), ROUNDS: String(ROUNDS), THINARCHIVE_STATE_DIR: join(dir, 'state'), THIN_SEND: thinSend ?? '',
      },
      timeoutMs: 1_800_000,
    });
    mkdirSync(join(ROOT, 'bench-out'), { recursive: true });
    writeFileSync(join(ROOT, 'bench-out', 'bench-lab-guest.log'), run.output);
    if (run.exitCode !== 0) throw new Error(`guest failed (exit ${run.exitCode}):\n${run.output.slice(-3000)}`);
    const F = new Proxy(run.files, {
      get: (files, name) => {
        if (!(name in files)) throw new Error(`the guest left no ${String(name)} (its output is in bench-out/bench-lab-guest.log):\n${run.output.slice(-2000)}`);
        return files[name];
      },
    });
    const R = lab.parseResults(F['results.tsv']);
    const io = Object.fromEntries(readFileSync(join(dir, 'io.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).map((x) => [x.label, x]));
    const sent = (k) => JSON.parse(F[`send-${k}.json`]);
    const mappedLvs = (k) => {
      const [size, pct] = R[k].split(' ').map(Number);
      return { size, pct, bytes: Math.round((size * pct) / 100) };
    };

    const rounds = Array.from({ length: ROUNDS }, (_, i) => i + 1);
    const inc = Object.fromEntries(['small', 'big'].map((v) => [v, rounds.map((r) => ({
      r, s: sent(`${v}-${r}`), wall: Number(R[`wall_${v}-${r}`]) / 1000, readBytes: io[`${v}-${r}`].read_bytes, poolRead: Number(R[`tdata_${v}-${r}`]),
    }))]));
    const stats = (v, key) => {
      const xs = inc[v].map(key);
      return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
    };
    const half = sent('half-0');
    const halfIo = io['half-0'];
    const halfLvs = mappedLvs('dp_half');
    const [bhMs, bhSize, bhOut] = R.base_half.split(' ').map(Number);
    const [bsMs, bsSize, bsOut] = R.base_small.split(' ').map(Number);

    const lines = [];
    const say = (s) => {
      lines.push(s);
      console.log(s);
    };
    say(`\nguest: boot ${f2(run.bootMs / 1000)} s, whole run ${f2(run.durationMs / 1000)} s; writing ${3 * DATA_MIB} MiB of data ${f2(R.t_fill / 1000)} s`);
    say('\n1. incremental send of the same 1% change (in-process seconds from the send result; wall = with node start)');
    say('| volume | mapped | changed per round | send s: median (min-max) | wall s: median (min-max) | read from pool data, median | archive bytes median |');
    say('|---|---|---|---|---|---|---|');
    for (const v of ['small', 'big']) {
      const m = mappedLvs(`dp_${v}`);
      const s = stats(v, (x) => x.s.seconds);
      const w = stats(v, (x) => x.wall);
      say(`| ${m.size / 1024 / MiB} GiB | ${(m.bytes / MiB).toFixed(0)} MiB (${m.pct}%) | ${(inc[v][0].s.dataBytes / MiB).toFixed(2)} MiB | `
        + `${f2(s.median)} (${f2(s.min)}-${f2(s.max)}) | ${f2(w.median)} (${f2(w.min)}-${f2(w.max)}) | `
        + `${(median(inc[v].map((x) => x.poolRead)) / MiB).toFixed(2)} MiB | ${(median(inc[v].map((x) => x.s.archiveBytes)) / MiB).toFixed(2)} MiB |`);
    }
    const ms = stats('small', (x) => x.s.seconds);
    const mb = stats('big', (x) => x.s.seconds);
    say(`ratio of medians 32 GiB / 4 GiB: ${(mb.median / ms.median).toFixed(2)}; spread within a size: 4 GiB ${f2(ms.max - ms.min)} s, 32 GiB ${f2(mb.max - mb.min)} s`);
    say(`per round: ${rounds.map((r) => `#${r} ${f2(inc.small[r - 1].s.seconds)} / ${f2(inc.big[r - 1].s.seconds)} s`).join(', ')} (4 GiB / 32 GiB)`);
    say(`full sends that set the chains up: 4 GiB ${f2(sent('small-0').seconds)} s, 32 GiB ${f2(sent('big-0').seconds)} s (${(sent('small-0').dataBytes / MiB).toFixed(0)} MiB of data each)`);

    const mappedMap = half.dataBytes + half.zeroBytes;
    say(`\n2. full send of a half-empty ${halfLvs.size / MiB} MiB volume`);
    say(`mapped: ${mappedMap} bytes from pool metadata (the send's map), ${halfLvs.bytes} from lvs (${halfLvs.pct}% of ${halfLvs.size})`);
    const halfPool = Number(R['tdata_half-0']);
    say(`read from the pool's data device during the send: ${halfPool} bytes = ${(halfPool / mappedMap).toFixed(4)} x mapped`);
    say(`read_bytes of the send process: ${halfIo.read_bytes} bytes, ${((halfIo.read_bytes - mappedMap) / MiB).toFixed(2)} MiB more than mapped `
      + `(an incremental's: ${(median(inc.small.map((x) => x.readBytes - x.poolRead)) / MiB).toFixed(2)} MiB more than it read from the pool). `
      + 'read_bytes counts all the process asked of the snapshot device, with the kernel\'s readahead past mapped runs, which dm-thin answers with zeroes without reading the pool');
    say(`send ${f2(half.seconds)} s, archive ${(half.archiveBytes / MiB).toFixed(1)} MiB`);
    say('\n3. baselines in the same boot: dd (O_DIRECT, 4 MiB) of the whole snapshot | zstd -3 -T1');
    say(`half-empty ${bhSize / MiB} MiB: ${f2(bhMs / 1000)} s, ${bhSize} bytes read, ${(bhOut / MiB).toFixed(1)} MiB out`);
    say(`4 GiB (the incremental's volume): ${f2(bsMs / 1000)} s, ${bsSize} bytes read, ${(bsOut / MiB).toFixed(1)} MiB out`);
    // 4. one cycle inside the daemon vs the one-shot CLI (same change, same volumes, same boot)
    const jsonLines = (text) => text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
    // Processes started, and the dmsetup forms answered in-process (device-mapper ioctls: "inProcess")
    const lvmOf = (lines) => {
      const all = lines.filter((x) => x.msg === 'lvm command' || x.msg === 'lvm command failed');
      const l = all.filter((x) => !x.inProcess);
      return { n: l.length, inProcess: all.length - l.length, s: l.reduce((a, x) => a + x.ms, 0) / 1000, names: [...new Set(l.map((x) => x.argv[0]))] };
    };
    const ticks = Number(R.dticks);
    const cycles = Object.fromEntries(['small', 'big'].map((v) => {
      const cli = rounds.map((r) => {
        const [real, user, sys] = F[`time-${v}-${r}.txt`].trim().split(' ').map(Number);
        return { wall: real, cpu: user + sys, lvm: lvmOf(jsonLines(F[`send-${v}-${r}.log`])) };
      });
      const log = jsonLines(F[`daemon-${v}.log`]);
      const sentAt = log.filter((x) => x.msg === 'sent');
      const runs = log.filter((x) => x.msg === 'run succeeded');
      const daemon = rounds.map((r) => ({
        run: runs[r].seconds, cpu: Number(R[`dcpu_${v}-${r}`]) / ticks, bytes: sentAt[r].bytes,
        lvm: lvmOf(log.filter((x) => x.time > sentAt[r - 1].time && x.time <= sentAt[r].time)),
      }));
      return [v, { cli, daemon }];
    }));
    say('\n4. one cycle (the same 1% change) inside the daemon vs the one-shot CLI, medians of the rounds');
    say('| volume | CLI wall s | CLI CPU s | CLI LVM processes: n, s (+ in-process) | daemon run s | daemon CPU s (change to end of run) | daemon LVM processes: n, s (+ in-process) |');
    say('|---|---|---|---|---|---|---|');
    for (const v of ['small', 'big']) {
      const { cli, daemon } = cycles[v];
      const m = (xs, k) => median(xs.map(k));
      say(`| ${v === 'small' ? 4 : 32} GiB | ${f2(m(cli, (x) => x.wall))} | ${f2(m(cli, (x) => x.cpu))} | ${m(cli, (x) => x.lvm.n)}, ${f2(m(cli, (x) => x.lvm.s))} (+${m(cli, (x) => x.lvm.inProcess)}) | `
        + `${f2(m(daemon, (x) => x.run))} | ${f2(m(daemon, (x) => x.cpu))} | ${m(daemon, (x) => x.lvm.n)}, ${f2(m(daemon, (x) => x.lvm.s))} (+${m(daemon, (x) => x.lvm.inProcess)}) |`);
    }
    say(`LVM processes run: ${[...new Set(Object.values(cycles).flatMap((c) => [...c.cli, ...c.daemon].flatMap((x) => x.lvm.names)))].join(', ')}`);
    say(`daemon archive bytes per cycle: ${Object.entries(cycles).map(([v, c]) => `${v} ${c.daemon.map((x) => x.bytes).join('/')}`).join('; ')}`);

    // 5. the peer
    if (!thinSend) say(`\n5. peer comparison skipped: thin_send (LINBIT thin-send-recv) is not installed (put it on PATH or set THIN_SEND=/path/to/thin_send)`);
    else {
      const pair = (k) => R[k].split(' ').map(Number);
      say(`\n5. against LINBIT thin-send-recv (${(run.files['peer-version.txt'] ?? '').trim().split('\n')[0] || thinSend}) piped through zstd -3 -T0, on its own snapshots of the same volumes, the same kind of 1% change per round (${ROUNDS} rounds, turns alternate)`);
      say('| volume | thinarchive s: median (min-max) | peer s: median (min-max) | peer / thinarchive (>= 1: no slower) | thinarchive bytes | peer bytes |');
      say('|---|---|---|---|---|---|');
      const peer = {};
      for (const v of ['small', 'big']) {
        const ta = rounds.map((r) => pair(`pta_${v}-${r}`));
        const ps = rounds.map((r) => pair(`pts_${v}-${r}`));
        const st = (xs) => `${f2(median(xs) / 1000)} (${f2(Math.min(...xs) / 1000)}-${f2(Math.max(...xs) / 1000)})`;
        peer[v] = { ta: median(ta.map((x) => x[0])), peer: median(ps.map((x) => x[0])), taBytes: median(ta.map((x) => x[1])), peerBytes: median(ps.map((x) => x[1])) };
        say(`| ${v === 'small' ? 4 : 32} GiB | ${st(ta.map((x) => x[0]))} | ${st(ps.map((x) => x[0]))} | ${f2(peer[v].peer / peer[v].ta)} | ${(peer[v].taBytes / MiB).toFixed(2)} MiB | ${(peer[v].peerBytes / MiB).toFixed(2)} MiB |`);
      }
      say(`flat: thinarchive 32 GiB / 4 GiB ${f2(peer.big.ta / peer.small.ta)}, peer ${f2(peer.big.peer / peer.small.peer)}`);
      const [ptMs, ptBytes] = pair('pta_full');
      const pf = [pair('pts_full'), pair('pts_full2')];
      const pfMs = Math.min(pf[0][0], pf[1][0]);
      say(`full send of the half-empty volume: thinarchive ${f2(ptMs / 1000)} s (${(ptBytes / MiB).toFixed(1)} MiB), peer ${pf.map((x) => f2(x[0] / 1000)).join(' / ')} s (${(pf[0][1] / MiB).toFixed(1)} MiB): peer (best) / thinarchive ${f2(pfMs / ptMs)}`);
      peerReport = { peer, full: { ta: ptMs, taBytes: ptBytes, peer: pf } };
    }

    say(`\ntotal ${f2((performance.now() - t0) / 1000)} s`);

    writeFileSync(join(ROOT, 'bench-out', 'bench-lab.json'), `${JSON.stringify({
      when: new Date().toISOString(), dataMiB: DATA_MIB, changeBlocks: CHANGE_BLOCKS, rounds: ROUNDS, bootMs: run.bootMs, guestMs: run.durationMs,
      incremental: Object.fromEntries(Object.entries(inc).map(([v, xs]) => [v, xs.map((x) => ({ round: x.r, seconds: x.s.seconds, wall: x.wall, dataBytes: x.s.dataBytes, archiveBytes: x.s.archiveBytes, readBytes: x.readBytes, poolRead: x.poolRead }))])),
      halfFull: { mappedMap, mappedLvs: halfLvs.bytes, poolRead: Number(R['tdata_half-0']), readBytes: halfIo.read_bytes, seconds: half.seconds, archiveBytes: half.archiveBytes },
      baselines: { half: { ms: bhMs, bytes: bhSize, out: bhOut }, small: { ms: bsMs, bytes: bsSize, out: bsOut } },
      cycles, peer: peerReport, lvs: JSON.parse(F['lvs.json']), report: lines,
    }, null, 2)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`bench:lab failed: ${e.message}`);
  process.exitCode = 1;
});
