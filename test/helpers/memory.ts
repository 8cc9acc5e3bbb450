/** In-memory sources and sinks for tests of the archive engine. */
import type { ArchiveSink, VolumeSource } from '../../src/archive/writer.js';
import type { MapExtent } from '../../src/format/types.js';

export class MemorySource implements VolumeSource {
  constructor(readonly data: Uint8Array) {}
  get size(): number {
    return this.data.length;
  }
  async read(buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    const n = Math.max(0, Math.min(length, this.data.length - position));
    buf.set(this.data.subarray(position, position + n), offset);
    return n;
  }
}

export class MemorySink implements ArchiveSink {
  chunks: Uint8Array[] = [];
  async write(chunk: Uint8Array): Promise<void> {
    this.chunks.push(Uint8Array.from(chunk));
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

export async function* listSource<T>(items: T[]): AsyncGenerator<T> {
  for (const i of items) yield i;
}

/** Feed bytes in chunks of `size` (1 = byte at a time). */
export async function* chunked(b: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, Math.min(b.length, i + size));
}

export function extents(...list: [number, number, number][]): MapExtent[] {
  return list.map(([firstBlock, blockCount, kind]) => ({ firstBlock, blockCount, kind: kind as MapExtent['kind'] }));
}
