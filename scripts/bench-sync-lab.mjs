#!/usr/bin/env node
// Lab benchmark of `thinarchive sync` (npm run bench:sync-lab): a 4 GiB thin LV, 25% mapped (1 GiB of
// random data in 1 MiB pieces spread over it), and two copies of it (thin snapshots, made writable)
// with the same 1% of the volume's blocks changed (64 KiB blocks inside the data). Compared, in one
// boot of the thin-LVM lab:
//   - sync of the thin LV (VG/LV): only the mapped blocks are read at the source;
//   - the hash-both-sides approach (blocksync, bdsync): sync of the same volume as a plain block device
//     (/dev/VG/LV), which reads and hashes every block at both sides.
// Each brings one copy up to date (sha256 checked); reported: bytes read at the source and the target,
// bytes sent, wall time. Writes bench-out/bench-sync-lab.json.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { labForBench, ROOT } from './lib/lab.mjs';

const MiB = 1024 * 1024;

const WRITER = String.raw`
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
const [dev, mode, n, seed] = process.argv.slice(1);
const fd = openSync(dev, 'r+');
const buf = Buffer.alloc(1048576);
// 1024 pieces of 1 MiB, one every 4 MiB
if (mode === 'fill') for (let i = 0; i < 1024; i++) writeSync(fd, randomFillSync(buf), 0, buf.length, i * 4 * 1048576);
else {
  let s = Number(seed) >>> 0;
  const rnd = () => { s = (s + 0x6d2b79f5) >>> 0; let t = s; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
  const picked = new Set();
  while (picked.size < Number(n)) picked.add(Math.floor(rnd() * 1024 * 16));
  const b = buf.subarray(0, 65536);
  for (const k of picked) writeSync(fd, randomFillSync(b), 0, b.length, Math.floor(k / 16) * 4 * 1048576 + (k % 16) * 65536);
}
fsyncSync(fd);
closeSync(fd);
`;

const guestScript = (poolSetup) => String.raw`
${poolSetup}
ta() { node "$TA" "$@"; }
rec() { printf '%s\t%s\n' "$1" "$2" >> "$LAB_OUT/results.tsv"; }
now() { date +%s%N; }
w() { node --input-type=module -e "$WRITER" "$@"; }
lvcreate -q -y -V 4G -T vg/pool -n vol > /dev/null
w /dev/vg/vol fill
for c in a b; do
  lvcreate -q -y -s -n "copy_$c" vg/vol > /dev/null
  lvchange -q -ay -K "vg/copy_$c"
  w "/dev/vg/copy_$c" change 655 7
done
sync
echo 3 > /proc/sys/vm/drop_caches
rec src_sha "$(sha256sum /dev/vg/vol | cut -d' ' -f1)"
echo 3 > /proc/sys/vm/drop_caches
t0=$(now); THINARCHIVE_LOG=debug timeout 600 node "$TA" sync vg/vol --to vg/copy_a --json > "$LAB_OUT/thin.json" 2> "$LAB_OUT/thin.log" || rec thin_rc $?; t1=$(now); rec thin_ms $(( (t1 - t0) / 1000000 ))
echo 3 > /proc/sys/vm/drop_caches
t0=$(now); THINARCHIVE_LOG=debug timeout 900 node "$TA" sync /dev/vg/vol --to vg/copy_b --json > "$LAB_OUT/full.json" 2> "$LAB_OUT/full.log" || rec full_rc $?; t1=$(now); rec full_ms $(( (t1 - t0) / 1000000 ))
rec a_sha "$(sha256sum /dev/vg/copy_a | cut -d' ' -f1)"
rec b_sha "$(sha256sum /dev/vg/copy_b | cut -d' ' -f1)"
rec dp "$(lvs --noheadings -o data_percent vg/vol | tr -d ' ')"
`;

async function main() {
  const lab = await labForBench('bench:sync-lab');
  if (!lab) return;
  const run = await lab.runInLab({
    script: guestScript(lab.labPoolSetup({ poolSize: '4G', chunk: '64k' })),
    disks: [{ sizeBytes: 6 * 1024 * MiB }],
    env: { TA: join(ROOT, 'bin', 'thinarchive'), WRITER, THINARCHIVE_STATE_DIR: '/run/ta-state' },
    timeoutMs: 1_200_000,
  });
  mkdirSync(join(ROOT, 'bench-out'), { recursive: true });
  writeFileSync(join(ROOT, 'bench-out', 'bench-sync-lab-guest.log'), run.output);
  for (const f of ['thin.log', 'full.log']) if (run.files[f]) writeFileSync(join(ROOT, 'bench-out', `bench-sync-lab-${f}`), run.files[f]);
  if (run.exitCode !== 0) throw new Error(`guest failed (exit ${run.exitCode}):\n${run.output.slice(-3000)}`);
  const R = lab.parseResults(run.files['results.tsv']);
  if (R.thin_rc || R.full_rc) throw new Error(`a sync failed (thin: ${R.thin_rc ?? 0}, full: ${R.full_rc ?? 0}); logs in bench-out/bench-sync-lab-*.log`);
  const thin = JSON.parse(run.files['thin.json']);
  const full = JSON.parse(run.files['full.json']);
  if (R.a_sha !== R.src_sha || R.b_sha !== R.src_sha) throw new Error('a synced copy differs from the source');
  const row = (name, r, ms) => ({
    name, sourceBytesRead: r.sourceSide.bytesRead, targetBytesRead: r.targetSide.bytesRead, bytesSent: r.bytesSent, bytesReceived: r.bytesReceived,
    dataBlocks: r.dataBlocks, seconds: ms / 1000,
  });
  const rows = [row('sync VG/LV (mapped blocks only)', thin, Number(R.thin_ms)), row('hash both sides (sync /dev/VG/LV)', full, Number(R.full_ms))];
  console.log(`4 GiB thin LV, ${R.dp}% mapped, 655 x 64 KiB blocks (1%) differing; boot ${(run.bootMs / 1000).toFixed(1)} s`);
  for (const r of rows) {
    console.log(`${r.name.padEnd(36)} source read ${(r.sourceBytesRead / MiB).toFixed(0).padStart(5)} MiB, target read ${(r.targetBytesRead / MiB).toFixed(0).padStart(5)} MiB, sent ${(r.bytesSent / MiB).toFixed(1)} MiB, ${r.seconds.toFixed(1)} s`);
  }
  writeFileSync(join(ROOT, 'bench-out', 'bench-sync-lab.json'), `${JSON.stringify({ mappedPercent: Number(R.dp), rows }, null, 2)}\n`);
}

await main();
