/**
 * Holds the map extents of an archive between writing the map and reading the payloads, so the map is
 * computed once (a source may change between two scans; the archive must describe one of them). Kept
 * in memory up to a limit, then spilled to a temporary file: memory stays bounded whatever the number
 * of extents.
 */
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExtentKindCode } from '../format/constants.js';
import type { MapExtent } from '../format/types.js';

const ENTRY = 16;
const CHUNK_ENTRIES = 4096;

export class ExtentSpool {
  private chunk = Buffer.alloc(CHUNK_ENTRIES * ENTRY);
  private inChunk = 0;
  private memory: Buffer[] = [];
  private memoryBytes = 0;
  private file: FileHandle | undefined;
  private dir: string | undefined;
  private fileBytes = 0;
  count = 0;

  constructor(private readonly memoryLimit = 8 << 20) {}

  async add(e: MapExtent): Promise<void> {
    const at = this.inChunk * ENTRY;
    this.chunk.writeDoubleLE(e.firstBlock, at);
    this.chunk.writeUInt32LE(e.blockCount, at + 8);
    this.chunk[at + 12] = e.kind;
    this.inChunk++;
    this.count++;
    if (this.inChunk === CHUNK_ENTRIES) await this.flushChunk();
  }

  private async flushChunk(): Promise<void> {
    if (this.inChunk === 0) return;
    const full = this.chunk.subarray(0, this.inChunk * ENTRY);
    this.chunk = Buffer.alloc(CHUNK_ENTRIES * ENTRY);
    this.inChunk = 0;
    if (!this.file && this.memoryBytes + full.length <= this.memoryLimit) {
      this.memory.push(full);
      this.memoryBytes += full.length;
      return;
    }
    if (!this.file) {
      this.dir = await mkdtemp(join(tmpdir(), 'thinarchive-spool-'));
      this.file = await open(join(this.dir, 'extents'), 'w+');
    }
    await this.file.write(full, 0, full.length, this.fileBytes);
    this.fileBytes += full.length;
  }

  private *decode(b: Buffer): Generator<MapExtent> {
    for (let at = 0; at < b.length; at += ENTRY) {
      yield { firstBlock: b.readDoubleLE(at), blockCount: b.readUInt32LE(at + 8), kind: b[at + 12] as ExtentKindCode };
    }
  }

  /** Every extent added, in order. Call after the last add. */
  async *read(): AsyncGenerator<MapExtent> {
    for (const b of this.memory) yield* this.decode(b);
    if (this.file) {
      const buf = Buffer.alloc(CHUNK_ENTRIES * ENTRY);
      for (let pos = 0; pos < this.fileBytes; pos += buf.length) {
        const { bytesRead } = await this.file.read(buf, 0, Math.min(buf.length, this.fileBytes - pos), pos);
        yield* this.decode(buf.subarray(0, bytesRead));
      }
    }
    yield* this.decode(this.chunk.subarray(0, this.inChunk * ENTRY));
  }

  async close(): Promise<void> {
    await this.file?.close();
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
    this.file = undefined;
    this.dir = undefined;
  }
}
