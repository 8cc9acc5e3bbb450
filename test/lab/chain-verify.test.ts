// verify --against VG/LV and apply --repair on real thin LVs, in ONE boot of the thin-LVM lab: a thin
// LV is sent (managed snapshots: a full and an incremental) and applied to a replica thin LV in the
// same pool; then the chain is verified against both ends (the replica, and the base snapshot the
// send left at the source), 4 KiB of noise written into one block of the replica are found (exit 3, the right block),
// apply --repair rewrites only that block, and verify passes again. The guest records results in
// $LAB_OUT; the assertions are here. Then restore --at 1 makes a new thin LV (--create --pool) that
// verifies and equals the source snapshot (sha256), as does the repaired replica.
// If the lab cannot run here the test is skipped, except under CI where that is a failure.
import { mkdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cliBuild } from './cli-build.js';
import { LAB_SLOT_WAIT_MS, labLeftovers, labPoolSetup, requireLab, runInLab } from './lab.js';

const ROOT = resolve(__dirname, '..', '..');
const VG = 'lab-vg';
const POOL = 'thin-pool';
const BAD_BLOCK = 300;

const SCRIPT = String.raw`
${labPoolSetup({ vg: VG, pool: POOL, poolSize: '512M', chunk: '64k' })}
export THINARCHIVE_STATE_DIR="$LAB_WORK/state"
ta() { node "$TA_LAUNCHER" "$@"; }
# ta_rc NAME ARGS...: run, keep stdout as NAME.json and the exit code as NAME.rc
ta_rc() { local n=$1; shift; set +e; ta "$@" > "$LAB_OUT/$n.json" 2> "$LAB_OUT/$n.err"; echo $? > "$LAB_OUT/$n.rc"; set -e; }
lvcreate -y -V 64M -T "$VG/$POOL" -n vol
dd if=/dev/urandom of="/dev/$VG/vol" bs=64k count=64 seek=10 oflag=direct status=none
dd if=/dev/urandom of="/dev/$VG/vol" bs=64k count=200 seek=250 oflag=direct status=none
ta send "$VG/vol" --to "$STORE" --json > "$LAB_OUT/send-0.json"
dd if=/dev/urandom of="/dev/$VG/vol" bs=64k count=20 seek=290 oflag=direct status=none
blkdiscard -o $((20 * 65536)) -l $((16 * 65536)) "/dev/$VG/vol"
ta send "$VG/vol" --to "$STORE" --json > "$LAB_OUT/send-1.json"
ta apply "$STORE" --to "$VG/replica" --create --pool "$VG/$POOL" --json > "$LAB_OUT/apply.json"
ta_rc verify-replica verify "$STORE" --against "$VG/replica" --json
ta_rc verify-changed verify "$STORE" --against "$VG/replica" --changed-only --json
ta_rc verify-source verify "$STORE" --against "$VG/vol_ta_default_1" --json
lvchange -ay "$VG/replica" || true
dd if=/dev/urandom of="/dev/$VG/replica" bs=4096 seek=$((${BAD_BLOCK} * 16 + 3)) count=1 conv=notrunc oflag=direct status=none
ta_rc verify-bad verify "$STORE" --against "$VG/replica" --json
ta_rc repair apply "$STORE" --to "$VG/replica" --repair --json
ta_rc verify-after verify "$STORE" --against "$VG/replica" --json
ta_rc restore-lv restore "$STORE" --at 1 --to "$VG/r1" --create --pool "$VG/$POOL" --json
ta_rc verify-restored verify "$STORE" --against "$VG/r1" --json
lvchange -ay -K "$VG/vol_ta_default_1"
lvchange -ay "$VG/r1" "$VG/replica" || true
for lv in vol_ta_default_1 r1 replica; do echo "$lv $(sha256sum "/dev/$VG/$lv" | cut -d' ' -f1)"; done > "$LAB_OUT/sha.txt"
lvchange -an "$VG/vol_ta_default_1"
lvs --noheadings -o lv_name,lv_tags "$VG" > "$LAB_OUT/lvs.txt"
`;

const tmpDirs: string[] = [];
afterAll(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true });
});

describe('verify --against VG/LV in the thin-LVM lab', () => {
  it('verifies a replica thin LV and the source base snapshot, finds a corrupted block, repairs only that block', async (ctx) => {
    await requireLab(ctx);
    const build = cliBuild('thinarchive-lab-chain');
    const host = await mkdtemp(join(tmpdir(), 'ta-lab-chain-'));
    tmpDirs.push(host);
    const store = join(host, 'store');
    mkdirSync(store);
    const run = await runInLab({
      script: SCRIPT,
      disks: [{ sizeBytes: 1024 ** 3 }],
      env: { THINARCHIVE_DIST: build.dir, TA_LAUNCHER: join(ROOT, 'test', 'lab', 'send-lv-cli.mjs'), STORE: store, VG, POOL },
      timeoutMs: 900_000, // about 100 s on CI
    });
    if (run.exitCode !== 0) console.log(run.output.slice(-6000), Object.entries(run.files).map(([k, v]) => `--- ${k}\n${v.slice(0, 2000)}`).join('\n'));
    expect(run.exitCode, run.output.slice(-4000)).toBe(0);
    expect(labLeftovers(run.pid)).toEqual([]);
    const F = run.files;
    const rc = (n: string): number => Number((F[`${n}.rc`] ?? '').trim());
    const js = <T>(n: string): T => JSON.parse(F[`${n}.json`]!) as T;
    type Against = { ok: boolean; targetKind: string; stateOk: boolean; blocks: number; blocksChecked: number; mismatchedBlocks: number; bytesRead: number; findings: { code: string; block?: number }[] };
    for (const n of ['verify-replica', 'verify-changed', 'verify-source']) expect(rc(n), `${n}: ${F[`${n}.err`]}${F[`${n}.json`]}`).toBe(0);
    const rep = js<Against>('verify-replica');
    expect(rep).toMatchObject({ ok: true, targetKind: 'lv', stateOk: true, mismatchedBlocks: 0, blocks: 1024, blocksChecked: 1024 });
    expect(rep.bytesRead).toBe(64 * 1024 * 1024);
    const src = js<Against>('verify-source');
    expect(src).toMatchObject({ ok: true, targetKind: 'lv', stateOk: true, mismatchedBlocks: 0 });
    const ch = js<Against>('verify-changed');
    expect(ch.blocksChecked).toBeGreaterThanOrEqual(36);
    expect(ch.blocksChecked).toBeLessThan(1024);
    expect(rc('verify-bad')).toBe(3);
    const bad = js<Against>('verify-bad');
    expect(bad.mismatchedBlocks).toBe(1);
    expect(bad.findings[0]).toMatchObject({ code: 'TARGET_MISMATCH', block: BAD_BLOCK });
    expect(rc('repair'), F['repair.err']).toBe(0);
    const r = js<{ badBlocks: number; blocksWritten: number; blocksZeroed: number; targetKind: string }>('repair');
    expect(r).toMatchObject({ badBlocks: 1, blocksWritten: 1, blocksZeroed: 0, targetKind: 'lv' });
    expect(rc('verify-after'), F['verify-after.json']).toBe(0);
    expect(F['lvs.txt']).toMatch(/replica\s+.*ta_state_clean/);
    // restore --to VG/LV --create --pool: a new thin LV identical to the source snapshot and the repaired replica
    expect(rc('restore-lv'), F['restore-lv.err']).toBe(0);
    expect(js<{ targetKind: string; sequence: number }>('restore-lv')).toMatchObject({ targetKind: 'lv', sequence: 1 });
    expect(rc('verify-restored'), F['verify-restored.json']).toBe(0);
    const sha = Object.fromEntries(F['sha.txt']!.trim().split('\n').map((l) => l.split(' ')));
    expect(sha.r1).toMatch(/^[0-9a-f]{64}$/);
    expect(sha.r1).toBe(sha.vol_ta_default_1);
    expect(sha.replica).toBe(sha.vol_ta_default_1);
    expect(F['lvs.txt']).toMatch(/r1\s+.*ta_state_clean/);
  }, 510_000 + LAB_SLOT_WAIT_MS);
});
