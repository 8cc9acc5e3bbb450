/**
 * The golden archives of fixtures/archives/ (written by scripts/make-fixtures.mjs; expected.json says
 * what each must produce). Each is read by the streaming reader fed whole and one byte at a time, by
 * ArchiveFile (open, preflight, random access), and payloads are checked through the worker pool.
 * The generator is also run twice here, from the TypeScript sources, to show it is deterministic and
 * that the committed files are what it writes.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, basename, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FormatError, ThinarchiveError, UnsafeError } from '../errors.js';
import { checkChain } from '../commands/apply.js';
import { verify } from '../commands/verify.js';
import { DATA_BODY_HEAD, ExtentKind, FRAME_CHECK_SIZE, FRAME_HEAD_SIZE, FrameType } from '../format/constants.js';
import { encodeFrame } from '../format/frames.js';
import type { ArchiveHeader, MapExtent } from '../format/types.js';
import { WorkerPool } from './pool.js';
import { ArchiveFile, readArchive, type ArchiveEvent } from './reader.js';
import { writeArchive } from './writer.js';
import { chunked } from '../../test/helpers/memory.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const FIXTURES = join(ROOT, 'fixtures', 'archives');
const SCRIPT = join(ROOT, 'scripts', 'make-fixtures.mjs');

interface ExpectedError { code: string; offset?: number }
interface ExpectedRecord {
  type: 'data' | 'zero'; offset: number; firstBlock: number; blockCount: number;
  codec?: number; rawLen?: number; storedLen?: number; payloadOffset?: number;
}
interface ExpectedArchive {
  file: string;
  result: 'ok' | 'error' | 'payload-corrupt';
  bytes: number;
  sha256: string;
  header?: ArchiveHeader;
  map?: { firstBlock: number; blockCount: number; kind: 'DATA' | 'ZERO' | 'UNMAP' }[];
  mapEnd?: { extentCount: number; dataBlocks: number; zeroBlocks: number; unmapBlocks: number };
  trailer?: Record<string, number | string>;
  trailerOffset?: number;
  mapOffset?: number;
  indexOffsets?: number[];
  events?: string[];
  records?: ExpectedRecord[];
  volumeSha256?: string;
  appliesOn?: string;
  from?: string;
  error?: { stream: ExpectedError | null; open: ExpectedError | null; preflight: ExpectedError | null };
  eventsBeforeError?: string[];
  decode?: { recordOffset: number; firstBlock: number; badBlocks: number[]; block: number };
}
interface ExpectedChain {
  dir: string;
  chainId: string;
  archives: { name: string; archiveId: string; parentId: string | null; sequence: number; full: boolean; sha256: string }[];
  checkChain: { code: string };
  verifyFindings: { code: string; detail: string; archive: string }[];
}
interface Expected { archives: Record<string, ExpectedArchive>; chains: Record<string, ExpectedChain> }

const expected = JSON.parse(await readFile(join(FIXTURES, 'expected.json'), 'utf8')) as Expected;
const KIND = { DATA: ExtentKind.DATA, ZERO: ExtentKind.ZERO, UNMAP: ExtentKind.UNMAP } as const;

let pool: WorkerPool;
const tempDirs: string[] = [];
beforeAll(() => { pool = new WorkerPool(2); });
afterAll(async () => {
  await pool.close();
  for (const d of tempDirs) await rm(d, { recursive: true, force: true });
});

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const fixture = (name: string): Promise<Buffer> => readFile(join(FIXTURES, name));

/** A comparable summary of an event (payload bytes by hash). */
function summary(ev: ArchiveEvent): Record<string, unknown> {
  switch (ev.type) {
    case 'header': return { type: ev.type, offset: ev.offset, header: ev.header };
    case 'map': return { type: ev.type, offset: ev.offset, extents: ev.extents };
    case 'map-end': return { type: ev.type, offset: ev.offset, mapEnd: ev.mapEnd };
    case 'data': {
      const { hashes, ...rest } = ev.record;
      return { type: ev.type, offset: ev.offset, record: rest, hashes: Array.from(hashes, (h) => h.toString(16)), payload: sha256(ev.payload), len: ev.payload.length };
    }
    case 'zero': return { type: ev.type, offset: ev.offset, record: ev.record };
    case 'trailer': return { type: ev.type, offset: ev.offset, size: ev.size, trailer: { ...ev.trailer, digest: Buffer.from(ev.trailer.digest).toString('hex') } };
  }
}

interface Collected {
  events: ArchiveEvent[];
  summaries: Record<string, unknown>[];
  error?: unknown;
}

async function collect(source: AsyncIterable<Uint8Array>, file?: string): Promise<Collected> {
  const events: ArchiveEvent[] = [];
  try {
    for await (const ev of readArchive(source, { file })) events.push(ev);
  } catch (error) {
    return { events, summaries: events.map(summary), error };
  }
  return { events, summaries: events.map(summary) };
}

/** Decode one data event's payload through the pool. */
async function decodeEvent(ev: Extract<ArchiveEvent, { type: 'data' }>, blockSize: number, payload = ev.payload) {
  const buf = payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.byteLength) as ArrayBuffer;
  return pool.decode(buf, ev.record, blockSize, true);
}

/** Apply an archive's events to `image` (a copy of the parent's volume, or zeroes for a full archive). */
async function applyEvents(events: ArchiveEvent[], image: Buffer): Promise<Buffer> {
  let bs = 0;
  for (const ev of events) {
    if (ev.type === 'header') {
      bs = ev.header.blockSize;
      expect(image.length).toBe(ev.header.volumeSize);
      if (ev.header.full) image.fill(0);
    } else if (ev.type === 'map') {
      for (const e of ev.extents) {
        if (e.kind !== ExtentKind.DATA) image.fill(0, e.firstBlock * bs, Math.min(image.length, (e.firstBlock + e.blockCount) * bs));
      }
    } else if (ev.type === 'data') {
      const res = await decodeEvent(ev, bs);
      expect(res.ok, res.error).toBe(true);
      expect(res.raw!.byteLength).toBe(ev.record.rawLen);
      Buffer.from(res.raw!).copy(image, ev.record.firstBlock * bs);
    } else if (ev.type === 'zero') {
      image.fill(0, ev.record.firstBlock * bs, Math.min(image.length, (ev.record.firstBlock + ev.record.blockCount) * bs));
    }
  }
  return image;
}

function expectFormatError(err: unknown, want: ExpectedError, file?: string): void {
  expect(err, `expected ${want.code}`).toBeInstanceOf(FormatError);
  const fe = err as FormatError;
  expect(fe.code, fe.message).toBe(want.code);
  if (want.offset !== undefined) expect(fe.offset).toBe(want.offset);
  if (file !== undefined) expect(fe.file).toBe(file);
}

async function captured<T>(p: Promise<T>): Promise<{ value?: T; error?: unknown }> {
  try {
    return { value: await p };
  } catch (error) {
    return { error };
  }
}

const archives = Object.values(expected.archives);
const valid = archives.filter((a) => a.result === 'ok');
const damaged = archives.filter((a) => a.result === 'error');

/** The rebuilt volume of every valid fixture (filled by the streaming tests, used by random access). */
const images = new Map<string, Buffer>();

async function imageOf(name: string): Promise<Buffer> {
  const have = images.get(name);
  if (have) return have;
  const a = expected.archives[name];
  const base = a.appliesOn ? Buffer.from(await imageOf(a.appliesOn)) : Buffer.alloc(a.header!.volumeSize, 0xee);
  const { events, error } = await collect(chunked(await fixture(name), 1 << 20));
  expect(error).toBeUndefined();
  const img = await applyEvents(events, base);
  images.set(name, img);
  return img;
}

// ---------------------------------------------------------------------------------------- generator

describe('make-fixtures.mjs', () => {
  it('is deterministic and reproduces the committed fixtures byte for byte', async () => {
    const mod = (await import(pathToFileURL(SCRIPT).href)) as {
      generateFixtures: (dir: string, lib: unknown) => Promise<Expected>;
    };
    const lib = { writeArchive, WorkerPool, encodeFrame };
    const dirs: string[] = [];
    for (let i = 0; i < 2; i++) {
      const d = await mkdtemp(join(tmpdir(), 'thinarchive-fixtures-'));
      tempDirs.push(d);
      await mod.generateFixtures(d, lib);
      dirs.push(d);
    }
    const list = async (d: string): Promise<string[]> => {
      const out: string[] = [];
      const walk = async (p: string): Promise<void> => {
        for (const n of (await readdir(p)).sort()) {
          const f = join(p, n);
          if ((await stat(f)).isDirectory()) await walk(f);
          else out.push(relative(d, f));
        }
      };
      await walk(d);
      return out;
    };
    const files = await list(dirs[0]);
    expect(files).toEqual(await list(dirs[1]));
    expect(files, 'regenerate with `npm run build && npm run fixtures`').toEqual(await list(FIXTURES));
    for (const f of files) {
      const a = await readFile(join(dirs[0], f));
      expect(a.equals(await readFile(join(dirs[1], f))), `${f} differs between two runs`).toBe(true);
      expect(a.equals(await readFile(join(FIXTURES, f))), `${f} differs from the committed fixture: if the format or writer changed on purpose, run \`npm run build && npm run fixtures\``).toBe(true);
    }
  });
});

// ------------------------------------------------------------------------------------------ streaming

describe('golden archives, streaming reader', () => {
  it('every fixture file is listed in expected.json with its size and sha256', async () => {
    for (const a of archives) {
      const b = await fixture(a.file);
      expect(b.length, a.file).toBe(a.bytes);
      expect(sha256(b), a.file).toBe(a.sha256);
    }
  });

  for (const a of valid) {
    it(`${a.file}: whole and byte-at-a-time give the same, expected events`, async () => {
      const bytes = await fixture(a.file);
      const whole = await collect(chunked(bytes, bytes.length), a.file);
      expect(whole.error).toBeUndefined();
      expect(whole.events.map((e) => e.type)).toEqual(a.events);
      const byByte = await collect(chunked(bytes, 1), a.file);
      expect(byByte.error).toBeUndefined();
      expect(byByte.summaries).toEqual(whole.summaries);
      const odd = await collect(chunked(bytes, 4093), a.file);
      expect(odd.summaries).toEqual(whole.summaries);
      async function* withEmpty(): AsyncGenerator<Uint8Array> {
        for (let i = 0; i < bytes.length; i += 1000) {
          yield new Uint8Array(0);
          yield bytes.subarray(i, i + 1000);
        }
        yield new Uint8Array(0);
      }
      const empties = await collect(withEmpty(), a.file);
      expect(empties.summaries).toEqual(whole.summaries);

      const ev = whole.events;
      const h = ev[0] as Extract<ArchiveEvent, { type: 'header' }>;
      expect(h.header).toEqual(a.header);
      expect(h.offset).toBe(16);
      const map = ev.filter((e): e is Extract<ArchiveEvent, { type: 'map' }> => e.type === 'map').flatMap((e) => e.extents);
      expect(map).toEqual(a.map!.map((e) => ({ firstBlock: e.firstBlock, blockCount: e.blockCount, kind: KIND[e.kind] })));
      expect(ev.find((e) => e.type === 'map')!.offset).toBe(a.mapOffset);
      const mapEnd = ev.find((e): e is Extract<ArchiveEvent, { type: 'map-end' }> => e.type === 'map-end')!;
      expect(mapEnd.mapEnd).toEqual(a.mapEnd);
      const t = ev[ev.length - 1] as Extract<ArchiveEvent, { type: 'trailer' }>;
      expect({ ...t.trailer, digest: Buffer.from(t.trailer.digest).toString('hex') }).toEqual(a.trailer);
      expect(t.offset).toBe(a.trailerOffset);
      expect(t.size).toBe(bytes.length);
      const records = ev.filter((e) => e.type === 'data' || e.type === 'zero').map((e) => e.type === 'data'
        ? { type: 'data', offset: e.offset, firstBlock: e.record.firstBlock, blockCount: e.record.blockCount, codec: e.record.codec, rawLen: e.record.rawLen, storedLen: e.record.storedLen, payloadOffset: e.offset + FRAME_HEAD_SIZE + DATA_BODY_HEAD + e.record.blockCount * 8 + FRAME_CHECK_SIZE }
        : { type: 'zero', offset: e.offset, firstBlock: (e as Extract<ArchiveEvent, { type: 'zero' }>).record.firstBlock, blockCount: (e as Extract<ArchiveEvent, { type: 'zero' }>).record.blockCount });
      expect(records).toEqual(a.records);
      for (const e of ev) {
        if (e.type === 'data') expect(e.payload.length).toBe(e.record.storedLen);
      }
    });

    it(`${a.file}: rebuilds the expected volume, every payload checked by the pool`, async () => {
      const img = await imageOf(a.file);
      expect(sha256(img)).toBe(a.volumeSha256);
    });
  }

  it('the fixtures exercise raw and zstd records, ZERO records, every extent kind and a partial last block', () => {
    const full = expected.archives['valid-full.tna'];
    const inc = expected.archives['valid-incremental.tna'];
    const recs = [...full.records!, ...inc.records!];
    expect(recs.some((r) => r.codec === 0)).toBe(true);
    expect(recs.some((r) => r.codec === 1)).toBe(true);
    expect(recs.some((r) => r.type === 'zero')).toBe(true);
    for (const k of ['DATA', 'ZERO', 'UNMAP']) {
      expect(full.map!.some((e) => e.kind === k), `full ${k}`).toBe(true);
      expect(inc.map!.some((e) => e.kind === k), `incremental ${k}`).toBe(true);
    }
    expect(full.header!.volumeSize % full.header!.blockSize).not.toBe(0);
    const blocks = Math.ceil(full.header!.volumeSize / full.header!.blockSize);
    const last = full.records!.find((r) => r.firstBlock + r.blockCount === blocks && r.type === 'data')!;
    expect(last.rawLen).toBe(full.header!.volumeSize - last.firstBlock * full.header!.blockSize);
    expect(inc.header!.full).toBe(false);
    expect(inc.header!.parentId).toBe(full.header!.archiveId);
    expect(inc.header!.chainId).toBe(full.header!.chainId);
  });

  for (const a of damaged) {
    it(`${a.file}: fails with ${a.error!.stream?.code} whether fed whole or byte at a time`, async () => {
      const bytes = await fixture(a.file);
      const whole = await collect(chunked(bytes, bytes.length), a.file);
      expectFormatError(whole.error, a.error!.stream!, a.file);
      expect((whole.error as FormatError).message).toContain(a.file);
      expect(whole.events.map((e) => e.type)).toEqual(a.eventsBeforeError);
      const byByte = await collect(chunked(bytes, 1), a.file);
      expectFormatError(byByte.error, a.error!.stream!, a.file);
      expect(byByte.summaries).toEqual(whole.summaries);
      expect((byByte.error as FormatError).message).toBe((whole.error as FormatError).message);
    });
  }

  it('bad-checksum.tna: streams cleanly, and the pool finds the one bad block', async () => {
    const a = expected.archives['bad-checksum.tna'];
    const bytes = await fixture(a.file);
    for (const feed of [bytes.length, 1]) {
      const { events, error } = await collect(chunked(bytes, feed));
      expect(error).toBeUndefined();
      const orig = await collect(chunked(await fixture(a.from!), 1 << 20));
      expect(events.map((e) => e.type)).toEqual(orig.events.map((e) => e.type));
      const bs = (events[0] as Extract<ArchiveEvent, { type: 'header' }>).header.blockSize;
      let bad = 0;
      for (const ev of events) {
        if (ev.type !== 'data') continue;
        const res = await decodeEvent(ev, bs);
        if (ev.offset === a.decode!.recordOffset) {
          bad++;
          expect(res.ok).toBe(false);
          expect(res.badBlocks).toEqual(a.decode!.badBlocks);
          expect(ev.record.firstBlock + res.badBlocks![0]).toBe(a.decode!.block);
        } else {
          expect(res.ok, res.error).toBe(true);
        }
      }
      expect(bad).toBe(1);
    }
    // verify reads small payloads into batches: the last batch (here every record) is checked too
    const res = await verify({ inputs: [join(FIXTURES, a.file)] });
    expect(res.ok).toBe(false);
    expect(res.findings.map((f) => ({ code: f.code, offset: f.offset, block: f.block }))).toEqual(
      a.decode!.badBlocks.map((i) => ({ code: 'CHECKSUM_MISMATCH', offset: a.decode!.recordOffset, block: a.decode!.firstBlock + i })),
    );
  });
});

// ------------------------------------------------------------------------------------ random access

describe('golden archives, ArchiveFile', () => {
  for (const a of archives) {
    it(`${a.file}: open and preflight agree with the streaming reader`, async () => {
      const path = join(FIXTURES, a.file);
      const want = a.error ?? { stream: null, open: null, preflight: null };
      const opened = await captured(ArchiveFile.open(path));
      if (want.open) {
        expectFormatError(opened.error, want.open, path);
        return;
      }
      expect(opened.error).toBeUndefined();
      const f = opened.value!;
      try {
        const pf = await captured(f.preflight());
        if (want.preflight) {
          expectFormatError(pf.error, want.preflight, path);
          return;
        }
        expect(pf.error).toBeUndefined();
        const src = expected.archives[a.from ?? a.file];
        expect(f.header).toEqual(src.header);
        expect({ ...f.trailer, digest: Buffer.from(f.trailer.digest).toString('hex') }).toEqual(src.trailer);
        expect(f.trailerOffset).toBe(src.trailerOffset);
        expect(f.mapOffset).toBe(src.mapOffset);
        expect(f.size).toBe(a.bytes);
        expect(pf.value).toEqual(src.mapEnd);
        const map: MapExtent[] = [];
        for await (const e of f.mapExtents()) map.push(e);
        expect(map).toEqual(src.map!.map((e) => ({ firstBlock: e.firstBlock, blockCount: e.blockCount, kind: KIND[e.kind] })));
        expect((await f.loadIndexes()).map((s) => s.offset)).toEqual(src.indexOffsets);
      } finally {
        await f.close();
      }
    });
  }

  it('open refuses a directory and reports a missing file as an I/O error', async () => {
    const dirErr = await captured(ArchiveFile.open(FIXTURES));
    expect(dirErr.error).toBeInstanceOf(FormatError);
    expect((dirErr.error as FormatError).code).toBe('NOT_A_FILE');
    const missing = await captured(ArchiveFile.open(join(FIXTURES, 'no-such.tna')));
    expect(missing.error).toBeInstanceOf(ThinarchiveError);
    expect((missing.error as ThinarchiveError).code).toBe('IO_ENOENT');
  });

  for (const a of valid) {
    it(`${a.file}: findRecord and readRecordAt return the right records and rebuild the volume`, async () => {
      const f = await ArchiveFile.open(join(FIXTURES, a.file));
      try {
        const bs = f.header.blockSize;
        const blocks = Math.ceil(f.header.volumeSize / bs);
        const byBlock = new Map<number, ExpectedRecord>();
        for (const r of a.records!) for (let b = r.firstBlock; b < r.firstBlock + r.blockCount; b++) byBlock.set(b, r);
        // Every block of the volume, and some past its end.
        for (let b = 0; b < blocks + 3; b++) {
          const got = await f.findRecord(b);
          const r = byBlock.get(b);
          if (!r) {
            expect(got, `block ${b}`).toBeUndefined();
            continue;
          }
          expect(got, `block ${b}`).toEqual({ offset: r.offset, firstBlock: r.firstBlock, blockCount: r.blockCount, type: r.type === 'data' ? FrameType.DATA : FrameType.ZERO });
        }
        expect(await f.findRecord(Number.MAX_SAFE_INTEGER)).toBeUndefined();

        // Random access rebuilds the same volume as the stream.
        const base = a.appliesOn ? Buffer.from(await imageOf(a.appliesOn)) : Buffer.alloc(f.header.volumeSize);
        for await (const e of f.mapExtents()) if (e.kind !== ExtentKind.DATA) base.fill(0, e.firstBlock * bs, Math.min(base.length, (e.firstBlock + e.blockCount) * bs));
        const bytes = await fixture(a.file);
        for (const r of a.records!) {
          const rec = await f.readRecordAt(r.offset);
          expect(rec.type).toBe(r.type);
          expect(rec.offset).toBe(r.offset);
          if (r.type === 'zero') {
            expect(rec.zero).toEqual({ firstBlock: r.firstBlock, blockCount: r.blockCount });
            base.fill(0, r.firstBlock * bs, Math.min(base.length, (r.firstBlock + r.blockCount) * bs));
            continue;
          }
          const d = rec.data!;
          expect({ firstBlock: d.firstBlock, blockCount: d.blockCount, codec: d.codec, rawLen: d.rawLen, storedLen: d.storedLen })
            .toEqual({ firstBlock: r.firstBlock, blockCount: r.blockCount, codec: r.codec, rawLen: r.rawLen, storedLen: r.storedLen });
          expect(Buffer.from(rec.payload!).equals(bytes.subarray(r.payloadOffset!, r.payloadOffset! + r.storedLen!))).toBe(true);
          const p = rec.payload!;
          const res = await pool.decode(p.buffer.slice(p.byteOffset, p.byteOffset + p.byteLength) as ArrayBuffer, d, bs, true);
          expect(res.ok, res.error).toBe(true);
          Buffer.from(res.raw!).copy(base, d.firstBlock * bs);
        }
        expect(sha256(base)).toBe(a.volumeSha256);

        // Offsets that hold no record.
        const notRecords = [16, a.mapOffset!, ...a.indexOffsets!, a.trailerOffset!];
        for (const off of notRecords) {
          const r = await captured(f.readRecordAt(off));
          expect(r.error, `offset ${off}`).toBeInstanceOf(FormatError);
          expect((r.error as FormatError).code).toBe('BAD_STRUCTURE');
        }
        for (const off of [0, 1, a.records![0].offset + 1, a.records![0].payloadOffset ?? a.records![0].offset + 5, a.bytes - 4, a.bytes, a.bytes + 100, 2 ** 52]) {
          const r = await captured(f.readRecordAt(off));
          expect(r.error, `offset ${off}`).toBeInstanceOf(FormatError);
        }
      } finally {
        await f.close();
      }
    });
  }

  it('bad-checksum.tna: random access hands out the damaged payload, and the pool rejects it', async () => {
    const a = expected.archives['bad-checksum.tna'];
    const f = await ArchiveFile.open(join(FIXTURES, a.file));
    try {
      const hit = await f.findRecord(a.decode!.block);
      expect(hit?.offset).toBe(a.decode!.recordOffset);
      const rec = await f.readRecordAt(hit!.offset);
      const d = rec.data!;
      const p = rec.payload!;
      const res = await pool.decode(p.buffer.slice(p.byteOffset, p.byteOffset + p.byteLength) as ArrayBuffer, d, f.header.blockSize, false);
      expect(res.ok).toBe(false);
      expect(res.badBlocks).toEqual(a.decode!.badBlocks);
    } finally {
      await f.close();
    }
  });
});

// -------------------------------------------------------------------------------------------- chains

describe('golden chains', () => {
  async function headersOf(dir: string): Promise<ArchiveHeader[]> {
    const out: ArchiveHeader[] = [];
    for (const n of (await readdir(dir)).sort()) {
      const f = await ArchiveFile.open(join(dir, n));
      try {
        await f.preflight();
        out.push(f.header);
      } finally {
        await f.close();
      }
    }
    return out;
  }

  it('the valid full and incremental archives form a chain', async () => {
    const full = await ArchiveFile.open(join(FIXTURES, 'valid-full.tna'));
    const inc = await ArchiveFile.open(join(FIXTURES, 'valid-incremental.tna'));
    try {
      expect(() => checkChain([full.header, inc.header])).not.toThrow();
      expect(() => checkChain([inc.header, full.header])).toThrow(UnsafeError);
    } finally {
      await full.close();
      await inc.close();
    }
  });

  for (const c of Object.values(expected.chains)) {
    it(`${c.dir}: every archive is valid alone, the chain is rejected (${c.checkChain.code})`, async () => {
      const dir = join(FIXTURES, c.dir);
      expect((await readdir(dir)).sort()).toEqual(c.archives.map((a) => a.name));
      for (const a of c.archives) {
        const bytes = await readFile(join(dir, a.name));
        expect(sha256(bytes)).toBe(a.sha256);
        const { events, error } = await collect(chunked(bytes, 1));
        expect(error).toBeUndefined();
        const h = (events[0] as Extract<ArchiveEvent, { type: 'header' }>).header;
        expect({ archiveId: h.archiveId, parentId: h.parentId, sequence: h.sequence, full: h.full, chainId: h.chainId })
          .toEqual({ archiveId: a.archiveId, parentId: a.parentId, sequence: a.sequence, full: a.full, chainId: c.chainId });
        await applyEvents(events, Buffer.alloc(h.volumeSize)); // checks every payload
      }
      const headers = await headersOf(dir);
      let err: unknown;
      try {
        checkChain(headers);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ThinarchiveError);
      expect((err as ThinarchiveError).code).toBe(c.checkChain.code);

      const res = await verify({ inputs: [dir] });
      expect(res.ok).toBe(false);
      expect(res.archives.every((x) => x.ok)).toBe(true);
      expect(res.findings.map((f) => ({ code: f.code, detail: f.detail, archive: basename(f.archive) }))).toEqual(c.verifyFindings);
    });
  }
});
