/**
 * Chain management end to end, through bin/thinarchive, on image files: a chain of 6 archives of a
 * sparse image (full + 9 incrementals from thin_delta XML), applied to a replica; then
 * - verify --against at both ends (replica and source), full, --changed-only and --sample;
 * - a single flipped byte found by full verify and by sampling over repeated runs;
 * - restore at every point equals that point's source image (sha256), reading each record once
 *   (most restores run in-process, through the same command module, to keep the test short);
 * - merge and prune keep every kept point restorable and identical; an interrupted prune (killed,
 *   or merged archives next to their originals) leaves a valid chain that the next prune completes;
 * - apply --repair of a target with scattered corruption reads it once and writes only the bad blocks.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, cpSync, linkSync, openSync, readdirSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, expectFailure, run, runOk, sha256, show, spawnCli, tempDir, waitFor, type TempDir } from '../helpers/cli.js';
import { deadPid } from '../helpers/host.js';
import { noiseBytes, POOL_BLOCK, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';
import { restore } from '../../src/commands/restore.js';

/** Restore in this process (the CLI path is covered by the other calls): faster for the many checks. */
async function restoreHash(store: string, at: number, to: string): Promise<{ sha: string; rereads: number }> {
  const r = await restore({ dir: store, at: String(at), to, create: true });
  expect(r.sequence === at || r.archiveId.length > 0).toBe(true);
  return { sha: await sha256(to), rereads: r.archives.reduce((n, a) => n + a.rereads, 0) };
}

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const BLOCKS = SIZE / POOL_BLOCK;
const STEPS = 6;

function populate(m: VolumeModel, rand: () => number): void {
  m.write(0, textBytes(rand, 2 * MiB));
  m.write(3 * MiB, noiseBytes(MiB));
  m.writeZeroes(5 * MiB, MiB);
  m.write(8 * MiB + 777, textBytes(rand, 300 * 1024));
  m.write(SIZE - POOL_BLOCK, textBytes(rand, POOL_BLOCK));
}

function mutate(m: VolumeModel, rand: () => number): void {
  const block = (): number => Math.floor(rand() * BLOCKS);
  for (let i = 0; i < 8; i++) m.write(block() * POOL_BLOCK, i % 2 ? noiseBytes(POOL_BLOCK) : textBytes(rand, POOL_BLOCK));
  m.write(Math.floor(rand() * (SIZE - 5000)), textBytes(rand, 4000));
  const mapped = m.mappedBlocks();
  for (let i = 0; i < 2; i++) m.writeZeroes(mapped[Math.floor(rand() * mapped.length)] * POOL_BLOCK, POOL_BLOCK);
  for (let i = 0; i < 2; i++) {
    const b = mapped[Math.floor(rand() * mapped.length)];
    m.punch(b * POOL_BLOCK, Math.min(2 * POOL_BLOCK, SIZE - b * POOL_BLOCK));
  }
}

function flipByte(path: string, offset: number): void {
  const fd = openSync(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, offset);
    b[0] ^= 0x5a;
    writeSync(fd, b, 0, 1, offset);
  } finally {
    closeSync(fd);
  }
}

interface Finding { code: string; block?: number; offset?: number; expected?: string; actual?: string }
interface AgainstJson { ok: boolean; mode: string; stateOk: boolean; blocks: number; blocksChecked: number; blocksRead: number; mismatchedBlocks: number; findings: Finding[]; bytesRead: number }
interface RestoreJson { archiveId: string; sequence: number; dataBytes: number; bytesRead: number; archives: { sequence: number; records: number; bytesRead: number; rereads: number }[] }

describe('chain management on images', () => {
  let dir: TempDir;
  let model: VolumeModel;
  let src: string;
  let store: string;
  let chainDir: string;
  const rand = prng(4242);
  const hashes: string[] = [];
  const ids: string[] = [];
  let replica: string;

  beforeAll(async () => {
    dir = await tempDir('chain');
    src = dir.join('source.img');
    store = dir.join('store');
    model = new VolumeModel(src, SIZE);
    populate(model, rand);
    model.snapshotDelta();
    for (let i = 0; i < STEPS; i++) {
      let args = ['send', '--image', src, '--to', store, '--json'];
      if (i > 0) {
        mutate(model, rand);
        const delta = dir.join(`delta-${i}.xml`);
        writeFileSync(delta, model.snapshotDelta());
        args = [...args, '--changes', delta, '--parent', store];
      }
      const r = JSON.parse((await runOk(args)).stdout) as { archiveId: string; chainId: string };
      ids.push(r.archiveId);
      chainDir = join(store, r.chainId);
      hashes.push(await sha256(src));
    }
    replica = dir.join('replica.img');
    await runOk(['apply', store, '--to', replica, '--create']);
  }, 300_000);

  afterAll(async () => {
    model?.close();
    await dir?.remove();
  });

  it('the replica matches the source, and verify --against passes at both ends', async () => {
    expect(await sha256(replica)).toBe(hashes[STEPS - 1]);
    const r = JSON.parse((await runOk(['verify', store, '--against', replica, '--json'])).stdout) as AgainstJson;
    expect(r).toMatchObject({ ok: true, mode: 'full', stateOk: true, mismatchedBlocks: 0, blocks: BLOCKS, blocksChecked: BLOCKS });
    expect(r.bytesRead).toBeGreaterThan(0);
    expect(r.bytesRead).toBeLessThanOrEqual(SIZE);
    // The source end: the image the newest archive was made from (no recorded state).
    const s = JSON.parse((await runOk(['verify', store, '--against', src, '--json'])).stdout) as AgainstJson;
    expect(s).toMatchObject({ ok: true, mismatchedBlocks: 0, blocksChecked: BLOCKS });
    const c = JSON.parse((await runOk(['verify', store, '--against', replica, '--changed-only', '--json'])).stdout) as AgainstJson;
    expect(c.ok).toBe(true);
    expect(c.blocksChecked).toBeGreaterThan(0);
    expect(c.blocksChecked).toBeLessThan(BLOCKS / 2);
    const text = await runOk(['verify', store, '--against', replica]);
    expect(text.stdout).toMatch(/^verified: 256 of 256 blocks checked/m);
    // list shows the last verification of the chain
    const listed = await runOk(['list', store]);
    expect(listed.stdout).toMatch(new RegExp(`last verify --against: ok .*${replica.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(full\\) at sequence ${STEPS - 1}: 256 blocks, 0 mismatched`));
  });

  it('finds a single flipped byte by full verify and by repeated sampling; exit 3', async () => {
    const bad = dir.join('bad.img');
    cpSync(replica, bad);
    cpSync(`${replica}.thinarchive.json`, `${bad}.thinarchive.json`);
    const block = 200;
    const where = block * POOL_BLOCK + 12345;
    // Make sure the block holds data at that byte (flip on a hole would also be a change: fine either way).
    flipByte(bad, where);
    const r = await run(['verify', store, '--against', bad, '--json']);
    expect(r.code, show(r)).toBe(3);
    const res = JSON.parse(r.stdout) as AgainstJson;
    expect(res.mismatchedBlocks).toBe(1);
    expect(res.findings).toHaveLength(1);
    expect(res.findings[0]).toMatchObject({ code: 'TARGET_MISMATCH', block, offset: block * POOL_BLOCK });
    expect(res.findings[0].expected).not.toBe(res.findings[0].actual);
    let found = 0;
    let runs = 0;
    for (; runs < 30 && found === 0; runs++) {
      const s = await run(['verify', store, '--against', bad, '--sample', '40', '--json']);
      const sr = JSON.parse(s.stdout) as AgainstJson;
      expect(sr.blocksChecked).toBeLessThan(BLOCKS);
      if (s.code === 3) {
        expect(sr.findings[0]).toMatchObject({ code: 'TARGET_MISMATCH', block });
        found++;
      } else expect(s.code, show(s)).toBe(0);
    }
    expect(found).toBe(1);
  });

  it('reports a target whose recorded state names another archive', async () => {
    const old = dir.join('old.img');
    await runOk(['restore', store, '--at', '3', '--to', old, '--create']);
    const r = await run(['verify', store, '--against', old, '--json']);
    expect(r.code).toBe(3);
    const res = JSON.parse(r.stdout) as AgainstJson;
    expect(res.stateOk).toBe(false);
    expect(res.findings.some((f) => f.code === 'TARGET_STATE')).toBe(true);
    expect(res.mismatchedBlocks).toBeGreaterThan(0);
  });

  it('restores every point of the chain, reading each record once', async () => {
    const cli = JSON.parse((await runOk(['restore', store, '--at', '4', '--to', dir.join('restore-cli.img'), '--create', '--json'])).stdout) as RestoreJson;
    expect(cli.sequence).toBe(4);
    expect(cli.archives.map((a) => a.sequence)).toEqual([0, 1, 2, 3, 4]);
    expect(cli.bytesRead).toBe(cli.archives.reduce((n, a) => n + a.bytesRead, 0));
    expect(await sha256(dir.join('restore-cli.img'))).toBe(hashes[4]);
    for (let i = 0; i < STEPS; i++) {
      const r = await restoreHash(store, i, dir.join(`restore-${i}.img`));
      expect(r.sha, `point ${i}`).toBe(hashes[i]);
      expect(r.rereads).toBe(0);
    }
    // By archive id and by time too.
    const t = dir.join('restore-id.img');
    await runOk(['restore', store, '--at', ids[4], '--to', t, '--create']);
    expect(await sha256(t)).toBe(hashes[4]);
    const t2 = dir.join('restore-time.img');
    await runOk(['restore', store, '--at', new Date(Date.now() + 60_000).toISOString(), '--to', t2, '--create']);
    expect(await sha256(t2)).toBe(hashes[STEPS - 1]);
  });

  it('a restored point continues with apply of the next incrementals; restore refuses foreign targets', async () => {
    const t = dir.join('continue.img');
    await runOk(['restore', store, '--at', '2', '--to', t, '--create']);
    const a = await runOk(['apply', store, '--to', t, '--json']);
    expect((JSON.parse(a.stdout) as { applied: unknown[] }).applied).toHaveLength(STEPS - 3);
    expect(await sha256(t)).toBe(hashes[STEPS - 1]);
    // Same chain: restoring back to an earlier point is allowed.
    await runOk(['restore', store, '--at', '1', '--to', t]);
    expect(await sha256(t)).toBe(hashes[1]);
    // An image with data and no state is refused without --force.
    const foreign = dir.join('foreign.img');
    writeFileSync(foreign, Buffer.alloc(MiB, 7));
    expectFailure(await run(['restore', store, '--to', foreign]), 4);
    await runOk(['restore', store, '--to', foreign, '--force']);
    expect(await sha256(foreign)).toBe(hashes[STEPS - 1]);
    expectFailure(await run(['restore', store, '--at', '99', '--to', dir.join('x.img'), '--create']), 2);
  });

  it('merge keeps every remaining point restorable and identical; a merged full is a synthetic full', async () => {
    const s2 = dir.join('store-merge');
    cpSync(store, s2, { recursive: true });
    const m = JSON.parse((await runOk(['merge', s2, '--from', '1', '--to', '3', '--json'])).stdout) as { archiveId: string; sequence: number; full: boolean; deleted: string[] };
    expect(m).toMatchObject({ archiveId: ids[3], sequence: 1, full: false });
    expect(m.deleted).toHaveLength(3);
    for (const i of [0, 3, 4, 5]) expect((await restoreHash(s2, i, dir.join(`m-${i}.img`))).sha, `point ${i}`).toBe(hashes[i]);
    expectFailure(await run(['restore', s2, '--at', '2', '--to', dir.join('m-2.img'), '--create']), 2);
    // The whole chain applies as before, and the archives verify.
    const whole = dir.join('m-apply.img');
    await runOk(['apply', s2, '--to', whole, '--create']);
    expect(await sha256(whole)).toBe(hashes[STEPS - 1]);
    const v = await run(['verify', s2]);
    expect(v.code, show(v)).toBe(0);
    // A synthetic full from 0..9.
    const f = JSON.parse((await runOk(['merge', s2, '--from', '0', '--to', '5', '--json'])).stdout) as { full: boolean; sequence: number };
    expect(f).toMatchObject({ full: true, sequence: 0 });
    const cd = readdirSync(s2).filter((n) => !n.startsWith('.'));
    expect(readdirSync(join(s2, cd[0])).filter((n) => n.endsWith('.tna'))).toHaveLength(1);
    expect((await restoreHash(s2, 5, dir.join('m-full.img'))).sha).toBe(hashes[STEPS - 1]);
    // A target that held sequence 9 (the replica's state) is up to date with the synthetic full.
    const r = JSON.parse((await runOk(['verify', s2, '--against', replica, '--json'])).stdout) as AgainstJson;
    expect(r.ok).toBe(true);
  });

  it('prune --keep 3 keeps the newest three points identical; --dry-run changes nothing', async () => {
    const s3 = dir.join('store-prune');
    cpSync(store, s3, { recursive: true });
    const before = readdirSync(join(s3, readdirSync(s3)[0])).sort();
    const d = JSON.parse((await runOk(['prune', s3, '--keep', '3', '--dry-run', '--json'])).stdout) as { kept: { sequence: number }[]; deletes: string[] };
    expect(d.kept.map((k) => k.sequence)).toEqual([3, 4, 5]);
    expect(d.deletes).toHaveLength(4);
    expect(readdirSync(join(s3, readdirSync(s3)[0])).sort()).toEqual(before);
    await runOk(['prune', s3, '--keep', '3']);
    const after = readdirSync(join(s3, readdirSync(s3)[0])).filter((n) => n.endsWith('.tna'));
    expect(after).toHaveLength(3);
    for (const i of [3, 4, 5]) expect((await restoreHash(s3, i, dir.join(`p-${i}.img`))).sha, `point ${i}`).toBe(hashes[i]);
    const whole = dir.join('p-apply.img');
    await runOk(['apply', s3, '--to', whole, '--create']);
    expect(await sha256(whole)).toBe(hashes[STEPS - 1]);
    // --keep-within keeps recent points too (all of them here: the chain was made seconds ago).
    const w = JSON.parse((await runOk(['prune', s3, '--keep', '1', '--keep-within', '1h', '--dry-run', '--json'])).stdout) as { kept: unknown[]; deletes: unknown[] };
    expect(w.kept).toHaveLength(3);
    expect(w.deletes).toHaveLength(0);
  });

  it('an interrupted prune leaves a valid chain, and the next prune completes it', async () => {
    // The state between "merged archive durable" and "originals deleted", made deterministically.
    const s4 = dir.join('store-interrupted');
    cpSync(store, s4, { recursive: true });
    await runOk(['merge', s4, '--from', '0', '--to', '3', '--keep-originals']);
    // ... and part of the originals deleted already.
    const cd4 = join(s4, readdirSync(s4)[0]);
    for (const n of readdirSync(cd4).filter((x) => /^000000000[0-1]-/.test(x) && !x.includes(ids[3]))) rmSync(join(cd4, n));
    // A writer killed between publishing its archive (link) and removing its temporary name: the
    // temporary name stays, a second link to the merged archive, which no later write would sweep.
    const mergedName = readdirSync(cd4).find((n) => n.startsWith('0000000000-') && n.includes(ids[3]))!;
    const deadTemp = `.${mergedName}.tmp-${deadPid()}-mf3k2a`;
    linkSync(join(cd4, mergedName), join(cd4, deadTemp));
    expect(readdirSync(cd4).filter((n) => n.endsWith('.tna'))).toHaveLength(5);
    const listed = JSON.parse((await runOk(['list', s4, '--json'])).stdout) as { archives: { sequence: number; status: string; merged: { toSequence: number } | null }[] }[];
    const st = listed[0].archives.map((a) => `${a.sequence}:${a.merged ? `m${a.merged.toSequence}` : ''}:${a.status.startsWith('superseded') ? 's' : 'ok'}`);
    expect(st).toEqual(['0:m3:ok', '2::s', '3::s', '4::ok', '5::ok']);
    for (const i of [3, 4, 5]) expect((await restoreHash(s4, i, dir.join(`i-${i}.img`))).sha, `point ${i}`).toBe(hashes[i]);
    // apply of the store takes the merged archive in place of the originals beside it
    const ap = dir.join('interrupted-apply.img');
    const apr = JSON.parse((await runOk(['apply', s4, '--to', ap, '--create', '--json'])).stdout) as { applied: { sequence: number }[] };
    expect(apr.applied.map((a) => a.sequence)).toEqual([0, 4, 5]);
    expect(await sha256(ap)).toBe(hashes[5]);
    const p = JSON.parse((await runOk(['prune', s4, '--keep', '3', '--json'])).stdout) as { leftovers: string[]; swept: string[] };
    expect(p.leftovers).toHaveLength(2);
    expect(p.swept).toEqual([join(cd4, deadTemp)]);
    expect(readdirSync(cd4).filter((n) => n.endsWith('.tna'))).toHaveLength(3);
    expect(readdirSync(cd4).filter((n) => n.includes('.tmp-'))).toEqual([]);
    // Killed at arbitrary moments: whatever is left restores every kept point.
    // Killed while the merged archive is being written (its temporary file exists), and as soon as it
    // is committed (its final name exists; deleting the originals follows at once).
    const merged = `0000000000-${ids[4]}.tna`;
    for (const delay of ['writing', 'committed']) {
      const s5 = dir.join(`store-kill-${delay}`);
      cpSync(store, s5, { recursive: true });
      const cd5 = join(s5, readdirSync(s5)[0]);
      const child = spawnCli(['prune', s5, '--keep', '2']);
      const done = collect(child);
      let exited = false;
      void done.then(() => { exited = true; });
      await waitFor(() => exited || readdirSync(cd5).some((n) => (delay === 'writing' ? n.includes('.tmp-') : n === merged)), 30_000, 2);
      child.kill('SIGKILL');
      const k = await done;
      expect(k.signal === 'SIGKILL' || k.code === 0, show(k)).toBe(true);
      if (delay === 'writing') expect(k.signal, 'the prune was killed while writing').toBe('SIGKILL');
      for (const i of [4, 5]) expect((await restoreHash(s5, i, dir.join(`k-${delay}-${i}.img`))).sha, `kill after ${delay} ms, point ${i}`).toBe(hashes[i]);
      await runOk(['prune', s5, '--keep', '2']);
      // Two archives, and no temporary file of the killed writer.
      const left = readdirSync(join(s5, readdirSync(s5)[0])).filter((n) => n !== '.thinarchive-verify.json' && !/^\.\d{10}\.seq$|^\.lease\.\d{10}$/.test(n));
      expect(left, `after the kill (${delay}) and a second prune: ${left.join(' ')}`).toHaveLength(2);
      const t = dir.join(`k-${delay}.img`);
      await runOk(['apply', s5, '--to', t, '--create']);
      expect(await sha256(t)).toBe(hashes[STEPS - 1]);
    }
  });

  it('restores onto a block device (loop), verifies against it and repairs it', async (ctx) => {
    if (process.getuid?.() !== 0 && !process.env.CI) ctx.skip();
    const backing = dir.join('loop-backing.img');
    writeFileSync(backing, Buffer.alloc(SIZE + MiB, 0xee)); // larger than the volume, full of old data
    const dev = execFileSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' }).trim();
    const stateDir = dir.join('state');
    try {
      // No state: refused without --force.
      expectFailure(await run(['restore', store, '--to', dev, '--state-dir', stateDir]), 4);
      const r = JSON.parse((await runOk(['restore', store, '--at', '4', '--to', dev, '--force', '--state-dir', stateDir, '--json'])).stdout) as { targetKind: string; sequence: number };
      expect(r).toMatchObject({ targetKind: 'blockdev', sequence: 4 });
      expect(await sha256(dev, SIZE)).toBe(hashes[4]);
      // At sequence 4 it is one archive behind: verify says so (state and blocks), apply brings it up to date.
      expect((await run(['verify', store, '--against', dev, '--state-dir', stateDir])).code).toBe(3);
      await runOk(['apply', store, '--to', dev, '--state-dir', stateDir]);
      const v = JSON.parse((await runOk(['verify', store, '--against', dev, '--state-dir', stateDir, '--json'])).stdout) as AgainstJson;
      expect(v).toMatchObject({ ok: true, stateOk: true, blocksChecked: BLOCKS, bytesRead: SIZE });
      flipByte(dev, 77 * POOL_BLOCK + 1);
      const rep = JSON.parse((await runOk(['apply', store, '--to', dev, '--repair', '--state-dir', stateDir, '--json'])).stdout) as { badBlocks: number; targetKind: string };
      expect(rep).toMatchObject({ badBlocks: 1, targetKind: 'blockdev' });
      expect(await sha256(dev, SIZE)).toBe(hashes[STEPS - 1]);
    } finally {
      execFileSync('losetup', ['-d', dev]);
    }
  });

  it('apply --repair reads the target once and writes only the bad blocks', async () => {
    const t = dir.join('repair.img');
    cpSync(replica, t);
    const bad = [3, 40, 41, 100, 180, 255];
    for (const b of bad) flipByte(t, b * POOL_BLOCK + 999);
    const r = JSON.parse((await runOk(['apply', store, '--to', t, '--repair', '--json'])).stdout) as {
      badBlocks: number; blocksWritten: number; blocksZeroed: number; targetBytesRead: number; blocksChecked: number;
    };
    expect(r.badBlocks).toBe(bad.length);
    expect(r.blocksWritten + r.blocksZeroed).toBe(bad.length);
    expect(r.blocksChecked).toBe(BLOCKS);
    expect(r.targetBytesRead).toBe(SIZE);
    expect(await sha256(t)).toBe(hashes[STEPS - 1]);
    const v = JSON.parse((await runOk(['verify', store, '--against', t, '--json'])).stdout) as AgainstJson;
    expect(v.ok).toBe(true);
    // A target of no common state (an old point restored elsewhere, state file removed) is repaired too.
    const o = dir.join('repair-old.img');
    await restore({ dir: store, at: '2', to: o, create: true });
    rmSync(`${o}.thinarchive.json`);
    const r2 = JSON.parse((await runOk(['apply', store, '--to', o, '--repair', '--json'])).stdout) as { badBlocks: number };
    expect(r2.badBlocks).toBeGreaterThan(0);
    expect(await sha256(o)).toBe(hashes[STEPS - 1]);
  });
});
