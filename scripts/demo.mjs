#!/usr/bin/env node
// The main job end to end on a REAL thin pool, in the thin-LVM lab (a user-mode Linux guest, see
// test/lab/lab.ts): a volume group and a thin pool on a sparse file, a thin LV with an ext4
// filesystem and real files, `thinarchive send VG/LV` (full), then files changed, added and deleted,
// fstrim, and two incremental sends, all while the filesystem stays mounted. Back on the host: the
// chain is listed, verified and applied to a new sparse image, which must be byte-identical to the
// last snapshot and pass fsck. Prints sizes and times of every step. Everything happens in a
// temporary directory that is removed afterwards.
//
// Needs: Linux, the packages user-mode-linux lvm2 thin-provisioning-tools kmod e2fsprogs, and the
// built CLI (npm run build). Run as root on Debian or Ubuntu, it installs missing packages itself.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadLab, ROOT } from './lib/lab.mjs';

const PACKAGES = ['user-mode-linux', 'lvm2', 'thin-provisioning-tools', 'kmod', 'e2fsprogs'];
const cli = join(ROOT, 'bin', 'thinarchive');
const MiB = 1024 * 1024;
const mib = (n) => `${(n / MiB).toFixed(1)} MiB`;
const secs = (ms) => `${(ms / 1000).toFixed(2)} s`;
const VG = 'demo';
const LV = 'vm-disk';

class DemoError extends Error {}

/** Debian or Ubuntu (from /etc/os-release). */
function debianLike() {
  try {
    const os = readFileSync('/etc/os-release', 'utf8');
    return /^(ID|ID_LIKE)=.*\b(debian|ubuntu)\b/m.test(os);
  } catch {
    return false;
  }
}

function missingPackages() {
  return PACKAGES.filter((p) => {
    const r = spawnSync('dpkg-query', ['-W', '-f=${Status}', p], { encoding: 'utf8' });
    return r.status !== 0 || !r.stdout.includes('install ok installed');
  });
}

/** Make sure the lab can run: install what is missing (root on Debian/Ubuntu) or say what to install. */
async function ensureLab(lab) {
  const avail = await lab.labAvailable();
  if (avail.ok) return;
  const root = process.getuid?.() === 0;
  const canInstall = process.platform === 'linux' && root && debianLike() && existsSync('/usr/bin/apt-get') && !process.env.THINARCHIVE_DEMO_INSTALLED;
  if (!canInstall) {
    const why = process.platform !== 'linux' ? 'this is not Linux' : !debianLike() ? 'this is not Debian or Ubuntu' : !root ? 'not running as root' : 'installing did not help';
    throw new DemoError(`the thin-LVM lab cannot run here: ${avail.reason}\n`
      + `The demo needs the packages ${PACKAGES.join(' ')}; on Debian or Ubuntu, as root:\n`
      + `    apt-get install -y ${PACKAGES.join(' ')}\n(not installed automatically: ${why})`);
  }
  const missing = missingPackages();
  if (missing.length === 0) throw new DemoError(`the thin-LVM lab cannot run here, although ${PACKAGES.join(' ')} are installed: ${avail.reason}`);
  console.log(`the lab cannot run yet (${avail.reason}); installing: ${missing.join(' ')}`);
  const apt = (...args) => spawnSync('apt-get', args, { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status;
  if (apt('install', '-y', '--no-install-recommends', ...missing) !== 0) {
    if (apt('update') !== 0 || apt('install', '-y', '--no-install-recommends', ...missing) !== 0) {
      throw new DemoError(`apt-get install ${PACKAGES.join(' ')} failed`);
    }
  }
  // The harness decides once per process: run the demo again in a fresh one.
  const again = spawnSync(process.execPath, process.argv.slice(1), { stdio: 'inherit', env: { ...process.env, THINARCHIVE_DEMO_INSTALLED: '1' } });
  process.exit(again.status ?? 1);
}

// The story, run as root inside the guest. Steps print `DEMO <json>` lines on the console (live).
const guestScript = (poolSetup) => String.raw`
say() { printf 'DEMO %s\n' "$1" > /dev/console; }
now() { echo $(( $(date +%s%N) / 1000000 )); }
ta() { node "$CLI" "$@"; }
step() { STEP=$1; T=$(now); say "{\"start\":\"$1\"}"; }
done_() { local ms=$(( $(now) - T )) extra=; [ -z "$1" ] || extra=",$1"; say "{\"done\":\"$STEP\",\"ms\":$ms$extra}"; }
mapped() { set -- $(lvs --noheadings --units b --nosuffix -o lv_size,data_percent "$1"); echo "\"size\":$1,\"dataPercent\":$2"; }
base() { lvs --noheadings -o lv_name,lv_tags "$VG" | awk '$2 ~ /thinarchive/ && $2 !~ /ta_pending/ {print $1}'; }
# (the result is read by the host from $LAB_OUT; the volume is not written to while the demo sends, so
# its mapped size is the snapshot's)
send() {
  THINARCHIVE_LOG=warn ta send "$VG/$LV" --to "$STORE" --json > "$LAB_OUT/send-$1.json"
  done_ "\"file\":\"send-$1.json\",\"volume\":{$(mapped "$VG/$LV")}"
}
MNT=/run/vm-disk

step pool
${poolSetup}
lvcreate -q -y -V 1G -T "$VG/pool" -n "$LV" > /dev/null
done_ "\"pool\":{$(mapped "$VG/pool")},\"volume\":{$(mapped "$VG/$LV")}"

step files
mkfs.ext4 -q -E lazy_itable_init=1,lazy_journal_init=1 "/dev/$VG/$LV"
mkdir -p "$MNT"
mount -o noinit_itable "/dev/$VG/$LV" "$MNT"
mkdir -p "$MNT/etc" "$MNT/var/log" "$MNT/srv/data" "$MNT/home/user"
cp -r /usr/share/zoneinfo "$MNT/etc/zoneinfo"
cp -r "$REPO/src" "$MNT/home/user/thinarchive-src"
seq 1 30000 | awk '{ printf "Nov 22 12:00:%02d web-1 nginx: GET /api/items/%d 200 %d bytes\n", $1 % 60, $1, $1 * 7 % 9000 }' > "$MNT/var/log/access.log"
head -c $((40 * 1024 * 1024)) /dev/urandom > "$MNT/srv/data/database.bin"
head -c $((16 * 1024 * 1024)) /dev/urandom > "$MNT/srv/data/old-backup.bin"
sync
done_ "\"files\":\"$(du -sh "$MNT" | cut -f1)\",\"volume\":{$(mapped "$VG/$LV")}"

step full
send 0

step change1
seq 1 5000 | awk '{ printf "Nov 22 13:00:%02d web-1 nginx: POST /api/orders/%d 201\n", $1 % 60, $1 }' >> "$MNT/var/log/access.log"
dd if=/dev/urandom of="$MNT/srv/data/database.bin" bs=64k seek=100 count=48 conv=notrunc status=none
rm "$MNT/srv/data/old-backup.bin"
head -c $((4 * 1024 * 1024)) /dev/urandom > "$MNT/home/user/photo.jpg"
sync; fstrim "$MNT"; sync
done_ "\"what\":\"+5000 log lines, 3 MiB of database.bin rewritten, old-backup.bin (16 MiB) deleted, photo.jpg (4 MiB) added, fstrim\""

step incr1
send 1

step change2
rm -r "$MNT/etc/zoneinfo/America" "$MNT/etc/zoneinfo/Asia"
dd if=/dev/urandom of="$MNT/srv/data/database.bin" bs=64k seek=400 count=16 conv=notrunc status=none
cp "$MNT/home/user/photo.jpg" "$MNT/home/user/photo-copy.jpg"
sync; fstrim "$MNT"; sync
done_ "\"what\":\"zoneinfo/America and Asia deleted, 1 MiB of database.bin rewritten, photo copied (4 MiB), fstrim\""

step incr2
send 2

step hash
SNAP=$(base)
lvchange -ay -K "$VG/$SNAP"
SHA=$(sha256sum "/dev/$VG/$SNAP" | cut -d' ' -f1)
lvchange -an "$VG/$SNAP"
done_ "\"snapshot\":\"$SNAP\",\"sha256\":\"$SHA\""
umount "$MNT"
`;

async function sha256(path) {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk);
  return h.digest('hex');
}

function duBytes(dir) {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .reduce((n, e) => n + statSync(join(e.parentPath ?? e.path, e.name)).size, 0);
}

function host(args, what) {
  console.log(`\n$ thinarchive ${args.join(' ')}`);
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
  const ms = performance.now() - t0;
  if (!args.includes('--json')) process.stdout.write(r.stdout);
  process.stdout.write(r.stderr);
  if (r.status !== 0) throw new DemoError(`${what} failed (exit ${r.status})`);
  return { out: r.stdout, ms };
}

async function main() {
  const t0 = performance.now();
  if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) throw new DemoError('the CLI is not built: run npm run build (or npm ci) first');
  const lab = await loadLab().catch((e) => {
    throw new DemoError(e.message);
  });
  await ensureLab(lab);
  const dir = mkdtempSync(join(tmpdir(), 'thinarchive-demo-'));
  try {
    const store = join(dir, 'store');
    const image = join(dir, 'restored.img');
    console.log(`thinarchive demo on a real thin pool (user-mode Linux lab); work directory ${dir}`);
    const outDir = join(dir, 'out');
    const events = [];
    let pending = '';
    const show = (e) => {
      if (e.start) return process.stdout.write(`\n[guest] ${e.start} ... `);
      events.push(e);
      const t = secs(e.ms);
      switch (e.done) {
        case 'pool':
          return console.log(`${t}\n  VG ${VG} on a 2 GiB sparse file, thin pool of ${mib(e.pool.size)} (64 KiB chunks), thin LV ${VG}/${LV} of ${mib(e.volume.size)}`);
        case 'files':
          return console.log(`${t}\n  ext4 made and mounted; ${e.files} of files written (zoneinfo, source code, a log, 56 MiB of binary data); mapped ${mib((e.volume.dataPercent / 100) * e.volume.size)}`);
        case 'full': case 'incr1': case 'incr2': {
          const s = JSON.parse(readFileSync(join(outDir, e.file), 'utf8'));
          e.send = s;
          return console.log(`${t}\n  $ thinarchive send ${VG}/${LV} --to STORE   -> ${s.full ? 'full' : 'incremental'} archive #${s.sequence} from snapshot ${s.snapshot.name}\n`
            + `  volume ${mib(s.volumeSize)}, snapshot mapped ${mib((e.volume.dataPercent / 100) * e.volume.size)}; sent ${mib(s.dataBytes)} data`
            + `${s.unmapBytes ? `, ${mib(s.unmapBytes)} unmapped (trimmed/never written)` : ''}; archive ${mib(s.archiveBytes)}; send took ${s.seconds.toFixed(2)} s`);
        }
        case 'hash':
          return console.log(`${t}\n  snapshot ${e.snapshot} sha256 ${e.sha256}`);
        default:
          return console.log(`${t}${e.what ? `\n  ${e.what}` : ''}`);
      }
    };
    const run = await lab.runInLab({
      script: guestScript(lab.labPoolSetup({ vg: VG, pool: 'pool', poolSize: '1536M', chunk: '64k' })),
      disks: [{ sizeBytes: 2 * 1024 * MiB }],
      env: { CLI: cli, REPO: ROOT, STORE: store, VG, LV, THINARCHIVE_STATE_DIR: join(dir, 'state') },
      outDir,
      timeoutMs: 240_000,
      onConsole: (text) => {
        pending += text;
        let nl;
        while ((nl = pending.indexOf('\n')) >= 0) {
          const line = pending.slice(0, nl);
          pending = pending.slice(nl + 1);
          const m = /^DEMO (\{.*\})$/.exec(line.trim());
          if (m) show(JSON.parse(m[1]));
        }
      },
    }).catch((e) => {
      throw new DemoError(`the lab failed: ${e.message}`);
    });
    if (run.exitCode !== 0) {
      throw new DemoError(`the guest script failed (exit ${run.exitCode}):\n${run.output.trim().split('\n').slice(-15).join('\n')}`);
    }
    const tGuest = run.durationMs;
    console.log(`\n[guest] done: boot ${secs(run.bootMs)}, whole guest run ${secs(tGuest)}`);
    const sent = ['full', 'incr1', 'incr2'].map((k) => events.find((e) => e.done === k).send);
    const { sha256: snapSha, snapshot: snapName } = events.find((e) => e.done === 'hash');
    const lastSnap = events.find((e) => e.done === 'incr2').volume;

    console.log('\n[host] the archives, checked and applied to a new sparse image:');
    host(['list', store], 'list');
    const verify = host(['verify', store], 'verify');
    const apply = host(['apply', store, '--to', image, '--create', '--json'], 'apply');
    const applied = JSON.parse(apply.out).applied;
    for (const a of applied) console.log(`  applied #${a.sequence}: ${mib(a.dataBytes)} written, ${mib(a.zeroBytes)} zeroed/unmapped, ${a.seconds.toFixed(2)} s`);
    const t1 = performance.now();
    const imgSha = await sha256(image);
    const fsck = spawnSync('fsck.ext4', ['-n', '-f', image], { encoding: 'utf8' });
    const tCheck = performance.now() - t1;
    const allocated = statSync(image).blocks * 512;
    const mapped = (lastSnap.dataPercent / 100) * lastSnap.size;
    const archives = duBytes(store);

    console.log('\nsummary');
    console.log(`  volume              ${mib(lastSnap.size)} thin LV ${VG}/${LV}, mapped ${mib(mapped)} (${lastSnap.dataPercent}%) at the last snapshot`);
    for (const s of sent) {
      console.log(`  archive #${s.sequence} ${s.full ? 'full       ' : 'incremental'} ${mib(s.archiveBytes).padStart(9)} (data sent ${mib(s.dataBytes)}, unmapped ${mib(s.unmapBytes)}) in ${s.seconds.toFixed(2)} s`);
    }
    console.log(`  archives total      ${mib(archives)} in ${store}`);
    console.log(`  verify              ${secs(verify.ms)}; apply of the chain ${secs(apply.ms)}; sha256 + fsck of the image ${secs(tCheck)}`);
    console.log(`  restored image      ${mib(statSync(image).size)} apparent, ${mib(allocated)} allocated (the volume maps ${mib(mapped)}; blocks of zeroes stay holes)`);
    console.log(`  snapshot ${snapName} sha256 ${snapSha}`);
    console.log(`  restored image  sha256 ${imgSha}`);
    console.log(`  fsck.ext4 -n        ${fsck.status === 0 ? 'clean' : `exit ${fsck.status}`}: ${fsck.stdout.trim().split('\n').at(-1)}`);
    console.log(`  total demo time     ${secs(performance.now() - t0)}`);
    if (imgSha !== snapSha) throw new DemoError('the restored image differs from the snapshot');
    if (fsck.status !== 0) throw new DemoError(`fsck.ext4 -n of the restored image failed:\n${fsck.stdout}${fsck.stderr}`);
    console.log('\nOK: the image rebuilt from the archives is byte-identical to the last snapshot of the live volume.');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`\ndemo failed: ${e instanceof DemoError ? e.message : e.stack}`);
  process.exitCode = 1;
});
