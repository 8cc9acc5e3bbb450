import type { CodecCode, ExtentKindCode } from './constants.js';

/** Identity of a snapshot as recorded in the header metadata (all fields optional: "where known"). */
export interface SnapshotIdentity {
  name?: string;
  uuid?: string;
  thinId?: number;
  createdAt?: string;
}

/** The JSON metadata object of the header. Readers ignore keys they do not know. */
export interface ArchiveMeta {
  volume: { name: string; vg?: string; lv?: string; lvUuid?: string };
  base?: SnapshotIdentity;
  snapshot?: SnapshotIdentity;
  source?: { kind: string; path?: string; host?: string };
  tool: string;
  [key: string]: unknown;
}

export interface ArchiveHeader {
  major: number;
  minor: number;
  full: boolean;
  blockSize: number;
  archiveId: string;
  /** null for an archive that starts a chain. */
  parentId: string | null;
  chainId: string;
  sequence: number;
  volumeUuid: string;
  volumeSize: number;
  createdMs: number;
  compression: number;
  hash: number;
  digest: number;
  sourceChunkSize: number;
  meta: ArchiveMeta;
}

export interface MapExtent {
  firstBlock: number;
  blockCount: number;
  kind: ExtentKindCode;
}

export interface MapEnd {
  extentCount: number;
  dataBlocks: number;
  zeroBlocks: number;
  unmapBlocks: number;
}

export interface DataRecordHead {
  firstBlock: number;
  blockCount: number;
  codec: CodecCode;
  rawLen: number;
  storedLen: number;
  /** xxh64 of the stored payload bytes (as written: compressed or raw). */
  storedHash: bigint;
  /** xxh64 of each block's uncompressed bytes. */
  hashes: BigUint64Array;
}

export interface ZeroRecord {
  firstBlock: number;
  blockCount: number;
}

export interface IndexEntry {
  offset: number;
  firstBlock: number;
  blockCount: number;
  type: number;
}

export interface IndexFrame {
  prevIndexOffset: number;
  entries: IndexEntry[];
}

export interface Trailer {
  recordCount: number;
  dataBlocks: number;
  zeroBlocks: number;
  rawBytes: number;
  storedBytes: number;
  lastIndexOffset: number;
  indexCount: number;
  digest: Uint8Array;
}

/** Number of blocks of a volume: the last one may be partial. */
export function volumeBlocks(volumeSize: number, blockSize: number): number {
  return Math.ceil(volumeSize / blockSize);
}

/** Length in bytes of block `index` of a volume (the last block may be shorter). */
export function blockLength(index: number, volumeSize: number, blockSize: number): number {
  return Math.min(blockSize, volumeSize - index * blockSize);
}

/** Bytes covered by `count` blocks starting at `first` (accounts for a partial last block). */
export function rangeBytes(first: number, count: number, volumeSize: number, blockSize: number): number {
  return Math.min((first + count) * blockSize, volumeSize) - first * blockSize;
}
