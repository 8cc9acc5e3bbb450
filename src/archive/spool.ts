/**
 * Append-only spools of fixed-size entries, kept in memory up to a limit and then spilled to a
 * temporary file: memory stays bounded whatever the number of entries.
 *
 * ExtentSpool holds the map extents of an archive between writing the map and reading the payloads,
 * so the map is computed once (a source may change between two scans; the archive must describe one
 * of them). HashSpool holds block hashes in order (apply --verify, src/chain/written.ts).
 */
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExtentKindCode } from '../format/constants.js';
import type { MapExtent } from '../format/types.js';

const CHUNK_BYTES = 64 << 10;

/** Bytes appended, read back in order: memory up to `memoryLimit`, the rest in a temporary file. */
class ByteSpool {
  private chunk = Buffer.alloc(CHUNK_BYTES);
  private inChunk = 0;
  private memory: Buffer[] = [];
  private memoryBytes = 0;
  private file: FileHandle | undefined;
  private dir: string | undefined;
  private fileBytes = 0;

  constructor(private readonly memoryLimit: number) {}

  /** Room for `n` more bytes in the current chunk (n <= CHUNK_BYTES): the buffer and where to write. */
  protected async reserve(n: number): Promise<{ buf: Buffer; at: number }> {
    if (this.inChunk + n > CHUNK_BYTES) await this.flushChunk();
    const at = this.inChunk;
    this.inChunk += n;
    return { buf: this.chunk, at };
  }

  private async flushChunk(): Promise<void> {
    if (this.inChunk === 0) return;
    const full = this.chunk.subarray(0, this.inChunk);
    this.chunk = Buffer.alloc(CHUNK_BYTES);
    this.inChunk = 0;
    if (!this.file && this.memoryBytes + full.length <= this.memoryLimit) {
      this.memory.push(full);
      this.memoryBytes += full.length;
      return;
    }
    if (!this.file) {
      this.dir = await mkdtemp(join(tmpdir(), 'thinarchive-spool-'));
      this.file = await open(join(this.dir, 'spool'), 'w+');
    }
    await this.file.write(full, 0, full.length, this.fileBytes);
    this.fileBytes += full.length;
  }

  /** Every byte appended, in order, in chunks of whole entries. Call after the last append. */
  protected async *chunks(): AsyncGenerator<Buffer> {
    yield* this.memory;
    if (this.file) {
      const buf = Buffer.alloc(CHUNK_BYTES);
      for (let pos = 0; pos < this.fileBytes; pos += buf.length) {
        const { bytesRead } = await this.file.read(buf, 0, Math.min(buf.length, this.fileBytes - pos), pos);
        yield buf.subarray(0, bytesRead);
      }
    }
    yield this.chunk.subarray(0, this.inChunk);
  }

  async close(): Promise<void> {
    await this.file?.close();
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
    this.file = undefined;
    this.dir = undefined;
  }
}

const EXTENT = 16;

export class ExtentSpool extends ByteSpool {
  count = 0;

  constructor(memoryLimit = 8 << 20) {
    super(memoryLimit);
  }

  async add(e: MapExtent): Promise<void> {
    const { buf, at } = await this.reserve(EXTENT);
    buf.writeDoubleLE(e.firstBlock, at);
    buf.writeUInt32LE(e.blockCount, at + 8);
    buf[at + 12] = e.kind;
    this.count++;
  }

  /** Every extent added, in order. Call after the last add. */
  async *read(): AsyncGenerator<MapExtent> {
    for await (const b of this.chunks()) {
      for (let at = 0; at < b.length; at += EXTENT) {
        yield { firstBlock: b.readDoubleLE(at), blockCount: b.readUInt32LE(at + 8), kind: b[at + 12] as ExtentKindCode };
      }
    }
  }
}

/** 64-bit hashes in order; read back as runs of a given length. */
export class HashSpool extends ByteSpool {
  count = 0;
  private reader: AsyncGenerator<Buffer> | undefined;
  private pending: Buffer = Buffer.alloc(0);

  constructor(memoryLimit = 8 << 20) {
    super(memoryLimit);
  }

  async add(hashes: BigUint64Array): Promise<void> {
    for (let i = 0; i < hashes.length;) {
      const n = Math.min(hashes.length - i, CHUNK_BYTES / 8);
      const { buf, at } = await this.reserve(n * 8);
      for (let k = 0; k < n; k++) buf.writeBigUInt64LE(hashes[i + k], at + k * 8);
      i += n;
    }
    this.count += hashes.length;
  }

  /** The next `n` hashes (in the order added). Call after the last add. */
  async take(n: number): Promise<BigUint64Array> {
    this.reader ??= this.chunks();
    const out = new BigUint64Array(n);
    for (let i = 0; i < n; i++) {
      while (this.pending.length < 8) {
        const r = await this.reader.next();
        if (r.done) throw new Error(`hash spool: ${i} of ${n} hashes left`);
        this.pending = r.value;
      }
      out[i] = this.pending.readBigUInt64LE(0);
      this.pending = this.pending.subarray(8);
    }
    return out;
  }
}
