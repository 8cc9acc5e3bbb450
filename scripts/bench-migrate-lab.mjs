#!/usr/bin/env node
// Lab benchmark of `thinarchive migrate` (npm run bench:migrate-lab): a mounted ext4 thin LV (through a
// loop device, as a VM's disk) with 24 MiB of files, migrated over ssh (a private sshd on the guest's
// loopback, the remote side a thin LV of a second VG) twice in one boot of the thin-LVM lab:
//   - a light writer (test/lab/daemon-lv-writer.mjs: every second 4 KiB appended and one 64 KiB block
//     rewritten, synced: about 68 KiB/s);
//   - a heavy writer (1 MiB of random data rewritten at a random offset of a 32 MiB file, synced, every
//     50 ms plus the write's own time: megabytes a second in the guest).
// Each with --max-downtime 60s --max-rounds 6; --pause stops the writer (SIGSTOP) and syncs; the source
// and the target compared (sha256) while paused. Reported per migration: every round's kind, bytes sent
// and seconds, the predicted next round, the measured pause, or where it stopped. Writes
// bench-out/bench-migrate-lab.json.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { labForBench, ROOT } from './lib/lab.mjs';

// (a bash ${...} in the template below is written ${D}{...})
const D = '$';
const guestScript = (poolSetup) => String.raw`
${poolSetup}
ta() { node "$TA_LAUNCHER" "$@"; }
rec() { printf '%s\t%s\n' "$1" "$2" >> "$LAB_OUT/results.tsv"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
pvcreate -q -ff -y /dev/ubdb > /dev/null
vgcreate -q vg2 /dev/ubdb > /dev/null
lvcreate -q -y -T vg2/pool -L 700M --chunksize 64k -Zn > /dev/null
. "$GUEST_SSHD"
REMOTE=(--apply-remote ssh://root@127.0.0.1:2222 --remote-command "$LAB_WORK/ta-remote")
modprobe loop
lvcreate -q -y -V 128M -T vg/pool -n vm > /dev/null
DISK=$(losetup -f --show /dev/vg/vm)
mkfs.ext4 -q -E lazy_itable_init=1,lazy_journal_init=1 "$DISK"
mkdir -p /run/vm
mount -o noinit_itable "$DISK" /run/vm
head -c $((24 * 1024 * 1024)) /dev/urandom > /run/vm/base.bin
head -c $((32 * 1024 * 1024)) /dev/urandom > /run/vm/heavy.bin
sync
migrate() { # NAME WRITER_PID
  local pause="kill -STOP $2; while ! grep -q '^State:.*stopped' /proc/$2/status; do sleep 0.05; done; sync"
  local rc=0
  ta migrate vg/vm "${D}{REMOTE[@]}" --remote-to "vg2/$1" --create --pool vg2/pool --max-downtime 60s --max-rounds 6 \
    --pause "$pause" --resume "kill -CONT $2" --cutover "touch /run/cutover-$1" --json "${D}{SSHO[@]}" > "$LAB_OUT/$1.json" 2> "$LAB_OUT/$1.err" || rc=$?
  rec "$1_rc" "$rc"
  if [ -e "/run/cutover-$1" ]; then rec "$1_src" "$(sha /dev/vg/vm)"; rec "$1_tgt" "$(sha "/dev/vg2/$1")"; fi
  kill -CONT "$2" 2> /dev/null || true
}
node "$WRITER_JS" /run/stop-light /run/vm/base.bin &
LIGHT=$!
sleep 3
migrate light "$LIGHT"
touch /run/stop-light /run/stop-light.raw; wait "$LIGHT" || true
( while [ ! -e /run/stop-heavy ]; do dd if=/dev/urandom of=/run/vm/heavy.bin bs=1M count=1 seek=$((RANDOM % 32)) conv=notrunc,fsync status=none; sleep 0.05; done ) &
HEAVY=$!
sleep 3
migrate heavy "$HEAVY"
touch /run/stop-heavy; kill -CONT "$HEAVY" 2> /dev/null || true; wait "$HEAVY" || true
umount /run/vm
losetup -d "$DISK"
`;

async function main() {
  const lab = await labForBench('bench:migrate-lab');
  if (!lab) return;
  const run = await lab.runInLab({
    script: guestScript(lab.labPoolSetup({ poolSize: '600M', chunk: '64k' })),
    disks: [{ sizeBytes: 1024 ** 3 }, { sizeBytes: 1024 ** 3 }],
    memMB: 768,
    env: {
      TA_LAUNCHER: join(ROOT, 'test', 'lab', 'send-lv-cli.mjs'), THINARCHIVE_DIST: join(ROOT, 'dist'), GUEST_SSHD: join(ROOT, 'test', 'lab', 'guest-sshd.sh'),
      WRITER_JS: join(ROOT, 'test', 'lab', 'daemon-lv-writer.mjs'), THINARCHIVE_STATE_DIR: '/run/ta-state',
    },
    timeoutMs: 1_800_000,
  });
  mkdirSync(join(ROOT, 'bench-out'), { recursive: true });
  writeFileSync(join(ROOT, 'bench-out', 'bench-migrate-lab-guest.log'), run.output);
  if (run.exitCode !== 0) throw new Error(`guest failed (exit ${run.exitCode}):\n${run.output.slice(-3000)}`);
  const R = lab.parseResults(run.files['results.tsv']);
  const out = {};
  for (const name of ['light', 'heavy']) {
    const err = (run.files[`${name}.err`] ?? '').trim().split('\n').filter((l) => l.startsWith('thinarchive:')).pop() ?? '';
    let res = null;
    try { res = JSON.parse(run.files[`${name}.json`] ?? ''); } catch { /* no result: it failed */ }
    const rounds = (res?.rounds ?? []).map((r) => ({ kind: r.kind, bytesSent: r.bytesSent, seconds: +r.seconds.toFixed(2), predictedNextSeconds: r.predictedNextSeconds ?? null }));
    const equal = R[`${name}_src`] !== undefined ? R[`${name}_src`] === R[`${name}_tgt`] : null;
    out[name] = { exit: Number(R[`${name}_rc`]), rounds, pauseSeconds: res?.pauseSeconds ?? null, seconds: res?.seconds ?? null, targetEqualWhilePaused: equal, error: err || null };
    console.log(`${name} writer: exit ${out[name].exit}, ${rounds.length} rounds ${rounds.map((r) => `${r.kind} ${(r.bytesSent / 1048576).toFixed(2)} MiB ${r.seconds} s`).join(', ')}`
      + `${res ? `; pause ${res.pauseSeconds.toFixed(1)} s, target equal while paused: ${equal}` : `; ${err}`}`);
  }
  console.log(`boot ${(run.bootMs / 1000).toFixed(1)} s, guest ${(run.durationMs / 1000).toFixed(1)} s`);
  writeFileSync(join(ROOT, 'bench-out', 'bench-migrate-lab.json'), `${JSON.stringify(out, null, 2)}\n`);
}

await main();
