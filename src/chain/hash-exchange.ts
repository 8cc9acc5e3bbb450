/**
 * The hash exchange (docs/SYNC.md): the side that holds a target writes a hello line (who it is, its
 * recorded state), the xxh64 of its blocks in block order (8 bytes each, little-endian), and a
 * hashed line; the other side reads them. `sync` uses it to find the blocks to send; `verify --against
 * TARGET --host ssh://…` (a remote replica) to compare the replica with the chain without moving its
 * data. A sampled exchange hashes only the blocks `sampledBlocks(seed, percent)` selects, which both
 * sides compute alike.
 */
import { randomUUID } from 'node:crypto';
import type { WorkerPool } from '../archive/pool.js';
import type { ArchiveSink } from '../archive/writer.js';
import { ThinarchiveError } from '../errors.js';
import { volumeBlocks } from '../format/types.js';
import type { TargetKind, TargetState } from '../target/state.js';
import { hashRuns, zeroHashes, type BlockSource, type HashTotals } from './block-hashes.js';

/** The protocol's name and version, in the target's first line (docs/SYNC.md). */
export const SYNC_PROTOCOL = 'thinarchive-sync';
export const SYNC_VERSION = 1;
/** A protocol line is at most this long. */
const MAX_LINE = 1 << 16;

/** The target's first line. */
export interface SyncHello {
  protocol: typeof SYNC_PROTOCOL;
  version: number;
  /** This hashing session: the resync archive's parent_id must be it. */
  nonce: string;
  target: string;
  targetKind: TargetKind;
  /** The target's size in bytes (an image is resized to the volume size by the apply). */
  targetSize: number;
  blockSize: number;
  volumeSize: number;
  blocks: number;
  /** The target's recorded state before the sync (it is replaced by the resync archive's). */
  state: { status: string; archiveId: string; sequence: number; chainId: string } | null;
  /** An LV made by `send VG/LV`: the archive its tags name (verify only; absent otherwise). */
  snapshotArchive?: string | null;
  /** A sampled exchange (verify only): the seed and percentage of the blocks hashed. */
  sample?: { seed: number; percent: number };
}

/** The target's line after the hashes. */
export interface SyncHashed {
  hashedBlocks: number;
  /** Bytes read from the target (holes of a sparse image are not read). */
  bytesRead: number;
  seconds: number;
}

/** The hello line's `state` from a target's recorded state. */
export function helloState(s: TargetState | null): SyncHello['state'] {
  return s ? { status: s.status, archiveId: s.archiveId, sequence: s.sequence, chainId: s.chainId } : null;
}

/** A new hello for a target of `blocks` blocks. */
export function newHello(o: Omit<SyncHello, 'protocol' | 'version' | 'nonce' | 'blocks'>): SyncHello {
  return { protocol: SYNC_PROTOCOL, version: SYNC_VERSION, nonce: randomUUID(), ...o, blocks: volumeBlocks(o.volumeSize, o.blockSize) };
}

/** Check the other side's hello against what was asked; SYNC_PROTOCOL when it does not fit. */
export function checkHello(hello: SyncHello, blockSize: number, volumeSize: number): void {
  if (hello.protocol !== SYNC_PROTOCOL || hello.version !== SYNC_VERSION) {
    throw new ThinarchiveError('SYNC_PROTOCOL', `the target side speaks ${String(hello.protocol)} version ${String(hello.version)}, this side ${SYNC_PROTOCOL} ${SYNC_VERSION}: install the same thinarchive on both hosts`);
  }
  const blocks = volumeBlocks(volumeSize, blockSize);
  if (hello.blockSize !== blockSize || hello.volumeSize !== volumeSize || hello.blocks !== blocks || typeof hello.nonce !== 'string') {
    throw new ThinarchiveError('SYNC_PROTOCOL', `the target side answered for block size ${hello.blockSize}, volume size ${hello.volumeSize}, ${hello.blocks} blocks; asked for ${blockSize}, ${volumeSize}, ${blocks}`);
  }
}

export function parseLine<T>(line: string, what: string): T {
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new ThinarchiveError('SYNC_PROTOCOL', `${what}: expected a JSON line, got ${JSON.stringify(line.slice(0, 200))}`);
  }
}

/**
 * Which blocks a sampled exchange hashes: block b is in when a 32-bit mix of (seed, b) falls below
 * percent% of 2^32. Stateless, so both sides agree whatever order they go in; different seeds pick
 * different blocks, so repeated samples cover the volume.
 */
export function sampledBlocks(seed: number, percent: number): (block: number) => boolean {
  if (percent >= 100) return () => true;
  const limit = Math.floor((percent / 100) * 0x100000000);
  return (block) => {
    let h = (seed ^ Math.imul(block >>> 0, 0x9e3779b1) ^ Math.imul(Math.floor(block / 0x100000000), 0x85ebca77)) >>> 0;
    h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
    h = (h ^ (h >>> 16)) >>> 0;
    return h < limit;
  };
}

/** Reads lines and exact byte counts from a stream of chunks. */
export class ByteReader {
  private buf: Uint8Array = new Uint8Array(0);
  private done = false;
  private readonly it: AsyncIterator<Uint8Array>;
  constructor(src: AsyncIterable<Uint8Array>, private readonly what: string) {
    this.it = src[Symbol.asyncIterator]();
  }

  private async more(): Promise<boolean> {
    if (this.done) return false;
    const r = await this.it.next();
    if (r.done) {
      this.done = true;
      return false;
    }
    const b = new Uint8Array(this.buf.length + r.value.length);
    b.set(this.buf);
    b.set(r.value, this.buf.length);
    this.buf = b;
    return true;
  }

  async line(): Promise<string> {
    for (;;) {
      const i = this.buf.indexOf(10);
      if (i >= 0) {
        const s = Buffer.from(this.buf.subarray(0, i)).toString('utf8');
        this.buf = this.buf.subarray(i + 1);
        return s;
      }
      if (this.buf.length > MAX_LINE) throw new ThinarchiveError('SYNC_PROTOCOL', `${this.what}: a protocol line longer than ${MAX_LINE} bytes`);
      if (!(await this.more())) throw new ThinarchiveError('SYNC_PROTOCOL', `${this.what} ended in the middle of the hash exchange`);
    }
  }

  /** Exactly `n` bytes (n small enough to hold). */
  async exact(n: number): Promise<Uint8Array> {
    while (this.buf.length < n) {
      if (!(await this.more())) throw new ThinarchiveError('SYNC_PROTOCOL', `${this.what} ended in the middle of the hash exchange`);
    }
    const out = this.buf.slice(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** The hashes of the next `n` blocks. */
  async hashes(n: number): Promise<BigUint64Array> {
    const bytes = await this.exact(n * 8);
    return new BigUint64Array(bytes.buffer, bytes.byteOffset, n);
  }

  /** Everything left. */
  async rest(): Promise<string> {
    while (await this.more());
    return Buffer.from(this.buf).toString('utf8');
  }

  async cancel(): Promise<void> {
    await this.it.return?.();
  }
}

export interface WriteHashesOptions {
  source: BlockSource & { allocated?: (blockSize: number) => AsyncIterable<{ firstBlock: number; blockCount: number }> };
  /** The source's size: blocks past it (up to volumeSize) hash as zeroes without reading. */
  sourceSize: number;
  blockSize: number;
  volumeSize: number;
  /** Only these blocks (a sample); default every block. */
  select?: (block: number) => boolean;
  pool: WorkerPool;
  out: ArchiveSink;
  signal?: AbortSignal;
}

/**
 * Write the xxh64 of every (selected) block of the volume to `out`, in block order, in chunks. Only
 * the source's allocated blocks are read (a sparse image's holes hash as zeroes), each once.
 */
export async function writeHashes(o: WriteHashesOptions): Promise<HashTotals> {
  const bs = o.blockSize;
  const blocks = volumeBlocks(o.volumeSize, bs);
  const readable = Math.min(o.sourceSize, o.volumeSize);
  const zeroOf = await zeroHashes(o.pool, o.volumeSize, bs);
  const sel = o.select ?? (() => true);
  const outBuf = new BigUint64Array(8192);
  let n = 0;
  let next = 0;
  const flush = async (): Promise<void> => {
    if (n === 0) return;
    await o.out.write(new Uint8Array(outBuf.buffer, 0, n * 8).slice());
    n = 0;
  };
  const push = async (b: number, h: bigint): Promise<void> => {
    if (!sel(b)) return;
    outBuf[n++] = h;
    if (n === outBuf.length) await flush();
  };
  const zeroUntil = async (end: number): Promise<void> => {
    for (; next < end; next++) await push(next, zeroOf(next));
  };
  const readableBlocks = volumeBlocks(readable, bs);
  const all = o.source.allocated ? clampRuns(o.source.allocated(bs), readableBlocks) : wholeRuns(readableBlocks);
  const runs = o.select ? selectedRuns(all, o.select) : all;
  const totals = await hashRuns({
    source: o.source, runs, blockSize: bs, volumeSize: o.volumeSize, readable, pool: o.pool, signal: o.signal,
    onHashes: async (first, hashes) => {
      await zeroUntil(first);
      for (let i = 0; i < hashes.length; i++) await push(first + i, hashes[i]);
      next = first + hashes.length;
    },
  });
  await zeroUntil(blocks);
  await flush();
  return totals;
}

/** Every block of a volume of `blocks` blocks, as one run. */
export async function* wholeRuns(blocks: number): AsyncGenerator<{ firstBlock: number; blockCount: number }> {
  if (blocks > 0) yield { firstBlock: 0, blockCount: blocks };
}

async function* clampRuns(runs: AsyncIterable<{ firstBlock: number; blockCount: number }>, blocks: number): AsyncGenerator<{ firstBlock: number; blockCount: number }> {
  for await (const r of runs) {
    const end = Math.min(r.firstBlock + r.blockCount, blocks);
    if (r.firstBlock >= end) continue;
    yield { firstBlock: r.firstBlock, blockCount: end - r.firstBlock };
  }
}

/** The selected blocks of `runs`, as runs of consecutive selected blocks. */
export async function* selectedRuns(runs: AsyncIterable<{ firstBlock: number; blockCount: number }>, sel: (block: number) => boolean): AsyncGenerator<{ firstBlock: number; blockCount: number }> {
  for await (const r of runs) {
    let start = -1;
    for (let b = r.firstBlock; b < r.firstBlock + r.blockCount; b++) {
      if (sel(b)) {
        if (start < 0) start = b;
      } else if (start >= 0) {
        yield { firstBlock: start, blockCount: b - start };
        start = -1;
      }
    }
    if (start >= 0) yield { firstBlock: start, blockCount: r.firstBlock + r.blockCount - start };
  }
}
