import { createReadStream, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { FormatError, ThinarchiveError, UsageError } from '../errors.js';
import { type MappedRange, type OpenThinDumpOptions, openThinDump } from './thin-dump.js';

const FIXTURES = fileURLToPath(new URL('../../fixtures/lvm/', import.meta.url));
const fixture = (name: string): string => readFileSync(FIXTURES + name, 'utf8');

async function* chunked(text: string, size = Infinity, bytes = false): AsyncGenerator<string | Uint8Array> {
  const data = bytes ? new TextEncoder().encode(text) : text;
  for (let i = 0; i < data.length; i += Math.min(size, data.length)) yield data.slice(i, i + Math.min(size, data.length));
}

async function collect(text: string, opts?: OpenThinDumpOptions, size = Infinity, bytes = false): Promise<MappedRange[]> {
  const dump = await openThinDump(chunked(text, size, bytes), opts);
  const out: MappedRange[] = [];
  for await (const r of dump.ranges) out.push(r);
  return out;
}

async function failure(text: string, opts?: OpenThinDumpOptions): Promise<ThinarchiveError> {
  try {
    await collect(text, opts);
  } catch (e) {
    expect(e).toBeInstanceOf(ThinarchiveError);
    return e as ThinarchiveError;
  }
  throw new Error('accepted');
}

const r = (begin: number, length: number): MappedRange => ({ begin, length });
// What the lab wrote (fixtures/lvm/README.md), by hand, not from the parser:
const SNAP1 = [r(0, 4), r(100, 1), r(1000, 10)];
const SNAP2 = [r(0, 4), r(100, 1), r(1005, 5), r(2000, 4)];

describe('openThinDump on real thin_dump 0.9.0 output', () => {
  it('dump-snap2.xml: header and the mapped ranges in origin order', async () => {
    const dump = await openThinDump(createReadStream(FIXTURES + 'dump-snap2.xml'), { devId: 3 });
    expect(dump.header).toEqual({
      dataBlockSizeSectors: 128, blockSizeBytes: 65536, transaction: 3, time: 2, flags: 0,
      devId: 3, mappedBlocks: 14, deviceTransaction: 2, creationTime: 2, snapTime: 2,
    });
    const out: MappedRange[] = [];
    for await (const x of dump.ranges) out.push(x);
    expect(out).toEqual(SNAP2);
    expect(dump.blocksSeen()).toBe(14); // = mapped_blocks
  });

  it('dump-snap1.xml, with and without devId', async () => {
    expect(await collect(fixture('dump-snap1.xml'))).toEqual(SNAP1);
    expect(await collect(fixture('dump-snap1.xml'), { devId: 2 })).toEqual(SNAP1);
  });

  it('every chunking gives the same ranges (one character, one byte, 7 bytes)', async () => {
    const text = fixture('dump-snap2.xml');
    expect(await collect(text, {}, 1)).toEqual(SNAP2);
    expect(await collect(text, {}, 1, true)).toEqual(SNAP2);
    expect(await collect(text, {}, 7, true)).toEqual(SNAP2);
  });

  it('dump-all.xml: picks the device asked for, skips the others', async () => {
    expect(await collect(fixture('dump-all.xml'), { devId: 2 })).toEqual(SNAP1);
    expect(await collect(fixture('dump-all.xml'), { devId: 3 })).toEqual(SNAP2);
    expect(await collect(fixture('dump-all.xml'), { devId: 1 })).toEqual(SNAP2); // vol == snap2
    const e = await failure(fixture('dump-all.xml'));
    expect(e.code).toBe('DUMP_ELEMENT');
    expect(e.message).toMatch(/a second <device dev_id="2">: pass the dev id/);
  });

  it('dump-unknown-dev.xml (exit 0, empty superblock) and an absent id: THIN_DEVICE_NOT_FOUND', async () => {
    for (const [text, opts] of [[fixture('dump-unknown-dev.xml'), { devId: 77 }], [fixture('dump-all.xml'), { devId: 9 }]] as const) {
      const e = await openThinDump(chunked(text), opts).then(() => null, (err: unknown) => err);
      expect(e).toBeInstanceOf(ThinarchiveError);
      expect(e).not.toBeInstanceOf(FormatError);
      expect((e as ThinarchiveError).code).toBe('THIN_DEVICE_NOT_FOUND');
      expect((e as Error).message).toMatch(`thin device ${opts.devId} is not in the metadata`);
    }
  });

  it('volumeBlocks clamps and drops ranges past the end of a shrunk volume', async () => {
    expect(await collect(fixture('dump-snap2.xml'), { volumeBlocks: 1008 })).toEqual([r(0, 4), r(100, 1), r(1005, 3)]);
    expect(await collect(fixture('dump-snap2.xml'), { volumeBlocks: 100 })).toEqual([r(0, 4)]);
    expect(await collect(fixture('dump-snap2.xml'), { volumeBlocks: 0 })).toEqual([]);
  });
});

describe('openThinDump on 1.x output (HAND-WRITTEN from src/thin/xml.rs and src/thin/dump.rs)', () => {
  it('v1-dump-snap2.xml: no flags, no trailing newline', async () => {
    const dump = await openThinDump(chunked(fixture('v1-dump-snap2.xml')), { devId: 3 });
    expect(dump.header.flags).toBeUndefined();
    const out: MappedRange[] = [];
    for await (const x of dump.ranges) out.push(x);
    expect(out).toEqual(SNAP2);
  });

  it('v1-dump-shared.xml: <ref> expands to the <def>\'s mappings, in place', async () => {
    const text = fixture('v1-dump-shared.xml');
    expect(await collect(text, { devId: 1 })).toEqual(SNAP2);
    expect(await collect(text, { devId: 2 })).toEqual(SNAP1);
    expect(await collect(text, { devId: 3 }, 3)).toEqual(SNAP2);
  });

  it('v1-dump-unknown-dev.xml: THIN_DEVICE_NOT_FOUND', async () => {
    const e = await failure(fixture('v1-dump-unknown-dev.xml'), { devId: 77 });
    expect(e.code).toBe('THIN_DEVICE_NOT_FOUND');
  });

  it('coalesces across a ref and the mappings next to it', async () => {
    const doc = `<superblock uuid="" time="1" transaction="1" version="2" data_block_size="128" nr_data_blocks="100">
  <def name="7">
    <range_mapping origin_begin="0" data_begin="50" length="4" time="0"/>
  </def>
  <device dev_id="1" mapped_blocks="7" transaction="0" creation_time="0" snap_time="0">
    <ref name="7"/>
    <range_mapping origin_begin="4" data_begin="10" length="2" time="0"/>
    <single_mapping origin_block="6" data_block="90" time="1"/>
  </device>
</superblock>`;
    expect(await collect(doc)).toEqual([r(0, 7)]);
  });
});

describe('openThinDump refuses what it cannot trust', () => {
  const sb = (inner: string, attrs = 'data_block_size="128"'): string => `<superblock uuid="" ${attrs}>\n${inner}\n</superblock>\n`;
  const dev = (inner: string, id = 1): string => sb(`<device dev_id="${id}" mapped_blocks="1">${inner}</device>`);

  it('truncated output', async () => {
    const text = fixture('dump-snap2.xml');
    for (const cut of [0, 10, text.indexOf('<range_mapping'), text.indexOf('</device>'), text.length - 3]) {
      const e = await failure(text.slice(0, cut));
      expect(['DUMP_TRUNCATED', 'THIN_DEVICE_NOT_FOUND']).toContain(e.code);
      if (cut > text.indexOf('<device')) expect(e.code).toBe('DUMP_TRUNCATED');
    }
  });

  it('unsorted or overlapping mappings', async () => {
    let e = await failure(dev('<single_mapping origin_block="5" data_block="1" time="0"/><single_mapping origin_block="4" data_block="2" time="0"/>'));
    expect(e.code).toBe('DUMP_UNSORTED');
    e = await failure(dev('<range_mapping origin_begin="0" data_begin="1" length="5" time="0"/><single_mapping origin_block="4" data_block="2" time="0"/>'));
    expect(e.code).toBe('DUMP_UNSORTED');
  });

  it('bad elements and attributes', async () => {
    const cases: [string, string, RegExp][] = [
      [sb('', ''), 'DUMP_HEADER', /no data_block_size/],
      [sb('', 'data_block_size="0"'), 'DUMP_HEADER', /bad data_block_size/],
      [sb('<device mapped_blocks="1"></device>'), 'DUMP_ELEMENT', /no dev_id/],
      [dev('<single_mapping origin_block="1" data_block="1" time="0" extra="1"/>'), 'DUMP_ELEMENT', /unexpected attribute extra=/],
      [dev('<single_mapping data_block="1" time="0"/>'), 'DUMP_BAD_RANGE', /no origin_block=/],
      [dev('<range_mapping origin_begin="1" data_begin="1" time="0"/>'), 'DUMP_BAD_RANGE', /no length=/],
      [dev('<range_mapping origin_begin="1" data_begin="1" length="0" time="0"/>'), 'DUMP_BAD_RANGE', /empty run/],
      [dev('<range_mapping origin_begin="9007199254740990" data_begin="1" length="5" time="0"/>'), 'DUMP_BAD_RANGE', /out of range/],
      [dev('<single_mapping origin_block="-1" data_block="1" time="0"/>'), 'DUMP_ELEMENT', /bad <single_mapping origin_block/],
      [dev('<mapping/>'), 'DUMP_ELEMENT', /unexpected element <mapping>/],
      [dev('<single_mapping origin_block="1" data_block="1" time="0"><x/></single_mapping>'), 'DUMP_ELEMENT', /inside a mapping/],
      [dev('<ref name="9"/>'), 'DUMP_REF', /names no earlier <def>/],
      [sb('<def><single_mapping origin_block="1" data_block="1" time="0"/></def>'), 'DUMP_ELEMENT', /<def> has no name/],
      [sb('<def name="1"></def><def name="1"></def>'), 'DUMP_ELEMENT', /defined twice/],
      [sb('<diff left="1" right="2"></diff>'), 'DUMP_ELEMENT', /unexpected element <diff>/],
      [`${sb('')}<superblock data_block_size="1"></superblock>`, 'DUMP_ELEMENT', /unexpected element <superblock> at top level/],
      [dev('text'), 'DUMP_XML', /unexpected text/],
      [dev('<single_mapping origin_block="1" data_block="1" time="0">'), 'DUMP_XML', /not well-formed/],
      [dev('<![CDATA[x]]>'), 'DUMP_XML', /CDATA/],
      [`<superblock data_block_size="128"><device dev_id="1"></device><device dev_id="1"></device></superblock>`, 'DUMP_ELEMENT', /second <device/],
    ];
    for (const [text, code, re] of cases) {
      const e = await failure(text, text.includes('dev_id="1"></device><device dev_id="1"') ? {} : undefined);
      expect(e.code, text).toBe(code);
      expect(e.message, text).toMatch(re);
    }
    const dup = await failure('<superblock data_block_size="128"><device dev_id="1"></device><device dev_id="1"></device></superblock>', { devId: 1 });
    expect(dup.message).toMatch(/appears twice/);
  });

  it('not UTF-8, not XML, or no superblock early on', async () => {
    const bytes = new Uint8Array([0x3c, 0xff, 0xfe]);
    async function* src(): AsyncGenerator<Uint8Array> {
      yield bytes;
    }
    await expect(openThinDump(src())).rejects.toThrow(/not valid UTF-8|not well-formed/);
    expect((await failure(' '.repeat(70 * 1024) + 'x')).code).toMatch(/DUMP_HEADER|DUMP_XML/);
  });

  it('names the file in errors', async () => {
    const e = await failure('<superblock data_block_size="128">', { file: '/tmp/x.xml' });
    expect(e.message).toMatch(/^\/tmp\/x\.xml/);
  });

  it('usage errors: bad options, iterating twice', async () => {
    await expect(openThinDump(chunked(''), { devId: -1 })).rejects.toBeInstanceOf(UsageError);
    await expect(openThinDump(chunked(''), { volumeBlocks: 1.5 })).rejects.toBeInstanceOf(UsageError);
    const dump = await openThinDump(chunked(fixture('dump-snap2.xml')));
    for await (const _ of dump.ranges) break;
    expect(() => dump.ranges[Symbol.asyncIterator]()).toThrow(UsageError);
  });

  it('stops reading the source when the consumer stops early', async () => {
    let returned = false;
    const text = fixture('dump-snap2.xml');
    async function* src(): AsyncGenerator<string> {
      try {
        for (const ch of text) yield ch;
      } finally {
        returned = true;
      }
    }
    const dump = await openThinDump(src());
    for await (const _ of dump.ranges) break;
    expect(returned).toBe(true);
  });
});

describe('openThinDump streams with bounded memory', () => {
  it('200 000 scattered mappings (14 MB) fed in 64 KiB chunks', async () => {
    const n = 200_000;
    async function* big(): AsyncGenerator<string> {
      yield '<superblock uuid="" time="1" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="0">\n<device dev_id="5" mapped_blocks="200000" transaction="0" creation_time="0" snap_time="0">\n';
      let buf = '';
      for (let i = 0; i < n; i++) {
        buf += `    <single_mapping origin_block="${2 * i}" data_block="${i}" time="0"/>\n`;
        if (buf.length > 65536) {
          yield buf;
          buf = '';
        }
      }
      yield `${buf}  </device>\n</superblock>\n`;
    }
    const dump = await openThinDump(big(), { devId: 5 });
    let count = 0;
    let bad = 0;
    for await (const x of dump.ranges) {
      if (x.length !== 1 || x.begin !== 2 * count) bad++;
      count++;
    }
    expect(bad).toBe(0);
    expect(count).toBe(n);
    expect(dump.blocksSeen()).toBe(n);
  });
});
