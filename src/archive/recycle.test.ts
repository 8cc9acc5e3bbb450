/**
 * Buffer recycling (docs/PERFORMANCE.md, "Peak RSS"): send compresses into output buffers that come
 * back from the workers and writes raw runs from the input buffer; apply and verify read payloads
 * positionally into buffers the workers hand back. These tests check that the bytes stay right: the
 * positional reader gives exactly the stream reader's events and errors, the writer never changes a
 * chunk while the sink holds it, and the pool hands every buffer back.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FormatError } from '../errors.js';
import { Codec, ExtentKind, MAX_RECORD_RAW, type CodecCode } from '../format/constants.js';
import { xxh64 } from '../format/hash.js';
import type { DataRecordHead } from '../format/types.js';
import { writableSink } from '../store/stream.js';
import { chunked, extents, listSource, MemorySink, MemorySource } from '../../test/helpers/memory.js';
import { mulberry32 } from '../../scripts/lib/prng.mjs';
import type { PositionalSource } from './byte-reader.js';
import { BATCH_RAW, PayloadBatcher, RecordBuffers, WorkerPool, type PayloadBatch } from './pool.js';
import { readArchive, type ArchiveEvent } from './reader.js';
import { writeArchive, type ArchiveSink, type NewArchive } from './writer.js';

let pool: WorkerPool;
beforeAll(() => { pool = new WorkerPool(2); });
afterAll(async () => { await pool.close(); });

const BS = 4096;

function newHeader(volumeSize: number): NewArchive {
  return {
    full: true, blockSize: BS, parentId: null, chainId: randomUUID(), sequence: 0, volumeUuid: randomUUID(),
    volumeSize, sourceChunkSize: BS, meta: { volume: { name: 'test' }, tool: 'thinarchive test' },
  };
}

/** A volume of random, text-like and zero stretches of random lengths (raw, zstd and zero runs). */
function mixedVolume(size: number, seed: number): Buffer {
  const rnd = mulberry32(seed);
  const data = Buffer.alloc(size);
  for (let at = 0; at < size;) {
    const n = Math.min(size - at, BS * (1 + (rnd() % 300)));
    const kind = Math.floor((rnd() / 2 ** 32) * 3);
    if (kind === 0) randomBytes(n).copy(data, at);
    else if (kind === 1) data.fill(`line ${at} of some text\n`, at, at + n);
    at += n;
  }
  return data;
}

async function makeArchive(data: Buffer, sink: ArchiveSink = new MemorySink()): Promise<Buffer | undefined> {
  const blocks = Math.ceil(data.length / BS);
  await writeArchive({
    header: newHeader(data.length), pool, sink, source: new MemorySource(data),
    extents: listSource(extents([0, Math.floor(blocks / 2), ExtentKind.DATA], [Math.floor(blocks / 2) + 3, blocks - Math.floor(blocks / 2) - 3, ExtentKind.DATA])),
  });
  return sink instanceof MemorySink ? sink.bytes() : undefined;
}

/** Positional reads of `bytes` that return fewer bytes than asked, at random. */
function memoryPositional(bytes: Uint8Array, seed = 1): PositionalSource & { closed: boolean } {
  const rnd = mulberry32(seed);
  return {
    closed: false,
    async readInto(buf, offset, length, position) {
      const n = Math.max(0, Math.min(length, bytes.length - position, 1 + (rnd() % (300 * 1024))));
      buf.set(bytes.subarray(position, position + n), offset);
      return n;
    },
    async close() { this.closed = true; },
  };
}

/** Everything an event says, payload bytes included (copied: recycled buffers are reused). */
function describeEvent(ev: ArchiveEvent): unknown {
  if (ev.type === 'data') return { ...ev, record: { ...ev.record, hashes: [...ev.record.hashes] }, payload: xxh64(ev.payload), len: ev.payload.length };
  return ev;
}

async function collect(events: AsyncGenerator<ArchiveEvent>): Promise<{ events: unknown[]; error?: unknown }> {
  const out: unknown[] = [];
  try {
    for await (const ev of events) out.push(describeEvent(ev));
  } catch (e) {
    if (!(e instanceof FormatError)) throw e;
    return { events: out, error: { code: e.code, message: e.message, offset: e.offset, file: e.file } };
  }
  return { events: out };
}

describe('positional reads of an archive', () => {
  let bytes: Buffer;
  beforeAll(async () => { bytes = (await makeArchive(mixedVolume(24 * 1024 * 1024 + 1234, 7)))!; });

  it('give the same events as a stream, with and without recycled payload buffers', async () => {
    const want = await collect(readArchive(chunked(bytes, 1 << 20), { file: 'a' }));
    expect(want.error).toBeUndefined();
    expect(want.events.filter((e) => (e as ArchiveEvent).type === 'data').length).toBeGreaterThan(8);
    const free: ArrayBuffer[] = [];
    let given = 0;
    const payloadBuffer = (n: number): ArrayBuffer => {
      given++;
      expect(n).toBeLessThanOrEqual(MAX_RECORD_RAW);
      const b = free.pop() ?? new ArrayBuffer(MAX_RECORD_RAW);
      queueMicrotask(() => free.push(b)); // reused for a later record, as apply and verify do
      return b;
    };
    const src = memoryPositional(bytes);
    expect(await collect(readArchive(src, { file: 'a', payloadBuffer }))).toEqual(want);
    expect(src.closed).toBe(true);
    expect(given).toBeGreaterThan(8);
    expect(await collect(readArchive(memoryPositional(bytes, 2), { file: 'a' }))).toEqual(want);
    expect(await collect(readArchive(chunked(bytes, 777), { file: 'a', payloadBuffer }))).toEqual(want);
  });

  it('fail like a stream when the archive is cut anywhere or has bytes after its end', async () => {
    const rnd = mulberry32(3);
    const cuts = [0, 1, 15, 16, 17, 100, bytes.length - 1, bytes.length - 17, bytes.length - 16];
    for (let i = 0; i < 60; i++) cuts.push(rnd() % bytes.length);
    for (const cut of cuts) {
      const b = bytes.subarray(0, cut);
      const want = await collect(readArchive(chunked(b, 1 << 20), { file: 'cut' }));
      expect(want.error, `cut at ${cut}`).toBeDefined();
      const got = await collect(readArchive(memoryPositional(b, cut), { file: 'cut', payloadBuffer: () => new ArrayBuffer(MAX_RECORD_RAW) }));
      expect(got, `cut at ${cut}`).toEqual(want);
    }
    const longer = Buffer.concat([bytes, Buffer.from([0])]);
    const got = await collect(readArchive(memoryPositional(longer), { file: 'long' }));
    expect((got.error as { code: string }).code).toBe('TRAILING_DATA');
    expect(got).toEqual(await collect(readArchive(chunked(longer, 1 << 20), { file: 'long' })));
  });
});

describe('the writer and its sink', () => {
  it('never changes a chunk while the sink holds it, and writes the same archive as a copying sink', async () => {
    const data = mixedVolume(13 * 1024 * 1024 + 99, 11);
    const half = Math.floor(Math.ceil(data.length / BS) / 2);
    data.fill(0, half * BS, (half + 3) * BS); // makeArchive leaves these 3 blocks unmapped
    const chunks: Buffer[] = [];
    let writes = 0;
    const slow: ArchiveSink = {
      async write(chunk) {
        const before = xxh64(chunk);
        writes++;
        await new Promise((r) => setTimeout(r, 1));
        expect(xxh64(chunk)).toBe(before);
        chunks.push(Buffer.from(chunk));
      },
    };
    await makeArchive(data, slow);
    const got = Buffer.concat(chunks);
    expect(writes).toBeGreaterThan(3);
    // Rebuild the volume from it.
    const image = Buffer.alloc(data.length, 0xee);
    for await (const ev of readArchive(chunked(got, 1 << 16))) {
      const zero = (first: number, count: number): void => void image.fill(0, first * BS, Math.min(data.length, (first + count) * BS));
      if (ev.type === 'map') for (const e of ev.extents) if (e.kind !== ExtentKind.DATA) zero(e.firstBlock, e.blockCount);
      if (ev.type === 'zero') zero(ev.record.firstBlock, ev.record.blockCount);
      if (ev.type === 'data') {
        const res = await pool.decode(ev.payload.slice().buffer, ev.record, BS, true);
        expect(res.ok, res.error).toBe(true);
        Buffer.from(res.raw!).copy(image, ev.record.firstBlock * BS);
      }
    }
    expect(image.equals(data)).toBe(true);
  });

  it('writableSink resolves only once the stream has written the chunk', async () => {
    const seen: string[] = [];
    let release: (() => void) | undefined;
    const w = new Writable({
      highWaterMark: 1 << 20,
      write(chunk: Buffer, _enc, cb) {
        seen.push(chunk.toString());
        release = cb;
      },
    });
    const sink = writableSink(w, 'test');
    let done = false;
    const p = sink.write(Buffer.from('abc')).then(() => { done = true; });
    await new Promise((r) => setTimeout(r, 5));
    expect(seen).toEqual(['abc']);
    expect(done).toBe(false); // queued below the high-water mark, not yet written
    release!();
    await p;
    expect(done).toBe(true);
  });
});

describe('worker buffers come back', () => {
  it('encode leaves stored bytes in the input and output buffers it hands back', async () => {
    const data = Buffer.concat([randomBytes(3 * BS), Buffer.alloc(2 * BS), Buffer.alloc(4 * BS, 'xyz'), Buffer.alloc(BS), randomBytes(100)]);
    const buf = new ArrayBuffer(MAX_RECORD_RAW);
    new Uint8Array(buf).set(data);
    const out = new ArrayBuffer(MAX_RECORD_RAW);
    const res = await pool.encode(buf, data.length, 10, BS, 3, out);
    expect(res.buf.byteLength).toBe(MAX_RECORD_RAW);
    expect(res.out?.byteLength).toBe(MAX_RECORD_RAW);
    const kinds = res.runs.map((r) => (r.zero ? 'zero' : r.in));
    expect(kinds).toEqual(['buf', 'zero', 'out', 'zero', 'buf']);
    for (const r of res.runs) {
      if (r.zero) continue;
      expect(r.stored).toBeUndefined();
      const stored = new Uint8Array(r.in === 'out' ? res.out! : res.buf, r.at, r.len);
      expect(xxh64(stored)).toBe(r.storedHash);
      expect(r.codec).toBe(r.in === 'out' ? Codec.ZSTD : Codec.NONE);
    }
  });

  it('decodeRecycled hands back every buffer, with the data at the start of one', async () => {
    const raw = Buffer.alloc(3 * BS, 'pattern ');
    const hashes = new BigUint64Array([0, 1, 2].map((i) => xxh64(raw.subarray(i * BS, (i + 1) * BS))));
    // A zstd record: compress it with encode.
    const inBuf = new ArrayBuffer(MAX_RECORD_RAW);
    new Uint8Array(inBuf).set(raw);
    const enc = await pool.encode(inBuf, raw.length, 0, BS, 3, new ArrayBuffer(MAX_RECORD_RAW));
    const run = enc.runs[0];
    expect(run.in).toBe('out');
    const rec: { codec: CodecCode; rawLen: number; storedHash: bigint; hashes: BigUint64Array } = { codec: Codec.ZSTD, rawLen: raw.length, storedHash: run.storedHash!, hashes };
    const stored = enc.out!; // the compressed bytes are at its start
    expect(run.at).toBe(0);
    const outBuf = new ArrayBuffer(MAX_RECORD_RAW);
    const r1 = await pool.decodeRecycled(stored, run.len!, rec, BS, true, outBuf);
    expect(r1.ok, r1.error).toBe(true);
    expect(Buffer.from(r1.raw!, 0, raw.length).equals(raw)).toBe(true);
    expect(r1.spare.map((b) => b.byteLength)).toEqual([MAX_RECORD_RAW]);
    // Checked only: both buffers come back as spares.
    const stored2 = r1.spare[0];
    const again = await pool.encode(r1.raw!, raw.length, 0, BS, 3, stored2);
    const r2 = await pool.decodeRecycled(again.out!, again.runs[0].len!, rec, BS, false, again.buf);
    expect(r2.ok, r2.error).toBe(true);
    expect(r2.raw).toBeUndefined();
    expect(r2.spare.length).toBe(2);
    // An uncompressed record: the stored buffer is the data.
    const noneBuf = new ArrayBuffer(MAX_RECORD_RAW);
    new Uint8Array(noneBuf).set(raw);
    const r3 = await pool.decodeRecycled(noneBuf, raw.length, { ...rec, codec: Codec.NONE, storedHash: xxh64(raw) }, BS, true, new ArrayBuffer(MAX_RECORD_RAW));
    expect(r3.ok, r3.error).toBe(true);
    expect(Buffer.from(r3.raw!, 0, raw.length).equals(raw)).toBe(true);
    expect(r3.spare.length).toBe(1);
    // A damaged one: reported, and the buffers still come back.
    const bad = new ArrayBuffer(MAX_RECORD_RAW);
    new Uint8Array(bad).set(raw);
    new Uint8Array(bad)[5] ^= 1;
    const r4 = await pool.decodeRecycled(bad, raw.length, { ...rec, codec: Codec.NONE, storedHash: xxh64(raw) }, BS, true, new ArrayBuffer(MAX_RECORD_RAW));
    expect(r4.ok).toBe(false);
    expect(r4.badBlocks).toEqual([0]);
    expect(r4.spare.length).toBe(2);
  });
});

describe('records decoded in batches (PayloadBatcher, decodeBatch)', () => {
  let data: Buffer;
  let bytes: Buffer;
  beforeAll(async () => {
    data = mixedVolume(24 * 1024 * 1024 + 1234, 11);
    bytes = (await makeArchive(data))!;
    // (makeArchive's map leaves 3 blocks in the middle out: what the archive gives back there is nothing)
    const half = Math.floor(Math.ceil(data.length / BS) / 2);
    data.fill(0, half * BS, (half + 3) * BS);
  });

  /** Read the archive into batches of at most `maxRaw` data bytes; decode each into an output buffer. */
  async function viaBatches(archive: Buffer, maxRaw: number, damage?: (batch: PayloadBatch<DataRecordHead>) => void) {
    const buffers = new RecordBuffers();
    const batcher = new PayloadBatcher<DataRecordHead>(buffers, maxRaw);
    const volume = Buffer.alloc(data.length);
    const failed: { first: number; badBlocks?: number[]; error: string }[] = [];
    let batches = 0;
    let records = 0;
    const run = async (): Promise<void> => {
      for (const b of batcher.takeReady()) {
        batches++;
        expect(b.raw).toBeLessThanOrEqual(maxRaw);
        damage?.(b);
        // (with data: what one output buffer holds; checked only: BATCH_RAW)
        const withData = maxRaw <= MAX_RECORD_RAW;
        const res = await pool.decodeBatch(b.buf, b.items.map((i) => i.rec), BS, withData ? buffers.take() : undefined);
        expect(res.stored.byteLength).toBe(MAX_RECORD_RAW); // the buffers come back
        if (withData) expect(res.out!.byteLength).toBe(MAX_RECORD_RAW);
        const bad = new Set(res.failed.map((f) => f.index));
        for (const f of res.failed) failed.push({ first: b.items[f.index].tag.firstBlock, badBlocks: f.badBlocks, error: f.error });
        b.items.forEach(({ rec, tag }, i) => {
          if (!bad.has(i) && withData) volume.set(new Uint8Array(res.out!, rec.outAt!, tag.rawLen), tag.firstBlock * BS);
        });
      }
    };
    for await (const ev of readArchive(memoryPositional(archive, 3), { file: 'a', payloadBuffer: batcher.slot })) {
      if (ev.type !== 'data') continue;
      records++;
      expect(batcher.add(ev.payload, ev.record, ev.record)).toBe(true);
      await run();
    }
    batcher.flush();
    await run();
    batcher.dispose();
    return { volume, failed, batches, records };
  }

  it('give the volume back, several records to a job', async () => {
    const got = await viaBatches(bytes, MAX_RECORD_RAW);
    expect(got.failed).toEqual([]);
    expect(Buffer.compare(got.volume, data)).toBe(0);
    expect(got.batches).toBeLessThan(got.records);
    // checked only (verify), larger batches
    const checked = await viaBatches(bytes, BATCH_RAW);
    expect(checked.failed).toEqual([]);
    expect(checked.batches).toBeLessThan(got.batches);
  });

  it('give a record of `solo` data bytes or more a batch of its own, and start a new batch when one is full', () => {
    const batcher = new PayloadBatcher<number>(new RecordBuffers(), MAX_RECORD_RAW, 1024 * 1024);
    const put = (storedLen: number, rawLen: number, tag: number): void => {
      const slot = batcher.slot(storedLen, { rawLen })!;
      const p = new Uint8Array(slot.buffer, slot.at, storedLen);
      expect(batcher.add(p, { codec: Codec.ZSTD, rawLen, storedHash: 0n, hashes: new BigUint64Array(0) }, tag)).toBe(true);
    };
    put(100, 448 * 1024, 1);
    put(100, 448 * 1024, 2);
    put(200, 2 * 1024 * 1024, 3); // solo: the two before are a batch, this one another
    put(100, 448 * 1024, 4);
    for (let i = 5; i < 15; i++) put(100, 448 * 1024, i); // 4 MiB of data fill a batch: 4..12, then 13, 14
    batcher.flush();
    const ready = batcher.takeReady();
    expect(ready.map((b) => b.items.map((i) => i.tag))).toEqual([[1, 2], [3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13, 14]]);
    // each record's data goes after the one before it in the batch's output buffer, its payload after the one before
    expect(ready[2].items.map((i) => i.rec.outAt)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8].map((k) => k * 448 * 1024));
    expect(ready[2].items.map((i) => i.rec.at)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8].map((k) => k * 100));
    expect(batcher.takeReady()).toEqual([]);
  });

  it('refuse a batch whose data would not fit the output buffer', () => {
    const rec = { codec: Codec.NONE, rawLen: 3 * 1024 * 1024, storedHash: 0n, hashes: new BigUint64Array(768) };
    expect(() => pool.decodeBatch(new ArrayBuffer(MAX_RECORD_RAW), [{ at: 0, len: 1, record: rec, outAt: 0 }, { at: 1, len: 1, record: rec, outAt: rec.rawLen }], BS, new ArrayBuffer(MAX_RECORD_RAW)))
      .toThrow(/does not fit/);
  });

  it('report a damaged record by its place in the batch, with its bad block; the others decode', async () => {
    let target: DataRecordHead | undefined;
    const got = await viaBatches(bytes, MAX_RECORD_RAW, (b) => {
      if (target || b.items.length < 3) return;
      // the second record of the first batch of three or more: one byte of its payload flipped
      const { rec, tag } = b.items[1];
      target = tag;
      new Uint8Array(b.buf, rec.at + rec.len - 1, 1)[0] ^= 0x40;
    });
    expect(target).toBeDefined();
    expect(got.failed.length).toBe(1);
    expect(got.failed[0].first).toBe(target!.firstBlock);
    expect(got.failed[0].error).toMatch(/checksum/);
    // every other record is intact in the volume
    const from = target!.firstBlock * BS;
    const to = from + target!.rawLen;
    expect(Buffer.compare(got.volume.subarray(0, from), data.subarray(0, from))).toBe(0);
    expect(Buffer.compare(got.volume.subarray(to), data.subarray(to))).toBe(0);
  });
});
