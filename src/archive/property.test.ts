/**
 * Property tests of the archive engine: for random volumes (random size with a partial last block,
 * block sizes 4 KiB..64 KiB, random block contents) and random sorted extent lists (DATA, ZERO,
 * UNMAP, gaps; full and incremental), writeArchive's output read back by readArchive rebuilds exactly
 * what the extents say: DATA blocks are the source bytes, ZERO/UNMAP blocks (and the gaps of a full
 * archive) are zeroes, everything else of an incremental archive's parent is untouched. Totals match,
 * and ArchiveFile (open, preflight, findRecord, readRecordAt) agrees.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExtentKind, FrameType, MAX_INDEX_ENTRIES, MAX_MAP_ENTRIES_PER_FRAME, MAX_RECORD_RAW, type ExtentKindCode } from '../format/constants.js';
import type { ArchiveHeader, MapEnd, MapExtent, Trailer } from '../format/types.js';
import { chunked, listSource, MemorySink, MemorySource } from '../../test/helpers/memory.js';
import { WorkerPool } from './pool.js';
import { ArchiveFile, readArchive } from './reader.js';
import { writeArchive, type NewArchive } from './writer.js';
import { mulberry32 } from '../../scripts/lib/prng.mjs';

let pool: WorkerPool;
let dir: string;
beforeAll(async () => {
  pool = new WorkerPool(2);
  dir = await mkdtemp(join(tmpdir(), 'thinarchive-prop-'));
});
afterAll(async () => {
  await pool.close();
  await rm(dir, { recursive: true, force: true });
});

/** Largest volume (bytes) a property run builds. */
const MAX_VOLUME = 1536 * 1024;

type Fill = 0 | 1 | 2 | 3 | 4 | 5;
type SegKind = 'gap' | 'DATA' | 'ZERO' | 'UNMAP';
const KIND: Record<Exclude<SegKind, 'gap'>, ExtentKindCode> = { DATA: ExtentKind.DATA, ZERO: ExtentKind.ZERO, UNMAP: ExtentKind.UNMAP };

interface Scenario {
  blockSize: number;
  volumeSize: number;
  full: boolean;
  level: number;
  segs: { len: number; kind: SegKind }[];
  fills: Fill[];
  seed: number;
  /** 0: the whole archive in one chunk */
  chunk: number;
}

const rng = mulberry32;

/**
 * Block contents: 0 random, 1 zero, 2 text, 3 one repeated byte, 4 zero but the last byte,
 * 5 zero but the first byte.
 */
function buildSource(s: Scenario): Buffer {
  const r = rng(s.seed);
  const b = Buffer.alloc(s.volumeSize);
  const blocks = Math.ceil(s.volumeSize / s.blockSize);
  for (let i = 0; i < blocks; i++) {
    const start = i * s.blockSize;
    const end = Math.min(s.volumeSize, start + s.blockSize);
    switch (s.fills[i % s.fills.length]) {
      case 0: for (let k = start; k < end; k++) b[k] = r() & 0xff; break;
      case 1: break;
      case 2: b.write(`block ${i} says hello to the archive; `.repeat(Math.ceil((end - start) / 30)).slice(0, end - start), start, 'latin1'); break;
      case 3: b.fill((r() % 255) + 1, start, end); break;
      case 4: b[end - 1] = 1 + (r() % 255); break;
      case 5: b[start] = 1 + (r() % 255); break;
    }
  }
  return b;
}

/** The extents given to the writer (gaps left out), in block order, clipped to the volume. */
function extentList(s: Scenario): MapExtent[] {
  const blocks = Math.ceil(s.volumeSize / s.blockSize);
  const out: MapExtent[] = [];
  let at = 0;
  for (const seg of s.segs) {
    if (at >= blocks) break;
    const n = Math.min(seg.len, blocks - at);
    if (seg.kind !== 'gap') out.push({ firstBlock: at, blockCount: n, kind: KIND[seg.kind] });
    at += n;
  }
  return out;
}

/** The map the writer must record: adjacent extents of one kind merged; a full archive's gaps UNMAP. */
function expectedMap(list: MapExtent[], blocks: number, full: boolean): MapExtent[] {
  const out: MapExtent[] = [];
  const add = (e: MapExtent): void => {
    const last = out[out.length - 1];
    if (last && last.kind === e.kind && last.firstBlock + last.blockCount === e.firstBlock) last.blockCount += e.blockCount;
    else out.push({ ...e });
  };
  let next = 0;
  for (const e of list) {
    if (full && e.firstBlock > next) add({ firstBlock: next, blockCount: e.firstBlock - next, kind: ExtentKind.UNMAP });
    add(e);
    next = e.firstBlock + e.blockCount;
  }
  if (full && next < blocks) add({ firstBlock: next, blockCount: blocks - next, kind: ExtentKind.UNMAP });
  return out;
}

/** A trailer with its digest as hex (the writer returns a Buffer, the reader a Uint8Array). */
function plain(t: Trailer): Omit<Trailer, 'digest'> & { digest: string } {
  return { ...t, digest: Buffer.from(t.digest).toString('hex') };
}

function isZero(b: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (b[i] !== 0) return false;
  return true;
}

function newHeader(s: Scenario): NewArchive {
  return {
    full: s.full, blockSize: s.blockSize, parentId: s.full ? null : '99999999-0000-4000-8000-000000000001',
    chainId: '88888888-0000-4000-8000-000000000002', sequence: s.full ? 0 : 1, volumeUuid: '77777777-0000-4000-8000-000000000003',
    volumeSize: s.volumeSize, createdMs: 1_700_000_000_000, sourceChunkSize: 65536,
    meta: { volume: { name: 'prop' }, tool: 'property test' },
  };
}

interface ReadBack {
  header: ArchiveHeader;
  map: MapExtent[];
  mapEnd: MapEnd;
  trailer: Trailer;
  size: number;
  records: { type: 'data' | 'zero'; offset: number; firstBlock: number; blockCount: number; zero: boolean[] }[];
  storedBytes: number;
  mapFrames: number;
  image: Buffer;
}

/** Read an archive and apply it to `image`, checking every payload through the pool. */
async function readBack(bytes: Uint8Array, image: Buffer, chunk: number): Promise<ReadBack> {
  let header: ArchiveHeader | undefined;
  const map: MapExtent[] = [];
  let mapEnd: MapEnd | undefined;
  let trailer: Trailer | undefined;
  let size = 0;
  let storedBytes = 0;
  let mapFrames = 0;
  const records: ReadBack['records'] = [];
  for await (const ev of readArchive(chunked(bytes, chunk === 0 ? bytes.length : chunk))) {
    if (ev.type === 'header') header = ev.header;
    else if (ev.type === 'map') {
      mapFrames++;
      map.push(...ev.extents);
      for (const e of ev.extents) {
        if (e.kind !== ExtentKind.DATA) image.fill(0, e.firstBlock * header!.blockSize, Math.min(image.length, (e.firstBlock + e.blockCount) * header!.blockSize));
      }
    } else if (ev.type === 'map-end') mapEnd = ev.mapEnd;
    else if (ev.type === 'data') {
      const r = ev.record;
      const bs = header!.blockSize;
      expect(r.rawLen).toBeLessThanOrEqual(MAX_RECORD_RAW);
      expect(ev.payload.length).toBe(r.storedLen);
      storedBytes += r.storedLen;
      const p = ev.payload;
      const res = await pool.decode(p.buffer.slice(p.byteOffset, p.byteOffset + p.byteLength) as ArrayBuffer, r, bs, true);
      expect(res.ok, res.error).toBe(true);
      const raw = Buffer.from(res.raw!);
      expect(raw.length).toBe(r.rawLen);
      raw.copy(image, r.firstBlock * bs);
      const zero: boolean[] = [];
      for (let i = 0; i < r.blockCount; i++) zero.push(isZero(raw, i * bs, Math.min(raw.length, (i + 1) * bs)));
      records.push({ type: 'data', offset: ev.offset, firstBlock: r.firstBlock, blockCount: r.blockCount, zero });
    } else if (ev.type === 'zero') {
      const bs = header!.blockSize;
      image.fill(0, ev.record.firstBlock * bs, Math.min(image.length, (ev.record.firstBlock + ev.record.blockCount) * bs));
      records.push({ type: 'zero', offset: ev.offset, firstBlock: ev.record.firstBlock, blockCount: ev.record.blockCount, zero: [] });
    } else if (ev.type === 'trailer') {
      trailer = ev.trailer;
      size = ev.size;
    }
  }
  return { header: header!, map, mapEnd: mapEnd!, trailer: trailer!, size, records, storedBytes, mapFrames, image };
}

let fileNo = 0;

/** Write the scenario's archive, read it back every way, and check everything. */
async function check(s: Scenario): Promise<ReadBack> {
  const src = buildSource(s);
  const bs = s.blockSize;
  const blocks = Math.ceil(s.volumeSize / bs);
  const list = extentList(s);
  const sink = new MemorySink();
  const res = await writeArchive({ header: newHeader(s), extents: listSource(list), source: new MemorySource(src), sink, pool, level: s.level });
  const bytes = sink.bytes();
  expect(res.bytesWritten).toBe(bytes.length);

  // The expected volume: the parent (random bytes) with the extents applied.
  const parent = Buffer.alloc(s.volumeSize);
  const r = rng(s.seed ^ 0x5a5a5a5a);
  for (let i = 0; i < parent.length; i++) parent[i] = r() & 0xff;
  const want = Buffer.from(parent);
  const map = expectedMap(list, blocks, s.full);
  const mapEnd: MapEnd = { extentCount: map.length, dataBlocks: 0, zeroBlocks: 0, unmapBlocks: 0 };
  let nonZero = 0;
  let rawBytes = 0;
  for (const e of map) {
    const start = e.firstBlock * bs;
    const end = Math.min(s.volumeSize, (e.firstBlock + e.blockCount) * bs);
    if (e.kind === ExtentKind.DATA) {
      mapEnd.dataBlocks += e.blockCount;
      src.copy(want, start, start, end);
      for (let b = e.firstBlock; b < e.firstBlock + e.blockCount; b++) {
        const bEnd = Math.min(s.volumeSize, (b + 1) * bs);
        if (!isZero(src, b * bs, bEnd)) {
          nonZero++;
          rawBytes += bEnd - b * bs;
        }
      }
    } else {
      if (e.kind === ExtentKind.ZERO) mapEnd.zeroBlocks += e.blockCount;
      else mapEnd.unmapBlocks += e.blockCount;
      want.fill(0, start, end);
    }
  }

  const got = await readBack(bytes, Buffer.from(parent), s.chunk);
  expect(got.size).toBe(bytes.length);
  expect(got.map).toEqual(map);
  expect(got.mapEnd).toEqual(mapEnd);
  expect(res.mapEnd).toEqual(mapEnd);
  expect(got.header).toEqual(res.header);
  expect(plain(got.trailer)).toEqual(plain(res.trailer));
  expect(got.image.equals(want)).toBe(true);

  // Totals.
  const t = got.trailer;
  expect(t.dataBlocks).toBe(nonZero);
  expect(t.zeroBlocks).toBe(mapEnd.dataBlocks - nonZero);
  expect(t.rawBytes).toBe(rawBytes);
  expect(t.storedBytes).toBe(got.storedBytes);
  expect(t.recordCount).toBe(got.records.length);
  expect(t.indexCount).toBe(Math.ceil(got.records.length / MAX_INDEX_ENTRIES));
  // Records: in order, DATA records hold only non-zero blocks, ZERO records only zero blocks.
  let next = 0;
  for (const rec of got.records) {
    expect(rec.firstBlock).toBeGreaterThanOrEqual(next);
    next = rec.firstBlock + rec.blockCount;
    if (rec.type === 'data') expect(rec.zero.every((z) => !z)).toBe(true);
    else for (let b = rec.firstBlock; b < next; b++) expect(isZero(src, b * bs, Math.min(s.volumeSize, (b + 1) * bs))).toBe(true);
  }

  // Random access agrees.
  const path = join(dir, `p${fileNo++}.tna`);
  await writeFile(path, bytes);
  const f = await ArchiveFile.open(path);
  try {
    expect(f.header).toEqual(res.header);
    expect(plain(f.trailer)).toEqual(plain(res.trailer));
    expect(await f.preflight()).toEqual(mapEnd);
    const probe = new Set<number>([0, blocks - 1, blocks, Math.floor(blocks / 2)]);
    for (const rec of got.records) {
      probe.add(rec.firstBlock);
      probe.add(rec.firstBlock + rec.blockCount - 1);
    }
    for (const b of probe) {
      const e = await f.findRecord(b);
      const rec = got.records.find((x) => b >= x.firstBlock && b < x.firstBlock + x.blockCount);
      if (!rec) {
        expect(e).toBeUndefined();
        continue;
      }
      expect(e).toEqual({ offset: rec.offset, firstBlock: rec.firstBlock, blockCount: rec.blockCount, type: rec.type === 'data' ? FrameType.DATA : FrameType.ZERO });
    }
    for (const rec of got.records.slice(0, 3)) {
      const at = await f.readRecordAt(rec.offset);
      expect(at.type).toBe(rec.type);
    }
  } finally {
    await f.close();
    await rm(path, { force: true });
  }
  return got;
}

const scenario: fc.Arbitrary<Scenario> = fc.record({
  exp: fc.integer({ min: 12, max: 16 }),
  full: fc.boolean(),
  level: fc.constantFrom(1, 3),
  seed: fc.integer(),
  chunkPick: fc.nat(),
}).chain(({ exp, full, level, seed, chunkPick }) => {
  const blockSize = 2 ** exp;
  const maxBlocks = Math.max(1, Math.floor(MAX_VOLUME / blockSize));
  return fc.record({
    blocks: fc.integer({ min: 1, max: maxBlocks }),
    lastLen: fc.oneof(fc.constant(blockSize), fc.integer({ min: 1, max: blockSize })),
    segs: fc.array(fc.record({
      len: fc.integer({ min: 1, max: Math.max(1, Math.ceil(maxBlocks / 3)) }),
      kind: fc.constantFrom<SegKind>('gap', 'DATA', 'DATA', 'ZERO', 'UNMAP'),
    }), { maxLength: 14 }),
    fills: fc.array(fc.integer({ min: 0, max: 5 }) as fc.Arbitrary<Fill>, { minLength: 1, maxLength: 64 }),
  }).map(({ blocks, lastLen, segs, fills }) => ({
    blockSize,
    volumeSize: (blocks - 1) * blockSize + lastLen,
    full,
    level,
    segs,
    fills,
    seed,
    chunk: [0, 0, 1 + (chunkPick % 9000), 1 + (chunkPick % 17)][chunkPick % 4],
  }));
});

describe('writeArchive → readArchive (property)', () => {
  it('rebuilds exactly what the extents say, with matching totals, for random volumes and maps', async () => {
    await fc.assert(fc.asyncProperty(scenario, async (s) => {
      // Byte-at-a-time feeding is slow: only for small volumes.
      if (s.chunk > 0 && s.chunk < 64 && s.volumeSize > 256 * 1024) s.chunk = 4096 + s.chunk;
      await check(s);
    }), { numRuns: 150, seed: Number(process.env.THINARCHIVE_PROP_SEED ?? 20240611), endOnFailure: true });
  });

  it('edge cases: one byte, one partial block, a single full block, all kinds adjacent', async () => {
    const base = { full: true, level: 3, seed: 1, chunk: 1 } as const;
    await check({ ...base, blockSize: 4096, volumeSize: 1, segs: [{ len: 1, kind: 'DATA' }], fills: [0] });
    await check({ ...base, blockSize: 4096, volumeSize: 1, segs: [{ len: 1, kind: 'DATA' }], fills: [1] });
    await check({ ...base, blockSize: 65536, volumeSize: 65536, segs: [{ len: 1, kind: 'DATA' }], fills: [4] });
    await check({ ...base, full: false, blockSize: 8192, volumeSize: 8192 * 9 + 7, segs: [{ len: 10, kind: 'gap' }], fills: [0] });
    await check({ ...base, blockSize: 4096, volumeSize: 4096 * 8 - 5, segs: [
      { len: 1, kind: 'DATA' }, { len: 1, kind: 'ZERO' }, { len: 1, kind: 'UNMAP' }, { len: 1, kind: 'DATA' }, { len: 1, kind: 'gap' }, { len: 1, kind: 'DATA' },
      { len: 1, kind: 'DATA' }, { len: 1, kind: 'ZERO' },
    ], fills: [5, 1, 0, 2, 3, 4, 1, 0] });
    await check({ ...base, full: false, blockSize: 4096, volumeSize: 4096 * 8 - 5, segs: [{ len: 7, kind: 'gap' }, { len: 1, kind: 'DATA' }], fills: [4] });
  });

  it('a 4 MiB record limit: a long DATA extent of 64 KiB blocks is split into bounded records', async () => {
    const s: Scenario = { full: true, level: 1, seed: 9, chunk: 0, blockSize: 65536, volumeSize: 65536 * 70 + 1, segs: [{ len: 71, kind: 'DATA' }], fills: [2] };
    await check(s);
  });

  it('many extents and records: several map frames and several index frames', async () => {
    // Alternating 1-block DATA and UNMAP extents (not merged: different kinds), DATA blocks alternating
    // zero/non-zero: more than 4096 extents and more than 1024 records.
    const n = MAX_MAP_ENTRIES_PER_FRAME + 200;
    const segs: Scenario['segs'] = [];
    for (let i = 0; i < n; i++) segs.push({ len: 1, kind: i % 2 ? 'UNMAP' : 'DATA' });
    const s: Scenario = { full: false, level: 1, seed: 3, chunk: 0, blockSize: 4096, volumeSize: 4096 * n, segs, fills: [3, 3, 1, 1] };
    const got = await check(s);
    expect(got.mapFrames).toBe(2);
    expect(got.trailer.indexCount).toBe(3);
    expect(got.trailer.recordCount).toBe(n / 2);
  });
});
