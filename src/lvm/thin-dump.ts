/**
 * Streaming parser for the XML that `thin_dump -m --dev-id N` prints (thin-provisioning-tools 0.9.x
 * and 1.x): the mapped ranges of one thin device, for a full send. Pure, same design as thin-delta.ts.
 * The output format (def/ref, ordering, coalescing): docs/LVM.md section 5.
 */
import type { Tag } from 'sax';
import { SaxDocumentReader } from './sax-reader.js';
import { ThinarchiveError, UsageError } from '../errors.js';

export interface ThinDumpHeader {
  /** Pool block size in 512-byte sectors (the superblock's `data_block_size`). */
  dataBlockSizeSectors: number;
  /** Pool block size in bytes. */
  blockSizeBytes: number;
  /** The superblock's transaction id and time, when printed. */
  transaction?: number;
  time?: number;
  /** The superblock's `flags` (1: needs_check), when printed. */
  flags?: number;
  devId: number;
  /** The device's `mapped_blocks` as recorded in the metadata. */
  mappedBlocks?: number;
  /** The device's transaction, creation_time and snap_time attributes. */
  deviceTransaction?: number;
  creationTime?: number;
  snapTime?: number;
}

/** A run of mapped blocks in the thin device's address space (pool blocks). */
export interface MappedRange {
  begin: number;
  length: number;
}

export interface ThinDump {
  header: ThinDumpHeader;
  /**
   * The mapped ranges, sorted, coalesced and clamped. Single use. As with thin deltas, ranges are
   * yielded as they are parsed: the list is only complete once the iteration ended without error.
   */
  ranges: AsyncIterable<MappedRange>;
  /** Mapped blocks seen so far in the selected device (before clamping); complete after iteration. */
  blocksSeen(): number;
}

export interface OpenThinDumpOptions {
  /** The thin device to read; default: the only device in the document. */
  devId?: number;
  /** The volume's size in pool blocks: ranges at/after it are dropped, ranges crossing it cut. */
  volumeBlocks?: number;
  /** Names the input in error messages. */
  file?: string;
}

/** The superblock start tag must appear within this many characters. */
export const MAX_DUMP_HEADER_CHARS = 64 * 1024;
const DECIMAL = /^[0-9]+$/;

const SINGLE_ATTRS = new Set(['origin_block', 'data_block', 'time']);
const RANGE_ATTRS = new Set(['origin_begin', 'data_begin', 'length', 'time']);

type Frame =
  | { el: 'superblock' }
  | { el: 'def'; name: string; ranges: MappedRange[]; lastEnd: number }
  | { el: 'device'; selected: boolean }
  | { el: 'leaf' }; // a mapping or a ref: must stay empty

/** Read the header of a thin_dump document up to the selected device and stream its ranges. */
export async function openThinDump(
  source: AsyncIterable<string | Uint8Array>,
  opts: OpenThinDumpOptions = {},
): Promise<ThinDump> {
  const { volumeBlocks, devId } = opts;
  if (volumeBlocks !== undefined && !(Number.isSafeInteger(volumeBlocks) && volumeBlocks >= 0)) {
    throw new UsageError(`volumeBlocks must be a non-negative integer, got ${volumeBlocks}`);
  }
  if (devId !== undefined && !(Number.isSafeInteger(devId) && devId >= 0)) {
    throw new UsageError(`devId must be a non-negative integer, got ${devId}`);
  }
  const reader = new DumpReader(source[Symbol.asyncIterator](), devId, volumeBlocks, opts.file);
  let header: ThinDumpHeader;
  try {
    header = await reader.readHeader();
  } catch (err) {
    await reader.closeSource();
    throw err;
  }
  let used = false;
  return {
    header,
    ranges: {
      [Symbol.asyncIterator]() {
        if (used) throw new UsageError('the ranges of a thin dump can be iterated only once');
        used = true;
        return reader.items();
      },
    },
    blocksSeen: () => reader.blocksSeen,
  };
}

class DumpReader extends SaxDocumentReader<MappedRange> {
  private readonly stack: Frame[] = [];
  private seenSuperblock = false;
  private closedSuperblock = false;
  private dataBlockSizeSectors = 0;
  private superblockInfo: Pick<ThinDumpHeader, 'transaction' | 'time' | 'flags'> = {};
  private header: ThinDumpHeader | undefined;
  private selectedDone = false;
  private readonly defs = new Map<string, MappedRange[]>();
  /** End (exclusive) of the last mapping of the selected device: mappings must not go backwards. */
  private lastEnd = 0;
  private pending: MappedRange | undefined;
  blocksSeen = 0;

  constructor(
    source: AsyncIterator<string | Uint8Array>,
    private readonly devId: number | undefined,
    private readonly volumeBlocks: number | undefined,
    file: string | undefined,
  ) {
    super(source, file, 'thin_dump', 'DUMP_XML');
  }

  private notFound(): ThinarchiveError {
    return new ThinarchiveError(
      'THIN_DEVICE_NOT_FOUND',
      `thin_dump output${this.file ? ` ${this.file}` : ''}: ${this.devId !== undefined ? `thin device ${this.devId} is` : 'no thin device is'} not in the metadata (deleted, or the metadata snapshot predates it)`,
    );
  }

  async readHeader(): Promise<ThinDumpHeader> {
    while (!this.header) {
      if (this.finished) throw this.notFound();
      if (!this.seenSuperblock && this.parser.position > MAX_DUMP_HEADER_CHARS) {
        throw this.error('DUMP_HEADER', `no <superblock> in the first ${MAX_DUMP_HEADER_CHARS} characters`, this.parser.position);
      }
      await this.step();
    }
    return this.header;
  }

  protected checkComplete(): void {
    if (!this.closedSuperblock) {
      throw this.error('DUMP_TRUNCATED', this.seenSuperblock
        ? 'document ended before </superblock> (thin_dump died or its output was cut short)'
        : 'document ended before <superblock> (empty or cut-short output)', this.parser.position);
    }
  }

  protected openTag(tag: Tag): void {
    const name = tag.name;
    const attrs = tag.attributes;
    const top = this.stack[this.stack.length - 1];
    if (!top) {
      if (name !== 'superblock' || this.seenSuperblock) this.unexpected(name, 'at top level');
      this.seenSuperblock = true;
      this.readSuperblock(attrs);
      this.stack.push({ el: 'superblock' });
      return;
    }
    switch (top.el) {
      case 'superblock':
        if (name === 'def') {
          const defName = attrs['name'];
          if (defName === undefined || defName === '') throw this.error('DUMP_ELEMENT', '<def> has no name=', this.tagOffset());
          if (this.defs.has(defName)) throw this.error('DUMP_ELEMENT', `<def name="${defName}"> defined twice`, this.tagOffset());
          this.stack.push({ el: 'def', name: defName, ranges: [], lastEnd: 0 });
          return;
        }
        if (name === 'device') {
          this.stack.push({ el: 'device', selected: this.readDevice(attrs) });
          return;
        }
        return this.unexpected(name, 'in <superblock>');
      case 'def':
      case 'device': {
        if (name === 'single_mapping' || name === 'range_mapping') {
          const r = this.mapping(name, attrs);
          if (top.el === 'def') this.addToDef(top, r);
          else if (top.selected) this.run(r);
        } else if (name === 'ref') {
          const refName = attrs['name'];
          const def = refName === undefined ? undefined : this.defs.get(refName);
          if (def === undefined) {
            throw this.error('DUMP_REF', refName === undefined ? '<ref> has no name=' : `<ref name="${refName}"> names no earlier <def>`, this.tagOffset());
          }
          if (top.el === 'def') for (const r of def) this.addToDef(top, r);
          else if (top.selected) for (const r of def) this.run(r);
        } else {
          this.unexpected(name, `in <${top.el}>`);
        }
        this.stack.push({ el: 'leaf' });
        return;
      }
      case 'leaf':
        this.unexpected(name, 'inside a mapping');
    }
  }

  protected closeTag(_name: string): void {
    const frame = this.stack.pop();
    if (!frame) return;
    if (frame.el === 'def') {
      this.defs.set(frame.name, frame.ranges);
    } else if (frame.el === 'device' && frame.selected) {
      if (this.pending) this.emit(this.pending);
      this.pending = undefined;
      this.selectedDone = true;
    } else if (frame.el === 'superblock') {
      this.closedSuperblock = true;
    }
  }

  private unexpected(name: string, where: string): never {
    throw this.error('DUMP_ELEMENT', `unexpected element <${name}> ${where}`, this.tagOffset());
  }

  private optionalNumber(el: string, attrs: Record<string, string>, a: string): number | undefined {
    const raw = attrs[a];
    if (raw === undefined) return undefined;
    const n = DECIMAL.test(raw) ? Number(raw) : NaN;
    if (!Number.isSafeInteger(n)) throw this.error('DUMP_ELEMENT', `bad <${el} ${a}=${JSON.stringify(raw)}>`, this.tagOffset());
    return n;
  }

  private readSuperblock(attrs: Record<string, string>): void {
    const raw = attrs['data_block_size'];
    const dbs = raw !== undefined && DECIMAL.test(raw) ? Number(raw) : NaN;
    if (!(Number.isSafeInteger(dbs) && dbs > 0 && dbs <= 0xffffffff)) {
      throw this.error('DUMP_HEADER', raw === undefined
        ? '<superblock> has no data_block_size'
        : `bad data_block_size=${JSON.stringify(raw)} (want a positive integer of sectors)`, this.tagOffset());
    }
    this.dataBlockSizeSectors = dbs;
    // nr_data_blocks reads 0 under -m, uuid is always empty, version is the XML/metadata version:
    // none of them is used.
    const info: Pick<ThinDumpHeader, 'transaction' | 'time' | 'flags'> = {};
    const transaction = this.optionalNumber('superblock', attrs, 'transaction');
    const time = this.optionalNumber('superblock', attrs, 'time');
    const flags = this.optionalNumber('superblock', attrs, 'flags');
    if (transaction !== undefined) info.transaction = transaction;
    if (time !== undefined) info.time = time;
    if (flags !== undefined) info.flags = flags;
    this.superblockInfo = info;
  }

  /** A <device> start tag: is it the one to read? Sets the header when it is. */
  private readDevice(attrs: Record<string, string>): boolean {
    const id = this.optionalNumber('device', attrs, 'dev_id');
    if (id === undefined) throw this.error('DUMP_ELEMENT', '<device> has no dev_id=', this.tagOffset());
    const wanted = this.devId === undefined || this.devId === id;
    if (!wanted) return false;
    if (this.header) {
      throw this.error('DUMP_ELEMENT', this.devId === undefined
        ? `a second <device dev_id="${id}">: pass the dev id to read`
        : `<device dev_id="${id}"> appears twice`, this.tagOffset());
    }
    const h: ThinDumpHeader = {
      dataBlockSizeSectors: this.dataBlockSizeSectors,
      blockSizeBytes: this.dataBlockSizeSectors * 512,
      ...this.superblockInfo,
      devId: id,
    };
    const opt = (a: string): number | undefined => this.optionalNumber('device', attrs, a);
    const mapped = opt('mapped_blocks');
    const tr = opt('transaction');
    const ct = opt('creation_time');
    const st = opt('snap_time');
    if (mapped !== undefined) h.mappedBlocks = mapped;
    if (tr !== undefined) h.deviceTransaction = tr;
    if (ct !== undefined) h.creationTime = ct;
    if (st !== undefined) h.snapTime = st;
    this.header = h;
    return true;
  }

  /** Validate a single_mapping / range_mapping and return its origin range. */
  private mapping(el: 'single_mapping' | 'range_mapping', attrs: Record<string, string>): MappedRange {
    const allowed = el === 'single_mapping' ? SINGLE_ATTRS : RANGE_ATTRS;
    for (const a of Object.keys(attrs)) {
      if (!allowed.has(a)) throw this.error('DUMP_ELEMENT', `unexpected attribute ${a}= on <${el}>`, this.tagOffset());
    }
    const need = (a: string): number => {
      const n = this.optionalNumber(el, attrs, a);
      if (n === undefined) throw this.error('DUMP_BAD_RANGE', `<${el}> has no ${a}=`, this.tagOffset());
      return n;
    };
    const begin = need(el === 'single_mapping' ? 'origin_block' : 'origin_begin');
    need(el === 'single_mapping' ? 'data_block' : 'data_begin');
    const length = el === 'single_mapping' ? 1 : need('length');
    if (length === 0 || !Number.isSafeInteger(begin + length)) {
      throw this.error('DUMP_BAD_RANGE', `<${el}> at origin ${begin}: ${length === 0 ? 'empty run' : 'end is out of range'}`, this.tagOffset());
    }
    return { begin, length };
  }

  private addToDef(def: Extract<Frame, { el: 'def' }>, r: MappedRange): void {
    if (r.begin < def.lastEnd) {
      throw this.error('DUMP_UNSORTED', `<def name="${def.name}">: mapping at origin ${r.begin} starts before the end (${def.lastEnd}) of the previous one`, this.tagOffset());
    }
    def.lastEnd = r.begin + r.length;
    const last = def.ranges[def.ranges.length - 1];
    if (last && last.begin + last.length === r.begin) last.length += r.length;
    else def.ranges.push({ begin: r.begin, length: r.length });
  }

  /** One mapped run of the selected device: check order, clamp, coalesce. */
  private run(r: MappedRange): void {
    if (this.selectedDone) throw this.error('DUMP_ELEMENT', 'mapping after the selected device ended', this.tagOffset());
    const end = r.begin + r.length;
    if (r.begin < this.lastEnd) {
      throw this.error('DUMP_UNSORTED', `mapping at origin ${r.begin} starts before the end (${this.lastEnd}) of the previous one: mappings must be sorted and not overlap`, this.tagOffset());
    }
    this.lastEnd = end;
    this.blocksSeen += r.length;
    const vb = this.volumeBlocks;
    if (vb !== undefined && r.begin >= vb) return;
    const clampedEnd = vb !== undefined ? Math.min(end, vb) : end;
    const p = this.pending;
    if (p && p.begin + p.length === r.begin) {
      p.length = clampedEnd - p.begin;
      return;
    }
    if (p) this.emit(p);
    this.pending = { begin: r.begin, length: clampedEnd - r.begin };
  }

  private emit(r: MappedRange): void {
    this.queue.push(r);
  }
}
