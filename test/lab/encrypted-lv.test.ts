// Write-only encrypted sends of a real thin LV, in ONE boot of the thin-LVM lab: the guest (the VM
// host) has only the recipient (no identity anywhere: THINARCHIVE_IDENTITY unset, no key file) and
// sends a full archive and three incrementals with managed snapshots (`send VG/LV --encrypt-to`),
// recording the volume's sha256 before each send. A second "host" (this process, its own state dir,
// with the identity) restores every point from the store to an image and compares it byte for byte;
// without the identity the guest could list the chain but not read it (AGE_NO_IDENTITY, exit 2).
// If the lab cannot run here the test is skipped, except under CI where that is a failure.
import { mkdirSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { run, runOk, sha256, show } from '../helpers/cli.js';
import { cliBuild } from './cli-build.js';
import { LAB_SLOT_WAIT_MS, labLeftovers, labPoolSetup, requireLab, runInLab } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');
const VG = 'lab-vg';
const POOL = 'thin-pool';

const SCRIPT = String.raw`
${labPoolSetup({ vg: VG, pool: POOL, poolSize: '512M', chunk: '64k' })}
export THINARCHIVE_STATE_DIR="$LAB_WORK/state"
unset THINARCHIVE_IDENTITY
ta() { node "$TA_LAUNCHER" "$@"; }
ta_rc() { local n=$1; shift; set +e; ta "$@" > "$LAB_OUT/$n.json" 2> "$LAB_OUT/$n.err"; echo $? > "$LAB_OUT/$n.rc"; set -e; }
lvcreate -y -V 32M -T "$VG/$POOL" -n vol
dd if=/dev/urandom of="/dev/$VG/vol" bs=64k count=40 seek=10 oflag=direct status=none
for i in 0 1 2 3; do
  if [ "$i" -gt 0 ]; then
    dd if=/dev/urandom of="/dev/$VG/vol" bs=64k count=3 seek=$((100 + 37 * i)) oflag=direct status=none
    blkdiscard -o $(((10 + 5 * i) * 65536)) -l 65536 "/dev/$VG/vol"
  fi
  echo "$i $(sha256sum "/dev/$VG/vol" | cut -d' ' -f1)" >> "$LAB_OUT/sha.txt"
  ta send "$VG/vol" --to "$STORE" --encrypt-to "$RECIPIENT" --json > "$LAB_OUT/send-$i.json"
done
ta_rc list list "$STORE" --json
ta_rc restore-nokey restore "$STORE" --to "$LAB_WORK/nokey.img" --create --json
`;

const tmpDirs: string[] = [];
afterAll(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true });
});

describe('write-only encrypted sends of a thin LV in the lab', () => {
  it('a host with only the recipient sends a full and three incrementals; a second host with the identity restores each point byte for byte', async (ctx) => {
    await requireLab(ctx);
    const build = cliBuild('thinarchive-lab-encrypted');
    const host = await mkdtemp(join(tmpdir(), 'ta-lab-enc-'));
    tmpDirs.push(host);
    const store = join(host, 'store');
    mkdirSync(store);
    const key = join(host, 'restore-host.key');
    const recipient = (await runOk(['key', 'generate', '--out', key])).stdout.trim();
    const lab = await runInLab({
      script: SCRIPT,
      disks: [{ sizeBytes: 1024 ** 3 }],
      env: { THINARCHIVE_DIST: build.dir, TA_LAUNCHER: join(ROOT, 'test', 'lab', 'send-lv-cli.mjs'), STORE: store, VG, POOL, RECIPIENT: recipient },
      timeoutMs: 600_000,
    });
    if (lab.exitCode !== 0) console.log(lab.output.slice(-6000), Object.entries(lab.files).map(([k, v]) => `--- ${k}\n${v.slice(0, 2000)}`).join('\n'));
    expect(lab.exitCode, lab.output.slice(-4000)).toBe(0);
    expect(labLeftovers(lab.pid)).toEqual([]);
    const F = lab.files;
    const sends = [0, 1, 2, 3].map((i) => JSON.parse(F[`send-${i}.json`]!) as { sequence: number; full: boolean; path: string });
    expect(sends.map((s) => [s.sequence, s.full])).toEqual([[0, true], [1, false], [2, false], [3, false]]);
    for (const s of sends) expect(s.path).toMatch(/\.tna\.age$/);
    expect(Number(F['list.rc']), F['list.err']).toBe(0);
    const listed = JSON.parse(F['list.json']!) as { archives: { sequence: number; status: string }[] }[];
    expect(listed[0].archives.map((a) => [a.sequence, a.status])).toEqual([0, 1, 2, 3].map((s) => [s, 'encrypted (no identity given)']));
    expect(Number(F['restore-nokey.rc'])).toBe(2);
    expect(F['restore-nokey.err']).toMatch(/is encrypted .*give --identity/);
    const chain = readdirSync(store).find((n) => /^[0-9a-f-]{36}$/.test(n))!;
    expect(readdirSync(join(store, chain)).filter((n) => !n.startsWith('.'))).toHaveLength(4);

    const hashes = Object.fromEntries(F['sha.txt']!.trim().split('\n').map((l) => l.split(' ')));
    for (let i = 0; i < 4; i++) {
      const t = join(host, `r${i}.img`);
      const r = await run(['restore', store, '--at', String(i), '--to', t, '--create', '--identity', key], { env: { THINARCHIVE_STATE_DIR: join(host, 'host2') } });
      expect(r.code, show(r)).toBe(0);
      expect(await sha256(t), `point ${i}`).toBe(hashes[String(i)]);
    }
  }, 330_000 + LAB_SLOT_WAIT_MS);
});
