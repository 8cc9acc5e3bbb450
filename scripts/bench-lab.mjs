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
// Environment: DATA_MIB (default 512), ROUNDS (default 3). Prints a report and writes
// bench-out/bench-lab.json. Needs the lab's packages and the built CLI (npm run build).
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadLab, ROOT } from './lib/lab.mjs';

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
ta() {
  local r0; r0=$(tdata_read)
  TA_IO_LABEL=$1 node "$TA_IO" send "vg/$2" --to "$STORE" --json > "$LAB_OUT/send-$1.json"
  rec "tdata_$1" $(( $(tdata_read) - r0 ))
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
rec dp_small_end "$(dp small)"; rec dp_big_end "$(dp big)"
lvs --reportformat json --units b --nosuffix -o lv_name,lv_size,data_percent,metadata_percent vg > "$LAB_OUT/lvs.json"
`;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const f2 = (x) => x.toFixed(2);

async function main() {
  const lab = await loadLab();
  const avail = await lab.labAvailable();
  if (!avail.ok) {
    console.error(`bench:lab: the thin-LVM lab cannot run here: ${avail.reason}`);
    process.exitCode = 2;
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'thinarchive-bench-lab-'));
  try {
    const store = join(dir, 'store');
    mkdirSync(store);
    console.log(`lab benchmark: ${DATA_MIB} MiB of data per volume, ${CHANGE_BLOCKS} x 64 KiB changed per round (1%), ${ROUNDS} rounds`);
    const t0 = performance.now();
    const run = await lab.runInLab({
      script: guestScript(lab.labPoolSetup({ poolSize: `${Math.max(3, Math.ceil((3.5 * DATA_MIB) / 1024))}G`, chunk: '64k' })),
      disks: [{ sizeBytes: 8 * 1024 * MiB }],
      env: {
        TA_IO: join(ROOT, 'scripts', 'lib', 'ta-io.mjs'), TA_IO_FILE: join(dir, 'io.jsonl'), WRITER, STORE: store,
        DATA_MIB: String(DATA_MIB), CHANGE_BLOCKS: String(CHANGE_BLOCKS), ROUNDS: String(ROUNDS), THINARCHIVE_STATE_DIR: join(dir, 'state'),
      },
      timeoutMs: 900_000,
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
    say(`\ntotal ${f2((performance.now() - t0) / 1000)} s`);

    writeFileSync(join(ROOT, 'bench-out', 'bench-lab.json'), `${JSON.stringify({
      when: new Date().toISOString(), dataMiB: DATA_MIB, changeBlocks: CHANGE_BLOCKS, rounds: ROUNDS, bootMs: run.bootMs, guestMs: run.durationMs,
      incremental: Object.fromEntries(Object.entries(inc).map(([v, xs]) => [v, xs.map((x) => ({ round: x.r, seconds: x.s.seconds, wall: x.wall, dataBytes: x.s.dataBytes, archiveBytes: x.s.archiveBytes, readBytes: x.readBytes, poolRead: x.poolRead }))])),
      halfFull: { mappedMap, mappedLvs: halfLvs.bytes, poolRead: Number(R['tdata_half-0']), readBytes: halfIo.read_bytes, seconds: half.seconds, archiveBytes: half.archiveBytes },
      baselines: { half: { ms: bhMs, bytes: bhSize, out: bhOut }, small: { ms: bsMs, bytes: bsSize, out: bsOut } },
      lvs: JSON.parse(F['lvs.json']), report: lines,
    }, null, 2)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`bench:lab failed: ${e.message}`);
  process.exitCode = 1;
});
