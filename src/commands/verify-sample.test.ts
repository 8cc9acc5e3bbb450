// Sampled verification (verify with samplePercent): structure and links of every archive are checked
// in full, and a random share of the data records is read and hashed. A damaged payload is found
// when its record is drawn and not otherwise; a missing archive is found whatever is drawn.
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArchiveFile } from '../archive/reader.js';
import { FrameType } from '../format/constants.js';
import { send } from './send.js';
import { drawSample, sampleSize, verify } from './verify.js';

const BS = 4096;
let dir: string;
let store: string;
let chainDir: string;
/** the full archive, its data records, and the one whose payload is damaged */
let full: string;
let records: number[];
let damaged: number;

/** 8 MiB of random data with a zero block every 16: 128 data records of 15 blocks. */
function image(): Buffer {
  const b = randomBytes(8 << 20);
  for (let i = 0; i < b.length; i += 16 * BS) b.fill(0, i, i + BS);
  return b;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'verify-sample-'));
  store = join(dir, 'store');
  const img = join(dir, 'a.img');
  await writeFile(img, image());
  await send({ image: img, to: store, blockSize: BS });
  // Two incrementals (one changed block each), so the chain has a middle archive.
  for (const block of [1, 2]) {
    const fh = await open(img, 'r+');
    await fh.write(randomBytes(BS), 0, BS, block * BS);
    await fh.close();
    const xml = join(dir, `changes-${block}.xml`);
    await writeFile(xml, `<superblock uuid="" time="0" transaction="0" data_block_size="${BS / 512}" nr_data_blocks="0">\n  <diff left="0" right="1">\n    <different begin="${block}" length="1"/>\n  </diff>\n</superblock>\n`);
    await send({ image: img, to: store, changes: xml, parent: store });
  }
  chainDir = join(store, (await readdir(store))[0]);
  full = join(chainDir, (await readdir(chainDir)).filter((n) => n.endsWith('.tna')).sort()[0]);
  const af = await ArchiveFile.open(full);
  records = [];
  for (const ix of await af.loadIndexes()) for (const e of await af.indexEntriesAt(ix.offset)) if (e.type === FrameType.DATA) records.push(e.offset);
  // Damage one byte in the middle of the payload of the 40th data record.
  damaged = records[40];
  const f = await af.frameAt(damaged);
  const payloadAt = damaged + f.head.length + f.body.length + f.check.length;
  await af.close();
  const fh = await open(full, 'r+');
  const one = Buffer.alloc(1);
  await fh.read(one, 0, 1, payloadAt + 100);
  one[0] ^= 0xff;
  await fh.write(one, 0, 1, payloadAt + 100);
  await fh.close();
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/**
 * random() for drawSample over `offsets` with k = sampleSize(offsets.length, percent): the first draw
 * is the item `want`, the others the first items left; after those k calls, 0 (other archives).
 */
function picking(want: number, offsets: number[], percent: number): () => number {
  const a = offsets.slice();
  const k = sampleSize(a.length, percent);
  let i = 0;
  return () => {
    if (i >= k) return 0;
    const n = a.length - i;
    const j = i === 0 ? a.indexOf(want) : 0;
    [a[i], a[i + j]] = [a[i + j], a[i]];
    i++;
    return (j + 0.5) / n;
  };
}

describe('verify --sample (stored archives)', () => {
  it('draws k of n without repeats; k is PERCENT of n rounded up, at least one', () => {
    expect(sampleSize(128, 5)).toBe(7);
    expect(sampleSize(3, 1)).toBe(1);
    expect(sampleSize(0, 50)).toBe(0);
    expect(sampleSize(10, 100)).toBe(10);
    const items = Array.from({ length: 50 }, (_, i) => i);
    for (let t = 0; t < 20; t++) {
      const d = drawSample(items, 10);
      expect(new Set(d).size).toBe(10);
      for (const x of d) expect(items).toContain(x);
    }
    expect(drawSample(items, 80).sort((a, b) => a - b)).toEqual(items);
    // random() = 0.9999.. never indexes past the end
    expect(drawSample([1, 2, 3], 3, () => 0.9999999999).sort()).toEqual([1, 2, 3]);
  });

  it('the full check finds the damaged payload; so does a 100% sample', async () => {
    const f = await verify({ inputs: [store] });
    expect(f.mode).toBe('full');
    expect(f.ok).toBe(false);
    expect(f.findings.map((x) => x.offset)).toContain(damaged);
    const s = await verify({ inputs: [store], samplePercent: 100 });
    expect(s).toMatchObject({ ok: false, mode: 'sample', samplePercent: 100 });
    expect(s.recordsChecked).toBe(s.dataRecords);
    expect(s.findings.map((x) => x.offset)).toEqual([damaged]);
    expect(s.findings[0].code).toMatch(/CHECKSUM_MISMATCH|PAYLOAD_CORRUPT/);
  });

  it('a small sample finds it only when its record is drawn, and reads only what it draws', async () => {
    expect(records.length).toBeGreaterThanOrEqual(100);
    // 1% of the full archive's records is 2; the incrementals have one record each (always drawn).
    const hit = await verify({ inputs: [full], samplePercent: 1, random: picking(damaged, records, 1) });
    expect(hit.recordsChecked).toBe(2);
    expect(hit.ok).toBe(false);
    expect(hit.findings.map((x) => x.offset)).toEqual([damaged]);
    const miss = await verify({ inputs: [full], samplePercent: 1, random: picking(records[0], records, 1) });
    expect(miss.ok).toBe(true);
    expect(miss.recordsChecked).toBe(2);
    const whole = await verify({ inputs: [full] });
    expect(miss.bytesRead).toBeLessThan(whole.bytesRead / 20);
  });

  it('a missing middle archive is found whatever is drawn (links are checked in full)', async () => {
    const names = (await readdir(chainDir)).filter((n) => n.endsWith('.tna')).sort();
    expect(names).toHaveLength(3);
    const hidden = join(dir, 'middle.tna');
    await rename(join(chainDir, names[1]), hidden);
    try {
      const s = await verify({ inputs: [store], samplePercent: 1, random: picking(records[0], records, 1) });
      expect(s.findings.map((x) => x.code)).toContain('MISSING_ARCHIVE');
      expect(s.archives).toHaveLength(2);
    } finally {
      await rename(hidden, join(chainDir, names[1]));
    }
  });

  it('refuses a percentage out of range', async () => {
    await expect(verify({ inputs: [store], samplePercent: 0 })).rejects.toThrow(/percentage/);
    await expect(verify({ inputs: [store], samplePercent: 101 })).rejects.toThrow(/percentage/);
  });
});
