#!/usr/bin/env node
/**
 * npm run bench: throughput and peak memory of thinarchive send (full and incremental), apply and
 * verify on a generated image, beside baselines measured in the same run on the same bytes
 * (zstd -3 -T0 for send, dd for apply). See docs/PERFORMANCE.md for what is measured and why.
 *
 *   npm run bench                         # 2 GiB image, 3 runs each, cold inputs, RSS at 512M/1G/2G
 *   npm run bench -- --quick              # 512 MiB, 1 run each: a smoke test of the script
 *   npm run bench -- --size 4G --runs 5 --rss-sizes 1G,2G --warm --keep --profile
 *
 * Options:
 *   --size N        image size (default 2G)
 *   --runs N        runs per measurement (default 3); the median time is reported
 *   --seed N        generator seed (default 1)
 *   --rss-sizes L   extra image sizes for the full-send RSS curve (default 512M,1G; '' for none)
 *   --warm          read inputs into the page cache before each run instead of evicting them
 *   --keep          keep the temporary directory
 *   --tmpdir DIR    where the large files go (default os.tmpdir(); up to ~10 GB)
 *   --out FILE      JSON results (default bench-out/results.json)
 *   --wait-quiet S  before each run, wait up to S seconds for other processes to go quiet (default 30,
 *                   at most 300 s in all); a run during which the rest of the machine used more than
 *                   0.4 CPU on average is repeated once (the disturbed attempt is kept in the JSON)
 *   --profile       also run one full send under node --cpu-prof and summarize it (bench-out/profile/)
 *   --quick         512 MiB image, 1 run each, RSS curve at 256M: a smoke test of the script
 *   --section restore   only the restore section (chain of 10, restore of a point vs replaying apply)
 *   --restore-size N    image size of the restore section (default: the smaller of --size and 1G)
 *   --section ssh       only the ssh:// section: send to a private sshd on 127.0.0.1 against cat | ssh of the
 *                       same archive, and apply back (scripts/bench-ssh.mjs; image: the smaller of --size and 1G)
 *   --link-mbit N       the ssh section also runs over an emulated N Mbit/s link (default 1000; 0: skip)
 *   --section age       only encrypted (age, --encrypt-to) against plain archives, same image, runs
 *                       interleaved: full send, apply, verify, restore; peak RSS (image: the smaller of --size and 1G)
 *   --section s3        only the S3 section: send to / apply from a local Ceph radosgw (scripts/bench-s3.mjs;
 *                       image: the smaller of --size and 1G; --runs sends each)
 *   --section mixes     only full send, apply and verify on three kinds of data (issue 14): incompressible
 *                       (random), mixed (this bench's image) and compressible (a repeating pattern of eight 64 KiB
 *                       blocks), each at --mix-sizes (default 1G,4G), against zstd -3 -T0, dd conv=fsync and
 *                       zstd -t in the same run (bench-out/results-mixes.json)
 *   --mix-sizes L       image sizes of the mixes section
 *   --mixes L           which mixes (default incompressible,mixed,compressible)
 *   --section startup   only start-up: node -e 0, thinarchive --version, --help and info ARCHIVE, interleaved,
 *                       max(--runs, 10) rounds; medians and the ratio to node -e 0 (--wait-quiet 0: no waiting)
 *
 * The tool under test is a snapshot of dist/ (+ build/Release/thinio.node) copied at start, so an
 * `npm run build` by someone else during the run cannot change it half-way. Needs: bin/thinarchive
 * built (npm run build), zstd, dd, GNU time (/usr/bin/time), fallocate, cmp.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mulberry32Float } from './lib/prng.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const BLOCK = 64 * KiB; // thin pool block (data_block_size="128") = thinarchive's default block size

// ------------------------------------------------------------------------------------------ options

function parseSize(s) {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)(?:i?B)?$/i.exec(String(s).trim());
  if (!m) throw new Error(`cannot read size ${s}`);
  const mult = { '': 1, K: KiB, M: MiB, G: GiB, T: 1024 * GiB }[m[2].toUpperCase()];
  return Math.round(Number(m[1]) * mult / BLOCK) * BLOCK;
}

function parseArgs(argv) {
  const o = {
    size: 2 * GiB, runs: 3, seed: 1, rssSizes: [512 * MiB, 1 * GiB], warm: false, keep: false, tmpdir: tmpdir(),
    out: join(ROOT, 'bench-out', 'results.json'), waitQuiet: 30, maxWait: 300, profile: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--size') o.size = parseSize(val());
    else if (a === '--runs') o.runs = Math.max(1, Number(val()) | 0);
    else if (a === '--seed') o.seed = Number(val()) | 0;
    else if (a === '--rss-sizes') o.rssSizes = val().split(',').filter(Boolean).map(parseSize);
    else if (a === '--warm') o.warm = true;
    else if (a === '--keep') o.keep = true;
    else if (a === '--tmpdir') o.tmpdir = val();
    else if (a === '--out') o.out = resolve(val());
    else if (a === '--wait-quiet') o.waitQuiet = Number(val());
    else if (a === '--profile') o.profile = true;
    else if (a === '--quick') Object.assign(o, { size: 512 * MiB, runs: 1, rssSizes: [256 * MiB] });
    else if (a === '--section') o.section = val();
    else if (a === '--restore-size') o.restoreSize = parseSize(val());
    else if (a === '--link-mbit') o.linkMbit = Number(val());
    else if (a === '--mix-sizes') o.mixSizes = val().split(',').filter(Boolean).map(parseSize);
    else if (a === '--mixes') o.mixes = val().split(',').filter(Boolean);
    else if (a === '--help' || a === '-h') {
      process.stdout.write(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('*/')[0] + '*/\n');
      process.exit(0);
    } else throw new Error(`unknown option ${a} (see --help)`);
  }
  o.rssSizes = o.rssSizes.filter((s) => s !== o.size);
  return o;
}

// ---------------------------------------------------------------------------------------- utilities

const fmtMiB = (n) => `${(n / MiB).toFixed(1)} MiB`;
const fmtBytes = (n) => (n >= GiB ? `${(n / GiB).toFixed(2)} GiB` : fmtMiB(n));
const mbps = (bytes, s) => bytes / s / 1e6;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function log(msg) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts });
  if (r.error) throw r.error;
  if (r.status !== 0 && !opts.allowFail) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r;
}

function which(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).stdout.trim() || null;
}

/** System-wide busy CPU time in seconds (user+nice+system+irq+softirq+steal), from /proc/stat. */
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
function busyCpuSeconds() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f;
  return (user + nice + system + irq + softirq + (steal || 0)) / CLK_TCK;
}
const loadavg = () => fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);

// ------------------------------------------------------------------------------------ data sources

/** Seeded PRNG (layout decisions and text): floats in [0, 1). */
const rng = mulberry32Float;

/** Incompressible bytes: the AES-256-CTR keystream of a key derived from the seed and a label. */
function randomStream(seed, label) {
  const key = createHash('sha256').update(`thinarchive-bench:${seed}:${label}`).digest();
  const c = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return (buf) => {
    const ks = c.update(buf.fill(0));
    ks.copy(buf);
  };
}

/**
 * Text-like bytes: syslog-style lines (timestamp, host, service[pid]: 6..17 words) over a seeded
 * 4096-word vocabulary picked with a skewed (roughly Zipf-like) distribution, 4% numbers. zstd -3
 * compresses it about 2.5:1, like real logs.
 */
function textStream(seed, label) {
  const vr = rng(seed ^ 0x5eed);
  const letters = 'etaoinshrdlcumwfgypbvkjxqz';
  const vocab = [];
  for (let i = 0; i < 4096; i++) {
    const n = 2 + Math.floor(vr() * vr() * 11);
    let w = '';
    for (let k = 0; k < n; k++) w += letters[Math.floor(vr() * vr() * 26)];
    vocab.push(w);
  }
  // All words in one byte array; word i is bytes [wOff[i], wOff[i + 1]).
  const wBytes = Buffer.from(vocab.join(''));
  const wOff = new Int32Array(4097);
  for (let i = 0; i < 4096; i++) wOff[i + 1] = wOff[i] + vocab[i].length;
  const hosts = Array.from({ length: 16 }, (_, i) => Buffer.from(`host${String(i).padStart(2, '0')}`));
  const svcs = Array.from({ length: 24 }, () => Buffer.from(vocab[Math.floor(vr() * 512)]));
  // xorshift32 state, seeded from the label.
  let x = Number.parseInt(createHash('sha256').update(`text:${seed}:${label}`).digest('hex').slice(0, 8), 16) | 1;
  let sec = 1_700_000_000 + (x % 1_000_000);
  let ms = 0;
  const line = Buffer.alloc(1024);
  let carry = null; // the unwritten rest of the last line of the previous chunk
  return (buf) => {
    let p = 0;
    const end = buf.length;
    if (carry) {
      const n = Math.min(carry.length, end);
      carry.copy(buf, 0, 0, n);
      p = n;
      carry = n < carry.length ? carry.subarray(n) : null;
    }
    while (p < end) {
      // Build the line straight into buf when it surely fits, else into `line` and carry the rest.
      const direct = end - p >= 512;
      const out = direct ? buf : line;
      let q = direct ? p : 0;
      x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
      ms += (x >>> 0) % 2000;
      if (ms >= 1000) { sec += (ms / 1000) | 0; ms %= 1000; }
      let v = sec % 100_000_000;
      for (let d = 7; d >= 0; d--) { out[q + d] = 48 + (v % 10); v = (v / 10) | 0; }
      q += 8; out[q++] = 46;
      v = ms;
      for (let d = 2; d >= 0; d--) { out[q + d] = 48 + (v % 10); v = (v / 10) | 0; }
      q += 3; out[q++] = 32;
      x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
      const u = x >>> 0;
      const h = hosts[((u & 15) * ((u >>> 4) & 15)) >>> 4];
      for (let k = 0; k < h.length; k++) out[q++] = h[k];
      out[q++] = 32;
      const sv = svcs[(((u >>> 8) & 31) * ((u >>> 13) & 31) * 24) >>> 10];
      for (let k = 0; k < sv.length; k++) out[q++] = sv[k];
      out[q++] = 91;
      v = 1000 + ((u >>> 18) % 9000);
      for (let d = 3; d >= 0; d--) { out[q + d] = 48 + (v % 10); v = (v / 10) | 0; }
      q += 4; out[q++] = 93; out[q++] = 58;
      const words = 6 + ((u >>> 27) % 12);
      for (let i = 0; i < words; i++) {
        out[q++] = 32;
        x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
        const w = x >>> 0;
        if ((w & 255) < 10) {
          // a 6-digit number (4%)
          v = (w >>> 8) % 1_000_000;
          for (let d = 5; d >= 0; d--) { out[q + d] = 48 + (v % 10); v = (v / 10) | 0; }
          q += 6;
        } else {
          // skewed pick: the cube of a uniform fraction (most picks from the first few hundred words)
          const f = (w >>> 20) / 4096;
          const idx = (4096 * f * f * f) | 0;
          for (let k = wOff[idx], e = wOff[idx + 1]; k < e; k++) out[q++] = wBytes[k];
        }
      }
      out[q++] = 10;
      if (direct) {
        p = q;
      } else {
        const n = Math.min(q, end - p);
        line.copy(buf, p, 0, n);
        p += n;
        if (n < q) carry = Buffer.from(line.subarray(n, q));
      }
    }
  };
}

// ---------------------------------------------------------------------------------- image generator

const CHUNK = 4 * MiB;
const ZEROS = Buffer.alloc(CHUNK);

/**
 * The layout: consecutive regions, each 64 KiB-aligned, until `size`. Each region is random (30%),
 * text (35%), zero (10%, zeroes actually written: allocated) or hole (25%, never written), and either
 * small (64 KiB..1 MiB, half of them) or large (1..32 MiB). Deterministic for a seed; a smaller image
 * is a prefix of a larger one (last region cut).
 */
function makeLayout(size, seed) {
  const r = rng(seed);
  const regions = [];
  for (let pos = 0; pos < size;) {
    const x = r();
    const type = x < 0.3 ? 'random' : x < 0.65 ? 'text' : x < 0.75 ? 'zero' : 'hole';
    const len = Math.min(size - pos, r() < 0.5 ? BLOCK * (1 + Math.floor(r() * 16)) : MiB * (1 + Math.floor(r() * 32)));
    regions.push({ type, offset: pos, length: len, label: `r${regions.length}` });
    pos += len;
  }
  return regions;
}

function summarize(regions) {
  const s = { regions: regions.length, random: 0, text: 0, zero: 0, hole: 0 };
  for (const g of regions) s[g.type] += g.length;
  s.allocated = s.random + s.text + s.zero;
  s.nonzero = s.random + s.text;
  return s;
}

/** Fill `len` bytes of region content chunk by chunk, calling `sink(buf)` for each chunk. */
function produce(type, seed, label, len, sink) {
  const fill = type === 'random' ? randomStream(seed, label) : type === 'text' ? textStream(seed, label) : null;
  for (let done = 0; done < len; done += CHUNK) {
    const n = Math.min(CHUNK, len - done);
    const buf = fill ? Buffer.allocUnsafe(n) : ZEROS.subarray(0, n);
    if (fill) fill(buf);
    sink(buf);
  }
}

function writeAll(fd, buf, pos) {
  for (let at = 0; at < buf.length;) at += fs.writeSync(fd, buf, at, buf.length - at, pos === null ? null : pos + at);
}

/**
 * Write the image (and optionally the allocated bytes / the non-zero bytes, concatenated, as the
 * baselines' inputs). Returns the layout and its summary.
 */
function generateImage(path, size, seed, raw = {}) {
  const regions = makeLayout(size, seed);
  const fd = fs.openSync(path, 'w');
  const alloc = raw.allocated ? fs.openSync(raw.allocated, 'w') : null;
  const nonzero = raw.nonzero ? fs.openSync(raw.nonzero, 'w') : null;
  try {
    for (const g of regions) {
      if (g.type === 'hole') continue;
      let pos = g.offset;
      produce(g.type, seed, g.label, g.length, (buf) => {
        writeAll(fd, buf, pos);
        pos += buf.length;
        if (alloc !== null) writeAll(alloc, buf, null);
        if (nonzero !== null && g.type !== 'zero') writeAll(nonzero, buf, null);
      });
    }
    fs.ftruncateSync(fd, size);
  } finally {
    fs.closeSync(fd);
    if (alloc !== null) fs.closeSync(alloc);
    if (nonzero !== null) fs.closeSync(nonzero);
  }
  return { regions, summary: summarize(regions) };
}

/**
 * The incremental: scattered rewrites of 64 KiB..1 MiB (random 45%, text 45%, zeroes 10%) at
 * 64 KiB-aligned random places, non-overlapping, until `fraction` of the image is rewritten; plus 4
 * discards (64..512 KiB holes punched into allocated, not rewritten data). Applies them to the image,
 * writes the thin_delta XML (0.9 plain form, data_block_size="128") and the rewritten bytes
 * concatenated (the zstd baseline's input). Returns the counts.
 */
function makeIncremental(image, regions, seed, fraction, deltaPath, changedPath) {
  const size = regions.at(-1).offset + regions.at(-1).length;
  const blocks = size / BLOCK;
  // Per 64 KiB block: 0 = unmapped, 1 = mapped (base image), then 2 = rewritten, 3 = discarded.
  const base = new Uint8Array(blocks);
  for (const g of regions) if (g.type !== 'hole') base.fill(1, g.offset / BLOCK, (g.offset + g.length) / BLOCK);
  const now = base.slice();
  const r = rng(seed * 7919 + 17);
  const target = Math.round((size * fraction) / BLOCK);
  const rewrites = [];
  let rewritten = 0;
  for (let tries = 0; rewritten < target && tries < 100000; tries++) {
    const n = Math.min(1 + Math.floor(r() * 16), target - rewritten);
    const first = Math.floor(r() * (blocks - n));
    let free = true;
    for (let b = Math.max(0, first - 1); b < Math.min(blocks, first + n + 1); b++) if (now[b] >= 2) free = false;
    if (!free) continue;
    const x = r();
    rewrites.push({ first, n, type: x < 0.45 ? 'random' : x < 0.9 ? 'text' : 'zero' });
    now.fill(2, first, first + n);
    rewritten += n;
  }
  const discards = [];
  for (let tries = 0; discards.length < 4 && tries < 100000; tries++) {
    const n = 1 + Math.floor(r() * 8);
    const first = Math.floor(r() * (blocks - n));
    let ok = true;
    for (let b = Math.max(0, first - 1); b < Math.min(blocks, first + n + 1); b++) if (b >= first && b < first + n ? now[b] !== 1 : now[b] >= 2) ok = false;
    if (!ok) continue;
    discards.push({ first, n });
    now.fill(3, first, first + n);
  }
  rewrites.sort((a, b) => a.first - b.first);
  const fd = fs.openSync(image, 'r+');
  const cfd = fs.openSync(changedPath, 'w');
  try {
    for (const w of rewrites) {
      let pos = w.first * BLOCK;
      produce(w.type, seed + 1, `w${w.first}`, w.n * BLOCK, (buf) => {
        writeAll(fd, buf, pos);
        writeAll(cfd, buf, null);
        pos += buf.length;
      });
    }
  } finally {
    fs.closeSync(fd);
    fs.closeSync(cfd);
  }
  for (const d of discards) sh('fallocate', ['--punch-hole', '--keep-size', '-o', String(d.first * BLOCK), '-l', String(d.n * BLOCK), image]);
  // The delta, as thin_delta 0.9 prints it (plain form: adjacent runs of one kind merged).
  const kindOf = (b) => {
    if (now[b] === 2) return base[b] ? 'different' : 'right_only';
    if (now[b] === 3) return 'left_only';
    return now[b] === 1 ? 'same' : null;
  };
  const lines = [`<superblock uuid="" time="2" transaction="5" data_block_size="128" nr_data_blocks="${blocks}">`, '  <diff left="1" right="2">'];
  for (let b = 0; b < blocks;) {
    const k = kindOf(b);
    let e = b + 1;
    while (e < blocks && kindOf(e) === k) e++;
    if (k) lines.push(`    <${k} begin="${b}" length="${e - b}"/>`);
    b = e;
  }
  lines.push('  </diff>', '</superblock>', '');
  fs.writeFileSync(deltaPath, lines.join('\n'));
  const kinds = { different: 0, right_only: 0 };
  for (const w of rewrites) for (let b = w.first; b < w.first + w.n; b++) kinds[base[b] ? 'different' : 'right_only']++;
  return {
    rewrites: rewrites.length, rewrittenBytes: rewritten * BLOCK, differentBytes: kinds.different * BLOCK, rightOnlyBytes: kinds.right_only * BLOCK,
    zeroRewriteBytes: rewrites.filter((w) => w.type === 'zero').reduce((a, w) => a + w.n * BLOCK, 0),
    discards: discards.length, discardedBytes: discards.reduce((a, d) => a + d.n * BLOCK, 0),
    deltaRanges: lines.length - 5,
  };
}

// ------------------------------------------------------------------------------------------- runner

class Runner {
  constructor(opts, dir) {
    this.opts = opts;
    this.dir = dir;
    this.timeFile = join(dir, 'time.out');
    this.waitedTotal = 0;
    this.evictWorks = null;
    this.primed = new Set();
  }

  /**
   * Make `files` cold (evicted from this kernel's page cache) or warm (read into it), the same for
   * every tool. Before its first cold run a file is read once: on a virtual disk the host may cache
   * what was read before, and the first reader of a freshly written file would otherwise pay for
   * everyone (see docs/PERFORMANCE.md, "Caches").
   */
  prepareCache(files) {
    sh('sync', []);
    const read = (f) => sh('sh', ['-c', 'cat "$1" > /dev/null', 'sh', f]);
    if (this.opts.warm) {
      for (const f of files) read(f);
      return 'warm';
    }
    for (const f of files) {
      if (!this.primed.has(f)) read(f);
      this.primed.add(f);
    }
    for (const f of files) sh('dd', [`if=${f}`, 'iflag=nocache', 'count=0', 'status=none']);
    if (this.evictWorks === null && which('fincore')) {
      const out = sh('fincore', ['-b', '-n', '-o', 'RES', files[0]], { allowFail: true }).stdout.trim();
      this.evictWorks = out === '0' || out === '';
      if (!this.evictWorks) log(`warning: ${files[0]} still has ${out} bytes cached after eviction`);
    }
    return 'cold';
  }

  /** Wait (bounded) until the rest of the machine uses < 0.25 CPU; returns what was seen. */
  async waitQuiet() {
    const budget = Math.max(0, Math.min(this.opts.waitQuiet, this.opts.maxWait - this.waitedTotal));
    const t0 = performance.now();
    let busy = 0;
    for (;;) {
      const c0 = busyCpuSeconds();
      await sleep(500);
      busy = (busyCpuSeconds() - c0) / 0.5;
      const waited = (performance.now() - t0) / 1000;
      if (busy < 0.25 || waited >= budget) {
        this.waitedTotal += waited;
        return { otherCoresBefore: +busy.toFixed(2), waitedSeconds: +waited.toFixed(1) };
      }
    }
  }

  /**
   * Run one timed command under GNU time. Returns wall seconds (measured here), peak RSS (KiB -> bytes),
   * user/sys CPU of the command and its children, and the CPU the rest of the machine used meanwhile.
   */
  async time(cmd, args, { cacheFiles = [], stdout = 'pipe', before } = {}) {
    before?.();
    const cache = cacheFiles.length ? this.prepareCache(cacheFiles) : 'n/a';
    const quiet = await this.waitQuiet();
    const load = loadavg();
    const c0 = busyCpuSeconds();
    const t0 = performance.now();
    const out = stdout === 'pipe' ? 'pipe' : stdout === null ? 'ignore' : fs.openSync(stdout, 'w');
    const child = spawn('/usr/bin/time', ['-f', '%e %M %U %S', '-o', this.timeFile, cmd, ...args], { stdio: ['ignore', out, 'pipe'] });
    let so = '';
    let se = '';
    child.stdout?.on('data', (d) => (so += d));
    child.stderr.on('data', (d) => (se += d));
    const code = await new Promise((res, rej) => {
      child.on('error', rej);
      child.on('close', res);
    });
    const seconds = (performance.now() - t0) / 1000;
    const cpu = busyCpuSeconds() - c0;
    if (typeof out === 'number') fs.closeSync(out);
    if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${code}: ${se.trim()}`);
    const [, maxrss, user, sys] = fs.readFileSync(this.timeFile, 'utf8').trim().split('\n').at(-1).split(' ').map(Number);
    return {
      seconds, peakRssBytes: maxrss * 1024, userSeconds: user, sysSeconds: sys,
      otherCpuSeconds: +Math.max(0, cpu - user - sys).toFixed(2), cache, load1: load[0], ...quiet, stdout: so,
    };
  }
}

/** Average CPUs the rest of the machine used during a run above which the run is repeated once. */
const DISTURBED = 0.4;
const disturbed = (r) => r.otherCpuSeconds > 0.2 && r.otherCpuSeconds / r.seconds > DISTURBED;

/**
 * One measurement: `runs` runs of `make(i)` → {cmd, args, opts, after}; a disturbed run is repeated
 * once and the repeat counts (the disturbed one is kept as `discarded`). Median seconds, max RSS.
 */
async function measure(runner, name, runs, make) {
  const results = [];
  const discarded = [];
  for (let i = 0; i < runs; i++) {
    for (let attempt = 0; ; attempt++) {
      const m = make(i);
      const r = await runner.time(m.cmd, m.args, m.opts);
      const extra = m.after ? m.after(r) : {};
      delete r.stdout;
      log(`${name} run ${i + 1}/${runs}: ${r.seconds.toFixed(2)} s, peak RSS ${fmtMiB(r.peakRssBytes)}, cpu ${(r.userSeconds + r.sysSeconds).toFixed(1)} s, other ${r.otherCpuSeconds} cpu-s${disturbed(r) ? ' (disturbed)' : ''}`);
      if (disturbed(r) && attempt === 0 && !m.noRetry) {
        discarded.push({ ...r, ...extra });
        continue;
      }
      results.push({ ...r, ...extra, disturbed: disturbed(r) });
      break;
    }
  }
  return { name, runs: results, discarded, ...stats(results) };
}

function stats(runs) {
  return {
    seconds: median(runs.map((r) => r.seconds)),
    peakRssBytes: Math.max(...runs.map((r) => r.peakRssBytes)),
    cpuSeconds: median(runs.map((r) => r.userSeconds + r.sysSeconds)),
    otherCpuSeconds: Math.max(...runs.map((r) => r.otherCpuSeconds)),
    disturbedRuns: runs.filter((r) => r.disturbed).length,
  };
}

// --------------------------------------------------------------------------------------- profiling

/** Top self-time functions of .cpuprofile files (one per thread: main and each worker). */
function summarizeProfiles(dir) {
  const out = [];
  for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.cpuprofile')).sort()) {
    const p = JSON.parse(fs.readFileSync(join(dir, f), 'utf8'));
    const self = new Map();
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    for (let i = 0; i < p.samples.length; i++) {
      const n = byId.get(p.samples[i]);
      const cf = n.callFrame;
      const key = `${cf.functionName || '(anonymous)'} ${cf.url ? `${basename(cf.url)}:${cf.lineNumber + 1}` : ''}`.trim();
      self.set(key, (self.get(key) ?? 0) + (p.timeDeltas[i] ?? 0));
    }
    const total = [...self.values()].reduce((a, b) => a + b, 0);
    const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12)
      .map(([fn, us]) => ({ fn, ms: Math.round(us / 1000), pct: +((100 * us) / total).toFixed(1) }));
    out.push({ file: f, totalMs: Math.round(total / 1000), top });
  }
  return out;
}

// ------------------------------------------------------------------------------------------- main

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.section === 'restore') return mainRestore(opts);
  if (opts.section === 'startup') return mainStartup(opts);
  if (opts.section === 'age') return mainAge(opts);
  if (opts.section === 'mixes') return mainMixes(opts);
  if (opts.section === 'ssh') {
    const { benchSsh } = await import('./bench-ssh.mjs');
    return benchSsh({ root: ROOT, size: Math.min(opts.size, GiB), runs: opts.runs, seed: opts.seed, tmpdir: opts.tmpdir, generateImage, log, linkMbit: opts.linkMbit });
  }
  if (opts.section === 's3') {
    const { benchS3 } = await import('./bench-s3.mjs');
    return benchS3({ root: ROOT, size: Math.min(opts.size, GiB), runs: opts.runs, seed: opts.seed, tmpdir: opts.tmpdir, generateImage, log });
  }
  const started = performance.now();
  for (const t of ['zstd', 'dd', 'fallocate', 'cmp', 'sync']) if (!which(t)) throw new Error(`${t} is needed (apt-get install ${t === 'zstd' ? 'zstd' : 'coreutils util-linux diffutils'})`);
  if (!fs.existsSync('/usr/bin/time')) throw new Error('GNU time is needed: apt-get install -y time');
  if (!fs.existsSync(join(ROOT, 'dist/cli/main.js')) || !fs.existsSync(join(ROOT, 'build/Release/thinio.node'))) {
    throw new Error('thinarchive is not built: run npm run build first');
  }

  const dir = fs.mkdtempSync(join(opts.tmpdir, 'thinarchive-bench-'));
  const cleanup = () => {
    if (!opts.keep) fs.rmSync(dir, { recursive: true, force: true });
  };
  process.on('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  try {
    // Snapshot the tool under test.
    const app = join(dir, 'app');
    fs.mkdirSync(join(app, 'build/Release'), { recursive: true });
    // (timestamps kept: bin/thinarchive runs the bundle unless dist/cli/main.js is newer, src/cli/entry.ts)
    fs.cpSync(join(ROOT, 'dist'), join(app, 'dist'), { recursive: true, preserveTimestamps: true });
    fs.cpSync(join(ROOT, 'bin'), join(app, 'bin'), { recursive: true });
    fs.copyFileSync(join(ROOT, 'build/Release/thinio.node'), join(app, 'build/Release/thinio.node'));
    fs.copyFileSync(join(ROOT, 'package.json'), join(app, 'package.json'));
    fs.symlinkSync(join(ROOT, 'node_modules'), join(app, 'node_modules'));
    const TA = join(app, 'bin/thinarchive');
    const node = process.execPath;
    const ta = (...a) => ({ cmd: node, args: [TA, ...a] });

    const git = (a) => spawnSync('git', a, { cwd: ROOT, encoding: 'utf8' }).stdout.trim();
    const machine = {
      nproc: Number(sh('nproc', []).stdout.trim()),
      cpuModel: (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m) ?? [])[1] ?? cpus()[0]?.model,
      memoryBytes: totalmem(),
      kernel: sh('uname', ['-r']).stdout.trim(),
      node: process.version,
      zstd: sh('zstd', ['--version']).stdout.trim(),
      dd: sh('dd', ['--version']).stdout.split('\n')[0],
      filesystem: (spawnSync('findmnt', ['-n', '-o', 'FSTYPE', '-T', dir], { encoding: 'utf8' }).stdout || sh('stat', ['-f', '-c', '%T', dir]).stdout).trim(),
      tmpdir: dir,
      thinarchive: sh(node, [TA, '--version']).stdout.trim(),
      gitCommit: git(['rev-parse', '--short', 'HEAD']),
      gitDirtySrc: git(['status', '--porcelain', '--', 'src']).split('\n').filter(Boolean).length,
      distBuiltAt: fs.statSync(join(ROOT, 'dist/cli/main.js')).mtime.toISOString(),
      loadavgAtStart: loadavg(),
    };
    log(`machine: ${machine.nproc} cpu ${machine.cpuModel}, ${fmtBytes(machine.memoryBytes)}, kernel ${machine.kernel}, node ${machine.node}, load ${machine.loadavgAtStart.join(' ')}`);
    const runner = new Runner(opts, dir);

    // 1. The image.
    const img = join(dir, 'image.img');
    const allocRaw = join(dir, 'allocated.raw');
    const nonzeroRaw = join(dir, 'nonzero.raw');
    let t = performance.now();
    const { regions, summary: comp } = generateImage(img, opts.size, opts.seed, { allocated: allocRaw, nonzero: nonzeroRaw });
    sh('sync', []);
    const genSeconds = (performance.now() - t) / 1000;
    log(`image ${fmtBytes(opts.size)} in ${genSeconds.toFixed(1)} s: ${comp.regions} regions, random ${fmtMiB(comp.random)}, text ${fmtMiB(comp.text)}, zero ${fmtMiB(comp.zero)}, holes ${fmtMiB(comp.hole)}`);
    const du = Number(sh('du', ['-B1', img]).stdout.split('\t')[0]);
    const dry = JSON.parse(sh(node, [TA, 'send', '--image', img, '--to', join(dir, 'dry'), '--dry-run', '--json']).stdout);
    const sendReads = dry.dataBytes; // bytes of DATA extents the full send reads (allocated, block-widened)
    if (sendReads !== comp.allocated) log(`note: send maps ${sendReads} allocated bytes, the layout has ${comp.allocated}`);

    const results = {
      version: 1, date: new Date().toISOString(), options: { ...opts, out: undefined }, machine,
      image: { size: opts.size, seed: opts.seed, ...comp, diskUsageBytes: du, sendReadsBytes: sendReads, generateSeconds: +genSeconds.toFixed(1) },
      measurements: {},
    };
    const M = results.measurements;

    // 2. Context: reading the image with dd, out of the page cache (how fast the "disk" is).
    M.readImage = await measure(runner, 'dd read image', 1, () => ({
      cmd: 'dd', args: [`if=${img}`, 'of=/dev/null', 'bs=4M', 'status=none'], opts: { cacheFiles: [img] },
    }));
    M.readImage.name = 'dd if=image of=/dev/null bs=4M (context: source read speed)';
    M.readImage.bytes = opts.size;

    // 2a. Fixed cost of one invocation: a full send of a 1 MiB image (process, worker pool, fsyncs).
    const tiny = join(dir, 'tiny.img');
    generateImage(tiny, MiB, opts.seed + 99);
    M.startup = await measure(runner, 'send 1 MiB image (fixed cost)', opts.runs, (i) => ({
      ...ta('send', '--image', tiny, '--to', join(dir, `store-tiny-${i}`), '--json'),
      opts: { before: () => fs.rmSync(join(dir, `store-tiny-${i}`), { recursive: true, force: true }) },
    }));
    M.startup.name = 'thinarchive send of a 1 MiB image (fixed cost per run)';
    M.startup.bytes = MiB;
    M.version = await measure(runner, 'thinarchive --version', opts.runs, () => ({ ...ta('--version') }));
    M.version.name = 'thinarchive --version (node + CLI start)';

    // 3. Full send vs zstd on the same allocated bytes; runs interleaved (A B C A B C ...).
    const zOut = join(dir, 'baseline.zst');
    let fullArchive = null;
    let sendStats = null;
    const sends = [];
    const zstds = [];
    const zstdWhole = [];
    let storeN = 0;
    for (let i = 0; i < opts.runs; i++) {
      sends.push(await measure(runner, 'send full', 1, () => {
        const store = join(dir, `store-full-${storeN++}`);
        return {
          ...ta('send', '--image', img, '--to', store, '--json'),
          opts: { cacheFiles: [img], before: () => fs.rmSync(store, { recursive: true, force: true }) },
          after: (r) => {
            const res = JSON.parse(r.stdout);
            if (fullArchive && fullArchive !== res.path) fs.rmSync(dirname(dirname(fullArchive)), { recursive: true, force: true });
            fullArchive = res.path;
            sendStats = res;
            return { archiveBytes: res.archiveBytes };
          },
        };
      }));
      zstds.push(await measure(runner, 'zstd -3 -T0 (allocated bytes)', 1, () => ({
        cmd: 'sh', args: ['-c', 'zstd -3 -T0 -q -f "$1" -o "$2" && sync "$2"', 'sh', allocRaw, zOut],
        opts: { cacheFiles: [allocRaw] },
        after: () => ({ outBytes: fs.statSync(zOut).size }),
      })));
      zstdWhole.push(await measure(runner, 'zstd -3 -T0 (whole image)', 1, () => ({
        cmd: 'sh', args: ['-c', 'zstd -3 -T0 -q -f "$1" -o "$2" && sync "$2"', 'sh', img, `${zOut}.whole`],
        opts: { cacheFiles: [img] },
        after: () => ({ outBytes: fs.statSync(`${zOut}.whole`).size }),
      })));
    }
    const merge = (name, parts) => {
      const runs = parts.flatMap((p) => p.runs);
      return { name, runs, discarded: parts.flatMap((p) => p.discarded), ...stats(runs) };
    };
    M.sendFull = { ...merge('thinarchive send (full)', sends), bytes: sendReads, archiveBytes: sendStats.archiveBytes, storedBytes: sendStats.storedBytes, zeroBytes: sendStats.zeroBytes, unmapBytes: sendStats.unmapBytes };
    M.zstdAllocated = { ...merge('zstd -3 -T0 allocated bytes + fsync', zstds), bytes: comp.allocated, outBytes: zstds[0].runs[0].outBytes };
    M.zstdWholeImage = { ...merge('zstd -3 -T0 whole image (holes read as zeroes) + fsync', zstdWhole), bytes: comp.allocated, imageBytes: opts.size, outBytes: zstdWhole[0].runs[0].outBytes };
    fs.rmSync(`${zOut}.whole`, { force: true });

    // 4. Apply (into a new sparse image) vs dd of the same data bytes into a new file.
    const target = join(dir, 'target.img');
    const ddOut = join(dir, 'dd.out');
    const applies = [];
    const dds = [];
    const ddSparse = [];
    let applyStats = null;
    for (let i = 0; i < opts.runs; i++) {
      applies.push(await measure(runner, 'apply', 1, () => ({
        ...ta('apply', fullArchive, '--to', target, '--create', '--json'),
        opts: { cacheFiles: [fullArchive], before: () => { fs.rmSync(target, { force: true }); fs.rmSync(`${target}.thinarchive.json`, { force: true }); } },
        after: (r) => {
          applyStats = JSON.parse(r.stdout);
          return {};
        },
      })));
      dds.push(await measure(runner, 'dd bs=4M conv=fsync (non-zero data bytes)', 1, () => ({
        cmd: 'dd', args: [`if=${nonzeroRaw}`, `of=${ddOut}`, 'bs=4M', 'conv=fsync', 'status=none'],
        opts: { cacheFiles: [nonzeroRaw], before: () => fs.rmSync(ddOut, { force: true }) },
      })));
      ddSparse.push(await measure(runner, 'dd bs=64K conv=sparse,fsync (whole image)', 1, () => ({
        cmd: 'dd', args: [`if=${img}`, `of=${ddOut}`, 'bs=64K', 'conv=sparse,fsync', 'status=none'],
        opts: { cacheFiles: [img], before: () => fs.rmSync(ddOut, { force: true }) },
      })));
    }
    fs.rmSync(ddOut, { force: true });
    const appliedData = applyStats.applied[0].dataBytes;
    M.apply = { ...merge('thinarchive apply (new sparse image)', applies), bytes: appliedData, zeroBytes: applyStats.applied[0].zeroBytes, zeroing: applyStats.zeroing };
    M.ddNonzero = { ...merge('dd bs=4M conv=fsync of the non-zero data bytes', dds), bytes: comp.nonzero };
    M.ddSparseImage = { ...merge('dd bs=64K conv=sparse,fsync of the whole image', ddSparse), bytes: comp.nonzero, imageBytes: opts.size };
    const same = sh('cmp', [img, target], { allowFail: true });
    results.checks = { applyMatchesImage: same.status === 0 };
    if (same.status !== 0) log(`ERROR: applied target differs from the image: ${same.stdout}${same.stderr}`);

    // 5. Verify; zstd -t (decompress + check) for context.
    let verifyStats = null;
    const verifies = [];
    const zstdTests = [];
    for (let i = 0; i < opts.runs; i++) {
      verifies.push(await measure(runner, 'verify', 1, () => ({
        ...ta('verify', fullArchive, '--json'),
        opts: { cacheFiles: [fullArchive] },
        after: (r) => {
          verifyStats = JSON.parse(r.stdout);
          return {};
        },
      })));
      zstdTests.push(await measure(runner, 'zstd -t', 1, () => ({
        cmd: 'zstd', args: ['-t', '-q', zOut], opts: { cacheFiles: [zOut] },
      })));
    }
    M.verify = { ...merge('thinarchive verify', verifies), bytes: verifyStats.archives[0].rawBytes, ok: verifyStats.ok };
    M.zstdTest = { ...merge('zstd -t (decompress + content checksum, 1 thread)', zstdTests), bytes: comp.allocated };
    results.checks.verifyOk = verifyStats.ok;

    // 6. Incremental: rewrite ~1.5% of the image, send against the full archive.
    const delta = join(dir, 'delta.xml');
    const changedRaw = join(dir, 'changed.raw');
    results.incremental = makeIncremental(img, regions, opts.seed, 0.015, delta, changedRaw);
    sh('sync', []);
    log(`incremental: ${results.incremental.rewrites} rewrites, ${fmtMiB(results.incremental.rewrittenBytes)}, ${results.incremental.discards} discards, ${results.incremental.deltaRanges} delta ranges`);
    let incrArchive = null;
    const incrs = [];
    const zIncr = [];
    let incrStats = null;
    for (let i = 0; i < opts.runs; i++) {
      incrs.push(await measure(runner, 'send incremental', 1, () => {
        const store = join(dir, `store-incr-${storeN++}`);
        return {
          ...ta('send', '--image', img, '--changes', delta, '--parent', fullArchive, '--to', store, '--json'),
          opts: { cacheFiles: [img], before: () => fs.rmSync(store, { recursive: true, force: true }) },
          after: (r) => {
            incrStats = JSON.parse(r.stdout);
            if (incrArchive && incrArchive !== incrStats.path) fs.rmSync(dirname(dirname(incrArchive)), { recursive: true, force: true });
            incrArchive = incrStats.path;
            return { archiveBytes: incrStats.archiveBytes };
          },
        };
      }));
      zIncr.push(await measure(runner, 'zstd -3 -T0 (changed bytes)', 1, () => ({
        cmd: 'sh', args: ['-c', 'zstd -3 -T0 -q -f "$1" -o "$2" && sync "$2"', 'sh', changedRaw, `${zOut}.incr`],
        opts: { cacheFiles: [changedRaw] },
        after: () => ({ outBytes: fs.statSync(`${zOut}.incr`).size }),
      })));
    }
    M.sendIncremental = { ...merge('thinarchive send (incremental)', incrs), bytes: results.incremental.rewrittenBytes, archiveBytes: incrStats.archiveBytes, unmapBytes: incrStats.unmapBytes };
    M.zstdChanged = { ...merge('zstd -3 -T0 changed bytes + fsync', zIncr), bytes: results.incremental.rewrittenBytes, outBytes: zIncr[0].runs[0].outBytes };
    M.applyIncremental = {
      // One run only (informational): a repeat would find the target already holding the archive.
      ...(await measure(runner, 'apply incremental', 1, () => ({
        ...ta('apply', incrArchive, '--to', target, '--json'), opts: { cacheFiles: [incrArchive] }, noRetry: true,
      }))),
      bytes: results.incremental.rewrittenBytes,
    };
    const same2 = sh('cmp', [img, target], { allowFail: true });
    results.checks.incrementalApplyMatchesImage = same2.status === 0;
    if (same2.status !== 0) log(`ERROR: target after the incremental differs from the image: ${same2.stdout}${same2.stderr}`);
    for (const f of [target, `${target}.thinarchive.json`, allocRaw, nonzeroRaw, changedRaw, `${zOut}.incr`]) fs.rmSync(f, { force: true });

    // 7. Peak RSS of the full send as the image grows (same layout generator: same data density).
    results.rssCurve = [{ size: opts.size, allocated: comp.allocated, peakRssBytes: M.sendFull.peakRssBytes, seconds: M.sendFull.seconds }];
    for (const size of opts.rssSizes) {
      const p = join(dir, `image-${size}.img`);
      const { summary } = generateImage(p, size, opts.seed);
      sh('sync', []);
      const store = join(dir, `store-rss-${size}`);
      const m = await measure(runner, `send full ${fmtBytes(size)}`, 1, () => ({ ...ta('send', '--image', p, '--to', store, '--json'), opts: { cacheFiles: [p] } }));
      results.rssCurve.push({ size, allocated: summary.allocated, peakRssBytes: m.peakRssBytes, seconds: m.seconds });
      fs.rmSync(p, { force: true });
      fs.rmSync(store, { recursive: true, force: true });
    }
    results.rssCurve.sort((a, b) => a.size - b.size);

    // 8. Optional CPU profile of one full send (main thread and workers).
    if (opts.profile) {
      const pdir = join(dirname(opts.out), 'profile');
      fs.rmSync(pdir, { recursive: true, force: true });
      const store = join(dir, 'store-prof');
      runner.prepareCache([img]);
      sh(node, ['--cpu-prof', '--cpu-prof-dir', pdir, TA, 'send', '--image', img, '--to', store, '--json']);
      fs.rmSync(store, { recursive: true, force: true });
      results.profile = summarizeProfiles(pdir);
    }

    const worstRss = Math.max(...['sendFull', 'sendIncremental', 'apply', 'applyIncremental', 'verify'].map((k) => M[k].peakRssBytes));
    const rssSizes = results.rssCurve.map((c) => c.peakRssBytes);
    results.targets = {
      sendFull: { ratio: +(M.zstdAllocated.seconds / M.sendFull.seconds).toFixed(3), want: '>= 0.9' },
      sendIncremental: { ratio: +(M.zstdChanged.seconds / M.sendIncremental.seconds).toFixed(3), want: '>= 0.9' },
      apply: { ratio: +(M.ddNonzero.seconds / M.apply.seconds).toFixed(3), want: '>= 0.9' },
      verify: { gbPerSecond: +(M.verify.bytes / M.verify.seconds / 1e9).toFixed(3), want: '>= 1' },
      peakRss: { bytes: worstRss, want: '<= 200e6' },
      rssFlat: { minBytes: Math.min(...rssSizes), maxBytes: Math.max(...rssSizes), want: 'no growth with image size' },
    };
    for (const k of ['sendFull', 'sendIncremental', 'apply']) results.targets[k].met = results.targets[k].ratio >= 0.9;
    results.targets.verify.met = results.targets.verify.gbPerSecond >= 1;
    results.targets.peakRss.met = worstRss <= 200e6;

    // 9. Restore of a point of a chain of 10 (a separate section: benchRestore).
    results.restore = await benchRestore(opts, dir, ta, runner);

    results.totalSeconds = +((performance.now() - started) / 1000).toFixed(1);
    results.loadavgAtEnd = loadavg();
    results.waitedForQuietSeconds = +runner.waitedTotal.toFixed(1);
    report(results);
    fs.mkdirSync(dirname(opts.out), { recursive: true });
    fs.writeFileSync(opts.out, JSON.stringify(results, null, 2) + '\n');
    log(`results written to ${opts.out}`);
    if (!results.checks.applyMatchesImage || !results.checks.verifyOk || !results.checks.incrementalApplyMatchesImage) process.exitCode = 1;
  } finally {
    cleanup();
  }
}

// ------------------------------------------------------------------------------------------- report

function report(r) {
  const M = r.measurements;
  const m = r.machine;
  const lines = [];
  const p = (s = '') => lines.push(s);
  p(`thinarchive ${m.thinarchive} (git ${m.gitCommit}${m.gitDirtySrc ? `, ${m.gitDirtySrc} uncommitted src files` : ''}; dist built ${m.distBuiltAt}) — ${r.date}`);
  p(`machine: ${m.nproc} x ${m.cpuModel}, ${fmtBytes(m.memoryBytes)} RAM, kernel ${m.kernel}, node ${m.node}, ${m.zstd.replace(/^\*+\s*|\s*\*+$/g, '')}, ${m.filesystem}`);
  const im = r.image;
  p(`image: ${fmtBytes(im.size)} seed ${im.seed}, ${im.regions} regions: random ${fmtMiB(im.random)}, text ${fmtMiB(im.text)}, zero-filled ${fmtMiB(im.zero)}, holes ${fmtMiB(im.hole)}; allocated ${fmtMiB(im.allocated)} (non-zero ${fmtMiB(im.nonzero)})`);
  const inc = r.incremental;
  p(`incremental: ${inc.rewrites} rewrites = ${fmtMiB(inc.rewrittenBytes)} (${(100 * inc.rewrittenBytes / im.size).toFixed(2)}% of the image; ${fmtMiB(inc.rightOnlyBytes)} into holes), ${inc.discards} discards = ${fmtMiB(inc.discardedBytes)}`);
  p(`cache: ${r.options.warm ? 'warm (inputs read before every run)' : 'cold (inputs evicted from the page cache before every run)'}; ${r.options.runs} runs each, median; load ${m.loadavgAtStart.join(' ')} at start, ${r.loadavgAtEnd.join(' ')} at end`);
  p();
  const rows = [['operation', 'tool', 'data', 'median s', 'MB/s', 'ratio', 'target', 'peak RSS', 'cpu s', 'cpu ratio', 'other cpu s']];
  const row = (op, x, bytes, ratio = '', tgt = '', base = null) => rows.push([
    op, x.name + (x.disturbedRuns ? ` [${x.disturbedRuns} disturbed]` : ''), fmtBytes(bytes), x.seconds.toFixed(2), mbps(bytes, x.seconds).toFixed(0), ratio, tgt,
    fmtMiB(x.peakRssBytes), x.cpuSeconds.toFixed(1), base ? `${(base.cpuSeconds / x.cpuSeconds).toFixed(2)}x` : '', String(x.otherCpuSeconds),
  ]);
  const ratio = (a, base) => `${(base.seconds / a.seconds).toFixed(2)}x`;
  const ok = (cond) => (cond ? 'ok' : 'MISS');
  const rs = M.zstdAllocated.seconds / M.sendFull.seconds;
  row('send full', M.sendFull, M.sendFull.bytes, ratio(M.sendFull, M.zstdAllocated), `>=0.9x ${ok(rs >= 0.9)}`, M.zstdAllocated);
  row('', M.zstdAllocated, M.zstdAllocated.bytes, 'baseline');
  row('', M.zstdWholeImage, M.zstdWholeImage.bytes, `(${ratio(M.sendFull, M.zstdWholeImage)})`);
  const ri = M.zstdChanged.seconds / M.sendIncremental.seconds;
  row('send incremental', M.sendIncremental, M.sendIncremental.bytes, ratio(M.sendIncremental, M.zstdChanged), `>=0.9x ${ok(ri >= 0.9)}`, M.zstdChanged);
  row('', M.zstdChanged, M.zstdChanged.bytes, 'baseline');
  const ra = M.ddNonzero.seconds / M.apply.seconds;
  row('apply', M.apply, M.apply.bytes, ratio(M.apply, M.ddNonzero), `>=0.9x ${ok(ra >= 0.9)}`, M.ddNonzero);
  row('', M.ddNonzero, M.ddNonzero.bytes, 'baseline');
  row('', M.ddSparseImage, M.ddSparseImage.bytes, `(${ratio(M.apply, M.ddSparseImage)})`);
  row('apply incremental', M.applyIncremental, M.applyIncremental.bytes);
  row('fixed cost', M.startup, M.startup.bytes);
  rows.push(['', M.version.name, '', M.version.seconds.toFixed(2), '', '', '', fmtMiB(M.version.peakRssBytes), M.version.cpuSeconds.toFixed(1), '', String(M.version.otherCpuSeconds)]);
  const vg = M.verify.bytes / M.verify.seconds / 1e9;
  row('verify', M.verify, M.verify.bytes, `${vg.toFixed(3)} GB/s`, `>=1 GB/s ${ok(vg >= 1)}`);
  row('', M.zstdTest, M.zstdTest.bytes, '(context)');
  row('read source', M.readImage, M.readImage.bytes, '(context)');
  const w = rows[0].map((_, c) => Math.max(...rows.map((x) => x[c].length)));
  for (const [i, x] of rows.entries()) {
    p(x.map((c, j) => (j >= 2 && j !== 6 ? c.padStart(w[j]) : c.padEnd(w[j]))).join('  ').trimEnd());
    if (i === 0) p(w.map((n) => '-'.repeat(n)).join('  '));
  }
  p();
  const worst = Math.max(M.sendFull.peakRssBytes, M.sendIncremental.peakRssBytes, M.apply.peakRssBytes, M.verify.peakRssBytes, M.applyIncremental.peakRssBytes);
  p(`peak RSS (thinarchive, any command): ${fmtMiB(worst)} = ${(worst / 1e6).toFixed(0)} MB — target <= 200 MB = 190.7 MiB (${ok(worst <= 200e6)})`);
  p(`peak RSS of full send by image size: ${r.rssCurve.map((c) => `${fmtBytes(c.size)} (${fmtMiB(c.allocated)} allocated): ${fmtMiB(c.peakRssBytes)}`).join('; ')}`);
  p(`archive: ${fmtMiB(M.sendFull.archiveBytes)} vs zstd -3 output ${fmtMiB(M.zstdAllocated.outBytes)} (ratio ${(M.sendFull.bytes / M.sendFull.archiveBytes).toFixed(2)} vs ${(M.zstdAllocated.bytes / M.zstdAllocated.outBytes).toFixed(2)})`);
  p(`checks: apply == image: ${r.checks.applyMatchesImage}, verify ok: ${r.checks.verifyOk}, after incremental apply == image: ${r.checks.incrementalApplyMatchesImage}`);
  p(`MB = 10^6 bytes. 'ratio' = baseline time / thinarchive time on the same data (>= 1: thinarchive is faster); 'cpu s' = median user+sys CPU of the process tree;`);
  p(`'cpu ratio' = baseline cpu s / thinarchive cpu s (less sensitive to other load than wall time); 'other cpu s' = CPU used by the rest of the machine during a run (max over runs; includes kernel writeback).`);
  if (r.profile) {
    p();
    for (const t of r.profile) {
      p(`profile ${t.file} (${t.totalMs} ms sampled):`);
      for (const f of t.top) p(`  ${String(f.pct).padStart(5)}%  ${String(f.ms).padStart(6)} ms  ${f.fn}`);
    }
  }
  if (r.restore) for (const l of reportRestore(r.restore)) p(l);
  p(`total bench time ${r.totalSeconds} s (waited ${r.waitedForQuietSeconds} s for quiet)`);
  process.stdout.write(lines.join('\n') + '\n');
}

// ---------------------------------------------------------------------------------------- restore

/**
 * The restore section: a chain of 10 archives of one image (the full archive, then 9 incrementals
 * each rewriting 5% of the image in scattered places plus a few discards), then
 * - `restore --at 9` and `restore --at 5` (each block read once, from the newest archive <= the
 *   point that holds it: archive bytes read reported per archive),
 * - for comparison, `apply` of archives 0..9 onto a new image (replays every archive: reads all of them).
 * Both results are compared with the image as it was at that point (cmp).
 */
async function benchRestore(opts, dir, ta, runner) {
  const size = opts.restoreSize ?? Math.min(opts.size, GiB);
  const sdir = join(dir, 'restore');
  fs.mkdirSync(sdir, { recursive: true });
  const img = join(sdir, 'source.img');
  const store = join(sdir, 'store');
  const run = (...a) => { const c = ta(...a); return JSON.parse(sh(c.cmd, c.args).stdout); };
  let t = performance.now();
  const { regions } = generateImage(img, size, opts.seed + 1000);
  const sends = [run('send', '--image', img, '--to', store, '--json')];
  const points = {};
  for (let i = 1; i < 10; i++) {
    const delta = join(sdir, `delta-${i}.xml`);
    makeIncremental(img, regions, opts.seed + 1000 + i, 0.05, delta, join(sdir, 'changed.raw'));
    sends.push(run('send', '--image', img, '--changes', delta, '--parent', store, '--to', store, '--json'));
    if (i === 5) {
      points[5] = join(sdir, 'point-5.img');
      sh('cp', ['--sparse=always', img, points[5]]);
    }
  }
  points[9] = img;
  fs.rmSync(join(sdir, 'changed.raw'), { force: true });
  const chainSeconds = (performance.now() - t) / 1000;
  log(`restore section: chain of 10 archives of a ${fmtBytes(size)} image made in ${chainSeconds.toFixed(1)} s`);
  const archiveBytes = sends.map((x) => x.archiveBytes);
  const out = { size, archives: sends.map((x) => ({ sequence: x.sequence, archiveBytes: x.archiveBytes, rawBytes: x.rawBytes })), restores: [] };
  for (const n of [9, 5]) {
    const target = join(sdir, `restored-${n}.img`);
    let res;
    const m = await measure(runner, `restore --at ${n}`, 1, () => ({
      ...ta('restore', store, '--at', String(n), '--to', target, '--create', '--json'),
      opts: { cacheFiles: sends.slice(0, n + 1).map((x) => x.path), before: () => { fs.rmSync(target, { force: true }); fs.rmSync(`${target}.thinarchive.json`, { force: true }); } },
      after: (r) => { res = JSON.parse(r.stdout); return {}; },
    }));
    const same = sh('cmp', [points[n], target], { allowFail: true }).status === 0;
    if (!same) log(`ERROR: restore --at ${n} differs from the image at that point`);
    const archivesUpTo = archiveBytes.slice(0, n + 1).reduce((a, b) => a + b, 0);
    out.restores.push({
      point: n, seconds: m.seconds, peakRssBytes: m.peakRssBytes, bytesRead: res.bytesRead, dataBytes: res.dataBytes, archivesUpTo,
      perArchive: res.archives.map((a) => ({ sequence: a.sequence, records: a.records, bytesRead: a.bytesRead, rereads: a.rereads })), matches: same,
    });
    fs.rmSync(target, { force: true });
  }
  const target = join(sdir, 'applied.img');
  const m = await measure(runner, 'apply 0..9 (replay)', 1, () => ({
    ...ta('apply', ...sends.map((x) => x.path), '--to', target, '--create', '--json'),
    opts: { cacheFiles: sends.map((x) => x.path), before: () => { fs.rmSync(target, { force: true }); fs.rmSync(`${target}.thinarchive.json`, { force: true }); } },
  }));
  const same = sh('cmp', [img, target], { allowFail: true }).status === 0;
  out.replay = { point: 9, seconds: m.seconds, peakRssBytes: m.peakRssBytes, bytesRead: archiveBytes.reduce((a, b) => a + b, 0), matches: same };
  fs.rmSync(sdir, { recursive: true, force: true });
  return out;
}

function reportRestore(r) {
  const lines = [''];
  lines.push(`restore (chain of 10 of a ${fmtBytes(r.size)} image; archives ${r.archives.map((a) => fmtMiB(a.archiveBytes)).join(', ')}):`);
  for (const x of r.restores) {
    lines.push(`  restore --at ${x.point}: ${x.seconds.toFixed(2)} s, read ${fmtMiB(x.bytesRead)} of archives (archives 0..${x.point} hold ${fmtMiB(x.archivesUpTo)}), `
      + `wrote ${fmtMiB(x.dataBytes)}, peak RSS ${fmtMiB(x.peakRssBytes)}, re-reads ${x.perArchive.reduce((a, b) => a + b.rereads, 0)}, matches: ${x.matches}`);
    lines.push(`    per archive: ${x.perArchive.map((a) => `${a.sequence}: ${fmtMiB(a.bytesRead)}`).join(', ')}`);
  }
  const p = r.replay;
  lines.push(`  apply 0..9 (replay): ${p.seconds.toFixed(2)} s, read ${fmtMiB(p.bytesRead)}, peak RSS ${fmtMiB(p.peakRssBytes)}, matches: ${p.matches}`);
  return lines;
}

/**
 * --section age: encrypted (age, one X25519 recipient) against plain archives of the same image, each
 * step run plain then encrypted, `--runs` times: full send, apply (into a new image), verify, restore of
 * the point. Reports median seconds, MB/s of the allocated bytes, the encrypted/plain throughput ratio
 * and peak RSS. Uses the built tree directly.
 */
async function mainAge(opts) {
  const dir = fs.mkdtempSync(join(opts.tmpdir, 'thinarchive-bench-age-'));
  try {
    const TA = join(ROOT, 'bin/thinarchive');
    const ta = (...a) => ({ cmd: process.execPath, args: [TA, ...a] });
    const runner = new Runner(opts, dir);
    const size = Math.min(opts.size, GiB);
    const img = join(dir, 'image.img');
    const { summary: comp } = generateImage(img, size, opts.seed);
    const key = join(dir, 'bench.key');
    const recipient = sh(process.execPath, [TA, 'key', 'generate', '--out', key]).stdout.trim();
    const kinds = { plain: [], encrypted: [ '--encrypt-to', recipient ] };
    const readKeys = { plain: [], encrypted: ['--identity', key] };
    const rows = {};
    const add = (step, kind, m) => {
      rows[step] ??= {};
      const prev = rows[step][kind];
      rows[step][kind] = prev ? { ...m, runs: [...prev.runs, ...m.runs], ...stats([...prev.runs, ...m.runs]) } : m;
    };
    const stores = {};
    for (let i = 0; i < opts.runs; i++) {
      for (const kind of Object.keys(kinds)) {
        const store = join(dir, `store-${kind}`);
        stores[kind] = store;
        add('send full', kind, await measure(runner, `send full (${kind})`, 1, () => ({
          ...ta('send', '--image', img, '--to', store, ...kinds[kind], '--state-dir', join(dir, 'state'), '--json'),
          opts: { cacheFiles: [img], before: () => fs.rmSync(store, { recursive: true, force: true }) },
        })));
      }
      for (const kind of Object.keys(kinds)) {
        const target = join(dir, `target-${kind}.img`);
        const clear = () => { fs.rmSync(target, { force: true }); fs.rmSync(`${target}.thinarchive.json`, { force: true }); };
        add('apply', kind, await measure(runner, `apply (${kind})`, 1, () => ({ ...ta('apply', stores[kind], '--to', target, '--create', ...readKeys[kind], '--json'), opts: { before: clear } })));
        add('verify', kind, await measure(runner, `verify (${kind})`, 1, () => ({ ...ta('verify', stores[kind], ...readKeys[kind], '--json') })));
        add('restore', kind, await measure(runner, `restore (${kind})`, 1, () => ({ ...ta('restore', stores[kind], '--to', target, '--create', ...readKeys[kind], '--json'), opts: { before: clear } })));
      }
    }
    const lines = [`encrypted vs plain, ${fmtBytes(size)} image (${fmtMiB(comp.allocated)} allocated), ${opts.runs} run(s) each, load ${loadavg().map((x) => x.toFixed(2)).join(' ')}`,
      '| step | plain s | encrypted s | plain MB/s | encrypted MB/s | encrypted/plain | peak RSS plain | peak RSS encrypted |', '|---|---|---|---|---|---|---|---|'];
    for (const [step, r] of Object.entries(rows)) {
      const p = r.plain;
      const e = r.encrypted;
      lines.push(`| ${step} | ${p.seconds.toFixed(2)} | ${e.seconds.toFixed(2)} | ${mbps(comp.allocated, p.seconds).toFixed(0)} | ${mbps(comp.allocated, e.seconds).toFixed(0)} | ${(p.seconds / e.seconds).toFixed(2)}x | ${fmtMiB(p.peakRssBytes)} | ${fmtMiB(e.peakRssBytes)} |`);
    }
    for (const l of lines) process.stdout.write(`${l}\n`);
    fs.mkdirSync(dirname(opts.out), { recursive: true });
    const out = opts.out.replace(/\.json$/, '-age.json');
    fs.writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), options: { ...opts, out: undefined }, image: comp, rows }, null, 2) + '\n');
    log(`results written to ${out}`);
  } finally {
    if (!opts.keep) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The compressible pattern of issue 14: 64 KiB blocks repeating a pattern of eight: two random, three
 * of one short text line repeated, one zero-filled, two of another repeated line. Every byte is
 * written (allocated); zstd -3 makes about a quarter of it.
 */
function writePatternImage(path, size, seed, nonzeroPath) {
  const lineA = Buffer.from('Dec  7 04:12:01 host1 kernel: [12345.678] eth0: link up, 1000 Mbps, full duplex\n');
  const lineB = Buffer.from('GET /api/v1/status HTTP/1.1 200 512 "-" "curl/7.88.1"\n');
  const fillLines = (line) => {
    const b = Buffer.alloc(BLOCK);
    for (let at = 0; at < BLOCK; at += line.length) line.copy(b, at, 0, Math.min(line.length, BLOCK - at));
    return b;
  };
  const a = fillLines(lineA);
  const b = fillLines(lineB);
  const zero = Buffer.alloc(BLOCK);
  const random = randomStream(seed, 'pattern');
  const fd = fs.openSync(path, 'w');
  const nz = fs.openSync(nonzeroPath, 'w');
  const group = Buffer.allocUnsafe(8 * BLOCK);
  try {
    for (let pos = 0; pos < size; pos += group.length) {
      random(group.subarray(0, 2 * BLOCK));
      for (let k = 2; k < 5; k++) a.copy(group, k * BLOCK);
      zero.copy(group, 5 * BLOCK);
      for (let k = 6; k < 8; k++) b.copy(group, k * BLOCK);
      const n = Math.min(group.length, size - pos);
      writeAll(fd, group.subarray(0, n), pos);
      writeAll(nz, group.subarray(0, Math.min(n, 5 * BLOCK)), null);
      if (n > 6 * BLOCK) writeAll(nz, group.subarray(6 * BLOCK, n), null);
    }
  } finally {
    fs.closeSync(fd);
    fs.closeSync(nz);
  }
  return { allocated: size, nonzero: size - Math.floor(size / (8 * BLOCK)) * BLOCK };
}

/** Random bytes, every one written (the generator's random regions, as one region). */
function writeRandomImage(path, size, seed) {
  const fd = fs.openSync(path, 'w');
  let pos = 0;
  try {
    produce('random', seed, 'incompressible', size, (buf) => {
      writeAll(fd, buf, pos);
      pos += buf.length;
    });
  } finally {
    fs.closeSync(fd);
  }
  return { allocated: size, nonzero: size };
}

const MIXES = ['incompressible', 'mixed', 'compressible'];

/**
 * --section mixes (issue 14): full send, apply and verify on incompressible, mixed and compressible
 * data at each of --mix-sizes, each beside its baseline in the same run, runs interleaved, cold inputs:
 * send full vs `zstd -3 -T0` of the bytes the send reads + sync (and the archive's size vs zstd's),
 * apply to a new image vs `dd bs=4M conv=fsync` of the same non-zero bytes, verify vs `zstd -t` of
 * zstd's output. Uses the built tree directly.
 */
async function mainMixes(opts) {
  const dir = fs.mkdtempSync(join(opts.tmpdir, 'thinarchive-bench-mixes-'));
  const TA = join(ROOT, 'bin/thinarchive');
  const ta = (...a) => ({ cmd: process.execPath, args: [TA, ...a] });
  const runner = new Runner(opts, dir);
  const results = [];
  try {
    for (const size of opts.mixSizes ?? [GiB, 4 * GiB]) {
      for (const mix of opts.mixes ?? MIXES) {
        if (!MIXES.includes(mix)) throw new Error(`unknown mix ${mix}`);
        const img = join(dir, 'image.img');
        const nonzero = join(dir, 'nonzero.raw');
        const allocatedRaw = join(dir, 'allocated.raw');
        for (const f of [img, nonzero, allocatedRaw]) fs.rmSync(f, { force: true });
        let bytes;
        if (mix === 'mixed') {
          const { summary } = generateImage(img, size, opts.seed, { allocated: allocatedRaw, nonzero });
          bytes = { allocated: summary.allocated, nonzero: summary.nonzero };
        } else if (mix === 'compressible') bytes = writePatternImage(img, size, opts.seed, nonzero);
        else {
          bytes = writeRandomImage(img, size, opts.seed);
          fs.linkSync(img, nonzero);
        }
        // zstd's input: the bytes the send reads (the allocated regions in order; all of an all-allocated image)
        const zin = mix === 'mixed' ? allocatedRaw : img;
        const store = join(dir, 'store');
        const zout = join(dir, 'out.zst');
        const target = join(dir, 'target.img');
        const ddOut = join(dir, 'dd.out');
        const clearTarget = () => ['', '.thinarchive.json', '.thinarchive.lock'].forEach((x) => fs.rmSync(`${target}${x}`, { force: true }));
        const rows = { send: [], zstd: [], apply: [], dd: [], verify: [], zstdTest: [] };
        let archiveBytes = 0;
        let zstdBytes = 0;
        for (let i = 0; i < opts.runs; i++) {
          rows.send.push(await measure(runner, `${mix} ${fmtBytes(size)} send full`, 1, () => ({
            ...ta('send', '--image', img, '--to', store, '--state-dir', join(dir, 'state'), '--json'),
            opts: { cacheFiles: [img], before: () => fs.rmSync(store, { recursive: true, force: true }) },
          })));
          rows.zstd.push(await measure(runner, `${mix} ${fmtBytes(size)} zstd -3 -T0 + sync`, 1, () => ({
            cmd: 'sh', args: ['-c', 'zstd -3 -T0 -q -f "$1" -o "$2" && sync "$2"', 'sh', zin, zout], opts: { cacheFiles: [zin] },
          })));
          archiveBytes = dirBytes(store);
          zstdBytes = fs.statSync(zout).size;
          rows.apply.push(await measure(runner, `${mix} ${fmtBytes(size)} apply`, 1, () => ({ ...ta('apply', store, '--to', target, '--create', '--json'), opts: { before: clearTarget, cacheFiles: archiveFiles(store) } })));
          rows.dd.push(await measure(runner, `${mix} ${fmtBytes(size)} dd conv=fsync`, 1, () => ({
            cmd: 'dd', args: [`if=${nonzero}`, `of=${ddOut}`, 'bs=4M', 'conv=fsync', 'status=none'], opts: { before: () => fs.rmSync(ddOut, { force: true }), cacheFiles: [nonzero] },
          })));
          rows.verify.push(await measure(runner, `${mix} ${fmtBytes(size)} verify`, 1, () => ({ ...ta('verify', store, '--json'), opts: { cacheFiles: archiveFiles(store) } })));
          rows.zstdTest.push(await measure(runner, `${mix} ${fmtBytes(size)} zstd -t`, 1, () => ({ cmd: 'zstd', args: ['-t', '-q', zout], opts: { cacheFiles: [zout] } })));
        }
        if (sh('cmp', [img, target], { allowFail: true }).status !== 0) throw new Error(`${mix} ${fmtBytes(size)}: the applied image differs from the image`);
        const med = (k) => stats(rows[k].flatMap((m) => m.runs));
        const r = Object.fromEntries(Object.keys(rows).map((k) => [k, med(k)]));
        results.push({ mix, size, bytes, archiveBytes, zstdBytes, rows: r });
        log(`${mix} ${fmtBytes(size)}: send ${(r.zstd.seconds / r.send.seconds).toFixed(2)}x zstd (archive ${(archiveBytes / zstdBytes).toFixed(3)}x its size), apply ${(r.dd.seconds / r.apply.seconds).toFixed(2)}x dd, verify ${(r.zstdTest.seconds / r.verify.seconds).toFixed(2)}x zstd -t`);
        for (const f of [img, nonzero, allocatedRaw, zout, target, ddOut]) fs.rmSync(f, { force: true });
        fs.rmSync(store, { recursive: true, force: true });
      }
    }
    const lines = [`mixes, ${opts.runs} run(s) each, medians, load ${loadavg().map((x) => x.toFixed(2)).join(' ')}`,
      '| mix | size | send s / zstd s | send vs zstd | archive / zstd size | apply s / dd s | apply vs dd | verify s / zstd -t s | verify vs zstd -t | peak RSS send / apply / verify |',
      '|---|---|---|---|---|---|---|---|---|---|'];
    for (const x of results) {
      const r = x.rows;
      lines.push(`| ${x.mix} | ${fmtBytes(x.size)} | ${r.send.seconds.toFixed(2)} / ${r.zstd.seconds.toFixed(2)} | ${(r.zstd.seconds / r.send.seconds).toFixed(2)}x | ${(x.archiveBytes / x.zstdBytes).toFixed(3)} | ${r.apply.seconds.toFixed(2)} / ${r.dd.seconds.toFixed(2)} | ${(r.dd.seconds / r.apply.seconds).toFixed(2)}x | ${r.verify.seconds.toFixed(2)} / ${r.zstdTest.seconds.toFixed(2)} | ${(r.zstdTest.seconds / r.verify.seconds).toFixed(2)}x | ${fmtMiB(r.send.peakRssBytes)} / ${fmtMiB(r.apply.peakRssBytes)} / ${fmtMiB(r.verify.peakRssBytes)} |`);
    }
    for (const l of lines) process.stdout.write(`${l}\n`);
    fs.mkdirSync(dirname(opts.out), { recursive: true });
    const out = opts.out.replace(/\.json$/, '-mixes.json');
    fs.writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), options: { ...opts, out: undefined }, results }, null, 2) + '\n');
    log(`results written to ${out}`);
  } finally {
    if (!opts.keep) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Bytes of every file below `d`. */
function dirBytes(d) {
  return fs.readdirSync(d, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).reduce((n, e) => n + fs.statSync(join(e.parentPath ?? e.path, e.name)).size, 0);
}

/** The archive files below a store directory. */
function archiveFiles(d) {
  return fs.readdirSync(d, { recursive: true, withFileTypes: true }).filter((e) => e.isFile() && /\.tna(\.age)?$/.test(e.name)).map((e) => join(e.parentPath ?? e.path, e.name));
}

/** --section restore: only the restore section (uses the built tree directly, no snapshot of dist/). */
async function mainRestore(opts) {
  const dir = fs.mkdtempSync(join(opts.tmpdir, 'thinarchive-bench-restore-'));
  try {
    const TA = join(ROOT, 'bin/thinarchive');
    const ta = (...a) => ({ cmd: process.execPath, args: [TA, ...a] });
    const r = await benchRestore(opts, dir, ta, new Runner(opts, dir));
    for (const l of reportRestore(r)) process.stdout.write(`${l}\n`);
    fs.mkdirSync(dirname(opts.out), { recursive: true });
    const out = opts.out.replace(/\.json$/, '-restore.json');
    fs.writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), options: { ...opts, out: undefined }, restore: r }, null, 2) + '\n');
    log(`results written to ${out}`);
    if (!r.restores.every((x) => x.matches) || !r.replay.matches) process.exitCode = 1;
  } finally {
    if (!opts.keep) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * --section startup: the CLI's start-up beside a bare `node -e 0` in the same run, interleaved
 * (node, --version, --help, info, node, ...) so that the machine's drift hits each alike. Uses the
 * built tree directly.
 */
async function mainStartup(opts) {
  const dir = fs.mkdtempSync(join(opts.tmpdir, 'thinarchive-bench-startup-'));
  try {
    const TA = join(ROOT, 'bin/thinarchive');
    const node = process.execPath;
    const img = join(dir, 'tiny.img');
    generateImage(img, MiB, opts.seed);
    const archive = JSON.parse(sh(node, [TA, 'send', '--image', img, '--to', join(dir, 'store'), '--json']).stdout).path;
    const cases = [
      { name: 'node -e 0', args: ['-e', '0'] },
      { name: 'thinarchive --version', args: [TA, '--version'] },
      { name: 'thinarchive --help', args: [TA, '--help'] },
      { name: 'thinarchive info ARCHIVE', args: [TA, 'info', archive] },
    ].map((c) => ({ ...c, runs: [] }));
    const runner = new Runner(opts, dir);
    const rounds = Math.max(opts.runs, 10);
    const loadAtStart = loadavg();
    for (let i = 0; i < rounds; i++) {
      for (const c of cases) {
        const r = await runner.time(node, c.args);
        delete r.stdout;
        c.runs.push({ ...r, disturbed: disturbed(r) });
      }
    }
    const base = stats(cases[0].runs);
    const out = cases.map((c) => {
      const st = stats(c.runs);
      return { name: c.name, ...st, wallRatio: +(st.seconds / base.seconds).toFixed(2), cpuRatio: +(st.cpuSeconds / base.cpuSeconds).toFixed(2), runs: c.runs };
    });
    process.stdout.write(`start-up, ${rounds} rounds, load average ${loadAtStart.join(' ')} at start, ${loadavg().join(' ')} at the end:
`);
    for (const c of out) {
      process.stdout.write(`  ${c.name.padEnd(26)} wall ${c.seconds.toFixed(3)} s (${c.wallRatio.toFixed(2)}x), cpu ${c.cpuSeconds.toFixed(3)} s (${c.cpuRatio.toFixed(2)}x), `
        + `peak RSS ${fmtMiB(c.peakRssBytes)}${c.disturbedRuns ? `, ${c.disturbedRuns} disturbed runs` : ''}\n`);
    }
    fs.mkdirSync(dirname(opts.out), { recursive: true });
    const file = opts.out.replace(/\.json$/, '-startup.json');
    fs.writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), options: { ...opts, out: undefined }, node: process.version, startup: out }, null, 2) + '\n');
    log(`results written to ${file}`);
  } finally {
    if (!opts.keep) fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  log(`failed: ${e.stack ?? e}`);
  process.exitCode = 1;
});
