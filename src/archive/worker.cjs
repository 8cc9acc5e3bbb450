// @ts-check
/*
 * Worker thread for the CPU-heavy part of send, apply and verify (see pool.ts). Plain CommonJS so the
 * same file runs from src/ under the test runner and from dist/ when installed.
 *
 * encode: split a read buffer into runs of all-zero and data blocks; hash each data block (xxh64 of the
 *         uncompressed bytes) and zstd-compress each data run; a run that does not shrink is stored raw;
 *         hash the stored bytes. Compressed runs go into the caller's output buffer, raw runs stay in the
 *         input buffer; both are handed back (nothing large is allocated per job).
 * decode: check one record's stored payload against its hash, decompress it into exactly rawLen bytes
 *         and check every block's hash. With `recycle`, every buffer the caller sent comes back to it.
 * decodeBatch: decode for several records whose payloads share one buffer (small records).
 * hash:   hash the blocks of a buffer (for comparing a target with a chain).
 * seal:   encrypt consecutive 64 KiB chunks of an age payload (ChaCha20-Poly1305, STREAM nonces) into
 *         the caller's output buffer: ciphertext and tag of each chunk, one after the other.
 * open:   authenticate (and with `decrypt`, decrypt in place) consecutive sealed chunks of an age
 *         payload; reports the first chunk that fails. The buffer sent comes back.
 *         (The age format itself: src/crypto/age.ts; these two ops are its chunk loop, off the main thread.)
 * Loaded in the main thread instead (no parentPort), it exports `handle` for pool.ts's inline jobs.
 */
'use strict';
const { parentPort } = require('node:worker_threads');
const { join } = require('node:path');
const binding = require('zstd-napi/binding');
// XXH64 from the native addon (native/thinio.c, libxxhash): about 10x xxhash-wasm, which copies each
// block into wasm memory first; a unit test checks it against xxhash-wasm (src/format/hash.ts).
// (dist/archive/ and src/archive/ are both two levels below the package root.)
const native = require(join(__dirname, '..', '..', 'build', 'Release', 'thinio.node'));
/** @type {(b: Uint8Array) => bigint} */
const xxh64 = native.xxh64;

const CODEC_NONE = 0;
const CODEC_ZSTD = 1;

const cctx = new binding.CCtx();
const dctx = new binding.DCtx();
/** @type {Buffer} */
let zeros = Buffer.alloc(0);
/** @type {Buffer} */
let scratch = Buffer.alloc(0);
/** @type {Buffer} */
let decodeScratch = Buffer.alloc(0);

function isZero(/** @type {Buffer} */ b) {
  if (zeros.length < b.length) zeros = Buffer.alloc(b.length);
  return b.equals(zeros.length === b.length ? zeros : zeros.subarray(0, b.length));
}

function hashBlocks(/** @type {Buffer} */ data, /** @type {number} */ blockSize) {
  const out = new BigUint64Array(Math.ceil(data.length / blockSize));
  native.xxh64Blocks(data, blockSize, out);
  return out;
}

function encode(msg) {
  const data = Buffer.from(msg.buf, 0, msg.len);
  const bs = msg.blockSize;
  const count = Math.ceil(data.length / bs);
  // Compressed runs go one after the other into the caller's (recycled) output buffer; a run that
  // does not compress stays where it is in the input buffer. Both buffers go back to the caller, so
  // nothing is allocated per job but the small hash arrays. Compressed bytes never overtake the input
  // they came from: a compressed run is shorter than its raw bytes, so it always fits.
  const out = msg.out ? Buffer.from(msg.out) : undefined;
  let outAt = 0;
  const runs = [];
  const transfer = [];
  let i = 0;
  while (i < count) {
    const zero = isZero(data.subarray(i * bs, Math.min(data.length, (i + 1) * bs)));
    let j = i + 1;
    while (j < count && isZero(data.subarray(j * bs, Math.min(data.length, (j + 1) * bs))) === zero) j++;
    if (zero) {
      runs.push({ zero: true, first: msg.firstBlock + i, count: j - i });
    } else {
      const rawAt = i * bs;
      const raw = data.subarray(rawAt, Math.min(data.length, j * bs));
      const hashes = hashBlocks(raw, bs);
      let dst;
      if (out && out.length >= outAt + raw.length - 1) dst = out.subarray(outAt, outAt + raw.length - 1);
      else {
        if (scratch.length < raw.length) scratch = Buffer.allocUnsafe(raw.length);
        dst = scratch.subarray(0, raw.length - 1);
      }
      let storedLen = 0;
      try {
        // Room for raw.length - 1 bytes only: a run that does not shrink fails here and is stored raw.
        storedLen = raw.length > 1 ? cctx.compress(dst, raw, msg.level) : 0;
      } catch {
        storedLen = 0;
      }
      const codec = storedLen > 0 ? CODEC_ZSTD : CODEC_NONE;
      /** @type {Record<string, unknown>} */
      const run = { zero: false, first: msg.firstBlock + i, count: j - i, rawLen: raw.length, codec, hashes: hashes.buffer };
      if (codec === CODEC_NONE) {
        run.storedHash = xxh64(raw);
        Object.assign(run, { in: 'buf', at: rawAt, len: raw.length });
      } else if (out && dst.buffer === out.buffer) {
        run.storedHash = xxh64(dst.subarray(0, storedLen));
        Object.assign(run, { in: 'out', at: outAt, len: storedLen });
        outAt += storedLen;
      } else {
        // No output buffer from the caller: one copy into a buffer of its own, transferred.
        const storedBuf = new ArrayBuffer(storedLen);
        const stored = new Uint8Array(storedBuf);
        stored.set(dst.subarray(0, storedLen));
        run.storedHash = xxh64(stored);
        run.stored = storedBuf;
        transfer.push(storedBuf);
      }
      runs.push(run);
      transfer.push(hashes.buffer);
    }
    i = j;
  }
  return { result: { runs, buf: msg.buf, out: msg.out }, transfer: msg.out ? [...transfer, msg.buf, msg.out] : [...transfer, msg.buf] };
}

/**
 * Check one record's payload (`stored`, a view) against its stored hash, decompress it into `out` (a
 * view of exactly rawLen bytes; undefined: this worker's scratch, the bytes only checked) and check
 * every block hash (`want`). { raw } on success (a view: `out`, or `stored` itself for a raw payload),
 * else { error, badBlocks }. A damaged payload is reported even when it still decompresses to the
 * right bytes (zstd ignores some bits); the blocks are still decoded and hashed so that damage can be
 * located to a block.
 */
function checkRecord(
  /** @type {Buffer} */ stored, /** @type {{ codec: number, rawLen: number, storedHash: bigint }} */ rec, /** @type {BigUint64Array} */ want,
  /** @type {number} */ blockSize, /** @type {Buffer | undefined} */ out,
) {
  const storedOk = xxh64(stored) === rec.storedHash;
  const storedNote = storedOk ? '' : 'stored payload does not match its checksum; ';
  const fail = (/** @type {string} */ error, /** @type {number[] | undefined} */ badBlocks) => ({ raw: undefined, error: storedNote + error, badBlocks });
  let raw;
  if (rec.codec === CODEC_NONE) {
    if (stored.length !== rec.rawLen) return fail('stored length differs from raw length');
    raw = stored;
  } else if (rec.codec === CODEC_ZSTD) {
    if (!out) {
      if (decodeScratch.length < rec.rawLen) decodeScratch = Buffer.allocUnsafe(rec.rawLen);
      out = decodeScratch.subarray(0, rec.rawLen);
    }
    let n;
    try {
      n = dctx.decompress(out, stored);
    } catch (e) {
      return fail(`payload does not decompress: ${e && e.message}`);
    }
    if (n !== rec.rawLen) return fail(`payload decompresses to ${n} bytes, expected ${rec.rawLen}`);
    raw = out;
  } else {
    return fail(`unknown codec ${rec.codec}`);
  }
  const got = hashBlocks(raw, blockSize);
  if (got.length !== want.length) return fail(`payload holds ${got.length} block(s), the record lists ${want.length} hash(es)`);
  const bad = [];
  for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) bad.push(i);
  if (bad.length > 0) return fail(`checksum mismatch in ${bad.length} block(s)`, bad);
  if (!storedOk) return fail('the decompressed blocks are intact');
  return { raw, error: undefined, badBlocks: undefined };
}

function decode(msg) {
  // With msg.recycle the caller recycles its buffers: the payload is the first storedLen bytes of
  // msg.stored, and every buffer it sent (stored, out) comes back whole in the result, with or
  // without data in it, also on failure.
  const recycle = !!msg.recycle;
  const stored = recycle ? Buffer.from(msg.stored, 0, msg.storedLen) : Buffer.from(msg.stored);
  const back = (/** @type {ArrayBuffer | undefined} */ keep) => {
    /** @type {ArrayBuffer[]} */
    const spare = [];
    if (!recycle) return spare;
    for (const b of [msg.stored, msg.out]) if (b && b !== keep) spare.push(b);
    return spare;
  };
  // Decompress into the caller's recycled buffer when it gave one large enough; without wantData the
  // bytes are only checked (this worker's own scratch buffer).
  const out = !msg.wantData || msg.codec !== CODEC_ZSTD ? undefined
    : msg.out && msg.out.byteLength >= msg.rawLen ? Buffer.from(msg.out, 0, msg.rawLen) : Buffer.allocUnsafe(msg.rawLen);
  const { raw, error, badBlocks } = checkRecord(stored, msg, new BigUint64Array(msg.hashes), msg.blockSize, out);
  if (!raw) {
    const spare = back(undefined);
    return { result: { ok: false, error, badBlocks, ...(recycle ? { spare } : {}) }, transfer: spare };
  }
  if (!msg.wantData) {
    const spare = back(undefined);
    return { result: { ok: true, ...(recycle ? { spare } : {}) }, transfer: spare };
  }
  if (recycle && raw.byteOffset === 0 && (raw.buffer === msg.stored || raw.buffer === msg.out)) {
    // The raw bytes are the first rawLen bytes of one of the caller's buffers: hand it back whole.
    const rawBuf = /** @type {ArrayBuffer} */ (raw.buffer);
    const spare = back(rawBuf);
    return { result: { ok: true, raw: rawBuf, spare }, transfer: [rawBuf, ...spare] };
  }
  // Hand back a buffer of exactly the payload (no copy when it already is one).
  const rawBuf = raw.byteOffset === 0 && raw.length === raw.buffer.byteLength ? raw.buffer : raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length);
  const spare = back(undefined);
  return { result: { ok: true, raw: rawBuf, ...(recycle ? { spare } : {}) }, transfer: [rawBuf, ...spare] };
}

/**
 * Several records' payloads in one buffer (`stored`; record i's at recs[i].at, recs[i].len bytes),
 * their block hashes one after the other in `hashes` (recs[i].hashCount each): each checked as
 * decode does. With `out`, record i's data goes to recs[i].outAt of it. One job for many small
 * records: a record of very compressible data decodes in a fraction of a millisecond, less than a
 * message to a worker and back costs. Both buffers come back; `failed` lists the records that failed
 * (index, error, bad blocks).
 */
function decodeBatch(msg) {
  const hashes = new BigUint64Array(msg.hashes);
  const out = msg.out ? Buffer.from(msg.out) : undefined;
  const failed = [];
  let h = 0;
  for (let i = 0; i < msg.recs.length; i++) {
    const rec = msg.recs[i];
    const want = hashes.subarray(h, h + rec.hashCount);
    h += rec.hashCount;
    const dst = out ? out.subarray(rec.outAt, rec.outAt + rec.rawLen) : undefined;
    const { raw, error, badBlocks } = checkRecord(Buffer.from(msg.stored, rec.at, rec.len), rec, want, msg.blockSize, rec.codec === CODEC_ZSTD ? dst : undefined);
    if (!raw) failed.push({ index: i, error, badBlocks });
    else if (dst && raw !== dst) dst.set(raw);
  }
  const transfer = msg.out ? [msg.stored, msg.out] : [msg.stored];
  return { result: { failed, stored: msg.stored, out: msg.out }, transfer };
}

function hash(msg) {
  const data = Buffer.from(msg.buf, 0, msg.len);
  const hashes = hashBlocks(data, msg.blockSize);
  const zeroMask = new Uint8Array(hashes.length);
  for (let i = 0; i < hashes.length; i++) {
    zeroMask[i] = isZero(data.subarray(i * msg.blockSize, Math.min(data.length, (i + 1) * msg.blockSize))) ? 1 : 0;
  }
  return { result: { hashes: hashes.buffer, zeroMask: zeroMask.buffer, buf: msg.buf }, transfer: [hashes.buffer, zeroMask.buffer, msg.buf] };
}

// Node's ciphers have no output-buffer form: every chunk's update() allocates its result, garbage
// as soon as it is copied out. V8 collects such buffers only after tens of MiB of them (external
// memory), which would add that much to each worker's RSS; a minor collection every few MiB of
// chunks keeps it to a few MiB (it costs well under a millisecond: the young generation is small).
// The main thread's counterpart, and why `gc` is obtained this way: src/gc.ts.
// node:crypto and the exposed gc are loaded at the first job that needs them (seal, open, collect):
// about 14 ms of a worker's start that send, apply and verify of plain archives never use.
/** @type {((o?: { type: string, execution: string }) => void) | undefined} */
let gcFn;
function collect(/** @type {{ type: string, execution: string } | undefined} */ o) {
  if (!gcFn) {
    require('node:v8').setFlagsFromString('--expose-gc');
    gcFn = require('node:vm').runInNewContext('gc');
  }
  /** @type {(o?: { type: string, execution: string }) => void} */ (gcFn)(o);
}
/** @type {typeof import('node:crypto') | undefined} */
let cryptoModule;
const crypto = () => (cryptoModule ??= require('node:crypto'));
const COLLECT_EVERY = 4 << 20;
let sinceCollect = 0;
function cipherGarbage(/** @type {number} */ n) {
  sinceCollect += n;
  if (sinceCollect < COLLECT_EVERY) return;
  sinceCollect = 0;
  collect({ type: 'minor', execution: 'sync' });
}

const AGE_CHUNK = 64 * 1024;
// Each chunk goes through its cipher in pieces of this size: update() allocates its result, and
// 16 KiB results are reused by the allocator where 64 KiB ones kept costing fresh pages (page faults):
// an encrypted apply of 1 GiB took 7.2-7.5 s with whole chunks and 4.1-5.4 s in 16 KiB pieces, half
// the system time (docs/PERFORMANCE.md, "Encrypted archives").
const CIPHER_PIECE = 16 * 1024;
const AGE_TAG = 16;
const ageNonce = Buffer.alloc(12);

/** The STREAM nonce of chunk `index` (an 11-byte big-endian counter, then the last-chunk flag), in a reused buffer. */
function setNonce(/** @type {number} */ index, /** @type {boolean} */ last) {
  ageNonce.fill(0);
  ageNonce.writeUIntBE(index, 5, 6);
  ageNonce[11] = last ? 1 : 0;
  return ageNonce;
}

function seal(msg) {
  const key = Buffer.from(msg.key);
  const plain = Buffer.from(msg.plain, 0, msg.plainLen);
  const out = Buffer.from(msg.out);
  const n = Math.max(1, Math.ceil(plain.length / AGE_CHUNK));
  let at = 0;
  for (let k = 0; k < n; k++) {
    const c = crypto().createCipheriv('chacha20-poly1305', key, setNonce(msg.index + k, msg.last && k === n - 1), { authTagLength: AGE_TAG });
    const end = Math.min(plain.length, (k + 1) * AGE_CHUNK);
    for (let q = k * AGE_CHUNK; q < end; q += CIPHER_PIECE) {
      const ct = c.update(plain.subarray(q, Math.min(end, q + CIPHER_PIECE)));
      out.set(ct, at);
      at += ct.length;
    }
    c.final();
    out.set(c.getAuthTag(), at);
    at += AGE_TAG;
  }
  cipherGarbage(at);
  return { result: { plain: msg.plain, out: msg.out, len: at }, transfer: [msg.plain, msg.out] };
}

function open(msg) {
  const key = Buffer.from(msg.key);
  const sealed = Buffer.from(msg.sealed, 0, msg.sealedLen);
  // With msg.decrypt the plaintext goes into the same buffer, in place: chunk k's plaintext lands at
  // k * 64 KiB, never past the ciphertext not yet read (chunk k + 1 starts at (k + 1) * (64 KiB + 16)).
  const out = msg.decrypt ? Buffer.from(msg.sealed) : undefined;
  const back = [msg.sealed];
  let at = 0;
  let o = 0;
  for (let i = msg.index; at < sealed.length; i++) {
    const last = i === msg.total - 1;
    const n = Math.min(AGE_CHUNK + AGE_TAG, sealed.length - at);
    // A chunk before the last is full; the last holds at least its tag, and is empty only when it is the only one.
    let ok = last ? n >= AGE_TAG && (i === 0 || n > AGE_TAG) : n === AGE_CHUNK + AGE_TAG;
    if (ok) {
      const d = crypto().createDecipheriv('chacha20-poly1305', key, setNonce(i, last), { authTagLength: AGE_TAG });
      d.setAuthTag(sealed.subarray(at + n - AGE_TAG, at + n));
      const len = n - AGE_TAG;
      // (written before final() says yes: the caller uses nothing of a batch that failed)
      for (let q = 0; q < len; q += CIPHER_PIECE) {
        const p = d.update(sealed.subarray(at + q, at + Math.min(len, q + CIPHER_PIECE)));
        if (out) out.set(p, o + q);
      }
      try {
        d.final();
      } catch {
        ok = false;
      }
      o += len;
    }
    if (!ok) return { result: { ok: false, badChunk: i, sealed: msg.sealed }, transfer: back };
    at += n;
    if (last) break;
  }
  cipherGarbage(at);
  if (at !== sealed.length) return { result: { ok: false, badChunk: msg.total, sealed: msg.sealed }, transfer: back };
  return { result: { ok: true, len: o, sealed: msg.sealed }, transfer: back };
}

/**
 * Run one job: { result, transfer } (the buffers to hand back). In a worker, for its messages; in the
 * main thread (pool.ts's inline jobs: a small operation that starts no worker), called directly.
 */
async function handle(msg) {
  if (msg.op === 'encode') return encode(msg);
  if (msg.op === 'decode') return decode(msg);
  if (msg.op === 'decodeBatch') return decodeBatch(msg);
  if (msg.op === 'hash') return hash(msg);
  if (msg.op === 'seal') return seal(msg);
  if (msg.op === 'open') return open(msg);
  if (msg.op === 'collect') {
    collect(); // a full collection: the pool is idle (WorkerPool.collect)
    return { result: true, transfer: [] };
  }
  throw new Error(`unknown op ${msg.op}`);
}

if (parentPort) {
  const port = parentPort;
  // Loaded: the pool sends jobs here from now on instead of running them in its own thread.
  port.postMessage({ id: 0, ready: true });
  port.on('message', async (msg) => {
    try {
      const out = await handle(msg);
      port.postMessage({ id: msg.id, result: out.result }, out.transfer);
    } catch (e) {
      port.postMessage({ id: msg.id, error: String((e && e.message) || e) });
    }
  });
} else {
  module.exports = { handle };
}
