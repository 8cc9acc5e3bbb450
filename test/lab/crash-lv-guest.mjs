// Runs INSIDE the thin-LVM lab guest for test/lab/crash-lv.test.ts: one node process drives the whole
// scenario (node starts slowly in the guest), spawning the CLI only for what is killed.
//
// 1. apply to thin LV targets, killed with SIGKILL at random points: each point gets its own target
//    vg/tK, a thin snapshot of vg/base (at sequence 0) carrying base's state tags; `apply A1 A2 --to
//    vg/tK` is killed after a random number of target writes (THINARCHIVE_TEST_KILL_AFTER_WRITES) or
//    a random delay after the rollback snapshot appears; then recovered by recover() or by apply()
//    (the library calls the CLI makes, in this process). Recorded per point: the state tags, sha256 of
//    the LV, its uuid before/after, leftover rollback snapshots.
// 1c. concurrent applies onto one thin LV (issue 19): one writer at a time, the others refused, a
//    writer killed holding the target recovered by the next (--wait) one.
// 2. send vg/src killed at random delays: the store listing (no partial archive), the chain's base
//    snapshot (still there), and the next send (succeeds); at the end the store's chain is applied to
//    a new LV and compared with the source.
// Env: ROOT, THINARCHIVE_DIST, FIX (host dir with the archives and shas.json), POINTS, SEND_POINTS, CONC_ROUNDS,
// LAB_OUT, LAB_WORK.
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const { ROOT, THINARCHIVE_DIST: DIST, FIX, LAB_OUT: OUT, LAB_WORK: WORK } = process.env;
const POINTS = Number(process.env.POINTS);
const THICK_POINTS = Number(process.env.THICK_POINTS);
// thick LVs keep their undo journal under the state directory: not on the host's /var/lib
process.env.THINARCHIVE_STATE_DIR = join(WORK, 'state');
const SEND_POINTS = Number(process.env.SEND_POINTS);
const CONC_ROUNDS = Number(process.env.CONC_ROUNDS ?? 0);
const fx = JSON.parse(execFileSync('cat', [join(FIX, 'fixture.json')], { encoding: 'utf8' }));
const { recover } = await import(join(DIST, 'api/index.js'));
const { apply } = await import(join(DIST, 'api/index.js'));
const { verify } = await import(join(DIST, 'api/index.js'));
const { parsePoolStatus } = await import(join(DIST, 'lvm/pool-status.js'));

const sh = (cmd, ...args) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
/** The pool's held metadata snapshot root, null when none (src/lvm's parser of `dmsetup status`). */
const poolHeldRoot = () => {
  const st = parsePoolStatus(sh('dmsetup', 'status', 'vg-pool-tpool'));
  if (st.state !== 'ok') throw new Error(`pool status ${st.state}`);
  return st.heldRoot;
};
const lvs = (vg) => JSON.parse(sh('lvs', '--reportformat', 'json', '-o', 'lv_name,lv_uuid,lv_tags,origin,lv_attr', vg)).report[0].lv;
const sha = (path) => new Promise((res, rej) => {
  const h = createHash('sha256');
  createReadStream(path).on('data', (b) => h.update(b)).on('end', () => res(h.digest('hex'))).on('error', rej);
});
let seed = 12345;
const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
const results = { points: [], thick: [], concurrent: [], sends: [], timings: {} };
const T0 = Date.now();
const mark = (k) => { results.timings[k] = Date.now() - T0; };
const save = () => writeFileSync(join(OUT, 'results.json'), JSON.stringify(results, null, 1));

function cli(args, env = {}) {
  const child = spawn(process.execPath, [join(ROOT, 'bin', 'thinarchive'), ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (b) => { out += b; });
  child.stderr.on('data', (b) => { err += b; });
  const done = new Promise((res) => child.on('close', (code, signal) => res({ code, signal, out, err })));
  return { child, done };
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

sh('pvcreate', '-ff', '-y', '/dev/ubda');
sh('vgcreate', 'vg', '/dev/ubda');
sh('lvcreate', '-y', '-T', 'vg/pool', '-L', '600M', '--chunksize', '64k', '-Zy');
let r = await cli(['apply', fx.a0, '--to', 'vg/base', '--create', '--pool', 'vg/pool']).done;
if (r.code !== 0) throw new Error(`apply base: ${r.err}`);
const baseTags = lvs('vg/base')[0].lv_tags.split(',').filter((t) => t.startsWith('ta_') && t !== 'ta_created');
mark('setup');

// ---- 1. apply to thin LVs, killed
for (let k = 0; k < POINTS; k++) {
  const name = `t${k}`;
  const argv = ['lvcreate', '-s', '-kn', '-n', name];
  for (const t of baseTags) argv.push('--addtag', t);
  sh(...argv, 'vg/base');
  const uuid = lvs(`vg/${name}`)[0].lv_uuid;
  const byCount = k % 2 === 0;
  const env = byCount ? { THINARCHIVE_TEST_KILL_AFTER_WRITES: String(1 + Math.floor(rand() * 250)) } : {};
  const p = cli(['apply', fx.a1, fx.a2, '--to', `vg/${name}`], env);
  if (!byCount) {
    const dev = `/dev/vg/${name}_ta_rollback`;
    const t0 = Date.now();
    while (p.child.exitCode === null && !existsSync(dev) && Date.now() - t0 < 30_000) await sleep(5);
    await sleep(Math.floor(rand() * 2500));
    p.child.kill('SIGKILL');
  }
  const a = await p.done;
  const point = { k, how: byCount ? `after ${env.THINARCHIVE_TEST_KILL_AFTER_WRITES} writes` : 'timer', killed: a.signal === 'SIGKILL', applyCode: a.code, applyErr: a.err.slice(-500) };
  const before = lvs('vg').find((l) => l.lv_name === name);
  point.tagsAfterKill = before.lv_tags;
  point.rollbackAfterKill = lvs('vg').some((l) => l.lv_tags.includes(`ta_rollbackof_${uuid}`));
  try {
    if (k % 4 < 2) {
      const rec = await recover({ target: `vg/${name}` });
      point.via = 'recover';
      point.action = rec.action;
    } else {
      const res = await apply({ inputs: [fx.a1, fx.a2], to: `vg/${name}` });
      point.via = 'apply';
      point.action = res.recovered?.action ?? 'none';
      point.applied = res.applied.map((x) => x.sequence);
    }
  } catch (e) {
    point.error = String(e?.message ?? e);
  }
  const after = lvs('vg');
  const me = after.find((l) => l.lv_name === name);
  point.uuidKept = me?.lv_uuid === uuid;
  point.tags = me?.lv_tags ?? '';
  point.leftover = after.filter((l) => l.lv_tags.includes(`ta_rollbackof_${uuid}`)).map((l) => l.lv_name);
  point.sha = await sha(`/dev/vg/${name}`);
  sh('lvremove', '-y', `vg/${name}`);
  results.points.push(point);
  save();
}
mark('apply_points');

// ---- 1b. thick LVs (undo journal), killed after a random number of writes
for (let k = 0; k < THICK_POINTS; k++) {
  const name = `k${k}`;
  sh('lvcreate', '-y', '-L', '8M', '-n', name, 'vg');
  const uuid = lvs(`vg/${name}`)[0].lv_uuid;
  r = await cli(['apply', fx.a0, '--to', `vg/${name}`, '--force']).done;
  if (r.code !== 0) throw new Error(`apply thick: ${r.err}`);
  const env = { THINARCHIVE_TEST_KILL_AFTER_WRITES: String(5 + Math.floor(rand() * 150)) };
  const a = await cli(['apply', fx.a1, fx.a2, '--to', `vg/${name}`], env).done;
  const point = { k, how: `after ${env.THINARCHIVE_TEST_KILL_AFTER_WRITES} writes`, killed: a.signal === 'SIGKILL', applyCode: a.code, applyErr: a.err.slice(-500) };
  point.tagsAfterKill = lvs(`vg/${name}`)[0].lv_tags;
  point.journalAfterKill = existsSync(join(WORK, 'state', 'lv', 'vg', `${name}.undo`));
  try {
    const rec = await recover({ target: `vg/${name}` });
    point.via = 'recover';
    point.action = rec.action;
  } catch (e) {
    point.error = String(e?.message ?? e);
  }
  const me = lvs(`vg/${name}`)[0];
  point.uuidKept = me.lv_uuid === uuid;
  point.tags = me.lv_tags;
  point.leftover = existsSync(join(WORK, 'state', 'lv', 'vg', `${name}.undo`)) ? ['journal'] : [];
  point.sha = await sha(`/dev/vg/${name}`);
  sh('lvremove', '-y', `vg/${name}`);
  results.thick.push(point);
  save();
}
mark('thick_points');

// ---- 1c. concurrent applies onto one thin LV (issue 19): two (every third round three, with a
// recover) writers at random offsets; one holds the target, the others are refused (TARGET_LOCKED).
// Every fifth round the first kills itself holding the lock and the second, started with --wait,
// recovers what it left.
for (let j = 0; j < CONC_ROUNDS; j++) {
  const name = `c${j}`;
  const argv = ['lvcreate', '-s', '-kn', '-n', name];
  for (const t of baseTags) argv.push('--addtag', t);
  sh(...argv, 'vg/base');
  const uuid = lvs(`vg/${name}`)[0].lv_uuid;
  const kill = j % 5 === 4;
  const writers = [
    { args: ['apply', fx.a1, fx.a2, '--to', `vg/${name}`], env: kill ? { THINARCHIVE_TEST_KILL_AFTER_WRITES: String(1 + Math.floor(rand() * 100)) } : {}, at: 0 },
    { args: ['apply', fx.a1, fx.a2, '--to', `vg/${name}`, ...(kill ? ['--wait'] : [])], env: {}, at: Math.floor(rand() * 2000) },
  ];
  if (j % 3 === 2 && !kill) writers.push({ args: ['recover', `vg/${name}`], env: {}, at: Math.floor(rand() * 2000) });
  const t0 = Date.now();
  const outs = await Promise.all(writers.map(async (w) => {
    await sleep(Math.max(0, w.at - (Date.now() - t0)));
    const o = await cli(w.args, w.env).done;
    return { cmd: w.args[0] + (w.args.includes('--wait') ? ' --wait' : ''), at: w.at, code: o.code, signal: o.signal, err: o.err.slice(-600) };
  }));
  const after = lvs('vg');
  const me = after.find((l) => l.lv_name === name);
  results.concurrent.push({
    j, kill, writers: outs, tags: me?.lv_tags ?? '', uuidKept: me?.lv_uuid === uuid,
    leftover: after.filter((l) => l.lv_tags.includes(`ta_rollbackof_${uuid}`)).map((l) => l.lv_name), sha: await sha(`/dev/vg/${name}`),
  });
  sh('lvremove', '-y', `vg/${name}`);
  save();
}
mark('concurrent_rounds');

// ---- 2. send vg/src, killed
const STORE = join(WORK, 'store');
sh('lvcreate', '-y', '-V', '16M', '-T', 'vg/pool', '-n', 'src');
const fill = (mib, seek) => sh('dd', 'if=/dev/urandom', 'of=/dev/vg/src', 'bs=1M', `count=${mib}`, `seek=${seek}`, 'oflag=direct', 'status=none');
fill(16, 0);
r = await cli(['send', 'vg/src', '--to', STORE, '--json']).done;
if (r.code !== 0) throw new Error(`first send: ${r.err}`);
const tnas = () => readdirSync(STORE, { recursive: true }).map(String).filter((n) => n.endsWith('.tna')).sort();
const ourSnaps = () => lvs('vg').filter((l) => l.lv_tags.split(',').includes('thinarchive')).map((l) => `${l.lv_name}:${l.lv_uuid}:${l.lv_tags.includes('ta_pending') ? 'pending' : 'base'}`);
for (let j = 0; j < SEND_POINTS; j++) {
  // (8-9 MiB of random data at --level 19: the kill, 1.5-4 s in, lands before the commit most times)
  fill(8 + j, j);
  const before = { tnas: tnas(), snaps: ourSnaps() };
  const p = cli(['send', 'vg/src', '--to', STORE, '--level', '19']);
  await sleep(1500 + Math.floor(rand() * 2500));
  p.child.kill('SIGKILL');
  const s = await p.done;
  const afterKill = { tnas: tnas(), snaps: ourSnaps() };
  const afterKillHeld = poolHeldRoot();
  const next = await cli(['send', 'vg/src', '--to', STORE, '--json', '--level', '1']).done;
  results.sends.push({ j, killed: s.signal === 'SIGKILL', code: s.code, before, afterKill, afterKillHeld, nextCode: next.code, nextErr: next.err.slice(-800), heldAtEnd: poolHeldRoot(), after: { tnas: tnas(), snaps: ourSnaps() } });
  save();
}
const v = await verify({ inputs: [STORE] });
results.verifyOk = v.ok;
results.verifyArchives = v.archives.length;
const srcSha = await sha('/dev/vg/src');
const chainDir = readdirSync(STORE).filter((n) => !n.startsWith('.')).map((n) => join(STORE, n))[0];
r = await cli(['apply', chainDir, '--to', 'vg/restore', '--create', '--pool', 'vg/pool']).done;
results.restoreCode = r.code;
results.restoreErr = r.err.slice(-800);
results.restoreMatches = r.code === 0 && (await sha('/dev/vg/restore')) === srcSha;
mark('send_points');
save();
