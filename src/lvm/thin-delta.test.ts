import { createReadStream, existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FormatError, UsageError } from '../errors.js';
import { type ChangedRange, MAX_HEADER_CHARS, openThinDelta, thinDeltaQueueHighWater } from './thin-delta.js';

const FIXTURES = fileURLToPath(new URL('../../fixtures/thin-delta/', import.meta.url));
const fixture = (name: string): string => readFileSync(FIXTURES + name, 'utf8');

/** Feed `text` as chunks of `size` characters (strings) or bytes (Uint8Array). */
async function* chunked(text: string, size = Infinity, bytes = false): AsyncGenerator<string | Uint8Array> {
  const data = bytes ? new TextEncoder().encode(text) : text;
  if (data.length === 0) return;
  for (let i = 0; i < data.length; i += Math.min(size, data.length)) {
    yield data.slice(i, i + Math.min(size, data.length));
  }
}

async function collect(text: string | AsyncIterable<string | Uint8Array>, opts?: { volumeBlocks?: number; file?: string }): Promise<ChangedRange[]> {
  const delta = await openThinDelta(typeof text === 'string' ? chunked(text) : text, opts);
  return drain(delta.ranges);
}

async function drain(ranges: AsyncIterable<ChangedRange>): Promise<ChangedRange[]> {
  const out: ChangedRange[] = [];
  for await (const r of ranges) out.push(r);
  return out;
}

/** The FormatError a document produces, whether openThinDelta or the range stream throws it. */
async function failure(text: string | AsyncIterable<string | Uint8Array>, opts?: { volumeBlocks?: number; file?: string }): Promise<FormatError> {
  try {
    await collect(text, opts);
  } catch (err) {
    expect(err).toBeInstanceOf(FormatError);
    return err as FormatError;
  }
  throw new Error('expected a FormatError, the document was accepted');
}

const data = (begin: number, length: number): ChangedRange => ({ begin, length, kind: 'data' });
const unmap = (begin: number, length: number): ChangedRange => ({ begin, length, kind: 'unmap' });

// Written by hand from fixtures/thin-delta/meta.xml (see the table in fixtures/thin-delta/README.md),
// not from the parser's output.
const EXPECTED = [
  data(10, 5), // different 10..14
  data(25, 10), // different 25..29 + right_only 30..34
  unmap(40, 5), // left_only 40..44
  data(50, 3), // different 50 + right_only 51, 52
  unmap(65, 5), // left_only 65..69
  data(120, 30), // right_only 120..149 (two runs in dev 2)
  unmap(150, 10), // left_only 150..159
  data(200, 10), // right_only 200..209
];
// The same delta for a volume of 130 blocks: 120..149 is cut, 150.. and 200.. are dropped.
const EXPECTED_130 = [data(10, 5), data(25, 10), unmap(40, 5), data(50, 3), unmap(65, 5), data(120, 10)];

const REAL = ['v0.9-plain.xml', 'v0.9-verbose.xml', 'v1-plain.xml', 'v1-verbose.xml'];

/** A minimal document around some run elements. */
const doc = (body: string, sb = 'uuid="" time="0" transaction="0" data_block_size="128" nr_data_blocks="0"') =>
  `<superblock ${sb}>\n  <diff left="1" right="2">\n${body}\n  </diff>\n</superblock>\n`;

describe('real thin_delta output', () => {
  it.each(REAL)('%s gives the designed ranges and header', async (name) => {
    const text = fixture(name);
    const delta = await openThinDelta(chunked(text), { file: name });
    expect(delta.header).toEqual({ dataBlockSizeSectors: 128, blockSizeBytes: 65536, snap1: 1, snap2: 2 });
    const out: ChangedRange[] = [];
    for await (const r of delta.ranges) out.push(r);
    expect(out).toEqual(EXPECTED);
  });

  it.each(REAL)('%s: the same ranges fed one byte at a time, or in odd-sized string chunks', async (name) => {
    const text = fixture(name);
    expect(await collect(chunked(text, 1, true))).toEqual(EXPECTED);
    expect(await collect(chunked(text, 7))).toEqual(EXPECTED);
    expect(await collect(chunked(text, 1))).toEqual(EXPECTED);
  });

  it.each(REAL)('%s clamped to a 130-block volume', async (name) => {
    expect(await collect(fixture(name), { volumeBlocks: 130 })).toEqual(EXPECTED_130);
  });

  it('a device against itself (only <same>) is an empty delta', async () => {
    const delta = await openThinDelta(chunked(fixture('v0.9-plain-nochange.xml')));
    expect(delta.header).toMatchObject({ snap1: 1, snap2: 1 });
    const out: ChangedRange[] = [];
    for await (const r of delta.ranges) out.push(r);
    expect(out).toEqual([]);
  });

  it('0.9 and 1.x differ only in layout on these fixtures', () => {
    // The 1.x plain output is 0.9's without the final newline (quick-xml indents before elements).
    expect(fixture('v1-plain.xml') + '\n').toBe(fixture('v0.9-plain.xml'));
    // 0.9 --verbose prints one <range> per mapping piece; 1.x merges adjacent runs first.
    expect(fixture('v0.9-verbose.xml').match(/<range /g)).toHaveLength(17);
    expect(fixture('v1-verbose.xml').match(/<range /g)).toHaveLength(14);
  });
});

describe('clamping', () => {
  const text = fixture('v0.9-plain.xml');
  it.each([
    [0, []],
    [10, []],
    [12, [data(10, 2)]],
    [15, [data(10, 5)]],
    [35, [data(10, 5), data(25, 10)]],
    [51, [data(10, 5), data(25, 10), unmap(40, 5), data(50, 1)]],
    [150, [...EXPECTED_130.slice(0, 5), data(120, 30)]],
    [151, [...EXPECTED_130.slice(0, 5), data(120, 30), unmap(150, 1)]],
    [1_000_000, EXPECTED],
  ] as const)('volumeBlocks=%d', async (vb, want) => {
    expect(await collect(text, { volumeBlocks: vb })).toEqual(want);
  });

  it('clamps before coalescing: a run cut at the end does not merge past it', async () => {
    const body = '<different begin="0" length="4"/>\n<right_only begin="4" length="4"/>';
    expect(await collect(doc(body), { volumeBlocks: 6 })).toEqual([data(0, 6)]);
  });

  it('still validates the rest of the document after the volume end', async () => {
    const body = '<different begin="0" length="4"/>\n<right_only begin="100" length="4"/>\n<left_only begin="50" length="1"/>';
    expect((await failure(doc(body), { volumeBlocks: 10 })).code).toBe('DELTA_UNSORTED');
    const sorted = '<different begin="0" length="4"/>\n<right_only begin="100" length="4"/>\n<left_only begin="150" length="1"/>';
    expect((await failure(doc(sorted).slice(0, -20), { volumeBlocks: 10 })).code).toBe('DELTA_TRUNCATED');
  });

  it('rejects a bad volumeBlocks', async () => {
    for (const vb of [-1, 1.5, Number.NaN]) {
      await expect(openThinDelta(chunked(doc('')), { volumeBlocks: vb })).rejects.toBeInstanceOf(UsageError);
    }
  });
});

describe('coalescing', () => {
  it('merges adjacent runs of one kind across element kinds and verbose ranges', async () => {
    const body = `
    <different begin="0" length="2"/>
    <right_only begin="2" length="3"/>
    <different>
      <range begin="5" left_data_begin="1" right_data_begin="9" length="1"/>
      <range begin="6" left_data_begin="7" right_data_begin="3" length="1"/>
    </different>
    <left_only begin="7" length="1"/>
    <left_only>
      <range begin="8" data_begin="4" length="2"/>
    </left_only>`;
    expect(await collect(doc(body))).toEqual([data(0, 7), unmap(7, 3)]);
  });

  it('does not merge across a gap, a <same> run or a change of kind', async () => {
    const body = `
    <different begin="0" length="2"/>
    <different begin="3" length="2"/>
    <same begin="5" length="1"/>
    <right_only begin="6" length="1"/>
    <left_only begin="7" length="1"/>
    <right_only begin="8" length="1"/>`;
    expect(await collect(doc(body))).toEqual([data(0, 2), data(3, 2), data(6, 1), unmap(7, 1), data(8, 1)]);
  });
});

describe('header and format variants', () => {
  it('accepts what 1.x adds to the superblock (flags, version) and 0.9 metadata_snap', async () => {
    const sb = 'uuid="" time="3" transaction="7" flags="1" version="2" data_block_size="256" nr_data_blocks="0" metadata_snap="5"';
    const delta = await openThinDelta(chunked(doc('<right_only begin="1" length="1"/>', sb)));
    expect(delta.header).toEqual({ dataBlockSizeSectors: 256, blockSizeBytes: 131072, snap1: 1, snap2: 2 });
  });

  it('1.x --root1/--root2 print left_root/right_root: no snap ids', async () => {
    const text = '<superblock uuid="" time="0" transaction="0" data_block_size="128" nr_data_blocks="9"><diff left_root="12" right="7"></diff></superblock>';
    const delta = await openThinDelta(chunked(text));
    expect(delta.header).toEqual({ dataBlockSizeSectors: 128, blockSizeBytes: 65536, snap2: 7 });
  });

  it('ignores an XML declaration, comments and indentation', async () => {
    const text = '<?xml version="1.0"?>\n<!-- hi -->' + doc('<!-- c --><different begin="4" length="1"/>');
    expect(await collect(text)).toEqual([data(4, 1)]);
  });

  it('an empty <diff> is an empty delta', async () => {
    expect(await collect(doc(''))).toEqual([]);
  });

  it('openThinDelta stops after the header; the ranges come from the rest of the source', async () => {
    let pulled = 0;
    async function* source() {
      for (const piece of doc('<different begin="1" length="1"/>').split('\n')) {
        pulled++;
        yield piece + '\n';
      }
    }
    const delta = await openThinDelta(source());
    expect(pulled).toBe(2); // <superblock ...> and <diff ...>
    expect(await drain(delta.ranges)).toEqual([data(1, 1)]);
  });
});

describe('malformed input is a clean FormatError', () => {
  const sb = 'uuid="" time="0" transaction="0" data_block_size="128" nr_data_blocks="0"';
  it.each([
    ['empty input', '', 'DELTA_TRUNCATED'],
    ['only whitespace', '  \n', 'DELTA_TRUNCATED'],
    ['not XML', 'thin_delta: bad checksum in superblock\n', 'DELTA_XML'],
    ['another root element', '<metadata/>', 'DELTA_ELEMENT'],
    ['no data_block_size', '<superblock uuid=""><diff left="1" right="2"></diff></superblock>', 'DELTA_HEADER'],
    ['data_block_size 0', doc('', 'data_block_size="0"'), 'DELTA_HEADER'],
    ['data_block_size not a number', doc('', 'data_block_size="64k"'), 'DELTA_HEADER'],
    ['negative data_block_size', doc('', 'data_block_size="-128"'), 'DELTA_HEADER'],
    ['bad diff id', doc('', sb).replace('left="1"', 'left="x"'), 'DELTA_HEADER'],
    ['superblock without diff', `<superblock ${sb}></superblock>`, 'DELTA_ELEMENT'],
    ['two diffs', doc('', sb).replace('</diff>', '</diff><diff left="1" right="2"></diff>'), 'DELTA_ELEMENT'],
    ['unknown run kind', doc('<moved begin="1" length="1"/>'), 'DELTA_ELEMENT'],
    ['unknown attribute', doc('<different begin="1" length="1" unit="kB"/>'), 'DELTA_ELEMENT'],
    ['kind with other attributes only', doc('<different from="1" to="2"/>'), 'DELTA_ELEMENT'],
    ['empty verbose group', doc('<different></different>'), 'DELTA_ELEMENT'],
    ['self-closed kind without attributes', doc('<right_only/>'), 'DELTA_ELEMENT'],
    ['range outside a group', doc('<range begin="1" length="1"/>'), 'DELTA_ELEMENT'],
    ['child of a plain run', doc('<different begin="1" length="1"><range begin="1" length="1"/></different>'), 'DELTA_ELEMENT'],
    ['unknown attribute on a range', doc('<same><range begin="1" length="1" time="3"/></same>'), 'DELTA_ELEMENT'],
    ['run outside diff', `<superblock ${sb}><different begin="1" length="1"/><diff left="1" right="2"></diff></superblock>`, 'DELTA_ELEMENT'],
    ['second superblock', doc('') + doc(''), 'DELTA_ELEMENT'],
    ['trailing text', doc('') + 'oops', 'DELTA_XML'],
    ['text in diff', doc('hello'), 'DELTA_XML'],
    ['CDATA', doc('<![CDATA[x]]>'), 'DELTA_XML'],
    ['DOCTYPE', '<!DOCTYPE superblock>' + doc(''), 'DELTA_XML'],
    ['mismatched tags', doc('<different begin="1" length="1">'), 'DELTA_XML'],
    ['unquoted attribute', doc('<different begin=1 length="1"/>'), 'DELTA_XML'],
    ['negative begin', doc('<different begin="-1" length="2"/>'), 'DELTA_BAD_RANGE'],
    ['negative length', doc('<left_only begin="1" length="-2"/>'), 'DELTA_BAD_RANGE'],
    ['zero length', doc('<right_only begin="1" length="0"/>'), 'DELTA_BAD_RANGE'],
    ['exponent', doc('<right_only begin="1e3" length="1"/>'), 'DELTA_BAD_RANGE'],
    ['hex', doc('<right_only begin="0x10" length="1"/>'), 'DELTA_BAD_RANGE'],
    ['fraction', doc('<right_only begin="1" length="1.5"/>'), 'DELTA_BAD_RANGE'],
    ['spaces', doc('<right_only begin=" 1" length="1"/>'), 'DELTA_BAD_RANGE'],
    ['empty value', doc('<right_only begin="" length="1"/>'), 'DELTA_BAD_RANGE'],
    ['missing length', doc('<right_only begin="1"/>'), 'DELTA_BAD_RANGE'],
    ['missing begin in verbose', doc('<left_only><range data_begin="1" length="1"/></left_only>'), 'DELTA_BAD_RANGE'],
    ['begin beyond 2^53', doc('<different begin="9007199254740993" length="1"/>'), 'DELTA_BAD_RANGE'],
    ['end beyond 2^53', doc('<different begin="9007199254740991" length="1"/>'), 'DELTA_BAD_RANGE'],
    ['descending', doc('<different begin="10" length="1"/><different begin="5" length="1"/>'), 'DELTA_UNSORTED'],
    ['overlapping', doc('<different begin="10" length="5"/><left_only begin="14" length="1"/>'), 'DELTA_UNSORTED'],
    ['overlapping a same run', doc('<same begin="10" length="5"/><right_only begin="12" length="1"/>'), 'DELTA_UNSORTED'],
    ['duplicate', doc('<same><range begin="3" data_begin="1" length="1"/><range begin="3" data_begin="1" length="1"/></same>'), 'DELTA_UNSORTED'],
  ])('%s -> %s', async (_what, text, code) => {
    const err = await failure(text, { file: 'delta.xml' });
    expect(err.code).toBe(code);
    expect(err.file).toBe('delta.xml');
    expect(err.message).toMatch(/thin_delta output: /);
    if (err.offset !== undefined) {
      expect(Number.isSafeInteger(err.offset) && err.offset >= 0 && err.offset <= text.length).toBe(true);
    }
    expect(err.exitClass).toBe('verify');
    // The same verdict when the document arrives byte by byte.
    expect((await failure(chunked(text, 1, true))).code).toBe(code);
  });

  it('invalid UTF-8 is DELTA_XML', async () => {
    const bytes = new TextEncoder().encode(doc('<different begin="1" length="1"/>'));
    bytes[bytes.indexOf(0x31)] = 0xff; // a '1' becomes a lone 0xff byte
    async function* src() {
      yield bytes;
    }
    expect((await failure(src())).code).toBe('DELTA_XML');
  });

  it('a header further in than MAX_HEADER_CHARS is DELTA_HEADER', async () => {
    const pad = `<!-- ${'x'.repeat(MAX_HEADER_CHARS)} -->\n`;
    expect((await failure(pad + doc(''))).code).toBe('DELTA_HEADER');
    // Also when the start tags never come at all, without reading the whole (endless) source.
    let pulled = 0;
    async function* endless() {
      for (;;) {
        pulled++;
        yield ' '.repeat(4096);
      }
    }
    expect((await failure(endless())).code).toBe('DELTA_HEADER');
    expect(pulled).toBeLessThan(MAX_HEADER_CHARS / 4096 + 8);
  });

  it('every truncation of a real document is DELTA_TRUNCATED, never a shorter delta', async () => {
    for (const name of ['v0.9-plain.xml', 'v0.9-verbose.xml', 'v1-verbose.xml']) {
      const text = fixture(name).trimEnd();
      for (let cut = 0; cut < text.length; cut++) {
        const err = await failure(text.slice(0, cut));
        expect(err.code, `${name} cut at ${cut}`).toBe('DELTA_TRUNCATED');
      }
    }
  });

  it('a consumer that sees the error has already been handed some ranges; the error still comes', async () => {
    const text = fixture('v0.9-plain.xml');
    const delta = await openThinDelta(chunked(text.slice(0, text.indexOf('</diff>')), 1));
    const seen: ChangedRange[] = [];
    await expect((async () => {
      for await (const r of delta.ranges) seen.push(r);
    })()).rejects.toMatchObject({ code: 'DELTA_TRUNCATED' });
    expect(seen.length).toBeGreaterThan(0);
  });
});

describe('stream handling', () => {
  it('ranges are single use', async () => {
    const delta = await openThinDelta(chunked(doc('<different begin="1" length="1"/>')));
    expect(await drain(delta.ranges)).toEqual([data(1, 1)]);
    expect(() => delta.ranges[Symbol.asyncIterator]()).toThrow(UsageError);
  });

  it('releases the source when the consumer stops early or the header is bad', async () => {
    let closed = 0;
    async function* source(text: string) {
      try {
        yield* chunked(text, 10);
      } finally {
        closed++;
      }
    }
    const delta = await openThinDelta(source(fixture('v0.9-plain.xml')));
    for await (const r of delta.ranges) {
      expect(r).toEqual(EXPECTED[0]);
      break;
    }
    expect(closed).toBe(1);
    await expect(openThinDelta(source(doc('', 'data_block_size="0"')))).rejects.toMatchObject({ code: 'DELTA_HEADER' });
    expect(closed).toBe(2);
  });

  it('passes a source error through unchanged', async () => {
    const boom = new Error('EIO reading thin_delta stdout');
    async function* source() {
      yield doc('<different begin="1" length="1"/>').slice(0, 150);
      throw boom;
    }
    const delta = await openThinDelta(source());
    await expect(drain(delta.ranges)).rejects.toBe(boom);
  });
});

// ---------------------------------------------------------------------------------------------
// Property: random sorted run lists rendered in both forms parse back to the coalesced list.

type Kind = 'same' | 'different' | 'right_only' | 'left_only';
interface Run { kind: Kind; begin: number; length: number }

const runsArb = fc
  .array(
    fc.record({
      gap: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 20 })),
      length: fc.integer({ min: 1, max: 20 }),
      kind: fc.constantFrom<Kind>('same', 'different', 'right_only', 'left_only'),
    }),
    { maxLength: 60 },
  )
  .chain((items) =>
    fc.integer({ min: 0, max: 2 ** 40 }).map((start) => {
      let at = start;
      return items.map(({ gap, length, kind }): Run => {
        const begin = at + gap;
        at = begin + length;
        return { kind, begin, length };
      });
    }),
  );

const renderPlain = (runs: Run[]) => doc(runs.map((r) => `    <${r.kind} begin="${r.begin}" length="${r.length}"/>`).join('\n'));

/** 0.9 --verbose layout: consecutive runs of one kind share a group element. */
function renderVerbose(runs: Run[]): string {
  const lines: string[] = [];
  runs.forEach((r, i) => {
    if (i === 0 || runs[i - 1]!.kind !== r.kind) lines.push(`    <${r.kind}>`);
    lines.push(r.kind === 'different'
      ? `      <range begin="${r.begin}" left_data_begin="${i}" right_data_begin="${i + 7}" length="${r.length}"/>`
      : `      <range begin="${r.begin}" data_begin="${i}" length="${r.length}"/>`);
    if (i === runs.length - 1 || runs[i + 1]!.kind !== r.kind) lines.push(`    </${r.kind}>`);
  });
  return doc(lines.join('\n'));
}

/** Oracle, block by block: which blocks change how, clamped, then rebuilt into maximal runs. */
function oracle(runs: Run[], volumeBlocks?: number): ChangedRange[] {
  const blocks: Array<[number, ChangedRange['kind']]> = [];
  for (const r of runs) {
    if (r.kind === 'same') continue;
    for (let b = r.begin; b < r.begin + r.length; b++) {
      if (volumeBlocks === undefined || b < volumeBlocks) blocks.push([b, r.kind === 'left_only' ? 'unmap' : 'data']);
    }
  }
  const out: ChangedRange[] = [];
  for (const [b, kind] of blocks) {
    const last = out[out.length - 1];
    if (last && last.kind === kind && last.begin + last.length === b) last.length++;
    else out.push({ begin: b, length: 1, kind });
  }
  return out;
}

describe('property', () => {
  it('random run lists in plain and verbose form parse back to the coalesced, clamped list', async () => {
    await fc.assert(
      fc.asyncProperty(
        runsArb,
        fc.integer({ min: 1, max: 300 }),
        fc.boolean(),
        fc.option(fc.integer({ min: 0, max: 800 }), { nil: undefined }),
        async (runs, chunk, bytes, clampOffset) => {
          const vb = clampOffset === undefined ? undefined : (runs[0]?.begin ?? 0) + clampOffset;
          const want = oracle(runs, vb);
          const opts = vb === undefined ? {} : { volumeBlocks: vb };
          expect(await collect(chunked(renderPlain(runs), chunk, bytes), opts)).toEqual(want);
          expect(await collect(chunked(renderVerbose(runs), chunk, bytes), opts)).toEqual(want);
        },
      ),
      { numRuns: 300 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Streaming with bounded memory: a 200,000-range document, generated lazily.

const LARGE_N = 200_000;
const LARGE_KINDS = ['right_only', 'left_only', 'different'] as const;

/**
 * Exactly what thin_delta 0.9 prints for the metadata `scripts/make-thin-delta-fixtures.sh --large`
 * builds: one single-block run every 4 blocks, cycling right_only / left_only / different. Yields
 * ~64 KiB byte chunks and counts them in `stats.chunks`, never holding the whole document.
 */
async function* largeDeltaDocument(stats: { chunks: number; ranges: number }, n = LARGE_N): AsyncGenerator<Uint8Array> {
  const enc = new TextEncoder();
  let buf = `<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="${2 * n + 16}">\n  <diff left="1" right="2">\n`;
  for (let i = 0; i < n; i++) {
    buf += `    <${LARGE_KINDS[i % 3]} begin="${4 * i}" length="1"/>\n`;
    if (buf.length >= 65536) {
      stats.chunks++;
      stats.ranges = i + 1;
      yield enc.encode(buf);
      buf = '';
    }
  }
  buf += '  </diff>\n</superblock>\n';
  stats.chunks++;
  stats.ranges = n;
  yield enc.encode(buf);
}

function expectLargeRange(r: ChangedRange, i: number): void {
  // Kinds alternate and runs are 4 blocks apart: nothing coalesces.
  if (r.begin !== 4 * i || r.length !== 1 || r.kind !== (i % 3 === 1 ? 'unmap' : 'data')) {
    throw new Error(`range #${i}: got ${JSON.stringify(r)}`);
  }
}

describe('large delta', () => {
  it('streams 200,000 ranges in 64 KiB chunks with a bounded queue', async () => {
    const stats = { chunks: 0, ranges: 0 };
    const delta = await openThinDelta(largeDeltaDocument(stats));
    expect(stats.chunks).toBe(1); // the header is in the first chunk
    let i = 0;
    let maxLead = 0; // how many ranges the producer ever ran ahead of the consumer
    for await (const r of delta.ranges) {
      expectLargeRange(r, i);
      i++;
      maxLead = Math.max(maxLead, stats.ranges - i);
    }
    expect(i).toBe(LARGE_N);
    expect(stats.chunks).toBeGreaterThan(120); // the document is ~8.6 MB
    // The source is pulled only when the parser has handed out what it read: never more than one
    // 64 KiB chunk (~1,600 runs) ahead of the consumer.
    expect(maxLead).toBeLessThan(2000);
    // One 16 Ki-character slice holds at most ~16384/33 runs; never the whole list.
    const hw = thinDeltaQueueHighWater(delta)!;
    expect(hw).toBeGreaterThan(0);
    expect(hw).toBeLessThanOrEqual(600);
  });

  it('queues no more when the whole document arrives as one chunk', async () => {
    const stats = { chunks: 0, ranges: 0 };
    const dec = new TextDecoder();
    let whole = '';
    for await (const c of largeDeltaDocument(stats)) whole += dec.decode(c);
    const delta = await openThinDelta(chunked(whole));
    let i = 0;
    for await (const r of delta.ranges) expectLargeRange(r, i++);
    expect(i).toBe(LARGE_N);
    expect(thinDeltaQueueHighWater(delta)).toBeLessThanOrEqual(600);
  });

  // The generator above was checked once against real thin_delta 0.9 output of the same 200,000
  // ranges (scripts/make-thin-delta-fixtures.sh --large): byte for byte identical.
});
