/**
 * Hashing a volume's blocks (sync, docs/SYNC.md): runs of blocks read in large sequential reads and
 * hashed on the worker pool (xxh64 of each block's bytes, the hash archives carry), results delivered
 * in block order. Both sides of a sync use it: the target for every block it has, the source for the
 * blocks it holds data in.
 */
import type { WorkerPool } from '../archive/pool.js';
import { MAX_RECORD_RAW } from '../format/constants.js';
import { blockLength } from '../format/types.js';
import { ThinarchiveError } from '../errors.js';

/** Read access to a volume. */
export interface BlockSource {
  read(buf: Uint8Array, offset: number, length: number, position: number): Promise<number>;
}

export interface HashRunsOptions {
  source: BlockSource;
  /** Runs of blocks to hash, in ascending order. */
  runs: AsyncIterable<{ firstBlock: number; blockCount: number }>;
  blockSize: number;
  volumeSize: number;
  /** Bytes the source really has; bytes past it (up to volumeSize) hash as zeroes without reading. Default volumeSize. */
  readable?: number;
  pool: WorkerPool;
  signal?: AbortSignal;
  /** The hashes of `count` consecutive blocks from `firstBlock` (and which are all zeroes), in block order. */
  onHashes: (firstBlock: number, hashes: BigUint64Array, zero: Uint8Array) => Promise<void> | void;
}

export interface HashTotals {
  blocksHashed: number;
  bytesRead: number;
}

/**
 * Hash the blocks of `runs`: each read once, a few jobs of up to 4 MiB in flight, their reads as well as
 * their hashing (positional reads of one handle: a source of scattered runs keeps several reads queued,
 * where one at a time would wait out each read's latency).
 */
export async function hashRuns(o: HashRunsOptions): Promise<HashTotals> {
  const bs = o.blockSize;
  const readable = Math.min(o.readable ?? o.volumeSize, o.volumeSize);
  const perJob = Math.max(1, Math.floor(MAX_RECORD_RAW / bs));
  const totals: HashTotals = { blocksHashed: 0, bytesRead: 0 };
  const free: ArrayBuffer[] = [];
  type Hashed = Awaited<ReturnType<WorkerPool['hash']>>;
  type Job = { first: number; count: number; p: Promise<Hashed> };
  const inflight: Job[] = [];
  const window = o.pool.size + 2;
  const finish = async (): Promise<void> => {
    const j = inflight.shift()!;
    const r = await j.p;
    free.push(r.buf);
    await o.onHashes(j.first, new BigUint64Array(r.hashes, 0, j.count), new Uint8Array(r.zeroMask, 0, j.count));
  };
  const readAndHash = async (buf: ArrayBuffer, first: number, count: number): Promise<Hashed> => {
    const pos = first * bs;
    const end = Math.min((first + count) * bs, o.volumeSize);
    const len = end - pos;
    const view = new Uint8Array(buf, 0, len);
    const toRead = Math.max(0, Math.min(end, readable) - pos);
    let got = 0;
    while (got < toRead) {
      const k = await o.source.read(view, got, toRead - got, pos + got);
      if (k === 0) throw new ThinarchiveError('TARGET_SHORT', `the volume ends at byte ${pos + got}, before byte ${pos + toRead}`);
      got += k;
    }
    if (toRead < len) view.fill(0, Math.max(0, toRead));
    totals.bytesRead += toRead;
    totals.blocksHashed += count;
    return o.pool.hash(buf, len, bs);
  };
  try {
    for await (const run of o.runs) {
      for (let b = run.firstBlock; b < run.firstBlock + run.blockCount; b += perJob) {
        o.signal?.throwIfAborted();
        const count = Math.min(perJob, run.firstBlock + run.blockCount - b);
        const p = readAndHash(free.pop() ?? new ArrayBuffer(perJob * bs), b, count);
        p.catch(() => undefined); // (awaited in order by finish; a failure is not unhandled meanwhile)
        inflight.push({ first: b, count, p });
        if (inflight.length >= window) await finish();
      }
    }
    while (inflight.length > 0) await finish();
  } finally {
    await Promise.allSettled(inflight.map((j) => j.p));
  }
  return totals;
}

/** xxh64 of a block of zeroes of each length that occurs in a volume (B, and the last block's). */
export async function zeroHashes(pool: WorkerPool, volumeSize: number, blockSize: number): Promise<(block: number) => bigint> {
  const blocks = Math.ceil(volumeSize / blockSize);
  const lastLen = blockLength(blocks - 1, volumeSize, blockSize);
  const of = async (len: number): Promise<bigint> => new BigUint64Array((await pool.hash(new ArrayBuffer(len), len, len)).hashes)[0];
  const full = await of(blockSize);
  const last = lastLen === blockSize ? full : await of(lastLen);
  return (block) => (block === blocks - 1 ? last : full);
}
