import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExtentKind } from '../format/constants.js';
import type { ArchiveHeader } from '../format/types.js';
import { chunked, extents, listSource, MemorySink, MemorySource } from '../../test/helpers/memory.js';
import { WorkerPool } from './pool.js';
import { readArchive } from './reader.js';
import { writeArchive, type NewArchive } from './writer.js';

let pool: WorkerPool;
beforeAll(() => { pool = new WorkerPool(2); });
afterAll(async () => { await pool.close(); });

const BS = 4096;

function newHeader(volumeSize: number, over: Partial<NewArchive> = {}): NewArchive {
  return {
    full: true, blockSize: BS, parentId: null, chainId: randomUUID(), sequence: 0, volumeUuid: randomUUID(),
    volumeSize, sourceChunkSize: BS, meta: { volume: { name: 'test' }, tool: 'thinarchive test' }, ...over,
  };
}

/** Rebuild the volume an archive describes, checking every payload through the worker pool. */
async function replay(bytes: Uint8Array, feed = 1 << 16): Promise<{ header: ArchiveHeader; image: Buffer; events: string[] }> {
  let header: ArchiveHeader | undefined;
  let image = Buffer.alloc(0);
  const events: string[] = [];
  for await (const ev of readArchive(chunked(bytes, feed))) {
    events.push(ev.type);
    if (ev.type === 'header') {
      header = ev.header;
      image = Buffer.alloc(ev.header.volumeSize, 0xee);
    } else if (ev.type === 'map') {
      for (const e of ev.extents) if (e.kind !== ExtentKind.DATA) image.fill(0, e.firstBlock * BS, Math.min(image.length, (e.firstBlock + e.blockCount) * BS));
    } else if (ev.type === 'data') {
      const p = ev.payload;
      const res = await pool.decode(p.buffer.slice(p.byteOffset, p.byteOffset + p.length) as ArrayBuffer, ev.record, BS, true);
      expect(res.ok, res.error).toBe(true);
      Buffer.from(res.raw!).copy(image, ev.record.firstBlock * BS);
    } else if (ev.type === 'zero') {
      image.fill(0, ev.record.firstBlock * BS, Math.min(image.length, (ev.record.firstBlock + ev.record.blockCount) * BS));
    }
  }
  return { header: header!, image, events };
}

describe('archive round trip', () => {
  it('writes and reads a full archive with data, zero and unmapped regions', async () => {
    const size = 64 * BS + 123; // partial last block
    const data = Buffer.alloc(size);
    randomBytes(10 * BS).copy(data, 0);
    Buffer.alloc(5 * BS, 'abc').copy(data, 20 * BS);
    randomBytes(size - 63 * BS).copy(data, 63 * BS);
    const sink = new MemorySink();
    const res = await writeArchive({
      header: newHeader(size), pool, sink, source: new MemorySource(data),
      extents: listSource(extents([0, 30, ExtentKind.DATA], [60, 5, ExtentKind.DATA])),
    });
    expect(res.mapEnd).toEqual({ extentCount: 3, dataBlocks: 35, zeroBlocks: 0, unmapBlocks: 30 });
    expect(res.trailer.dataBlocks).toBe(10 + 5 + 2); // random, text, the last full and the partial block
    expect(res.trailer.zeroBlocks).toBe(35 - 17);
    const bytes = sink.bytes();
    expect(res.bytesWritten).toBe(bytes.length);
    const out = await replay(bytes);
    expect(out.image.equals(data)).toBe(true);
    const out1 = await replay(bytes, 1);
    expect(out1.image.equals(data)).toBe(true);
    expect(out1.events).toEqual(out.events);
  });

  it('covers a large extent with bounded records and periodic index frames', async () => {
    const size = 3000 * BS;
    const data = randomBytes(size);
    const sink = new MemorySink();
    const res = await writeArchive({ header: newHeader(size), pool, sink, source: new MemorySource(data), extents: listSource(extents([0, 3000, ExtentKind.DATA])) });
    expect(res.trailer.recordCount).toBe(3); // 1024 blocks of 4 KiB per 4 MiB record
    const out = await replay(sink.bytes());
    expect(out.image.equals(data)).toBe(true);
  });

  it('keeps several reads in flight only from a source that allows it (a ChainReader reads forward, one at a time)', async () => {
    const size = 5000 * BS; // 5 jobs of 4 MiB
    const data = randomBytes(size);
    class Counting extends MemorySource {
      now = 0;
      most = 0;
      constructor(d: Uint8Array, readonly concurrentReads: boolean) {
        super(d);
      }
      override async read(buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
        this.most = Math.max(this.most, ++this.now);
        await new Promise((r) => setTimeout(r, 5));
        this.now--;
        return super.read(buf, offset, length, position);
      }
    }
    for (const [concurrent, most] of [[false, 1], [true, 3]] as const) {
      const source = new Counting(data, concurrent);
      const sink = new MemorySink();
      await writeArchive({ header: newHeader(size), pool, sink, source, extents: listSource(extents([0, 5000, ExtentKind.DATA])) });
      expect({ concurrent, most: source.most }).toEqual({ concurrent, most });
      expect((await replay(sink.bytes())).image.equals(data)).toBe(true);
    }
  });
});
