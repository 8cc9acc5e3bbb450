// Runs INSIDE the thin-LVM lab guest (see test/lab/lvm.test.ts): exercises the compiled src/lvm
// modules against a real thin pool and writes what it observed to $LAB_OUT/result.json, which the
// host-side test asserts on. It asserts little itself: a failing step is recorded, not thrown.
//
//   node lvm-guest.mjs main                   the scenario (spawns the children below)
//   node lvm-guest.mjs hold STATEDIR          reserve, print HELD, wait forever (SIGKILL / SIGTERM tests)
//   node lvm-guest.mjs contend STATEDIR MS    reserve, print HELD, hold MS, release
// Children print READY once their imports are done and start on a "go" line on stdin, so their
// start-up overlaps the parent's work.
//
// Env: THINARCHIVE_DIST (the compiled src, i.e. dist/), VG, POOL, LAB_OUT, LAB_WORK.
import { spawn, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const DIST = process.env.THINARCHIVE_DIST;
const VG = process.env.VG;
const POOL = process.env.POOL;
const pool = { vg: VG, pool: POOL };
const tools = await import(join(DIST, 'lvm/tools.js'));
const msnap = await import(join(DIST, 'lvm/metadata-snap.js'));
const names = await import(join(DIST, 'lvm/names.js'));
const execMod = await import(join(DIST, 'lvm/exec.js'));
const TPOOL = names.poolDmName(VG, POOL);
const BLOCK = 64 * 1024;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sha = (b) => createHash('sha256').update(b).digest('hex');

function memoryLogger(lines) {
  const at = (level) => (obj, msg) => lines.push({ level, msg, ...obj });
  return { debug: () => {}, info: at('info'), warn: at('warn') };
}

async function heldRoot() {
  const st = await tools.poolStatus(VG, POOL);
  return st.state === 'ok' ? st.heldRoot : `state:${st.state}`;
}

function errInfo(e) {
  return { name: e?.name, code: e?.code, message: e?.message, releaseError: e?.releaseError?.code };
}

// ---------------------------------------------------------------------------------------------
// children

async function child(mode, stateDir, ms) {
  const rl = createInterface({ input: process.stdin });
  const go = new Promise((res) => rl.once('line', res));
  console.log('READY');
  await go;
  rl.close();
  const keepAlive = setInterval(() => {}, 1000);
  await msnap.withMetadataSnapshot(pool, { stateDir, lockTimeoutMs: 30_000 }, async (_tmeta, held) => {
    console.log(`HELD ${held.heldRoot} ${Date.now()}`);
    if (mode === 'hold') await new Promise(() => {}); // until killed
    await sleep(Number(ms));
    console.log(`LEAVING ${Date.now()}`);
  });
  console.log(`DONE ${Date.now()}`);
  clearInterval(keepAlive);
}

/** Start a child; lines() resolves on the first stdout line matching a pattern. */
function startChild(mode, stateDir, ms = '0') {
  const p = spawn(process.execPath, [new URL(import.meta.url).pathname, mode, stateDir, ms], { stdio: ['pipe', 'pipe', 'pipe'], env: process.env });
  const seen = [];
  const waiters = [];
  let stderr = '';
  p.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
  createInterface({ input: p.stdout }).on('line', (line) => {
    seen.push(line);
    for (const w of [...waiters]) {
      const m = w.re.exec(line);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.res(m);
      }
    }
  });
  const exited = new Promise((res) => p.once('exit', (code, signal) => res({ code, signal })));
  return {
    p,
    exited,
    seen,
    stderr: () => stderr,
    waitLine(re, ms = 30_000) {
      const hit = seen.map((l) => re.exec(l)).find(Boolean);
      if (hit) return Promise.resolve(hit);
      return new Promise((res, rej) => {
        const t = setTimeout(() => rej(new Error(`child ${mode}: no line ${re} in ${ms} ms; saw ${JSON.stringify(seen)}; stderr ${stderr}`)), ms);
        waiters.push({ re, res: (m) => (clearTimeout(t), res(m)) });
      });
    },
    go() {
      p.stdin.write('go\n');
    },
  };
}

// ---------------------------------------------------------------------------------------------
// the scenario

async function writeBlocks(dev, first, count, written) {
  const fh = await open(dev, 'r+');
  try {
    for (let b = first; b < first + count; b++) {
      const buf = randomBytes(BLOCK);
      await fh.write(buf, 0, BLOCK, b * BLOCK);
      written.set(b, sha(buf));
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function collect(iterable) {
  const out = [];
  for await (const r of iterable) out.push(r);
  return out;
}

/**
 * The in-process dmsetup forms (src/lvm/dm-native.ts) against the real dmsetup, on this pool: same
 * stdout, same failure, and messages that take effect; plus the time of each (ms, medians of 5).
 */
async function dmNativeAgainstDmsetup() {
  const env = { env: { ...execMod.LVM_ENV } };
  const native = (args) => execMod.defaultRunner('dmsetup', args, env);
  const real = (args) => execMod.execaRunner('dmsetup', args, env);
  const both = async (args) => {
    const n = await native(args);
    const r = await real(args);
    return { native: { exitCode: n.exitCode, stdout: n.stdout, stderr: n.stderr, inProcess: n.inProcess === true }, dmsetup: { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr } };
  };
  const median = async (fn) => {
    const ms = [];
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      await fn();
      ms.push(performance.now() - t);
    }
    return Math.round(ms.sort((a, b) => a - b)[2] * 10) / 10;
  };
  const out = {};
  out.poolStatus = await both(['status', TPOOL]);
  out.volStatus = await both(['status', names.dmName(VG, 'vol')]);
  out.tdataStatus = await both(['status', names.dmName(VG, `${POOL}_tdata`)]);
  out.tmetaOpen = await both(['info', '-c', '--noheadings', '-o', 'open', names.dmName(VG, `${POOL}_tmeta`)]);
  out.missing = await both(['status', 'lab--vg-no--such--lv']);
  out.reserve = await native(['message', TPOOL, '0', 'reserve_metadata_snap']);
  out.heldAfterReserve = (await real(['status', TPOOL])).stdout;
  out.reserveAgain = await native(['message', TPOOL, '0', 'reserve_metadata_snap']);
  out.release = await native(['message', TPOOL, '0', 'release_metadata_snap']);
  out.heldAfterRelease = (await real(['status', TPOOL])).stdout;
  out.ms = { native: await median(() => native(['status', TPOOL])), dmsetup: await median(() => real(['status', TPOOL])) };
  return out;
}

async function main() {
  const R = { steps: [], timings: {} };
  const stateDir = join(process.env.LAB_WORK, 'state');
  const t0 = performance.now();
  const step = async (name, fn) => {
    const t = performance.now();
    try {
      R[name] = await fn();
    } catch (e) {
      R[name] = { error: errInfo(e), stack: e?.stack };
    }
    R.timings[name] = Math.round(performance.now() - t);
    R.steps.push(name);
  };

  // Children start now; their node start-up overlaps the work below.
  const kill9 = startChild('hold', stateDir);
  const term = startChild('hold', stateDir);
  const contend = startChild('contend', stateDir, '1000');

  await step('version', () => tools.thinToolsVersion('thin_delta'));
  await step('lvsBefore', () => tools.listLvs(VG));
  await step('statusIdle', () => tools.poolStatus(VG, POOL));
  await step('dmNative', () => dmNativeAgainstDmsetup());

  // Data: the layout of fixtures/lvm (blocks 0-3, 100, 1000-1009; then 100 again, 2000-2003, discard 1000-1004)
  const vol = names.lvDevicePath(VG, 'vol');
  const before = new Map();
  await writeBlocks(vol, 0, 4, before);
  await writeBlocks(vol, 100, 1, before);
  await writeBlocks(vol, 1000, 10, before);
  await step('snap1', () => tools.createThinSnapshot(VG, 'vol', 'snap1', ['thinarchive', 'thinarchive:test=1']));
  const after = new Map(before);
  await writeBlocks(vol, 100, 1, after);
  await writeBlocks(vol, 2000, 4, after);
  execFileSync('blkdiscard', ['-o', String(1000 * BLOCK), '-l', String(5 * BLOCK), vol]);
  await step('snap2', () => tools.createThinSnapshot(VG, 'vol', 'snap2', ['thinarchive']));
  const id1 = R.snap1.thinId;
  const id2 = R.snap2.thinId;

  // Reserve, delta, dumps, release.
  const logMain = [];
  await step('withSnap', () => msnap.withMetadataSnapshot(pool, { stateDir, logger: memoryLogger(logMain) }, async (tmeta, held) => {
    const during = { tmeta, heldRoot: held.heldRoot, statusRoot: await heldRoot() };
    during.record = JSON.parse(await readFile(msnap.reservationPath(stateDir, pool), 'utf8'));
    during.lockExists = existsSync(msnap.poolLockPath(stateDir, pool));
    const dir = process.env.LAB_WORK;
    const delta = await tools.thinDelta(tmeta, id1, id2, { dir });
    const dump2 = await tools.thinDump(tmeta, id2, { dir });
    const dump1 = await tools.thinDump(tmeta, id1, { dir });
    const dumpMissing = await tools.thinDump(tmeta, 77, { dir });
    during.files = { delta: delta.path, dump2: dump2.path };
    during.deltaXml = readFileSync(delta.path, 'utf8');
    during.dump2Xml = readFileSync(dump2.path, 'utf8');
    const d = await tools.readThinDeltaFile(delta.path);
    during.deltaHeader = d.header;
    during.deltaRanges = await collect(d.ranges);
    const dd2 = await tools.readThinDumpFile(dump2.path, { devId: id2 });
    during.dump2Header = dd2.header;
    during.dump2Ranges = await collect(dd2.ranges);
    const dd1 = await tools.readThinDumpFile(dump1.path, { devId: id1 });
    during.dump1Ranges = await collect(dd1.ranges);
    during.missing = await tools.readThinDumpFile(dumpMissing.path, { devId: 77 }).then(() => 'found?!', errInfo);
    during.deltaMissing = await tools.thinDelta(tmeta, 77, id2, { dir }).then(() => 'ok?!', errInfo);
    for (const f of [delta, dump2, dump1, dumpMissing]) await f.remove();
    return during;
  }));
  R.logMain = logMain;
  R.afterWithSnap = { heldRoot: await heldRoot(), record: existsSync(msnap.reservationPath(stateDir, pool)), lock: existsSync(msnap.poolLockPath(stateDir, pool)) };

  // Another holder: refused, and left alone. Then force.
  execFileSync('dmsetup', ['message', TPOOL, '0', 'reserve_metadata_snap']);
  R.foreignRoot = await heldRoot();
  await step('foreign', () => msnap.withMetadataSnapshot(pool, { stateDir }, async () => 'ran?!').then((v) => v, errInfo));
  R.afterForeign = await heldRoot();
  const logForce = [];
  await step('force', () => msnap.withMetadataSnapshot(pool, { stateDir, force: true, logger: memoryLogger(logForce) }, async (_t, held) => held.heldRoot));
  R.logForce = logForce;
  R.afterForce = await heldRoot();

  // fn fails: released anyway, fn's error comes out.
  await step('fnFails', () => msnap.withMetadataSnapshot(pool, { stateDir }, async () => {
    throw Object.assign(new Error('boom from fn'), { code: 'FN_BOOM' });
  }).then(() => 'resolved?!', errInfo));
  R.afterFnFails = { heldRoot: await heldRoot(), record: existsSync(msnap.reservationPath(stateDir, pool)) };

  // A thinarchive SIGKILLed while holding: the next run recognises and releases its snapshot.
  await step('kill9', async () => {
    await kill9.waitLine(/^READY$/);
    kill9.go();
    const [, root] = await kill9.waitLine(/^HELD (\d+) /);
    kill9.p.kill('SIGKILL');
    const ex = await kill9.exited;
    const left = { root: Number(root), exit: ex, statusRoot: await heldRoot() };
    left.record = JSON.parse(await readFile(msnap.reservationPath(stateDir, pool), 'utf8'));
    left.lockLeft = existsSync(msnap.poolLockPath(stateDir, pool));
    const log = [];
    left.next = await msnap.withMetadataSnapshot(pool, { stateDir, logger: memoryLogger(log) }, async (_t, held) => held.heldRoot);
    left.log = log;
    left.after = await heldRoot();
    return left;
  });

  // SIGTERM while holding: the holder releases, then dies of the signal.
  await step('sigterm', async () => {
    await term.waitLine(/^READY$/);
    term.go();
    const [, root] = await term.waitLine(/^HELD (\d+) /);
    term.p.kill('SIGTERM');
    const ex = await term.exited;
    return {
      root: Number(root), exit: ex, after: await heldRoot(), stderr: term.stderr(),
      record: existsSync(msnap.reservationPath(stateDir, pool)), lock: existsSync(msnap.poolLockPath(stateDir, pool)),
    };
  });

  // Two holders at once: the second waits for the first.
  await step('contend', async () => {
    await contend.waitLine(/^READY$/);
    contend.go();
    const [, root, heldAt] = await contend.waitLine(/^HELD (\d+) (\d+)$/);
    const log = [];
    const askedAt = Date.now();
    const mine = await msnap.withMetadataSnapshot(pool, { stateDir, logger: memoryLogger(log), lockTimeoutMs: 20_000 }, async (_t, held) => ({ at: Date.now(), root: held.heldRoot }));
    const [, leftAt] = await contend.waitLine(/^LEAVING (\d+)$/);
    const ex = await contend.exited;
    return { childRoot: Number(root), childHeldAt: Number(heldAt), childLeftAt: Number(leftAt), askedAt, mine, exit: ex, waited: log.some((l) => /waiting for another thinarchive/.test(l.msg)), after: await heldRoot() };
  });

  // Read a snapshot read-only and compare with what was written.
  await step('readSnap2', async () => {
    const dev = await tools.activateReadOnly(VG, 'snap2');
    const info = await tools.getLv(VG, 'snap2');
    const fh = await open(dev, 'r');
    const got = {};
    try {
      for (const b of [0, 100, 1005, 2003]) {
        const buf = Buffer.alloc(BLOCK);
        await fh.read(buf, 0, BLOCK, b * BLOCK);
        got[b] = sha(buf) === after.get(b);
      }
      const buf = Buffer.alloc(BLOCK);
      await fh.read(buf, 0, BLOCK, 1000 * BLOCK);
      got.discardedIsZero = buf.every((x) => x === 0);
    } finally {
      await fh.close();
    }
    // The device is read-only: opening it for writing may succeed, writing must not.
    const writeAttempt = await open(dev, 'r+').then(async (h) => {
      try {
        await h.write(Buffer.alloc(4096, 0xaa), 0, 4096, 0);
        await h.sync();
        return 'written?!';
      } catch (e) {
        return e.code;
      } finally {
        await h.close();
      }
    }, (e) => `open: ${e.code}`);
    await tools.deactivate(VG, 'snap2');
    const inactive = await tools.getLv(VG, 'snap2');
    return { dev, attr: info.attr, readOnly: info.readOnly, active: info.active, got, writeAttempt, attrAfterDeactivate: inactive.attr };
  });

  await step('tags', async () => {
    await tools.addTag(VG, 'snap1', 'thinarchive:extra');
    const withTag = (await tools.getLv(VG, 'snap1')).tags;
    await tools.delTag(VG, 'snap1', 'thinarchive:extra');
    return { withTag, without: (await tools.getLv(VG, 'snap1')).tags };
  });

  await step('remove', async () => {
    const refused = await tools.removeLv(VG, 'vol', { requireTag: 'thinarchive' }).then(() => 'removed?!', errInfo);
    await tools.removeLv(VG, 'snap1', { requireTag: 'thinarchive' });
    return { refused, left: (await tools.listLvs(VG)).map((l) => l.name).sort() };
  });

  R.finalStatus = await tools.poolStatus(VG, POOL);
  R.totalMs = Math.round(performance.now() - t0);
  await writeFile(join(process.env.LAB_OUT, 'result.json'), JSON.stringify(R, null, 2));
}

const [mode, stateDir, ms] = process.argv.slice(2);
if (mode === 'main') await main();
else await child(mode, stateDir, ms);
