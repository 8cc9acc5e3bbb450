// Runs INSIDE the thin-LVM lab guest for test/lab/apply-lv.test.ts: small helpers the bash scenario
// calls, each printing one JSON object on stdout. They import the compiled modules (dist/).
//
//   node apply-lv-guest.mjs build VG POOL STORE SNAP...   the chain: thin_delta of each pair of snapshots (one
//                                                         metadata snapshot reservation, via the lvm layer), then
//                                                         a full and incremental image sends (in this process:
//                                                         node starts slowly in the guest); writes
//                                                         $LAB_OUT/send_SNAP.json and prints the delta summaries
//   node apply-lv-guest.mjs batch STORE ARCHIVE...        in one process (the CLI's main(), as bin/thinarchive
//                                                         runs it): the refusals, a corrupt copy of archive 1
//                                                         applied mid-way; then the LV checks below. Exit codes
//                                                         go to results.tsv (rc_KEY), output to KEY.out/KEY.err
//     zerocheck   LvTarget zeroing on a thin LV (vg2/zt): read-back, mapped size, how ranges were split
//     zeroignore  LvTarget on a thin LV in a pool with discards=ignore (vg2/zi)
//     tagcommit   a state write is one VG metadata commit, read back equal (vg2/tc)
//
// Env: THINARCHIVE_DIST (dist/), LAB_WORK, LAB_OUT.
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, createReadStream, writeFileSync } from 'node:fs';
import { copyFile, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';

const DIST = process.env.THINARCHIVE_DIST;
const tools = await import(join(DIST, 'lvm/tools.js'));
const names = await import(join(DIST, 'lvm/names.js'));

const sh = (cmd, args) => execFileSync(cmd, args, { encoding: 'utf8' });
const dataPercent = (vg, lv) => Number(sh('lvs', ['--noheadings', '-o', 'data_percent', `${vg}/${lv}`]).trim());
const vgSeqno = (vg) => Number(sh('vgs', ['--noheadings', '-o', 'vg_seqno', vg]).trim());
const memoryLogger = (lines) => {
  const at = (level) => (obj, msg) => lines.push({ level, msg, ...obj });
  return { debug: () => {}, info: at('info'), warn: at('warn') };
};

async function build(vg, pool, store, ...snaps) {
  const msnap = await import(join(DIST, 'lvm/metadata-snap.js'));
  const { send } = await import(join(DIST, 'api/index.js'));
  const lvs = await tools.listLvs(vg);
  const id = (s) => lvs.find((l) => l.name === s).thinId;
  const files = {};
  await msnap.withMetadataSnapshot({ vg, pool }, { stateDir: join(process.env.LAB_WORK, 'state') }, async (tmeta) => {
    for (let i = 1; i < snaps.length; i++) {
      files[snaps[i]] = join(process.env.LAB_WORK, `${snaps[i]}.xml`);
      await tools.thinDelta(tmeta, id(snaps[i - 1]), id(snaps[i]), { outFile: files[snaps[i]] });
    }
  });
  const deltas = {};
  for (const [s, f] of Object.entries(files)) {
    const d = await tools.readThinDeltaFile(f);
    const blocks = { data: 0, unmap: 0 };
    for await (const r of d.ranges) blocks[r.kind] += r.length;
    deltas[s] = { blockSizeBytes: d.header.blockSizeBytes, blocks };
  }
  for (const s of snaps) {
    const r = await send({ image: names.lvDevicePath(vg, s), to: store, name: 'src', ...(files[s] ? { changes: files[s], parent: store } : {}) });
    await writeFile(join(process.env.LAB_OUT, `send_${s}.json`), JSON.stringify(r));
  }
  return deltas;
}

async function corrupt(input, output) {
  const { readArchive } = await import(join(DIST, 'archive/reader.js'));
  const records = [];
  for await (const ev of readArchive(createReadStream(input), { file: input })) {
    if (ev.type === 'data' && ev.record.storedLen > 0) records.push({ offset: ev.offset, blockCount: ev.record.blockCount, storedLen: ev.record.storedLen, firstBlock: ev.record.firstBlock });
  }
  if (records.length < 2) throw new Error(`${input}: only ${records.length} DATA records`);
  const r = records[records.length - 1];
  // DATA frame: 8-byte head, body of 32 + 8 x block_count, 8-byte check, then the payload.
  const at = r.offset + 8 + 32 + 8 * r.blockCount + 8 + Math.floor(r.storedLen / 2);
  await copyFile(input, output);
  const fh = await open(output, 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, at);
  b[0] ^= 0x40;
  await fh.write(b, 0, 1, at);
  await fh.close();
  return { records: records.length, flippedAt: at, record: r };
}

function sha(buf) {
  return createHash('sha256').update(buf).digest('hex');
}

async function zerocheck(vg, lv) {
  const { LvTarget } = await import(join(DIST, 'target/lv-target.js'));
  const MiB = 1 << 20;
  const dev = names.lvDevicePath(vg, lv);
  // 8 MiB of random data at the start of a fresh thin LV (64 KiB chunks)
  const rnd = randomBytes(8 * MiB);
  const w = await open(dev, 'r+');
  await w.write(rnd, 0, rnd.length, 0);
  await w.datasync();
  await w.close();
  const before = dataPercent(vg, lv);
  const log = [];
  const t = await LvTarget.open({ vg, lv, neededSize: 1, blockSize: 65536, log: memoryLogger(log) });
  let res;
  try {
    // unaligned head (12 KiB into a chunk) and tail (4 KiB past a chunk): 4 MiB + 52 KiB + 4 KiB
    const off = 12 * 1024;
    const len = 4 * MiB + (64 - 12) * 1024 + 4 * 1024;
    await t.target.zero(off, len);
    // a range inside one chunk: zeroed out only
    await t.target.zero(6 * MiB + 4096, 8192);
    await t.target.sync();
    const buf = Buffer.alloc(8 * MiB);
    await t.target.read(buf, 0, buf.length, 0);
    const isZero = (a, n) => buf.subarray(a, a + n).every((x) => x === 0);
    res = {
      report: t.report,
      stats: { ...t.target.zeroStats },
      zeroedReadsZero: isZero(off, len) && isZero(6 * MiB + 4096, 8192),
      headKept: sha(buf.subarray(0, off)) === sha(rnd.subarray(0, off)),
      middleKept: sha(buf.subarray(off + len, 6 * MiB + 4096)) === sha(rnd.subarray(off + len, 6 * MiB + 4096)),
      tailKept: sha(buf.subarray(6 * MiB + 4096 + 8192)) === sha(rnd.subarray(6 * MiB + 4096 + 8192)),
      off, len,
    };
  } finally {
    await t.close();
  }
  // A partial-chunk BLKDISCARD directly: succeeds, and changes nothing.
  const fh = await open(dev, 'r+');
  const { thinio } = await import(join(DIST, 'native.js'));
  let partialDiscard;
  try {
    thinio().blkDiscard(fh.fd, 7 * MiB + 4096, 4096);
    const b = Buffer.alloc(4096);
    await fh.read(b, 0, 4096, 7 * MiB + 4096);
    partialDiscard = { ok: true, stillOldData: sha(b) === sha(rnd.subarray(7 * MiB + 4096, 7 * MiB + 8192)) };
  } catch (e) {
    partialDiscard = { ok: false, code: e.code };
  }
  await fh.close();
  return { ...res, before, after: dataPercent(vg, lv), partialDiscard, log };
}

async function zeroignore(vg, lv) {
  const { LvTarget } = await import(join(DIST, 'target/lv-target.js'));
  const before = dataPercent(vg, lv);
  const log = [];
  const t = await LvTarget.open({ vg, lv, neededSize: 1, blockSize: 65536, log: memoryLogger(log) });
  let res;
  try {
    await t.target.zero(0, 2 << 20);
    await t.target.sync();
    const buf = Buffer.alloc(2 << 20);
    await t.target.read(buf, 0, buf.length, 0);
    res = { report: t.report, stats: { ...t.target.zeroStats }, readsZero: buf.every((x) => x === 0) };
  } finally {
    await t.close();
  }
  // BLKDISCARD on it directly: what the kernel says
  const fh = await open(names.lvDevicePath(vg, lv), 'r+');
  const { thinio } = await import(join(DIST, 'native.js'));
  let direct;
  try {
    thinio().blkDiscard(fh.fd, 0, 65536);
    direct = 'ok';
  } catch (e) {
    direct = e.code;
  }
  await fh.close();
  return { ...res, before, after: dataPercent(vg, lv), directDiscard: direct, log };
}

/** Run the CLI's main() with the given arguments, capturing what it prints. */
async function cli(main, key, args) {
  const out = [];
  const err = [];
  const [ow, ew] = [process.stdout.write, process.stderr.write];
  process.stdout.write = (c) => (out.push(String(c)), true);
  process.stderr.write = (c) => (err.push(String(c)), true);
  let code;
  try {
    code = await main(['node', 'thinarchive', ...args]);
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
  }
  const OUT = process.env.LAB_OUT;
  writeFileSync(join(OUT, `${key}.out`), out.join(''));
  writeFileSync(join(OUT, `${key}.err`), err.join(''));
  appendFileSync(join(OUT, 'results.tsv'), `rc_${key}\t${code}\n`);
  return code;
}

async function batch(store, ...archives) {
  const main = await (await import(join(DIST, 'cli/entry.js'))).loadMain();
  const bad = join(process.env.LAB_WORK, 'bad.tna');
  await cli(main, 'mounted', ['apply', store, '--to', 'vg2/replica']);
  await cli(main, 'heldopen', ['apply', store, '--to', 'vg2/held', '--force']);
  await cli(main, 'small', ['apply', store, '--to', 'vg2/small', '--force']);
  await cli(main, 'exists', ['apply', store, '--to', 'vg2/replica', '--create', '--pool', 'vg2/pool']);
  await cli(main, 'skipzero', ['apply', store, '--to', 'vg2/nz', '--force']);
  await cli(main, 'wrongstate', ['apply', archives[2], '--to', 'vg2/other']);
  const corrupted = await corrupt(archives[1], bad);
  await cli(main, 'corrupt', ['apply', bad, '--to', 'vg2/other']);
  const vg = 'vg2';
  return { corrupted, zerocheck: await zerocheck(vg, 'zt'), zeroignore: await zeroignore(vg, 'zi'), tagcommit: await tagcommit(vg, 'tc') };
}

async function tagcommit(vg, lv) {
  const { LvTagStateStore } = await import(join(DIST, 'target/lv-target.js'));
  const { stateToTags } = await import(join(DIST, 'target/lv-tags.js'));
  const info = await tools.getLv(vg, lv);
  const exec = (await import(join(DIST, 'lvm/exec.js'))).runLvmCommand;
  const store = new LvTagStateStore(exec, vg, lv, info.uuid);
  const u = () => crypto.randomUUID();
  const s1 = {
    version: 1, volumeUuid: u(), chainId: u(), blockSize: 65536, volumeSize: 268435456, archiveId: '', sequence: -1, status: 'applying',
    applying: { archiveId: u(), parentId: null, sequence: 0, chainId: u(), startedAt: new Date().toISOString() }, updatedAt: new Date().toISOString(),
  };
  const s2 = { version: 1, volumeUuid: s1.volumeUuid, chainId: s1.applying.chainId, blockSize: 65536, volumeSize: 268435456, archiveId: s1.applying.archiveId, sequence: 0, status: 'clean', updatedAt: new Date(Date.now() + 5).toISOString() };
  const before = await store.read();
  const q0 = vgSeqno(vg);
  await store.write(s1);
  const q1 = vgSeqno(vg);
  const back1 = await store.read();
  await store.write(s2);
  const q2 = vgSeqno(vg);
  const back2 = await store.read();
  const tags = (await tools.getLv(vg, lv)).tags;
  return { before, seqnoSteps: [q1 - q0, q2 - q1], back1Equal: isDeepStrictEqual(back1, s1), back2Equal: isDeepStrictEqual(back2, s2), tags1: stateToTags(s1), tags };
}

const [cmd, ...args] = process.argv.slice(2);
const fns = { build, batch };
if (!fns[cmd]) throw new Error(`unknown command ${cmd}`);
const out = await fns[cmd](...args);
process.stdout.write(`${JSON.stringify(out)}\n`);
