#!/usr/bin/env node
/**
 * npm run bench:serve: `thinarchive serve` against `restore` on the same point (docs/PERFORMANCE.md,
 * "serve"). Builds a chain of --archives archives (a full one and incrementals) of a --size image in
 * a directory store, then measures:
 *   - restore of the newest point to a new image (wall time);
 *   - nbdcopy of the same point from serve to null: (wall time; the ratio restore s / nbdcopy s);
 *   - time from starting `serve` to the first 4 KiB of data received by a client;
 *   - random 4 KiB reads per second with a warm cache (32 in flight, inside a 32 MiB window);
 *   - the server's peak RSS (VmHWM) over all of that, and serving a 1 TiB sparse volume (nbdcopy of
 *     it to null: holes are skipped by block status).
 * Needs dist/ (npm run build) and libnbd-bin (nbdcopy). Writes bench-out/serve.json.
 */
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './lib/lab.mjs';
import { mulberry32Float } from './lib/prng.mjs';

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
if (args.includes('--help')) {
  console.log('npm run bench:serve -- [--size 1G] [--archives 30] [--tmpdir DIR] [--keep]');
  process.exit(0);
}
const MiB = 1024 * 1024;
const parseSize = (v) => Number(/^(\d+)([KMGT]?)$/i.exec(v)?.[1]) * { '': 1, K: 1024, M: MiB, G: 1024 * MiB, T: 1024 * 1024 * MiB }[/^(\d+)([KMGT]?)$/i.exec(v)?.[2].toUpperCase() ?? ''];
const SIZE = parseSize(opt('--size', '1G'));
const ARCHIVES = Number(opt('--archives', '30'));
const BIN = join(ROOT, 'bin', 'thinarchive');
const BLOCK = 64 * 1024;
const log = (s) => process.stderr.write(`${s}\n`);
if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('run npm run build first');

const dir = mkdtempSync(join(opt('--tmpdir', tmpdir()), 'ta-bench-serve-'));
const cli = (a) => execFileSync(process.execPath, [BIN, ...a], { stdio: ['ignore', 'pipe', 'pipe'] });
const now = () => performance.now() / 1000;

// ---------------------------------------------------------------------------------------------
// The chain

function deltaXml(changed, blocks) {
  const lines = [`<superblock uuid="" time="2" transaction="5" data_block_size="128" nr_data_blocks="${blocks}">`, '  <diff left="1" right="2">'];
  let pos = 0;
  for (const b of [...changed].sort((x, y) => x - y)) {
    if (b > pos) lines.push(`    <same begin="${pos}" length="${b - pos}"/>`);
    lines.push(`    <different begin="${b}" length="1"/>`);
    pos = b + 1;
  }
  lines.push('  </diff>', '</superblock>', '');
  return lines.join('\n');
}

function textChunk(rand, n) {
  const words = ['kernel', 'thin', 'pool', 'volume', 'chunk', 'ok', 'error', 'sshd', 'accepted', 'session', 'opened', 'for', 'user', 'root'];
  let s = '';
  while (s.length < n) s += `${new Date(1.7e12 + Math.floor(rand() * 1e9)).toISOString()} host${Math.floor(rand() * 9)} ${words[Math.floor(rand() * words.length)]}[${Math.floor(rand() * 9999)}]: ${Array.from({ length: 8 }, () => words[Math.floor(rand() * words.length)]).join(' ')}\n`;
  return Buffer.from(s.slice(0, n));
}

function makeChain(store, size, archives, dataFraction) {
  const img = join(dir, `vol-${size}.img`);
  const rand = mulberry32Float(1);
  const fd = openSync(img, 'w+');
  ftruncateSync(fd, size);
  const dataBlocks = [];
  const REGION = 4 * MiB;
  for (let at = 0; at < size; at += REGION) {
    if (rand() >= dataFraction) continue;
    const n = Math.min(REGION, size - at);
    writeSync(fd, rand() < 0.5 ? randomBytes(n) : textChunk(rand, n), 0, n, at);
    for (let b = at / BLOCK; b < (at + n) / BLOCK; b++) dataBlocks.push(b);
  }
  cli(['send', '--image', img, '--to', store]);
  const blocks = Math.ceil(size / BLOCK);
  for (let i = 1; i < archives; i++) {
    const changed = new Set();
    for (let k = 0; k < 16; k++) changed.add(dataBlocks[Math.floor(rand() * dataBlocks.length)]);
    for (const b of changed) writeSync(fd, rand() < 0.5 ? randomBytes(BLOCK) : textChunk(rand, BLOCK), 0, BLOCK, b * BLOCK);
    const delta = join(dir, 'delta.xml');
    writeFileSync(delta, deltaXml(changed, blocks));
    cli(['send', '--image', img, '--changes', delta, '--parent', store, '--to', store]);
  }
  closeSync(fd);
  rmSync(img);
}

// ---------------------------------------------------------------------------------------------
// A minimal NBD client (simple replies)

function rawClient(path) {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    let buf = Buffer.alloc(0);
    const waiters = [];
    s.on('data', (b) => {
      buf = Buffer.concat([buf, b]);
      while (waiters.length && buf.length >= waiters[0].n) {
        const w = waiters.shift();
        const out = buf.subarray(0, w.n);
        buf = buf.subarray(w.n);
        w.resolve(out);
      }
    });
    s.on('error', reject);
    const read = (n) => new Promise((r) => {
      if (!waiters.length && buf.length >= n) {
        const out = buf.subarray(0, n);
        buf = buf.subarray(n);
        r(out);
      } else waiters.push({ n, resolve: r });
    });
    s.once('connect', async () => {
      await read(18);
      const go = Buffer.alloc(4 + 8 + 4 + 4 + 4 + 2);
      go.writeUInt32BE(3, 0);
      go.write('IHAVEOPT', 4);
      go.writeUInt32BE(7, 12);
      go.writeUInt32BE(6, 16);
      s.write(go);
      for (;;) {
        const h = await read(20);
        const body = await read(h.readUInt32BE(16));
        if (h.readUInt32BE(12) === 1) break;
        if (h.readUInt32BE(12) >= 0x80000000) return reject(new Error(`GO failed: ${body}`));
      }
      resolve({
        read(cookie, offset, length) {
          const r = Buffer.alloc(28);
          r.writeUInt32BE(0x25609513, 0);
          r.writeBigUInt64BE(BigInt(cookie), 8);
          r.writeBigUInt64BE(BigInt(offset), 16);
          r.writeUInt32BE(length, 24);
          s.write(r);
        },
        async reply(length) {
          const h = await read(16);
          if (h.readUInt32BE(4) !== 0) throw new Error(`read error ${h.readUInt32BE(4)}`);
          await read(length);
          return Number(h.readBigUInt64BE(8));
        },
        close: () => s.destroy(),
      });
    });
  });
}

async function startServe(store, sock) {
  const t0 = now();
  const child = spawn(process.execPath, [BIN, 'serve', store, '--socket', sock], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (b) => { err += b; });
  // First byte: connect as soon as the socket answers, read 4 KiB at offset 0.
  for (;;) {
    if (child.exitCode !== null) throw new Error(`serve exited: ${err}`);
    try {
      const c = await rawClient(sock);
      c.read(1, 0, 4096);
      await c.reply(4096);
      c.close();
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  const firstByte = now() - t0;
  return {
    child, firstByte,
    hwm: () => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))[1]) * 1024,
    stop: () => new Promise((r) => { child.once('exit', r); child.kill('SIGTERM'); }),
  };
}

function timed(cmd, a) {
  const t0 = now();
  execFileSync(cmd, a, { stdio: ['ignore', 'ignore', 'pipe'] });
  return now() - t0;
}

// ---------------------------------------------------------------------------------------------

const results = { size: SIZE, archives: ARCHIVES, commit: execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']).toString().trim() };
try {
  log(`building a chain of ${ARCHIVES} archives of a ${SIZE / MiB} MiB image ...`);
  const store = join(dir, 'store');
  makeChain(store, SIZE, ARCHIVES, 0.6);

  const restored = join(dir, 'restored.img');
  results.restoreSeconds = timed(process.execPath, [BIN, 'restore', store, '--to', restored, '--create']);
  rmSync(restored);
  const sock = join(dir, 's.sock');
  const s = await startServe(store, sock);
  results.firstByteSeconds = s.firstByte;
  results.nbdcopySeconds = timed('nbdcopy', [`nbd+unix:///?socket=${sock}`, 'null:']);
  results.ratio = results.restoreSeconds / results.nbdcopySeconds;
  // random 4 KiB reads in a 32 MiB window at the start of the first data, warm
  const c = await rawClient(sock);
  const rand = mulberry32Float(9);
  const WINDOW = 32 * MiB;
  const N = 20000;
  const offs = Array.from({ length: N }, () => Math.floor(rand() * (WINDOW / 4096)) * 4096);
  for (let at = 0; at < WINDOW; at += MiB) { c.read(0, at, MiB); await c.reply(MiB); }
  const t0 = now();
  let sent = 0;
  for (; sent < 32; sent++) c.read(sent, offs[sent], 4096);
  for (let got = 0; got < N; got++) {
    await c.reply(4096);
    if (sent < N) c.read(sent, offs[sent++], 4096);
  }
  results.randomReadsPerSecond = N / (now() - t0);
  c.close();
  results.peakRssBytes = s.hwm();
  await s.stop();

  log('a 1 TiB sparse volume ...');
  const big = join(dir, 'big');
  makeChain(big, 1024 * 1024 * MiB, 2, 64 / (256 * 1024)); // about 64 MiB of data
  const sb = await startServe(big, join(dir, 'big.sock'));
  results.sparse1TiB = { firstByteSeconds: sb.firstByte, nbdcopySeconds: timed('nbdcopy', [`nbd+unix:///?socket=${join(dir, 'big.sock')}`, 'null:']), peakRssBytes: sb.hwm() };
  await sb.stop();
} finally {
  if (!args.includes('--keep')) rmSync(dir, { recursive: true, force: true });
}
mkdirSync(join(ROOT, 'bench-out'), { recursive: true });
writeFileSync(join(ROOT, 'bench-out', 'serve.json'), JSON.stringify(results, null, 2) + '\n');
const f = (x, d = 2) => x.toFixed(d);
console.log(`chain of ${ARCHIVES} archives, ${SIZE / MiB} MiB volume (commit ${results.commit})`);
console.log(`  restore newest point        ${f(results.restoreSeconds)} s`);
console.log(`  nbdcopy newest point        ${f(results.nbdcopySeconds)} s   (restore/nbdcopy = ${f(results.ratio)}x, target >= 0.8x)`);
console.log(`  start to first byte         ${f(results.firstByteSeconds)} s   (target < 1 s)`);
console.log(`  random 4 KiB reads, warm    ${f(results.randomReadsPerSecond, 0)} /s`);
console.log(`  server peak RSS             ${f(results.peakRssBytes / MiB, 1)} MiB`);
console.log(`1 TiB sparse volume: first byte ${f(results.sparse1TiB.firstByteSeconds)} s, nbdcopy ${f(results.sparse1TiB.nbdcopySeconds)} s, peak RSS ${f(results.sparse1TiB.peakRssBytes / MiB, 1)} MiB (target < 200 MB)`);
