#!/usr/bin/env node
/**
 * Generate the golden archives under fixtures/archives/ (used by src/archive/fixtures.test.ts).
 *
 *   npm run build && npm run fixtures          # rewrite fixtures/archives/ (the committed fixtures)
 *   node scripts/make-fixtures.mjs OUT_DIR     # write them somewhere else
 *
 * Everything is deterministic: fixed UUIDs, fixed createdMs, volume bytes from a seeded PRNG, and a
 * fixed zstd level, so regenerating gives byte-identical files (fixtures.test.ts generates them twice
 * into temporary directories with the TypeScript sources and compares both runs with each other and
 * with the committed files). If the format or the writer changes on purpose, regenerate and commit.
 *
 * The script uses the built library (dist/). The generator itself is `generateFixtures(outDir, lib)`,
 * which the test calls with the modules of src/ instead.
 *
 * Files (see expected.json for what each must produce):
 *   valid-full.tna          full archive of a 1 MiB + 1000 byte volume, 4 KiB blocks: random blocks
 *                           (stored raw), compressible blocks (zstd), zero blocks inside DATA extents
 *                           (ZERO records), holes (UNMAP), a ZERO extent and a partial last block
 *   valid-incremental.tna   its child (sequence 1): DATA, ZERO and UNMAP extents
 *   truncated.tna           valid-full cut in the middle of a payload
 *   bad-checksum.tna        valid-full with one payload byte flipped (a raw record: block checksum)
 *   bad-frame.tna           valid-full with one byte of the map frame flipped (frame checksum)
 *   unknown-version.tna     valid-full with format major version 2 (digest and trailer recomputed)
 *   broken-chain/           a chain directory of 3 archives whose middle one names the wrong parent
 *   broken-chain-gap/       the same chain with the middle archive missing
 */
import { createHash } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { mulberry32 } from './lib/prng.mjs';

const BS = 4096;
const VOLUME_SIZE = 1024 * 1024 + 1000;
const CREATED_MS = 1_700_000_000_000;
const LEVEL = 3;
const TOOL = 'thinarchive fixtures';

const ID = {
  chain: '0a0a0a0a-0000-4000-8000-000000000001',
  volume: '0b0b0b0b-0000-4000-8000-000000000002',
  full: '0c0c0c0c-0000-4000-8000-000000000003',
  incremental: '0d0d0d0d-0000-4000-8000-000000000004',
  brokenChain: '1a1a1a1a-0000-4000-8000-000000000010',
  brokenVolume: '1b1b1b1b-0000-4000-8000-000000000011',
  broken0: '1c1c1c1c-0000-4000-8000-000000000012',
  broken1: '1d1d1d1d-0000-4000-8000-000000000013',
  broken2: '1e1e1e1e-0000-4000-8000-000000000014',
  /** The parent named by the middle archive of broken-chain/: no archive has this id. */
  bogusParent: '1f1f1f1f-0000-4000-8000-0000000000ff',
};

const DATA = 1;
const ZERO = 2;
const UNMAP = 3;
const KIND_NAME = { 1: 'DATA', 2: 'ZERO', 3: 'UNMAP' };

// ------------------------------------------------------------------------------------ volume contents

const prng = mulberry32;

function fillRandom(buf, start, end, rnd) {
  for (let i = start; i < end; i += 4) {
    const v = rnd();
    for (let k = 0; k < 4 && i + k < end; k++) buf[i + k] = (v >>> (8 * k)) & 0xff;
  }
}

function fillText(buf, start, end, tag) {
  let s = '';
  for (let line = 0; s.length < end - start; line++) s += `${tag} line ${line}: the quick brown fox jumps over the lazy dog\n`;
  buf.write(s.slice(0, end - start), start, 'latin1');
}

/** Fill blocks [first, first + count) of `buf` (clipped to the buffer) with `kind`: R(andom), T(ext), Z(ero), G(arbage). */
function paint(buf, first, count, kind, rnd, tag = '') {
  const start = first * BS;
  const end = Math.min(buf.length, (first + count) * BS);
  if (kind === 'R') fillRandom(buf, start, end, rnd);
  else if (kind === 'T') fillText(buf, start, end, `${tag}@${first}`);
  else if (kind === 'Z') buf.fill(0, start, end);
  else if (kind === 'G') buf.fill(0xa5, start, end);
  else throw new Error(`unknown paint ${kind}`);
}

function sha256(b) {
  return createHash('sha256').update(b).digest('hex');
}

function zeroRange(image, first, count) {
  image.fill(0, first * BS, Math.min(image.length, (first + count) * BS));
}

function copyRange(image, src, first, count) {
  const start = first * BS;
  const end = Math.min(image.length, (first + count) * BS);
  src.copy(image, start, start, end);
}

// ------------------------------------------------------------------------------------- frame walking

/**
 * A minimal, independent walk over the frames of a *valid* archive (no checks): the offsets and
 * contents of every frame, so expected.json does not depend on the reader under test.
 */
function walk(bytes) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const frames = [];
  let at = 16;
  for (;;) {
    const type = bytes[at];
    const bodyLen = dv.getUint32(at + 4, true);
    const body = at + 8;
    const f = { type, offset: at, bodyLen, size: 8 + bodyLen + 8 };
    if (type === 0x10) {
      f.firstBlock = Number(dv.getBigUint64(body, true));
      f.blockCount = dv.getUint32(body + 8, true);
      f.codec = bytes[body + 12];
      f.rawLen = dv.getUint32(body + 16, true);
      f.storedLen = dv.getUint32(body + 20, true);
      f.payloadOffset = at + f.size;
    } else if (type === 0x11) {
      f.firstBlock = Number(dv.getBigUint64(body, true));
      f.blockCount = dv.getUint32(body + 8, true);
    }
    frames.push(f);
    at += f.size + (type === 0x10 ? f.storedLen : 0);
    if (type === 0x7f) break;
  }
  if (at + 16 !== bytes.length) throw new Error('walk: archive does not end after the trailer and tail');
  return frames;
}

function recordsOf(frames) {
  return frames.filter((f) => f.type === 0x10 || f.type === 0x11).map((f) => (f.type === 0x10
    ? { type: 'data', offset: f.offset, firstBlock: f.firstBlock, blockCount: f.blockCount, codec: f.codec, rawLen: f.rawLen, storedLen: f.storedLen, payloadOffset: f.payloadOffset }
    : { type: 'zero', offset: f.offset, firstBlock: f.firstBlock, blockCount: f.blockCount }));
}

/** Re-seal an archive after editing its preamble or frames: recompute the digest in the trailer. */
function reseal(bytes, lib) {
  const frames = walk(bytes);
  const trailer = frames[frames.length - 1];
  const h = createHash('sha256');
  h.update(bytes.subarray(0, 16));
  for (const f of frames) if (f.type !== 0x7f) h.update(bytes.subarray(f.offset, f.offset + f.size));
  const body = Buffer.from(bytes.subarray(trailer.offset + 8, trailer.offset + 8 + trailer.bodyLen));
  h.digest().copy(body, 56);
  const frame = lib.encodeFrame(0x7f, body);
  const out = Buffer.from(bytes);
  Buffer.from(frame).copy(out, trailer.offset);
  return out;
}

// --------------------------------------------------------------------------------------------- writer

async function* listOf(items) {
  for (const i of items) yield i;
}

function memorySource(data) {
  return {
    size: data.length,
    async read(buf, offset, length, position) {
      const n = Math.max(0, Math.min(length, data.length - position));
      buf.set(data.subarray(position, position + n), offset);
      return n;
    },
  };
}

async function write(lib, pool, header, extents, source) {
  const chunks = [];
  const sink = { async write(c) { chunks.push(Buffer.from(c)); } };
  const res = await lib.writeArchive({ header, extents: listOf(extents), source: memorySource(source), sink, pool, level: LEVEL });
  const bytes = Buffer.concat(chunks);
  if (bytes.length !== res.bytesWritten) throw new Error('writer: bytesWritten does not match the output');
  return { bytes, res };
}

function newHeader(over) {
  return {
    full: true, blockSize: BS, parentId: null, chainId: ID.chain, sequence: 0, volumeUuid: ID.volume, volumeSize: VOLUME_SIZE,
    createdMs: CREATED_MS, sourceChunkSize: 64 * 1024, meta: { volume: { name: 'fixture', vg: 'vg0', lv: 'fixture' }, tool: TOOL }, ...over,
  };
}

function extentsOf(list) {
  return list.map(([firstBlock, blockCount, kind]) => ({ firstBlock, blockCount, kind }));
}

/** The map a writer makes of `extents` (full: gaps become UNMAP), for checking. */
function expectedMap(list, blocks, full) {
  const out = [];
  let next = 0;
  for (const e of list) {
    if (full && e.firstBlock > next) out.push({ firstBlock: next, blockCount: e.firstBlock - next, kind: UNMAP });
    out.push({ ...e });
    next = e.firstBlock + e.blockCount;
  }
  if (full && next < blocks) out.push({ firstBlock: next, blockCount: blocks - next, kind: UNMAP });
  return out;
}

function isZeroBlock(img, b, size) {
  const end = Math.min(size, (b + 1) * BS);
  for (let i = b * BS; i < end; i++) if (img[i] !== 0) return false;
  return true;
}

/** Check the writer's result against the model; returns the JSON description of a valid archive. */
function describeValid(name, bytes, res, header, map, source, volumeSha, extra) {
  const frames = walk(bytes);
  const records = recordsOf(frames);
  const mapEnd = { extentCount: map.length, dataBlocks: 0, zeroBlocks: 0, unmapBlocks: 0 };
  let nonZero = 0;
  let rawBytes = 0;
  for (const e of map) {
    if (e.kind === DATA) {
      mapEnd.dataBlocks += e.blockCount;
      for (let b = e.firstBlock; b < e.firstBlock + e.blockCount; b++) {
        if (!isZeroBlock(source, b, header.volumeSize)) {
          nonZero++;
          rawBytes += Math.min(BS, header.volumeSize - b * BS);
        }
      }
    } else if (e.kind === ZERO) mapEnd.zeroBlocks += e.blockCount;
    else mapEnd.unmapBlocks += e.blockCount;
  }
  const check = (what, a, b) => {
    if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${name}: ${what} is ${JSON.stringify(a)}, expected ${JSON.stringify(b)}`);
  };
  check('map end', res.mapEnd, mapEnd);
  check('data blocks', res.trailer.dataBlocks, nonZero);
  check('zero blocks', res.trailer.zeroBlocks, mapEnd.dataBlocks - nonZero);
  check('raw bytes', res.trailer.rawBytes, rawBytes);
  check('record count', res.trailer.recordCount, records.length);
  const indexOffsets = frames.filter((f) => f.type === 0x20).map((f) => f.offset);
  check('index count', res.trailer.indexCount, indexOffsets.length);
  const trailerFrame = frames[frames.length - 1];
  return {
    file: name,
    result: 'ok',
    bytes: bytes.length,
    sha256: sha256(bytes),
    header: {
      major: 1, minor: 0, full: header.full, blockSize: header.blockSize, archiveId: header.archiveId, parentId: header.parentId,
      chainId: header.chainId, sequence: header.sequence, volumeUuid: header.volumeUuid, volumeSize: header.volumeSize,
      createdMs: header.createdMs, compression: 1, hash: 1, digest: 1, sourceChunkSize: header.sourceChunkSize, meta: header.meta,
    },
    map: map.map((e) => ({ firstBlock: e.firstBlock, blockCount: e.blockCount, kind: KIND_NAME[e.kind] })),
    mapEnd,
    trailer: { ...res.trailer, digest: Buffer.from(res.trailer.digest).toString('hex') },
    trailerOffset: trailerFrame.offset,
    mapOffset: frames.find((f) => f.type === 0x02).offset,
    indexOffsets,
    events: frames.filter((f) => f.type !== 0x20).map((f) => ({ 1: 'header', 2: 'map', 3: 'map-end', 16: 'data', 17: 'zero', 127: 'trailer' })[f.type]),
    records,
    volumeSha256: volumeSha,
    ...extra,
  };
}

// -------------------------------------------------------------------------------------------- fixtures

/**
 * Write every fixture into `outDir` and return the expected.json object (also written there).
 * `lib` provides writeArchive, WorkerPool and encodeFrame (from dist/ or src/).
 */
export async function generateFixtures(outDir, lib) {
  await rm(outDir, { recursive: true, force: true });
  await mkdir(outDir, { recursive: true });
  const pool = new lib.WorkerPool(2);
  const expected = {
    about: 'Golden archives written by scripts/make-fixtures.mjs (deterministic: regenerating gives identical bytes). '
      + 'result "ok": readArchive must yield `events` and the header/map/trailer below; volumeSha256 is the sha256 of the volume '
      + 'rebuilt from it (for an incremental archive: applied on its parent). result "error": the FormatError code each reader '
      + 'must raise (stream = readArchive, open = ArchiveFile.open, preflight = ArchiveFile.preflight; null = must succeed). '
      + 'result "payload-corrupt": readArchive succeeds, and WorkerPool.decode of the named record reports the bad blocks.',
    archives: {},
    chains: {},
  };
  try {
    const blocks = Math.ceil(VOLUME_SIZE / BS); // 257: 256 full blocks and a 1000-byte one
    // ---- the full archive
    const rnd = prng(0x7ea5eed);
    const src = Buffer.alloc(VOLUME_SIZE);
    paint(src, 0, blocks, 'G', rnd); // stale bytes everywhere: only DATA extents may reach the archive
    paint(src, 0, 4, 'R', rnd);
    paint(src, 4, 4, 'Z', rnd);
    paint(src, 8, 16, 'T', rnd, 'full');
    paint(src, 24, 4, 'R', rnd);
    paint(src, 28, 20, 'T', rnd, 'full');
    paint(src, 72, 19, 'T', rnd, 'full');
    paint(src, 91, 9, 'Z', rnd);
    paint(src, 200, 20, 'Z', rnd);
    paint(src, 220, 11, 'T', rnd, 'full');
    paint(src, 231, 23, 'Z', rnd);
    paint(src, 254, 3, 'R', rnd); // 254, 255 and the partial last block 256
    const fullList = extentsOf([[0, 48, DATA], [64, 8, ZERO], [72, 28, DATA], [200, 57, DATA]]);
    const fullMap = expectedMap(fullList, blocks, true);
    const fullImage = Buffer.alloc(VOLUME_SIZE);
    for (const e of fullMap) if (e.kind === DATA) copyRange(fullImage, src, e.firstBlock, e.blockCount);
    const fullHeader = newHeader({ archiveId: ID.full, meta: { volume: { name: 'fixture', vg: 'vg0', lv: 'fixture' }, snapshot: { name: 'snap-0' }, tool: TOOL } });
    const full = await write(lib, pool, fullHeader, fullList, src);
    expected.archives['valid-full.tna'] = describeValid('valid-full.tna', full.bytes, full.res, fullHeader, fullMap, src, sha256(fullImage), {});
    await writeFile(join(outDir, 'valid-full.tna'), full.bytes);

    // ---- its child
    const src1 = Buffer.from(fullImage);
    paint(src1, 0, blocks, 'G', rnd);
    paint(src1, 10, 4, 'R', rnd);
    paint(src1, 14, 3, 'Z', rnd);
    paint(src1, 17, 3, 'T', rnd, 'incr');
    paint(src1, 150, 3, 'R', rnd);
    paint(src1, 255, 1, 'T', rnd, 'incr');
    paint(src1, 256, 1, 'Z', rnd);
    const incList = extentsOf([[10, 10, DATA], [30, 4, ZERO], [40, 6, UNMAP], [150, 3, DATA], [255, 2, DATA]]);
    const incImage = Buffer.from(fullImage);
    for (const e of incList) {
      if (e.kind === DATA) copyRange(incImage, src1, e.firstBlock, e.blockCount);
      else zeroRange(incImage, e.firstBlock, e.blockCount);
    }
    const incHeader = newHeader({
      full: false, archiveId: ID.incremental, parentId: ID.full, sequence: 1, createdMs: CREATED_MS + 3_600_000,
      meta: { volume: { name: 'fixture', vg: 'vg0', lv: 'fixture' }, base: { name: 'snap-0' }, snapshot: { name: 'snap-1' }, tool: TOOL },
    });
    const inc = await write(lib, pool, incHeader, incList, src1);
    expected.archives['valid-incremental.tna'] = describeValid('valid-incremental.tna', inc.bytes, inc.res, incHeader, incList, src1, sha256(incImage), { appliesOn: 'valid-full.tna' });
    await writeFile(join(outDir, 'valid-incremental.tna'), inc.bytes);

    // ---- damaged copies of the full archive
    const fullRecords = recordsOf(walk(full.bytes));
    const zstdRec = fullRecords.find((r) => r.type === 'data' && r.codec === 1 && r.storedLen >= 16);
    const rawRec = fullRecords.find((r) => r.type === 'data' && r.codec === 0 && r.blockCount >= 3);
    if (!zstdRec || !rawRec) throw new Error('the full archive lacks a zstd record or a raw record of 3+ blocks');

    const cut = zstdRec.payloadOffset + Math.floor(zstdRec.storedLen / 2);
    const truncated = full.bytes.subarray(0, cut);
    await writeFile(join(outDir, 'truncated.tna'), truncated);
    expected.archives['truncated.tna'] = {
      file: 'truncated.tna', result: 'error', from: 'valid-full.tna', bytes: truncated.length, sha256: sha256(truncated),
      damage: `cut at byte ${cut}, in the middle of the payload of the record at offset ${zstdRec.offset}`,
      error: { stream: { code: 'TRUNCATED', offset: zstdRec.payloadOffset }, open: { code: 'TRUNCATED' }, preflight: null },
      eventsBeforeError: expected.archives['valid-full.tna'].events.slice(0, expected.archives['valid-full.tna'].records.findIndex((r) => r.offset === zstdRec.offset) + 3),
    };

    const badBlock = 2;
    const flipAt = rawRec.payloadOffset + badBlock * BS + 100;
    const badChecksum = Buffer.from(full.bytes);
    badChecksum[flipAt] ^= 0x01;
    await writeFile(join(outDir, 'bad-checksum.tna'), badChecksum);
    expected.archives['bad-checksum.tna'] = {
      file: 'bad-checksum.tna', result: 'payload-corrupt', from: 'valid-full.tna', bytes: badChecksum.length, sha256: sha256(badChecksum),
      damage: `byte ${flipAt} (payload of the raw record at offset ${rawRec.offset}, block ${rawRec.firstBlock + badBlock}) xor 0x01`,
      error: { stream: null, open: null, preflight: null },
      decode: { recordOffset: rawRec.offset, firstBlock: rawRec.firstBlock, badBlocks: [badBlock], block: rawRec.firstBlock + badBlock },
    };

    const mapOffset = expected.archives['valid-full.tna'].mapOffset;
    const mapFlip = mapOffset + 8 + 8 + 16 + 8; // block count of the second map entry
    const badFrame = Buffer.from(full.bytes);
    badFrame[mapFlip] ^= 0x04;
    await writeFile(join(outDir, 'bad-frame.tna'), badFrame);
    expected.archives['bad-frame.tna'] = {
      file: 'bad-frame.tna', result: 'error', from: 'valid-full.tna', bytes: badFrame.length, sha256: sha256(badFrame),
      damage: `byte ${mapFlip} (block count of the second map entry of the map frame at offset ${mapOffset}) xor 0x04`,
      error: { stream: { code: 'FRAME_CHECKSUM', offset: mapOffset }, open: null, preflight: { code: 'FRAME_CHECKSUM', offset: mapOffset } },
      eventsBeforeError: ['header'],
    };

    const v2 = Buffer.from(full.bytes);
    v2.writeUInt16LE(2, 8);
    const unknownVersion = reseal(v2, lib);
    await writeFile(join(outDir, 'unknown-version.tna'), unknownVersion);
    expected.archives['unknown-version.tna'] = {
      file: 'unknown-version.tna', result: 'error', from: 'valid-full.tna', bytes: unknownVersion.length, sha256: sha256(unknownVersion),
      damage: 'preamble major version 2 (the digest in the trailer is recomputed, so only the version is wrong)',
      error: { stream: { code: 'UNSUPPORTED_VERSION', offset: 8 }, open: { code: 'UNSUPPORTED_VERSION', offset: 8 }, preflight: null },
      eventsBeforeError: [],
    };

    // ---- a broken chain: small volume, sequence 0, 1 (wrong parent) and 2
    const smallSize = 16 * BS;
    const chainSrc = Buffer.alloc(smallSize);
    const chainFiles = [];
    const ids = [ID.broken0, ID.broken1, ID.broken2];
    const parents = [null, ID.bogusParent, ID.broken1];
    const chainBytes = [];
    for (let seq = 0; seq < 3; seq++) {
      paint(chainSrc, seq * 4, 2, 'T', rnd, `chain${seq}`);
      const h = newHeader({
        full: seq === 0, archiveId: ids[seq], parentId: parents[seq], chainId: ID.brokenChain, sequence: seq, volumeUuid: ID.brokenVolume,
        volumeSize: smallSize, createdMs: CREATED_MS + seq * 60_000, meta: { volume: { name: 'chain' }, snapshot: { name: `snap-${seq}` }, tool: TOOL },
      });
      const list = seq === 0 ? extentsOf([[0, 16, DATA]]) : extentsOf([[seq * 4, 2, DATA]]);
      const w = await write(lib, pool, h, list, chainSrc);
      const name = `${String(seq).padStart(10, '0')}-${ids[seq]}.tna`;
      chainFiles.push({ name, archiveId: ids[seq], parentId: parents[seq], sequence: seq, full: seq === 0, sha256: sha256(w.bytes) });
      chainBytes.push({ name, bytes: w.bytes });
    }
    await mkdir(join(outDir, 'broken-chain'));
    await mkdir(join(outDir, 'broken-chain-gap'));
    for (const { name, bytes } of chainBytes) await writeFile(join(outDir, 'broken-chain', name), bytes);
    for (const { name, bytes } of [chainBytes[0], chainBytes[2]]) await writeFile(join(outDir, 'broken-chain-gap', name), bytes);
    expected.chains['broken-chain'] = {
      dir: 'broken-chain', chainId: ID.brokenChain, archives: chainFiles,
      about: 'each archive is valid on its own; the archive of sequence 1 names a parent that does not exist',
      checkChain: { code: 'CHAIN_BROKEN' },
      verifyFindings: [{ code: 'BROKEN_LINK', detail: 'PARENT_MISMATCH', archive: chainFiles[1].name }],
    };
    expected.chains['broken-chain-gap'] = {
      dir: 'broken-chain-gap', chainId: ID.brokenChain, archives: [chainFiles[0], chainFiles[2]],
      about: 'the archive of sequence 1 is missing',
      checkChain: { code: 'CHAIN_BROKEN' },
      verifyFindings: [{ code: 'MISSING_ARCHIVE', detail: 'SEQUENCE_GAP', archive: chainFiles[2].name }],
    };
  } finally {
    await pool.close();
  }
  await writeFile(join(outDir, 'expected.json'), `${JSON.stringify(expected, null, 2)}\n`);
  return expected;
}

async function main() {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
  const outDir = resolve(process.argv[2] ?? join(root, 'fixtures', 'archives'));
  let lib;
  try {
    const [writer, pool, frames] = await Promise.all([
      import(pathToFileURL(join(root, 'dist/archive/writer.js')).href),
      import(pathToFileURL(join(root, 'dist/archive/pool.js')).href),
      import(pathToFileURL(join(root, 'dist/format/frames.js')).href),
    ]);
    lib = { writeArchive: writer.writeArchive, WorkerPool: pool.WorkerPool, encodeFrame: frames.encodeFrame };
  } catch (e) {
    console.error(`error: cannot load the built library from ${join(root, 'dist')} (run npm run build first): ${e.message}`);
    process.exit(1);
  }
  const expected = await generateFixtures(outDir, lib);
  const n = Object.keys(expected.archives).length;
  console.log(`wrote ${n} archives and ${Object.keys(expected.chains).length} chains to ${outDir}`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  await main();
}
