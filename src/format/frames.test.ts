/**
 * The pure frame codec: every encoder/decoder pair round-trips, and every decoder rejects bad input
 * with the documented FormatError code (and nothing else: no RangeError, no TypeError) before it
 * allocates anything sized by the input.
 */
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { FormatError } from '../errors.js';
import {
  Codec, DATA_BODY_HEAD, END_MAGIC, ExtentKind, FORMAT_MAJOR, FORMAT_MINOR, FRAME_HEAD_SIZE, FrameType, HEADER_FIXED_SIZE,
  INDEX_BODY_HEAD, INDEX_ENTRY_SIZE, MAGIC, MAP_BODY_HEAD, MAP_END_BODY_SIZE, MAP_ENTRY_SIZE, MAX_BLOCK_SIZE,
  MAX_INDEX_ENTRIES, MAX_MAP_ENTRIES_PER_FRAME, MAX_META_BYTES, MAX_RECORD_RAW, MIN_BLOCK_SIZE, PREAMBLE_SIZE, TAIL_SIZE,
  TRAILER_BODY_SIZE, ZERO_BODY_SIZE, MAX_FRAME_BODY,
} from './constants.js';
import {
  bytesToUuid, decodeDataBody, decodeFrameHead, decodeHeaderBody, decodeIndexBody, decodeMapBody, decodeMapEndBody,
  decodePreamble, decodeTail, decodeTrailerBody, decodeZeroBody, encodeDataBody, encodeFrame, encodeHeaderBody,
  encodeIndexBody, encodeMapBody, encodeMapEndBody, encodePreamble, encodeTail, encodeTrailerBody, encodeZeroBody,
  isValidBlockSize, maxBodyLen, uuidToBytes, verifyFrameCheck,
} from './frames.js';
import { initHash } from './hash.js';
import type { ArchiveHeader, DataRecordHead, IndexFrame, MapExtent, Trailer } from './types.js';
import { readArchive } from '../archive/reader.js';

beforeAll(async () => { await initHash(); });

const V = { major: FORMAT_MAJOR, minor: 0 };
const OFF = 1000;
const TWO_53 = 2n ** 53n;

/** Run `fn`; it must throw a FormatError with `code` (and `offset`, when given). */
function rejects(fn: () => unknown, code: string, offset?: number): FormatError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected FormatError ${code}`).toBeInstanceOf(FormatError);
  const fe = err as FormatError;
  expect(fe.code, fe.message).toBe(code);
  if (offset !== undefined) expect(fe.offset).toBe(offset);
  return fe;
}

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function header(over: Partial<ArchiveHeader> = {}): ArchiveHeader {
  return {
    major: FORMAT_MAJOR, minor: 0, full: true, blockSize: 65536, archiveId: '01234567-89ab-cdef-0123-456789abcdef',
    parentId: null, chainId: 'fedcba98-7654-3210-fedc-ba9876543210', sequence: 0, volumeUuid: '11111111-2222-3333-4444-555555555555',
    volumeSize: 10 * 2 ** 30 + 5, createdMs: 1_700_000_000_123, compression: 1, hash: 1, digest: 1, sourceChunkSize: 65536,
    meta: { volume: { name: 'vol', vg: 'vg0', lv: 'lv0' }, tool: 'thinarchive 0.1.0' }, ...over,
  };
}

function dataRecord(over: Partial<DataRecordHead> = {}): DataRecordHead {
  const blockCount = over.blockCount ?? 3;
  const hashes = new BigUint64Array(blockCount);
  for (let i = 0; i < blockCount; i++) hashes[i] = 0x0123456789abcdefn * BigInt(i + 1) & 0xffffffffffffffffn;
  return { firstBlock: 42, blockCount, codec: Codec.ZSTD, rawLen: blockCount * 4096, storedLen: 100, storedHash: 0xfedcba9876543210n, hashes, ...over };
}

function trailer(over: Partial<Trailer> = {}): Trailer {
  return {
    recordCount: 3, dataBlocks: 100, zeroBlocks: 7, rawBytes: 409600, storedBytes: 1234, lastIndexOffset: 98765, indexCount: 1,
    digest: Uint8Array.from({ length: 32 }, (_, i) => i * 7), ...over,
  };
}

// ------------------------------------------------------------------------------------------- helpers

describe('uuid helpers and block sizes', () => {
  it('round-trips UUIDs and rejects malformed ones', () => {
    const b = new Uint8Array(20);
    uuidToBytes('01234567-89AB-cdef-0123-456789abcdef', b, 2);
    expect(bytesToUuid(b, 2)).toBe('01234567-89ab-cdef-0123-456789abcdef');
    for (const bad of ['', 'xyz', '01234567-89ab-cdef-0123-456789abcde', '01234567-89ab-cdef-0123-456789abcdeg']) {
      rejects(() => uuidToBytes(bad, b, 0), 'BAD_UUID');
    }
  });

  it('accepts exactly the powers of two from 4 KiB to 4 MiB', () => {
    for (let s = MIN_BLOCK_SIZE; s <= MAX_BLOCK_SIZE; s *= 2) expect(isValidBlockSize(s)).toBe(true);
    for (const s of [0, -4096, 2048, 4095, 4097, 12288, MAX_BLOCK_SIZE * 2, 4096.5, NaN, Infinity]) expect(isValidBlockSize(s)).toBe(false);
  });
});

// ------------------------------------------------------------------------------------------ preamble

describe('preamble', () => {
  it('round-trips', () => {
    const b = encodePreamble();
    expect(b.length).toBe(PREAMBLE_SIZE);
    expect(Array.from(b.subarray(0, 8))).toEqual(Array.from(MAGIC));
    expect(decodePreamble(b)).toEqual(V);
  });

  it('rejects a bad magic at every byte', () => {
    for (let i = 0; i < MAGIC.length; i++) {
      const b = encodePreamble();
      b[i] ^= 0x20;
      rejects(() => decodePreamble(b), 'NOT_AN_ARCHIVE', 0);
    }
  });

  it('rejects other major versions and accepts any minor version', () => {
    for (const major of [0, 2, 0xffff]) {
      const b = encodePreamble();
      dv(b).setUint16(8, major, true);
      rejects(() => decodePreamble(b), 'UNSUPPORTED_VERSION', 8);
    }
    const b = encodePreamble();
    dv(b).setUint16(10, 7, true);
    expect(decodePreamble(b)).toEqual({ major: FORMAT_MAJOR, minor: 7 });
  });

  it('rejects non-zero reserved bytes', () => {
    for (let i = 12; i < 16; i++) {
      const b = encodePreamble();
      b[i] = 1;
      rejects(() => decodePreamble(b), 'RESERVED_NONZERO', 12);
    }
  });
});

// --------------------------------------------------------------------------------------------- frame

const TYPES = Object.values(FrameType) as number[];

describe('frame head and check', () => {
  it('round-trips every frame type, including empty and maximal bodies', () => {
    for (const type of TYPES) {
      for (const len of [0, 1, 17, maxBodyLen(type)].filter((l) => l <= maxBodyLen(type))) {
        const body = Uint8Array.from({ length: len }, (_, i) => (i * 31 + type) & 0xff);
        const f = encodeFrame(type, body);
        expect(f.length).toBe(FRAME_HEAD_SIZE + len + 8);
        const head = decodeFrameHead(f.subarray(0, 8), OFF);
        expect(head).toEqual({ type, flags: 0, bodyLen: len });
        expect(() => verifyFrameCheck(f.subarray(0, 8), f.subarray(8, 8 + len), f.subarray(8 + len), OFF)).not.toThrow();
      }
    }
  });

  it('bounds every known type and no frame exceeds MAX_FRAME_BODY', () => {
    for (const type of TYPES) {
      expect(maxBodyLen(type)).toBeGreaterThan(0);
      expect(maxBodyLen(type)).toBeLessThanOrEqual(MAX_FRAME_BODY);
    }
    expect(maxBodyLen(FrameType.MAP_END)).toBe(MAP_END_BODY_SIZE);
    expect(maxBodyLen(FrameType.ZERO)).toBe(ZERO_BODY_SIZE);
    expect(maxBodyLen(FrameType.TRAILER)).toBe(TRAILER_BODY_SIZE);
  });

  it('rejects every unknown frame type', () => {
    for (let t = 0; t < 256; t++) {
      if (TYPES.includes(t)) continue;
      const h = new Uint8Array(8);
      h[0] = t;
      rejects(() => decodeFrameHead(h, OFF), 'UNKNOWN_FRAME', OFF);
    }
  });

  it('rejects non-zero flags and reserved bytes', () => {
    for (const i of [1, 2, 3]) {
      for (const v of [1, 0x80, 0xff]) {
        const h = encodeFrame(FrameType.ZERO, new Uint8Array(16)).subarray(0, 8);
        h[i] = v;
        rejects(() => decodeFrameHead(h, OFF), 'RESERVED_NONZERO', OFF);
      }
    }
  });

  it('rejects a body length over the limit of its type, up to 4 GiB', () => {
    for (const type of TYPES) {
      for (const len of [maxBodyLen(type) + 1, MAX_FRAME_BODY + 1, 0x7fffffff, 0xffffffff]) {
        const h = new Uint8Array(8);
        h[0] = type;
        dv(h).setUint32(4, len, true);
        rejects(() => decodeFrameHead(h, OFF), 'FRAME_TOO_LARGE', OFF);
      }
    }
  });

  it('detects a change of any byte of head, body or check', () => {
    const f = encodeFrame(FrameType.MAP_END, encodeMapEndBody({ extentCount: 1, dataBlocks: 2, zeroBlocks: 3, unmapBlocks: 4 }));
    for (let i = 0; i < f.length; i++) {
      for (const x of [0x01, 0x80]) {
        const g = f.slice();
        g[i] ^= x;
        rejects(() => verifyFrameCheck(g.subarray(0, 8), g.subarray(8, 8 + 32), g.subarray(40), OFF), 'FRAME_CHECKSUM', OFF);
      }
    }
  });

  it('stops a stream at a declared 4 GiB frame without reading (or allocating) the body', async () => {
    let pulled = 0;
    async function* endless(): AsyncGenerator<Uint8Array> {
      const head = new Uint8Array(8);
      head[0] = FrameType.HEADER;
      dv(head).setUint32(4, 0xffffffff, true);
      pulled += PREAMBLE_SIZE + 8;
      yield encodePreamble();
      yield head;
      for (;;) {
        pulled += 1 << 16;
        yield new Uint8Array(1 << 16);
      }
    }
    const before = process.memoryUsage();
    let err: unknown;
    try {
      for await (const _ of readArchive(endless())) { /* nothing */ }
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FormatError);
    expect((err as FormatError).code).toBe('FRAME_TOO_LARGE');
    expect((err as FormatError).offset).toBe(PREAMBLE_SIZE);
    expect(pulled).toBe(PREAMBLE_SIZE + 8);
    const after = process.memoryUsage();
    expect(after.arrayBuffers - before.arrayBuffers).toBeLessThan(16 << 20);
  });
});

// -------------------------------------------------------------------------------------------- header

describe('header', () => {
  it('round-trips full and incremental headers with extreme values', () => {
    const cases = [
      header(),
      header({ full: false, parentId: 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee', sequence: 17, blockSize: MIN_BLOCK_SIZE }),
      header({ full: true, parentId: 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee', sequence: 3 }),
      header({ blockSize: MAX_BLOCK_SIZE, sequence: 9_999_999_999, volumeSize: Number.MAX_SAFE_INTEGER, createdMs: 8_640_000_000_000_000, sourceChunkSize: 0xffffffff }),
      header({ volumeSize: 1, meta: { volume: { name: 'ünïcödé ✓ \u0000 "q"' }, tool: 't', extra: { nested: [1, 2, { x: null }] } } }),
    ];
    for (const h of cases) {
      const body = encodeHeaderBody(h);
      expect(decodeHeaderBody(body, OFF, V)).toEqual(h);
    }
    expect(decodeHeaderBody(encodeHeaderBody(header()), OFF, { major: 1, minor: 9 }).minor).toBe(9);
  });

  it('accepts metadata of exactly the limit and refuses to encode more', () => {
    const base = JSON.stringify(header().meta).length;
    const pad = 'x'.repeat(MAX_META_BYTES - base - ',"pad":""'.length);
    const h = header({ meta: { ...header().meta, pad } });
    const body = encodeHeaderBody(h);
    expect(body.length).toBe(HEADER_FIXED_SIZE + MAX_META_BYTES);
    expect(body.length).toBe(maxBodyLen(FrameType.HEADER));
    expect(decodeHeaderBody(body, OFF, V)).toEqual(h);
    rejects(() => encodeHeaderBody(header({ meta: { ...header().meta, pad: `${pad}y` } })), 'META_TOO_LARGE');
  });

  it('refuses to encode invalid headers', () => {
    rejects(() => encodeHeaderBody(header({ blockSize: 1000 })), 'BAD_BLOCK_SIZE');
    rejects(() => encodeHeaderBody(header({ full: false, parentId: null })), 'BAD_HEADER');
    rejects(() => encodeHeaderBody(header({ archiveId: 'nope' })), 'BAD_UUID');
  });

  /** Encode a valid header, let `edit` damage the body, and expect `code`. */
  function bad(edit: (b: Uint8Array, d: DataView) => Uint8Array | void, code: string, offset?: number, h = header()): void {
    const b = encodeHeaderBody(h);
    const out = edit(b, dv(b)) ?? b;
    rejects(() => decodeHeaderBody(out, OFF, V), code, offset);
  }

  it('rejects each invalid field with its code', () => {
    bad((b) => b.subarray(0, HEADER_FIXED_SIZE - 1), 'BAD_HEADER', OFF);
    bad(() => new Uint8Array(0), 'BAD_HEADER', OFF);
    for (const flags of [2, 3, 0x80000000]) bad((_, d) => d.setUint32(0, flags, true), 'BAD_HEADER', OFF);
    for (const bs of [0, 2048, 4095, 12288, 8 << 20, 0xffffffff]) bad((_, d) => d.setUint32(4, bs, true), 'BAD_BLOCK_SIZE', OFF + 4);
    bad((_, d) => d.setUint32(0, 0, true), 'BAD_HEADER', OFF); // incremental, nil parent
    bad((b) => b.fill(0, 8, 24), 'BAD_HEADER', OFF); // nil archive id
    bad((_, d) => d.setBigUint64(56, TWO_53, true), 'FIELD_RANGE', OFF);
    bad((_, d) => d.setBigUint64(80, 0n, true), 'BAD_HEADER', OFF);
    bad((_, d) => d.setBigUint64(80, 0xffffffffffffffffn, true), 'FIELD_RANGE', OFF);
    bad((_, d) => d.setBigUint64(88, TWO_53, true), 'FIELD_RANGE', OFF);
    for (const at of [96, 97, 98]) {
      for (const v of [0, 2, 255]) bad((b) => { b[at] = v; }, 'UNSUPPORTED_ALGORITHM', OFF);
    }
    for (const at of [99, 104, 105, 106, 107]) bad((b) => { b[at] = 1; }, 'RESERVED_NONZERO', OFF);
  });

  it('rejects metadata of the wrong length or that is not the expected JSON', () => {
    bad((_, d) => d.setUint32(108, d.getUint32(108, true) + 1, true), 'BAD_HEADER', OFF);
    bad((_, d) => d.setUint32(108, d.getUint32(108, true) - 1, true), 'BAD_HEADER', OFF);
    bad((_, d) => d.setUint32(108, 0xffffffff, true), 'BAD_HEADER', OFF);
    const withMeta = (text: string | Uint8Array) => (b: Uint8Array): Uint8Array => {
      const m = typeof text === 'string' ? new TextEncoder().encode(text) : text;
      const out = new Uint8Array(HEADER_FIXED_SIZE + m.length);
      out.set(b.subarray(0, HEADER_FIXED_SIZE));
      dv(out).setUint32(108, m.length, true);
      out.set(m, HEADER_FIXED_SIZE);
      return out;
    };
    const M = OFF + HEADER_FIXED_SIZE;
    bad(withMeta(Uint8Array.of(0x7b, 0xff, 0xfe, 0x7d)), 'BAD_HEADER', M); // not UTF-8
    bad(withMeta(''), 'BAD_HEADER', M);
    bad(withMeta('{"volume":'), 'BAD_HEADER', M);
    bad(withMeta('null'), 'BAD_HEADER', M);
    bad(withMeta('[]'), 'BAD_HEADER', M);
    bad(withMeta('"text"'), 'BAD_HEADER', M);
    bad(withMeta('{"tool":"t"}'), 'BAD_HEADER', M);
    bad(withMeta('{"volume":null,"tool":"t"}'), 'BAD_HEADER', M);
    bad(withMeta('{"volume":{"name":1},"tool":"t"}'), 'BAD_HEADER', M);
    bad(withMeta('{"volume":{"name":"v"}}'), 'BAD_HEADER', M);
    bad(withMeta('{"volume":{"name":"v"},"tool":5}'), 'BAD_HEADER', M);
    bad(withMeta(`${'['.repeat(30000)}${']'.repeat(30000)}`), 'BAD_HEADER', M); // deep nesting
    // Unknown keys are fine.
    const ok = withMeta('{"volume":{"name":"v","x":1},"tool":"t","future":{"a":[1]}}')(encodeHeaderBody(header()));
    expect(decodeHeaderBody(ok, OFF, V).meta.future).toEqual({ a: [1] });
  });
});

// ----------------------------------------------------------------------------------------------- map

describe('map', () => {
  const ext = (n: number): MapExtent[] => Array.from({ length: n }, (_, i) => ({
    firstBlock: i === n - 1 ? Number.MAX_SAFE_INTEGER - 10 : i * 1000, blockCount: i % 2 ? 0xffffffff : i + 1, kind: ([1, 2, 3] as const)[i % 3],
  }));

  it('round-trips 1 and 4096 extents', () => {
    for (const n of [1, 2, 3, MAX_MAP_ENTRIES_PER_FRAME]) {
      const e = ext(n);
      const b = encodeMapBody(e);
      expect(b.length).toBe(MAP_BODY_HEAD + n * MAP_ENTRY_SIZE);
      expect(b.length).toBeLessThanOrEqual(maxBodyLen(FrameType.MAP));
      expect(decodeMapBody(b, OFF)).toEqual(e);
    }
  });

  it('refuses to encode 0 or more than 4096 extents', () => {
    expect(() => encodeMapBody([])).toThrow(RangeError);
    expect(() => encodeMapBody(ext(MAX_MAP_ENTRIES_PER_FRAME + 1))).toThrow(RangeError);
  });

  it('rejects bad map frames', () => {
    const good = encodeMapBody(ext(3));
    const bad = (edit: (b: Uint8Array, d: DataView) => Uint8Array | void, code: string, offset?: number): void => {
      const b = good.slice();
      const out = edit(b, dv(b)) ?? b;
      rejects(() => decodeMapBody(out, OFF), code, offset);
    };
    bad(() => new Uint8Array(7), 'BAD_MAP', OFF);
    bad(() => new Uint8Array(0), 'BAD_MAP', OFF);
    for (const at of [4, 5, 6, 7]) bad((b) => { b[at] = 1; }, 'RESERVED_NONZERO', OFF);
    bad((_, d) => d.setUint32(0, 0, true), 'BAD_MAP', OFF);
    bad((_, d) => d.setUint32(0, 2, true), 'BAD_MAP', OFF);
    bad((_, d) => d.setUint32(0, 4, true), 'BAD_MAP', OFF);
    bad((_, d) => d.setUint32(0, 0xffffffff, true), 'BAD_MAP', OFF);
    bad((b) => b.subarray(0, b.length - 1), 'BAD_MAP', OFF);
    bad(() => { // count 4097 with a matching length
      const b = new Uint8Array(MAP_BODY_HEAD + (MAX_MAP_ENTRIES_PER_FRAME + 1) * MAP_ENTRY_SIZE);
      dv(b).setUint32(0, MAX_MAP_ENTRIES_PER_FRAME + 1, true);
      return b;
    }, 'BAD_MAP', OFF);
    const e1 = MAP_BODY_HEAD + MAP_ENTRY_SIZE; // second entry
    for (const k of [0, 4, 0x10, 0xff]) bad((b) => { b[e1 + 12] = k; }, 'BAD_MAP', OFF + e1);
    for (const at of [13, 14, 15]) bad((b) => { b[e1 + at] = 1; }, 'RESERVED_NONZERO', OFF + e1);
    bad((_, d) => d.setUint32(e1 + 8, 0, true), 'BAD_MAP', OFF + e1);
    bad((_, d) => d.setBigUint64(e1, TWO_53, true), 'FIELD_RANGE', OFF + e1);
    bad((_, d) => d.setBigUint64(e1, 0xffffffffffffffffn, true), 'FIELD_RANGE', OFF + e1);
  });

  it('round-trips and checks the map end frame', () => {
    for (const m of [{ extentCount: 0, dataBlocks: 0, zeroBlocks: 0, unmapBlocks: 0 },
      { extentCount: 5, dataBlocks: Number.MAX_SAFE_INTEGER, zeroBlocks: 1, unmapBlocks: 2 ** 40 }]) {
      expect(decodeMapEndBody(encodeMapEndBody(m), OFF)).toEqual(m);
    }
    const b = encodeMapEndBody({ extentCount: 1, dataBlocks: 1, zeroBlocks: 1, unmapBlocks: 1 });
    rejects(() => decodeMapEndBody(b.subarray(0, 31), OFF), 'BAD_MAP', OFF);
    rejects(() => decodeMapEndBody(new Uint8Array(33), OFF), 'BAD_MAP', OFF);
    for (const at of [0, 8, 16, 24]) {
      const c = b.slice();
      dv(c).setBigUint64(at, TWO_53, true);
      rejects(() => decodeMapEndBody(c, OFF), 'FIELD_RANGE', OFF);
    }
  });
});

// ---------------------------------------------------------------------------------------- data, zero

describe('data and zero records', () => {
  it('round-trips data record heads (hashes copied out, aligned)', () => {
    for (const r of [
      dataRecord(),
      dataRecord({ blockCount: 1, codec: Codec.NONE, rawLen: 1000, storedLen: 1000, firstBlock: 0 }),
      dataRecord({ blockCount: MAX_RECORD_RAW / MIN_BLOCK_SIZE, rawLen: MAX_RECORD_RAW, storedLen: MAX_RECORD_RAW, firstBlock: Number.MAX_SAFE_INTEGER }),
    ]) {
      const body = encodeDataBody(r);
      expect(body.length).toBe(DATA_BODY_HEAD + r.blockCount * 8);
      expect(body.length).toBeLessThanOrEqual(maxBodyLen(FrameType.DATA));
      // Decode from an odd offset inside a larger buffer: the hashes must still come out right.
      const big = new Uint8Array(body.length + 3);
      big.set(body, 3);
      const got = decodeDataBody(big.subarray(3), OFF);
      expect(got).toEqual(r);
      expect(got.hashes.buffer).not.toBe(big.buffer);
      big.fill(0);
      expect(got.hashes).toEqual(r.hashes);
    }
  });

  it('rejects bad data record heads', () => {
    const good = encodeDataBody(dataRecord());
    const bad = (edit: (b: Uint8Array, d: DataView) => Uint8Array | void, code: string, offset = OFF): void => {
      const b = good.slice();
      const out = edit(b, dv(b)) ?? b;
      rejects(() => decodeDataBody(out, OFF), code, offset);
    };
    bad(() => new Uint8Array(DATA_BODY_HEAD - 1), 'BAD_RECORD');
    for (const at of [13, 14, 15]) bad((b) => { b[at] = 1; }, 'RESERVED_NONZERO');
    bad((_, d) => d.setUint32(8, 0, true), 'BAD_RECORD');
    bad((_, d) => d.setUint32(8, 2, true), 'BAD_RECORD');
    bad((_, d) => d.setUint32(8, 4, true), 'BAD_RECORD');
    bad((_, d) => d.setUint32(8, 0xffffffff, true), 'BAD_RECORD');
    bad((b) => b.subarray(0, b.length - 8), 'BAD_RECORD');
    for (const codec of [2, 3, 0xff]) bad((b) => { b[12] = codec; }, 'BAD_RECORD');
    bad((_, d) => d.setUint32(16, 0, true), 'BAD_RECORD');
    for (const raw of [MAX_RECORD_RAW + 1, 0x80000000, 0xffffffff]) {
      bad((_, d) => { d.setUint32(16, raw, true); d.setUint32(20, raw, true); }, 'BAD_RECORD');
    }
    bad((_, d) => d.setUint32(20, 0, true), 'BAD_RECORD');
    bad((_, d) => d.setUint32(20, 3 * 4096 + 1, true), 'BAD_RECORD'); // stored > raw
    bad((_, d) => d.setUint32(20, 0xffffffff, true), 'BAD_RECORD');
    bad((b) => { b[12] = Codec.NONE; }, 'BAD_RECORD'); // raw record with stored != raw
    bad((_, d) => d.setBigUint64(0, TWO_53, true), 'FIELD_RANGE');
  });

  it('round-trips and checks zero records', () => {
    for (const z of [{ firstBlock: 0, blockCount: 1 }, { firstBlock: Number.MAX_SAFE_INTEGER, blockCount: 0xffffffff }]) {
      expect(decodeZeroBody(encodeZeroBody(z), OFF)).toEqual(z);
    }
    const good = encodeZeroBody({ firstBlock: 5, blockCount: 6 });
    rejects(() => decodeZeroBody(good.subarray(0, 15), OFF), 'BAD_RECORD', OFF);
    rejects(() => decodeZeroBody(new Uint8Array(17), OFF), 'BAD_RECORD', OFF);
    for (const at of [12, 13, 14, 15]) {
      const b = good.slice();
      b[at] = 1;
      rejects(() => decodeZeroBody(b, OFF), 'RESERVED_NONZERO', OFF);
    }
    const b = good.slice();
    dv(b).setUint32(8, 0, true);
    rejects(() => decodeZeroBody(b, OFF), 'BAD_RECORD', OFF);
    const c = good.slice();
    dv(c).setBigUint64(0, TWO_53, true);
    rejects(() => decodeZeroBody(c, OFF), 'FIELD_RANGE', OFF);
  });
});

// --------------------------------------------------------------------------------------------- index

describe('index', () => {
  const entries = (n: number): IndexFrame['entries'] => Array.from({ length: n }, (_, i) => ({
    offset: 100 + i * 64, firstBlock: i * 10, blockCount: i === 0 ? 0xffffffff : i, type: i % 2 ? FrameType.ZERO : FrameType.DATA,
  }));

  it('round-trips 1 and 1024 entries', () => {
    for (const n of [1, 2, MAX_INDEX_ENTRIES]) {
      const ix: IndexFrame = { prevIndexOffset: n === 1 ? 0 : Number.MAX_SAFE_INTEGER, entries: entries(n) };
      const b = encodeIndexBody(ix);
      expect(b.length).toBe(INDEX_BODY_HEAD + n * INDEX_ENTRY_SIZE);
      expect(b.length).toBeLessThanOrEqual(maxBodyLen(FrameType.INDEX));
      expect(decodeIndexBody(b, OFF)).toEqual(ix);
    }
  });

  it('rejects bad index frames', () => {
    const good = encodeIndexBody({ prevIndexOffset: 77, entries: entries(3) });
    const bad = (edit: (b: Uint8Array, d: DataView) => Uint8Array | void, code: string, offset = OFF): void => {
      const b = good.slice();
      const out = edit(b, dv(b)) ?? b;
      rejects(() => decodeIndexBody(out, OFF), code, offset);
    };
    bad(() => new Uint8Array(INDEX_BODY_HEAD - 1), 'BAD_INDEX');
    for (const at of [12, 13, 14, 15]) bad((b) => { b[at] = 1; }, 'RESERVED_NONZERO');
    bad((_, d) => d.setUint32(8, 0, true), 'BAD_INDEX');
    bad((_, d) => d.setUint32(8, 4, true), 'BAD_INDEX');
    bad((_, d) => d.setUint32(8, 0xffffffff, true), 'BAD_INDEX');
    bad((b) => b.subarray(0, b.length - 1), 'BAD_INDEX');
    bad(() => {
      const b = new Uint8Array(INDEX_BODY_HEAD + (MAX_INDEX_ENTRIES + 1) * INDEX_ENTRY_SIZE);
      dv(b).setUint32(8, MAX_INDEX_ENTRIES + 1, true);
      return b;
    }, 'BAD_INDEX');
    bad((_, d) => d.setBigUint64(0, TWO_53, true), 'FIELD_RANGE');
    const e2 = INDEX_BODY_HEAD + 2 * INDEX_ENTRY_SIZE;
    for (const t of [0, FrameType.HEADER, FrameType.MAP, FrameType.INDEX, FrameType.TRAILER, 0xff]) bad((b) => { b[e2 + 20] = t; }, 'BAD_INDEX', OFF + e2);
    for (const at of [21, 22, 23]) bad((b) => { b[e2 + at] = 1; }, 'RESERVED_NONZERO', OFF + e2);
    bad((_, d) => d.setBigUint64(e2, TWO_53, true), 'FIELD_RANGE', OFF + e2);
    bad((_, d) => d.setBigUint64(e2 + 8, TWO_53, true), 'FIELD_RANGE', OFF + e2);
  });
});

// ------------------------------------------------------------------------------------ trailer, tail

describe('trailer and tail', () => {
  it('round-trips the trailer', () => {
    for (const t of [trailer(), trailer({ recordCount: 0, dataBlocks: 0, zeroBlocks: 0, rawBytes: 0, storedBytes: 0, lastIndexOffset: 0, indexCount: 0 }),
      trailer({ rawBytes: Number.MAX_SAFE_INTEGER, storedBytes: Number.MAX_SAFE_INTEGER, digest: new Uint8Array(32).fill(0xff) })]) {
      expect(decodeTrailerBody(encodeTrailerBody(t), OFF)).toEqual(t);
    }
    expect(() => encodeTrailerBody(trailer({ digest: new Uint8Array(31) }))).toThrow(RangeError);
  });

  it('rejects bad trailers', () => {
    const good = encodeTrailerBody(trailer());
    rejects(() => decodeTrailerBody(good.subarray(0, TRAILER_BODY_SIZE - 1), OFF), 'BAD_TRAILER', OFF);
    rejects(() => decodeTrailerBody(new Uint8Array(TRAILER_BODY_SIZE + 1), OFF), 'BAD_TRAILER', OFF);
    for (let at = 0; at < 56; at += 8) {
      const b = good.slice();
      dv(b).setBigUint64(at, 0xffffffffffffffffn, true);
      rejects(() => decodeTrailerBody(b, OFF), 'FIELD_RANGE', OFF);
    }
  });

  it('round-trips the tail and rejects a missing end marker or an impossible offset', () => {
    for (const at of [0, 123456, Number.MAX_SAFE_INTEGER]) {
      const t = encodeTail(at);
      expect(t.length).toBe(TAIL_SIZE);
      expect(Array.from(t.subarray(8))).toEqual(Array.from(END_MAGIC));
      expect(decodeTail(t, OFF)).toBe(at);
    }
    for (let i = 8; i < 16; i++) {
      const t = encodeTail(5);
      t[i] ^= 0x01;
      rejects(() => decodeTail(t, OFF), 'TRUNCATED', OFF + 8);
    }
    const t = encodeTail(0);
    dv(t).setBigUint64(0, TWO_53, true);
    rejects(() => decodeTail(t, OFF), 'FIELD_RANGE', OFF);
  });
});

// ------------------------------------------------------------------------- arbitrary bytes (property)

describe('decoders on arbitrary bytes', () => {
  const decoders: [string, (b: Uint8Array) => unknown, number | undefined][] = [
    ['preamble', (b) => decodePreamble(b), PREAMBLE_SIZE],
    ['frame head', (b) => decodeFrameHead(b, 0), FRAME_HEAD_SIZE],
    ['tail', (b) => decodeTail(b, 0), TAIL_SIZE],
    ['header', (b) => decodeHeaderBody(b, 0, V), undefined],
    ['map', (b) => decodeMapBody(b, 0), undefined],
    ['map end', (b) => decodeMapEndBody(b, 0), undefined],
    ['data', (b) => decodeDataBody(b, 0), undefined],
    ['zero', (b) => decodeZeroBody(b, 0), undefined],
    ['index', (b) => decodeIndexBody(b, 0), undefined],
    ['trailer', (b) => decodeTrailerBody(b, 0), undefined],
  ];

  for (const [name, decode, size] of decoders) {
    it(`${name}: returns or throws FormatError, nothing else`, () => {
      const bytes = size !== undefined ? fc.uint8Array({ minLength: size, maxLength: size }) : fc.uint8Array({ maxLength: 400 });
      fc.assert(fc.property(bytes, (b) => {
        try {
          decode(b);
        } catch (e) {
          if (!(e instanceof FormatError)) throw e;
        }
      }), { numRuns: 2000 });
    });
  }

  it('single-byte changes of valid bodies: decoders return or throw FormatError', () => {
    const bodies: [(b: Uint8Array) => unknown, Uint8Array][] = [
      [(b) => decodeHeaderBody(b, 0, V), encodeHeaderBody(header({ full: false, parentId: 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee' }))],
      [(b) => decodeMapBody(b, 0), encodeMapBody([{ firstBlock: 1, blockCount: 2, kind: ExtentKind.DATA }, { firstBlock: 9, blockCount: 2, kind: ExtentKind.UNMAP }])],
      [(b) => decodeDataBody(b, 0), encodeDataBody(dataRecord())],
      [(b) => decodeIndexBody(b, 0), encodeIndexBody({ prevIndexOffset: 5, entries: [{ offset: 1, firstBlock: 2, blockCount: 3, type: FrameType.DATA }] })],
      [(b) => decodeTrailerBody(b, 0), encodeTrailerBody(trailer())],
    ];
    for (const [decode, body] of bodies) {
      for (let i = 0; i < body.length; i++) {
        for (const v of [0x00, 0x01, 0x7f, 0x80, 0xff]) {
          const b = body.slice();
          b[i] = v;
          try {
            decode(b);
          } catch (e) {
            if (!(e instanceof FormatError)) throw e;
          }
        }
      }
    }
  });
});
