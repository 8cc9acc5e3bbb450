/**
 * Streaming parser for the XML that `thin_delta` prints (thin-provisioning-tools 0.9.x and 1.x): the
 * changed ranges between two thin devices, as data / unmap. Pure, memory bounded (fed to `sax` in
 * slices of SLICE_CHARS). The output format, units and coalescing: docs/LVM.md section 4.
 */
import type { Tag } from 'sax';
import { SaxDocumentReader } from './sax-reader.js';
import { UsageError } from '../errors.js';

export interface ThinDeltaHeader {
  /** Pool block size in 512-byte sectors (the superblock's `data_block_size`). */
  dataBlockSizeSectors: number;
  /** Pool block size in bytes (`dataBlockSizeSectors * 512`). */
  blockSizeBytes: number;
  /** `<diff left=...>`: the older thin device id (absent when thin_delta was given --root1). */
  snap1?: number;
  /** `<diff right=...>`: the newer thin device id (absent when thin_delta was given --root2). */
  snap2?: number;
}

/** A run of changed pool blocks in the newer snapshot: 'data' must be copied, 'unmap' discarded. */
export interface ChangedRange {
  begin: number;
  length: number;
  kind: 'data' | 'unmap';
}

export interface ThinDelta {
  header: ThinDeltaHeader;
  /**
   * The changed ranges, sorted, coalesced and clamped, streamed from the rest of the document.
   * Single use. Ranges are yielded as they are parsed, so a consumer sees some ranges before a
   * later error (DELTA_TRUNCATED, DELTA_XML, ...) is thrown: a delta is only valid once the
   * iteration has *completed* without an error.
   */
  ranges: AsyncIterable<ChangedRange>;
}

export interface OpenThinDeltaOptions {
  /** The newer volume's size in pool blocks: ranges at/after it are dropped, ranges crossing it cut. */
  volumeBlocks?: number;
  /** Names the input in error messages. */
  file?: string;
}

/** The header (superblock and diff start tags) must appear within this many characters. */
export const MAX_HEADER_CHARS = 64 * 1024;

/** thin_delta's element names for the four kinds of run. */
const KINDS = {
  same: null,
  different: 'data',
  right_only: 'data',
  left_only: 'unmap',
} as const satisfies Record<string, ChangedRange['kind'] | null>;
type KindName = keyof typeof KINDS;

/** Attributes a plain `<KIND>` element may carry. */
const PLAIN_ATTRS = new Set(['begin', 'length']);
/** Attributes a verbose `<range>` may carry: data_begin (same/left_only/right_only), left/right_data_begin (different). */
const RANGE_ATTRS = new Set(['begin', 'length', 'data_begin', 'left_data_begin', 'right_data_begin']);

const DECIMAL = /^[0-9]+$/;

type Frame =
  | { el: 'superblock' }
  | { el: 'diff' }
  | { el: 'plain' } // a <KIND begin= length=/> element: must stay empty
  | { el: 'group'; kind: KindName; count: number } // a verbose <KIND> holding <range>s
  | { el: 'range' };

/** Per-delta statistics for tests: the most ranges ever queued inside the parser at once. */
const queueHighWater = new WeakMap<ThinDelta, () => number>();

/** @internal Test hook: the largest number of parsed-but-not-yet-consumed ranges held so far. */
export function thinDeltaQueueHighWater(delta: ThinDelta): number | undefined {
  return queueHighWater.get(delta)?.();
}

/**
 * Read the header of a thin_delta document and return it with a single-use stream of the changed
 * ranges. Consumes `source` up to and including the `<diff>` start tag (which both tool versions
 * print right after `<superblock>`), so that snap1/snap2 are known; `ranges` continues from there.
 */
export async function openThinDelta(
  source: AsyncIterable<string | Uint8Array>,
  opts: OpenThinDeltaOptions = {},
): Promise<ThinDelta> {
  const { volumeBlocks } = opts;
  if (volumeBlocks !== undefined && !(Number.isSafeInteger(volumeBlocks) && volumeBlocks >= 0)) {
    throw new UsageError(`volumeBlocks must be a non-negative integer, got ${volumeBlocks}`);
  }
  const reader = new DeltaReader(source[Symbol.asyncIterator](), volumeBlocks, opts.file);
  let header: ThinDeltaHeader;
  try {
    header = await reader.readHeader();
  } catch (err) {
    await reader.closeSource();
    throw err;
  }
  let used = false;
  const delta: ThinDelta = {
    header,
    ranges: {
      [Symbol.asyncIterator]() {
        if (used) throw new UsageError('the ranges of a thin delta can be iterated only once');
        used = true;
        return reader.items();
      },
    },
  };
  queueHighWater.set(delta, () => reader.maxQueued);
  return delta;
}

class DeltaReader extends SaxDocumentReader<ChangedRange> {
  private readonly stack: Frame[] = [];
  private seenSuperblock = false;
  private seenDiff = false;
  private closedSuperblock = false;
  private header: ThinDeltaHeader | undefined;
  private dataBlockSizeSectors = 0;
  /** End (exclusive) of the last run seen, of any kind: runs must not go backwards or overlap. */
  private lastEnd = 0;
  /** The coalesced range being built, not yet queued. */
  private pending: ChangedRange | undefined;

  constructor(
    source: AsyncIterator<string | Uint8Array>,
    private readonly volumeBlocks: number | undefined,
    file: string | undefined,
  ) {
    super(source, file, 'thin_delta', 'DELTA_XML');
  }

  async readHeader(): Promise<ThinDeltaHeader> {
    while (!this.header) {
      if (this.finished) {
        // Unreachable in practice (closing </superblock> without a <diff> is rejected), but keep the
        // loop total.
        throw this.error('DELTA_TRUNCATED', 'document ended before the <diff> element');
      }
      if (this.parser.position > MAX_HEADER_CHARS) {
        throw this.error('DELTA_HEADER', `no <superblock><diff> header in the first ${MAX_HEADER_CHARS} characters`, this.parser.position);
      }
      await this.step();
    }
    return this.header;
  }

  protected checkComplete(): void {
    if (!this.closedSuperblock) {
      // A truncated delta must never be taken for a shorter one.
      throw this.error('DELTA_TRUNCATED', this.seenSuperblock
        ? 'document ended before </superblock> (thin_delta died or its output was cut short)'
        : 'document ended before <superblock> (empty or cut-short output)', this.parser.position);
    }
  }

  protected openTag(tag: Tag): void {
    const name = tag.name;
    const top = this.stack[this.stack.length - 1];
    if (!top) {
      if (name !== 'superblock' || this.seenSuperblock) this.unexpected(name, 'at top level');
      this.seenSuperblock = true;
      this.readSuperblock(tag.attributes);
      this.stack.push({ el: 'superblock' });
      return;
    }
    switch (top.el) {
      case 'superblock':
        if (name !== 'diff' || this.seenDiff) this.unexpected(name, 'in <superblock>');
        this.seenDiff = true;
        this.readDiff(tag.attributes);
        this.stack.push({ el: 'diff' });
        return;
      case 'diff': {
        if (!Object.hasOwn(KINDS, name)) this.unexpected(name, 'in <diff>');
        const kind = name as KindName;
        const attrs = Object.keys(tag.attributes);
        if (attrs.length === 0) {
          // Verbose form: a group of <range> children. (A plain element always has begin/length.)
          this.stack.push({ el: 'group', kind, count: 0 });
        } else {
          this.checkAttrs(name, tag.attributes, PLAIN_ATTRS);
          this.run(kind, tag.attributes);
          this.stack.push({ el: 'plain' });
        }
        return;
      }
      case 'group':
        if (name !== 'range') this.unexpected(name, 'in a verbose <KIND> group');
        this.checkAttrs(name, tag.attributes, RANGE_ATTRS);
        this.run(top.kind, tag.attributes);
        top.count++;
        this.stack.push({ el: 'range' });
        return;
      case 'plain':
      case 'range':
        this.unexpected(name, 'inside a range element');
    }
  }

  protected closeTag(name: string): void {
    // sax (strict) has already checked that `name` matches the open tag.
    const frame = this.stack.pop();
    if (!frame) return;
    if (frame.el === 'group' && frame.count === 0) {
      // Neither tool prints an empty group; an unknown form of a kind element must not silently
      // drop a change.
      throw this.error('DELTA_ELEMENT', `<${name}> has neither begin/length attributes nor <range> children`, this.parser.position);
    }
    if (frame.el === 'diff') {
      if (this.pending) this.emit(this.pending);
      this.pending = undefined;
    } else if (frame.el === 'superblock') {
      if (!this.seenDiff) throw this.error('DELTA_ELEMENT', '<superblock> has no <diff>', this.parser.position);
      this.closedSuperblock = true;
    }
  }

  private unexpected(name: string, where: string): never {
    throw this.error('DELTA_ELEMENT', `unexpected element <${name}> ${where}`, this.tagOffset());
  }

  private checkAttrs(el: string, attrs: Record<string, string>, allowed: Set<string>): void {
    for (const a of Object.keys(attrs)) {
      if (!allowed.has(a)) throw this.error('DELTA_ELEMENT', `unexpected attribute ${a}= on <${el}>`, this.tagOffset());
    }
  }

  private readSuperblock(attrs: Record<string, string>): void {
    // Only data_block_size matters. uuid/time/transaction/flags/version/nr_data_blocks/metadata_snap
    // are ignored (nr_data_blocks reads 0 under -m).
    const raw = attrs['data_block_size'];
    const dbs = raw !== undefined && DECIMAL.test(raw) ? Number(raw) : NaN;
    // Both tools store it as a u32.
    if (!(Number.isSafeInteger(dbs) && dbs > 0 && dbs <= 0xffffffff)) {
      throw this.error('DELTA_HEADER', raw === undefined
        ? '<superblock> has no data_block_size'
        : `bad data_block_size=${JSON.stringify(raw)} (want a positive integer of sectors)`, this.tagOffset());
    }
    this.dataBlockSizeSectors = dbs;
  }

  private readDiff(attrs: Record<string, string>): void {
    if (this.parser.position > MAX_HEADER_CHARS) {
      throw this.error('DELTA_HEADER', `no <superblock><diff> header in the first ${MAX_HEADER_CHARS} characters`, this.tagOffset());
    }
    // `left`/`right` are thin device ids; with --root1/--root2 1.x prints left_root=/right_root= instead.
    const id = (a: string): number | undefined => {
      const raw = attrs[a];
      if (raw === undefined) return undefined;
      const n = DECIMAL.test(raw) ? Number(raw) : NaN;
      if (!Number.isSafeInteger(n)) throw this.error('DELTA_HEADER', `bad <diff ${a}=${JSON.stringify(raw)}>`, this.tagOffset());
      return n;
    };
    const header: ThinDeltaHeader = {
      dataBlockSizeSectors: this.dataBlockSizeSectors,
      blockSizeBytes: this.dataBlockSizeSectors * 512,
    };
    const snap1 = id('left');
    const snap2 = id('right');
    if (snap1 !== undefined) header.snap1 = snap1;
    if (snap2 !== undefined) header.snap2 = snap2;
    this.header = header;
  }

  /** One run (plain element or verbose <range>): validate, then map, clamp and coalesce it. */
  private run(kind: KindName, attrs: Record<string, string>): void {
    const begin = this.blockNumber(kind, attrs, 'begin');
    const length = this.blockNumber(kind, attrs, 'length');
    const end = begin + length;
    if (length === 0 || !Number.isSafeInteger(end)) {
      throw this.error('DELTA_BAD_RANGE', `<${kind} begin="${begin}" length="${length}">: ${length === 0 ? 'empty run' : 'end is out of range'}`, this.tagOffset());
    }
    if (begin < this.lastEnd) {
      throw this.error('DELTA_UNSORTED', `<${kind} begin="${begin}"> starts before the end (${this.lastEnd}) of the previous run: runs must be sorted and not overlap`, this.tagOffset());
    }
    this.lastEnd = end;

    const mapped = KINDS[kind];
    if (mapped === null) return; // `same`: nothing changed
    const vb = this.volumeBlocks;
    if (vb !== undefined && begin >= vb) return; // past the end of the (shrunk) volume
    const clampedEnd = vb !== undefined ? Math.min(end, vb) : end;

    const p = this.pending;
    if (p && p.kind === mapped && p.begin + p.length === begin) {
      p.length = clampedEnd - p.begin;
      return;
    }
    if (p) this.emit(p);
    this.pending = { begin, length: clampedEnd - begin, kind: mapped };
  }

  private blockNumber(kind: string, attrs: Record<string, string>, name: 'begin' | 'length'): number {
    const raw = attrs[name];
    if (raw === undefined) throw this.error('DELTA_BAD_RANGE', `<${kind}> has no ${name}=`, this.tagOffset());
    const n = DECIMAL.test(raw) ? Number(raw) : NaN;
    if (!Number.isSafeInteger(n)) {
      throw this.error('DELTA_BAD_RANGE', `<${kind} ${name}=${JSON.stringify(raw)}>: not a non-negative integer block number`, this.tagOffset());
    }
    return n;
  }

  private emit(r: ChangedRange): void {
    this.queue.push(r);
  }
}
