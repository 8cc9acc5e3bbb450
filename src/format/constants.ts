/** Archive format v1 constants. docs/FORMAT.md is normative; every number here is named there. */

/** First 8 bytes of every archive: 0x89 'T' 'N' 'A' '\r' '\n' 0x1a '\n' (PNG-style: catches text-mode mangling). */
export const MAGIC = Uint8Array.of(0x89, 0x54, 0x4e, 0x41, 0x0d, 0x0a, 0x1a, 0x0a);
/** Last 8 bytes of every complete archive: 0x89 'T' 'N' 'A' 'E' 'N' 'D' '\n'. */
export const END_MAGIC = Uint8Array.of(0x89, 0x54, 0x4e, 0x41, 0x45, 0x4e, 0x44, 0x0a);

export const FORMAT_MAJOR = 1;
/** The highest minor version this code writes and knows: 1.1 adds `meta.group` (consistency groups). */
export const FORMAT_MINOR = 1;
/** The minor an archive is written with: 1 when its header carries `meta.group`, else 0 (readable by every 1.x reader either way). */
export function minorFor(meta: object): number {
  return (meta as { group?: unknown }).group !== undefined ? 1 : 0;
}

export const PREAMBLE_SIZE = 16;
export const FRAME_HEAD_SIZE = 8;
export const FRAME_CHECK_SIZE = 8;
export const FRAME_OVERHEAD = FRAME_HEAD_SIZE + FRAME_CHECK_SIZE;
export const TAIL_SIZE = 16;

export const FrameType = {
  HEADER: 0x01,
  MAP: 0x02,
  MAP_END: 0x03,
  DATA: 0x10,
  ZERO: 0x11,
  INDEX: 0x20,
  TRAILER: 0x7f,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];

export const ExtentKind = {
  DATA: 1,
  ZERO: 2,
  UNMAP: 3,
} as const;
export type ExtentKindCode = (typeof ExtentKind)[keyof typeof ExtentKind];

export const Codec = { NONE: 0, ZSTD: 1 } as const;
export type CodecCode = (typeof Codec)[keyof typeof Codec];

export const HeaderFlag = { FULL: 1 } as const;

export const CompressionAlg = { ZSTD: 1 } as const;
export const HashAlg = { XXH64: 1 } as const;
export const DigestAlg = { SHA256: 1 } as const;

/** Largest body any frame may declare (readers reject larger before allocating). */
export const MAX_FRAME_BODY = 1 << 20;
export const MAX_META_BYTES = 60 * 1024;
export const MAX_MAP_ENTRIES_PER_FRAME = 4096;
export const MAX_INDEX_ENTRIES = 1024;
/** Largest uncompressed payload of one DATA record. */
export const MAX_RECORD_RAW = 4 * 1024 * 1024;
export const MIN_BLOCK_SIZE = 4096;
export const MAX_BLOCK_SIZE = MAX_RECORD_RAW;
/** Extent and record block counts are u32. */
export const MAX_EXTENT_BLOCKS = 0xffffffff;

export const HEADER_FIXED_SIZE = 112;
export const MAP_ENTRY_SIZE = 16;
export const MAP_BODY_HEAD = 8;
export const MAP_END_BODY_SIZE = 32;
export const DATA_BODY_HEAD = 32;
export const ZERO_BODY_SIZE = 16;
export const INDEX_BODY_HEAD = 16;
export const INDEX_ENTRY_SIZE = 24;
export const TRAILER_BODY_SIZE = 88;
export const DIGEST_SIZE = 32;

export const ARCHIVE_EXTENSION = '.tna';
/** What an encrypted archive's name adds (an age v1 file, FORMAT.md §3.4). */
export const ENCRYPTED_SUFFIX = '.age';
