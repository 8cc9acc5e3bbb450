/**
 * Pure encoders and decoders for every structure of archive format v1 (docs/FORMAT.md).
 * No I/O, no compression. All integers are little-endian. Decoders validate everything they read and
 * throw FormatError with a stable code and the archive offset of the problem.
 */
import { FormatError } from '../errors.js';
import {
  Codec, CompressionAlg, DATA_BODY_HEAD, DIGEST_SIZE, DigestAlg, END_MAGIC, ExtentKind, FORMAT_MAJOR, FORMAT_MINOR,
  FRAME_CHECK_SIZE, FRAME_HEAD_SIZE, FrameType, HEADER_FIXED_SIZE, HashAlg, HeaderFlag, INDEX_BODY_HEAD,
  INDEX_ENTRY_SIZE, MAGIC, MAP_BODY_HEAD, MAP_END_BODY_SIZE, MAP_ENTRY_SIZE, MAX_BLOCK_SIZE, MAX_EXTENT_BLOCKS,
  MAX_INDEX_ENTRIES, MAX_MAP_ENTRIES_PER_FRAME, MAX_META_BYTES, MAX_RECORD_RAW, MIN_BLOCK_SIZE, PREAMBLE_SIZE,
  TAIL_SIZE, TRAILER_BODY_SIZE, ZERO_BODY_SIZE, type CodecCode, type ExtentKindCode,
} from './constants.js';
import { xxh64Parts } from './hash.js';
import { groupMetaProblem } from './group.js';
import type {
  ArchiveHeader, ArchiveMeta, DataRecordHead, IndexEntry, IndexFrame, MapEnd, MapExtent, Trailer, ZeroRecord,
} from './types.js';

// ---------------------------------------------------------------------------------------------- helpers

const NIL_UUID = '00000000-0000-0000-0000-000000000000';

export function uuidToBytes(uuid: string, out: Uint8Array, at: number): void {
  const hex = uuid.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new FormatError('BAD_UUID', `not a UUID: ${JSON.stringify(uuid)}`);
  for (let i = 0; i < 16; i++) out[at + i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
}

export function bytesToUuid(b: Uint8Array, at: number): string {
  let hex = '';
  for (let i = 0; i < 16; i++) hex += b[at + i].toString(16).padStart(2, '0');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** Read a u64 that must fit a JS number (all offsets, sizes and block indices do, up to 8 PiB). */
function u64(dv: DataView, at: number, what: string, offset: number): number {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError('FIELD_RANGE', `${what} out of range: ${v}`, offset);
  return Number(v);
}

function setU64(dv: DataView, at: number, v: number): void {
  dv.setBigUint64(at, BigInt(v), true);
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

export function isValidBlockSize(n: number): boolean {
  return Number.isInteger(n) && isPowerOfTwo(n) && n >= MIN_BLOCK_SIZE && n <= MAX_BLOCK_SIZE;
}

function requireZero(b: Uint8Array, from: number, to: number, what: string, offset: number): void {
  for (let i = from; i < to; i++) {
    if (b[i] !== 0) throw new FormatError('RESERVED_NONZERO', `reserved bytes of ${what} are not zero`, offset);
  }
}

// --------------------------------------------------------------------------------------------- preamble

export function encodePreamble(minor = 0): Uint8Array {
  const b = new Uint8Array(PREAMBLE_SIZE);
  b.set(MAGIC, 0);
  const dv = view(b);
  dv.setUint16(8, FORMAT_MAJOR, true);
  if (!Number.isInteger(minor) || minor < 0 || minor > FORMAT_MINOR) throw new RangeError(`minor version ${minor}`);
  dv.setUint16(10, minor, true);
  return b;
}

export function decodePreamble(b: Uint8Array): { major: number; minor: number } {
  for (let i = 0; i < MAGIC.length; i++) {
    if (b[i] !== MAGIC[i]) throw new FormatError('NOT_AN_ARCHIVE', 'not a thinarchive archive (bad magic)', 0);
  }
  const dv = view(b);
  const major = dv.getUint16(8, true);
  const minor = dv.getUint16(10, true);
  if (major !== FORMAT_MAJOR) {
    throw new FormatError('UNSUPPORTED_VERSION', `archive format version ${major}.${minor} is not supported (this reader: ${FORMAT_MAJOR}.x)`, 8);
  }
  requireZero(b, 12, 16, 'preamble', 12);
  return { major, minor };
}

// ------------------------------------------------------------------------------------------------ frame

export interface FrameHead {
  type: number;
  flags: number;
  bodyLen: number;
}

/** Largest body each frame type may declare; checked before anything is allocated. */
export function maxBodyLen(type: number): number {
  switch (type) {
    case FrameType.HEADER: return HEADER_FIXED_SIZE + MAX_META_BYTES;
    case FrameType.MAP: return MAP_BODY_HEAD + MAX_MAP_ENTRIES_PER_FRAME * MAP_ENTRY_SIZE;
    case FrameType.MAP_END: return MAP_END_BODY_SIZE;
    case FrameType.DATA: return DATA_BODY_HEAD + (MAX_RECORD_RAW / MIN_BLOCK_SIZE) * 8;
    case FrameType.ZERO: return ZERO_BODY_SIZE;
    case FrameType.INDEX: return INDEX_BODY_HEAD + MAX_INDEX_ENTRIES * INDEX_ENTRY_SIZE;
    case FrameType.TRAILER: return TRAILER_BODY_SIZE;
    default: return -1;
  }
}

export function decodeFrameHead(b: Uint8Array, offset: number): FrameHead {
  const dv = view(b);
  const type = b[0];
  const flags = b[1];
  const bodyLen = dv.getUint32(4, true);
  const max = maxBodyLen(type);
  if (max < 0) throw new FormatError('UNKNOWN_FRAME', `unknown frame type 0x${type.toString(16).padStart(2, '0')}`, offset);
  if (flags !== 0 || dv.getUint16(2, true) !== 0) throw new FormatError('RESERVED_NONZERO', 'frame flags/reserved bytes are not zero', offset);
  if (bodyLen > max) throw new FormatError('FRAME_TOO_LARGE', `frame body length ${bodyLen} exceeds the limit ${max} for its type`, offset);
  return { type, flags, bodyLen };
}

/** Encode a frame: head, body and check (xxh64 of head and body). */
export function encodeFrame(type: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(FRAME_HEAD_SIZE + body.length + FRAME_CHECK_SIZE);
  out[0] = type;
  const dv = view(out);
  dv.setUint32(4, body.length, true);
  out.set(body, FRAME_HEAD_SIZE);
  dv.setBigUint64(FRAME_HEAD_SIZE + body.length, xxh64Parts(out.subarray(0, FRAME_HEAD_SIZE + body.length)), true);
  return out;
}

export function verifyFrameCheck(head: Uint8Array, body: Uint8Array, check: Uint8Array, offset: number): void {
  const want = view(check).getBigUint64(0, true);
  if (xxh64Parts(head, body) !== want) throw new FormatError('FRAME_CHECKSUM', 'frame checksum mismatch', offset);
}

// ----------------------------------------------------------------------------------------------- header

/** The largest sequence number: store file names hold it in 10 digits. */
export const MAX_SEQUENCE = 9_999_999_999;

export function encodeHeaderBody(h: ArchiveHeader): Uint8Array {
  if (!isValidBlockSize(h.blockSize)) throw new FormatError('BAD_BLOCK_SIZE', `invalid block size ${h.blockSize}`);
  if (!h.full && h.parentId === null) throw new FormatError('BAD_HEADER', 'an incremental archive needs a parent');
  const meta = new TextEncoder().encode(JSON.stringify(h.meta));
  if (meta.length > MAX_META_BYTES) throw new FormatError('META_TOO_LARGE', `header metadata is ${meta.length} bytes (limit ${MAX_META_BYTES})`);
  const b = new Uint8Array(HEADER_FIXED_SIZE + meta.length);
  const dv = view(b);
  dv.setUint32(0, h.full ? HeaderFlag.FULL : 0, true);
  dv.setUint32(4, h.blockSize, true);
  uuidToBytes(h.archiveId, b, 8);
  uuidToBytes(h.parentId ?? NIL_UUID, b, 24);
  uuidToBytes(h.chainId, b, 40);
  setU64(dv, 56, h.sequence);
  uuidToBytes(h.volumeUuid, b, 64);
  setU64(dv, 80, h.volumeSize);
  setU64(dv, 88, h.createdMs);
  b[96] = h.compression;
  b[97] = h.hash;
  b[98] = h.digest;
  dv.setUint32(100, h.sourceChunkSize, true);
  dv.setUint32(108, meta.length, true);
  b.set(meta, HEADER_FIXED_SIZE);
  return b;
}

export function decodeHeaderBody(b: Uint8Array, offset: number, version: { major: number; minor: number }): ArchiveHeader {
  if (b.length < HEADER_FIXED_SIZE) throw new FormatError('BAD_HEADER', 'header frame is too short', offset);
  const dv = view(b);
  const flags = dv.getUint32(0, true);
  if ((flags & ~HeaderFlag.FULL) !== 0) throw new FormatError('BAD_HEADER', `unknown header flags 0x${flags.toString(16)}`, offset);
  const blockSize = dv.getUint32(4, true);
  if (!isValidBlockSize(blockSize)) throw new FormatError('BAD_BLOCK_SIZE', `invalid block size ${blockSize}`, offset + 4);
  const parent = bytesToUuid(b, 24);
  const full = (flags & HeaderFlag.FULL) !== 0;
  const parentId = parent === NIL_UUID ? null : parent;
  if (!full && parentId === null) throw new FormatError('BAD_HEADER', 'incremental archive without a parent id', offset);
  const archiveId = bytesToUuid(b, 8);
  if (archiveId === NIL_UUID) throw new FormatError('BAD_HEADER', 'archive id is all zero', offset);
  const sequence = u64(dv, 56, 'sequence', offset);
  // Store file names hold the sequence in 10 digits (docs/FORMAT.md 3.2); only a full archive has sequence 0.
  if (sequence > MAX_SEQUENCE) throw new FormatError('FIELD_RANGE', `sequence out of range: ${sequence} (at most ${MAX_SEQUENCE})`, offset + 56);
  if (!full && sequence === 0) throw new FormatError('FIELD_RANGE', 'an incremental archive with sequence 0', offset + 56);
  const volumeSize = u64(dv, 80, 'volume size', offset);
  // A JavaScript Date holds at most 8.64e15 ms after 1970: anything later is no creation time.
  const createdMs = u64(dv, 88, 'creation time', offset);
  if (createdMs > 8_640_000_000_000_000) throw new FormatError('FIELD_RANGE', `creation time out of range: ${createdMs}`, offset + 88);
  if (volumeSize === 0) throw new FormatError('BAD_HEADER', 'volume size is zero', offset);
  if (b[96] !== CompressionAlg.ZSTD) throw new FormatError('UNSUPPORTED_ALGORITHM', `unknown compression algorithm ${b[96]}`, offset);
  if (b[97] !== HashAlg.XXH64) throw new FormatError('UNSUPPORTED_ALGORITHM', `unknown hash algorithm ${b[97]}`, offset);
  if (b[98] !== DigestAlg.SHA256) throw new FormatError('UNSUPPORTED_ALGORITHM', `unknown digest algorithm ${b[98]}`, offset);
  requireZero(b, 99, 100, 'header', offset);
  requireZero(b, 104, 108, 'header', offset);
  const metaLen = dv.getUint32(108, true);
  if (HEADER_FIXED_SIZE + metaLen !== b.length) throw new FormatError('BAD_HEADER', 'header metadata length does not match the frame', offset);
  let meta: ArchiveMeta;
  try {
    meta = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(b.subarray(HEADER_FIXED_SIZE)));
  } catch {
    throw new FormatError('BAD_HEADER', 'header metadata is not valid UTF-8 JSON', offset + HEADER_FIXED_SIZE);
  }
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta) || typeof meta.volume !== 'object' || meta.volume === null
    || typeof meta.volume.name !== 'string' || typeof meta.tool !== 'string') {
    throw new FormatError('BAD_HEADER', 'header metadata lacks volume.name or tool', offset + HEADER_FIXED_SIZE);
  }
  if (meta.group !== undefined) {
    const why = groupMetaProblem(meta.group, archiveId);
    if (why !== null) throw new FormatError('BAD_HEADER', `header metadata: group ${why}`, offset + HEADER_FIXED_SIZE);
  }
  return {
    major: version.major,
    minor: version.minor,
    full,
    blockSize,
    archiveId,
    parentId,
    chainId: bytesToUuid(b, 40),
    sequence,
    volumeUuid: bytesToUuid(b, 64),
    volumeSize,
    createdMs,
    compression: b[96],
    hash: b[97],
    digest: b[98],
    sourceChunkSize: dv.getUint32(100, true),
    meta,
  };
}

// -------------------------------------------------------------------------------------------------- map

export function encodeMapBody(extents: readonly MapExtent[]): Uint8Array {
  if (extents.length === 0 || extents.length > MAX_MAP_ENTRIES_PER_FRAME) throw new RangeError('map frame holds 1..4096 extents');
  const b = new Uint8Array(MAP_BODY_HEAD + extents.length * MAP_ENTRY_SIZE);
  const dv = view(b);
  dv.setUint32(0, extents.length, true);
  let at = MAP_BODY_HEAD;
  for (const e of extents) {
    setU64(dv, at, e.firstBlock);
    dv.setUint32(at + 8, e.blockCount, true);
    b[at + 12] = e.kind;
    at += MAP_ENTRY_SIZE;
  }
  return b;
}

function isExtentKind(k: number): k is ExtentKindCode {
  return k === ExtentKind.DATA || k === ExtentKind.ZERO || k === ExtentKind.UNMAP;
}

export function decodeMapBody(b: Uint8Array, offset: number): MapExtent[] {
  const dv = view(b);
  if (b.length < MAP_BODY_HEAD) throw new FormatError('BAD_MAP', 'map frame is too short', offset);
  const count = dv.getUint32(0, true);
  requireZero(b, 4, 8, 'map frame', offset);
  if (count === 0 || count > MAX_MAP_ENTRIES_PER_FRAME || b.length !== MAP_BODY_HEAD + count * MAP_ENTRY_SIZE) {
    throw new FormatError('BAD_MAP', `map frame entry count ${count} does not match its length`, offset);
  }
  const out: MapExtent[] = new Array(count);
  for (let i = 0, at = MAP_BODY_HEAD; i < count; i++, at += MAP_ENTRY_SIZE) {
    const kind = b[at + 12];
    if (!isExtentKind(kind)) throw new FormatError('BAD_MAP', `unknown extent kind ${kind}`, offset + at);
    requireZero(b, at + 13, at + 16, 'map entry', offset + at);
    const blockCount = dv.getUint32(at + 8, true);
    if (blockCount === 0) throw new FormatError('BAD_MAP', 'empty extent in map', offset + at);
    out[i] = { firstBlock: u64(dv, at, 'extent start', offset + at), blockCount, kind };
  }
  return out;
}

export function encodeMapEndBody(m: MapEnd): Uint8Array {
  const b = new Uint8Array(MAP_END_BODY_SIZE);
  const dv = view(b);
  setU64(dv, 0, m.extentCount);
  setU64(dv, 8, m.dataBlocks);
  setU64(dv, 16, m.zeroBlocks);
  setU64(dv, 24, m.unmapBlocks);
  return b;
}

export function decodeMapEndBody(b: Uint8Array, offset: number): MapEnd {
  if (b.length !== MAP_END_BODY_SIZE) throw new FormatError('BAD_MAP', 'map end frame has the wrong length', offset);
  const dv = view(b);
  return {
    extentCount: u64(dv, 0, 'extent count', offset),
    dataBlocks: u64(dv, 8, 'data blocks', offset),
    zeroBlocks: u64(dv, 16, 'zero blocks', offset),
    unmapBlocks: u64(dv, 24, 'unmap blocks', offset),
  };
}

// ------------------------------------------------------------------------------------------ data / zero

export function encodeDataBody(r: DataRecordHead): Uint8Array {
  const b = new Uint8Array(DATA_BODY_HEAD + r.blockCount * 8);
  const dv = view(b);
  setU64(dv, 0, r.firstBlock);
  dv.setUint32(8, r.blockCount, true);
  b[12] = r.codec;
  dv.setUint32(16, r.rawLen, true);
  dv.setUint32(20, r.storedLen, true);
  dv.setBigUint64(24, r.storedHash, true);
  b.set(new Uint8Array(r.hashes.buffer, r.hashes.byteOffset, r.blockCount * 8), DATA_BODY_HEAD);
  return b;
}

export function decodeDataBody(b: Uint8Array, offset: number): DataRecordHead {
  if (b.length < DATA_BODY_HEAD) throw new FormatError('BAD_RECORD', 'data frame is too short', offset);
  const dv = view(b);
  const blockCount = dv.getUint32(8, true);
  const codec = b[12];
  const rawLen = dv.getUint32(16, true);
  const storedLen = dv.getUint32(20, true);
  requireZero(b, 13, 16, 'data frame', offset);
  if (blockCount === 0 || b.length !== DATA_BODY_HEAD + blockCount * 8) {
    throw new FormatError('BAD_RECORD', `data frame block count ${blockCount} does not match its length`, offset);
  }
  if (codec !== Codec.NONE && codec !== Codec.ZSTD) throw new FormatError('BAD_RECORD', `unknown payload codec ${codec}`, offset);
  if (rawLen === 0 || rawLen > MAX_RECORD_RAW) throw new FormatError('BAD_RECORD', `payload length ${rawLen} out of range`, offset);
  if (storedLen > rawLen || (codec === Codec.NONE && storedLen !== rawLen) || storedLen === 0) {
    throw new FormatError('BAD_RECORD', `stored payload length ${storedLen} invalid for raw length ${rawLen}`, offset);
  }
  // Copy the hashes out so they are 8-byte aligned and independent of the read buffer.
  const hashes = new BigUint64Array(blockCount);
  new Uint8Array(hashes.buffer).set(b.subarray(DATA_BODY_HEAD));
  return {
    firstBlock: u64(dv, 0, 'record start', offset), blockCount, codec: codec as CodecCode, rawLen, storedLen,
    storedHash: dv.getBigUint64(24, true), hashes,
  };
}

export function encodeZeroBody(z: ZeroRecord): Uint8Array {
  const b = new Uint8Array(ZERO_BODY_SIZE);
  const dv = view(b);
  setU64(dv, 0, z.firstBlock);
  dv.setUint32(8, z.blockCount, true);
  return b;
}

export function decodeZeroBody(b: Uint8Array, offset: number): ZeroRecord {
  if (b.length !== ZERO_BODY_SIZE) throw new FormatError('BAD_RECORD', 'zero frame has the wrong length', offset);
  const dv = view(b);
  requireZero(b, 12, 16, 'zero frame', offset);
  const blockCount = dv.getUint32(8, true);
  if (blockCount === 0) throw new FormatError('BAD_RECORD', 'zero frame covers no blocks', offset);
  return { firstBlock: u64(dv, 0, 'record start', offset), blockCount };
}

// ------------------------------------------------------------------------------------------------ index

export function encodeIndexBody(ix: IndexFrame): Uint8Array {
  const b = new Uint8Array(INDEX_BODY_HEAD + ix.entries.length * INDEX_ENTRY_SIZE);
  const dv = view(b);
  setU64(dv, 0, ix.prevIndexOffset);
  dv.setUint32(8, ix.entries.length, true);
  let at = INDEX_BODY_HEAD;
  for (const e of ix.entries) {
    setU64(dv, at, e.offset);
    setU64(dv, at + 8, e.firstBlock);
    dv.setUint32(at + 16, e.blockCount, true);
    b[at + 20] = e.type;
    at += INDEX_ENTRY_SIZE;
  }
  return b;
}

export function decodeIndexBody(b: Uint8Array, offset: number): IndexFrame {
  if (b.length < INDEX_BODY_HEAD) throw new FormatError('BAD_INDEX', 'index frame is too short', offset);
  const dv = view(b);
  const count = dv.getUint32(8, true);
  requireZero(b, 12, 16, 'index frame', offset);
  if (count === 0 || count > MAX_INDEX_ENTRIES || b.length !== INDEX_BODY_HEAD + count * INDEX_ENTRY_SIZE) {
    throw new FormatError('BAD_INDEX', `index frame entry count ${count} does not match its length`, offset);
  }
  const entries: IndexEntry[] = new Array(count);
  for (let i = 0, at = INDEX_BODY_HEAD; i < count; i++, at += INDEX_ENTRY_SIZE) {
    const type = b[at + 20];
    if (type !== FrameType.DATA && type !== FrameType.ZERO) throw new FormatError('BAD_INDEX', `index entry of frame type ${type}`, offset + at);
    requireZero(b, at + 21, at + 24, 'index entry', offset + at);
    entries[i] = {
      offset: u64(dv, at, 'record offset', offset + at),
      firstBlock: u64(dv, at + 8, 'record start', offset + at),
      blockCount: dv.getUint32(at + 16, true),
      type,
    };
  }
  return { prevIndexOffset: u64(dv, 0, 'previous index offset', offset), entries };
}

// ---------------------------------------------------------------------------------------------- trailer

export function encodeTrailerBody(t: Trailer): Uint8Array {
  const b = new Uint8Array(TRAILER_BODY_SIZE);
  const dv = view(b);
  setU64(dv, 0, t.recordCount);
  setU64(dv, 8, t.dataBlocks);
  setU64(dv, 16, t.zeroBlocks);
  setU64(dv, 24, t.rawBytes);
  setU64(dv, 32, t.storedBytes);
  setU64(dv, 40, t.lastIndexOffset);
  setU64(dv, 48, t.indexCount);
  if (t.digest.length !== DIGEST_SIZE) throw new RangeError('digest must be 32 bytes');
  b.set(t.digest, 56);
  return b;
}

export function decodeTrailerBody(b: Uint8Array, offset: number): Trailer {
  if (b.length !== TRAILER_BODY_SIZE) throw new FormatError('BAD_TRAILER', 'trailer frame has the wrong length', offset);
  const dv = view(b);
  return {
    recordCount: u64(dv, 0, 'record count', offset),
    dataBlocks: u64(dv, 8, 'data blocks', offset),
    zeroBlocks: u64(dv, 16, 'zero blocks', offset),
    rawBytes: u64(dv, 24, 'raw bytes', offset),
    storedBytes: u64(dv, 32, 'stored bytes', offset),
    lastIndexOffset: u64(dv, 40, 'last index offset', offset),
    indexCount: u64(dv, 48, 'index count', offset),
    digest: b.slice(56, 56 + DIGEST_SIZE),
  };
}

// ------------------------------------------------------------------------------------------------- tail

export function encodeTail(trailerOffset: number): Uint8Array {
  const b = new Uint8Array(TAIL_SIZE);
  setU64(view(b), 0, trailerOffset);
  b.set(END_MAGIC, 8);
  return b;
}

export function decodeTail(b: Uint8Array, offset: number): number {
  for (let i = 0; i < END_MAGIC.length; i++) {
    if (b[8 + i] !== END_MAGIC[i]) throw new FormatError('TRUNCATED', 'archive is truncated (no end marker)', offset + 8);
  }
  return u64(view(b), 0, 'trailer offset', offset);
}

export { MAX_EXTENT_BLOCKS };
