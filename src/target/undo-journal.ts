/**
 * The undo journal of an image or block-device target: old contents are journaled and flushed before
 * the target write they cover; rolling back replays entries newest first. Format and crash-safety
 * argument: docs/JOURNAL.md ("Order of operations", "Journal format").
 */
import { constants as fsc } from 'node:fs';
import { open, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ioError, ThinarchiveError, UnsafeError } from '../errors.js';
import { fsyncDir, makeDirs } from '../fsutil.js';
import { initHash, xxh64Parts } from '../format/hash.js';
import { thinio } from '../native.js';
import type { TargetKind, TargetState } from './state.js';

const MAGIC = Buffer.from('TAUNDO\x00\x01', 'latin1');
const ENTRY_MAGIC = 0x544e4555; // "UENT" little-endian
const ENTRY_HEADER = 32;
const ENTRY_TRAILER = 8;
/** Largest payload of one entry (bytes): a range is journaled in pieces of at most this. */
export const MAX_ENTRY = 4 * 1024 * 1024;
const MAX_HEADER_JSON = 1 << 20;

export const enum EntryKind {
  /** payload = the old bytes */
  DATA = 1,
  /** the old bytes were all zero (no payload; a block device, or allocated zeroes in an image) */
  ZERO = 2,
  /** the range was a hole of the image (no payload; restored by punching) */
  HOLE = 3,
}

export interface JournalHeader {
  version: 1;
  /** the target's path as given to apply */
  target: string;
  kind: TargetKind;
  /** the archive being applied when this journal was written */
  archiveId: string;
  sequence: number;
  /** the target's size before the apply (an image is put back to it) */
  prevSize: number;
  /** the state the target had before: rolling back restores it (null: none) */
  prevState: TargetState | null;
  /** the image was created by this apply: rolling back removes it (the journal then has no entries) */
  created: boolean;
  createdAt: string;
}

/** What the journal needs from the target: its fd (reads, SEEK_DATA/SEEK_HOLE) and kind. */
export interface JournaledTarget {
  readonly kind: TargetKind;
  readonly path: string;
  readonly fd: number;
  read(buf: Uint8Array, offset: number, length: number, position: number): Promise<number>;
}

function isAllZero(b: Uint8Array): boolean {
  const words = new BigUint64Array(b.buffer, b.byteOffset, Math.floor(b.byteLength / 8));
  if (b.byteOffset % 8 === 0) {
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
    for (let i = words.length * 8; i < b.length; i++) if (b[i] !== 0) return false;
    return true;
  }
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function entryHeader(kind: EntryKind, offset: number, length: number, index: number): Buffer {
  const h = Buffer.alloc(ENTRY_HEADER);
  h.writeUInt32LE(ENTRY_MAGIC, 0);
  h.writeUInt8(kind, 4);
  h.writeBigUInt64LE(BigInt(offset), 8);
  h.writeBigUInt64LE(BigInt(length), 16);
  h.writeBigUInt64LE(BigInt(index), 24);
  return h;
}

/** Test-only hooks (set by the CLI from THINARCHIVE_TEST_KILL_AFTER_WRITES, see docs/JOURNAL.md). */
export const journalHooks: { afterFlush?: () => void } = {};

export class UndoJournal {
  /** entries appended (written to the file) */
  private appended = 0;
  /** entries known durable */
  private flushed = 0;
  private flushing: Promise<void> | null = null;
  /** serializes appends */
  private tail: Promise<unknown> = Promise.resolve();
  private pos: number;
  /** queued protections by range, so that a range announced early is journaled once */
  private readonly pending = new Map<string, Promise<number>>();
  private failed: unknown;
  bytesJournaled = 0;
  entries = 0;

  private constructor(readonly path: string, readonly header: JournalHeader, private readonly fh: FileHandle, private readonly target: JournaledTarget, start: number) {
    this.pos = start;
  }

  /** Create the journal (replacing a stale one), write its header and make it durable (file and directory). */
  static async create(path: string, header: JournalHeader, target: JournaledTarget): Promise<UndoJournal> {
    await initHash();
    const json = Buffer.from(JSON.stringify(header), 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(json.length, 0);
    const sum = Buffer.alloc(8);
    sum.writeBigUInt64LE(xxh64Parts(MAGIC, len, json), 0);
    const all = Buffer.concat([MAGIC, len, json, sum]);
    let fh: FileHandle;
    try {
      await makeDirs(dirname(path));
      await rm(path, { force: true });
      fh = await open(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      await fh.write(all, 0, all.length, 0);
      await fh.sync();
      await fsyncDir(dirname(path));
    } catch (e) {
      throw ioError(e, `cannot create the undo journal ${path}`);
    }
    return new UndoJournal(path, header, fh, target, all.length);
  }

  /**
   * Announce that [offset, offset+length) will be written: its old contents are journaled in the
   * background (in order). Returns at once; protect() of the same range later waits for it.
   */
  announce(offset: number, length: number): void {
    const key = `${offset}:${length}`;
    if (this.pending.has(key)) return;
    const p = this.enqueue(offset, length);
    p.catch(() => {});
    this.pending.set(key, p);
  }

  /** Journal the old contents of the range (unless announced already) and wait until that is durable. */
  async protect(offset: number, length: number): Promise<void> {
    const key = `${offset}:${length}`;
    let p = this.pending.get(key);
    if (p) this.pending.delete(key);
    else p = this.enqueue(offset, length);
    const upTo = await p;
    await this.durable(upTo);
  }

  private enqueue(offset: number, length: number): Promise<number> {
    const p = this.tail.then(() => this.append(offset, length));
    this.tail = p.catch(() => {});
    return p;
  }

  /** Append the entries of one range; resolves to the number of entries appended after it. */
  private async append(offset: number, length: number): Promise<number> {
    if (this.failed) throw this.failed;
    try {
      // Past the old end of an image there is nothing to keep: rolling back truncates it away.
      const end = Math.min(offset + length, this.header.prevSize);
      let at = offset;
      const fd = this.target.fd;
      while (at < end) {
        if (this.target.kind === 'image') {
          const d = thinio().seekData(fd, at);
          if (d < 0 || d >= end) {
            await this.writeEntry(EntryKind.HOLE, at, end - at);
            break;
          }
          if (d > at) {
            await this.writeEntry(EntryKind.HOLE, at, d - at);
            at = d;
          }
          let h = thinio().seekHole(fd, at);
          if (h < 0 || h > end) h = end;
          while (at < h) {
            const n = Math.min(MAX_ENTRY, h - at);
            await this.journalBytes(at, n);
            at += n;
          }
        } else {
          const n = Math.min(MAX_ENTRY, end - at);
          await this.journalBytes(at, n);
          at += n;
        }
      }
      return this.appended;
    } catch (e) {
      this.failed ??= e;
      throw e;
    }
  }

  private async journalBytes(offset: number, n: number): Promise<void> {
    const buf = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      const r = await this.target.read(buf, got, n - got, offset + got);
      if (r === 0) break;
      got += r;
    }
    if (got < n) buf.fill(0, got); // past the end of the file reads as zeroes
    if (isAllZero(buf)) await this.writeEntry(EntryKind.ZERO, offset, n);
    else await this.writeEntry(EntryKind.DATA, offset, n, buf);
  }

  private async writeEntry(kind: EntryKind, offset: number, length: number, payload?: Buffer): Promise<void> {
    const h = entryHeader(kind, offset, length, this.appended);
    const sum = Buffer.alloc(ENTRY_TRAILER);
    sum.writeBigUInt64LE(payload ? xxh64Parts(h, payload) : xxh64Parts(h), 0);
    const parts = payload ? [h, payload, sum] : [h, sum];
    const total = ENTRY_HEADER + (payload?.length ?? 0) + ENTRY_TRAILER;
    try {
      let written = 0;
      const { bytesWritten } = await this.fh.writev(parts, this.pos);
      written = bytesWritten;
      if (written !== total) {
        const all = Buffer.concat(parts);
        while (written < total) {
          const r = await this.fh.write(all, written, total - written, this.pos + written);
          if (r.bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
          written += r.bytesWritten;
        }
      }
    } catch (e) {
      throw ioError(e, `cannot write the undo journal ${this.path}`);
    }
    this.pos += total;
    this.appended++;
    this.entries++;
    if (payload) this.bytesJournaled += payload.length;
  }

  /** Wait until the first `upTo` entries are durable (one flush covers everything appended so far). */
  private async durable(upTo: number): Promise<void> {
    while (this.flushed < upTo) {
      if (this.flushing) {
        await this.flushing;
        continue;
      }
      const covering = this.appended;
      this.flushing = this.fh.datasync().then(
        () => {
          this.flushed = Math.max(this.flushed, covering);
          journalHooks.afterFlush?.();
        },
        (e) => {
          throw ioError(e, `cannot flush the undo journal ${this.path}`);
        },
      ).finally(() => {
        this.flushing = null;
      });
      await this.flushing;
    }
  }

  private closed = false;

  /** Close the file (the journal stays). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.tail;
    await this.fh.close().catch(() => {});
  }

  /** The apply succeeded and its state is durable: close and remove the journal. */
  async discard(): Promise<void> {
    await this.close();
    await removeJournal(this.path);
  }
}

export async function removeJournal(path: string): Promise<void> {
  try {
    await rm(path, { force: true });
    await fsyncDir(dirname(path));
  } catch (e) {
    throw ioError(e, `cannot remove the undo journal ${path}`);
  }
}

export async function journalExists(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

interface EntryRef {
  kind: EntryKind;
  offset: number;
  length: number;
  /** file offset of the payload */
  at: number;
}

export interface ReadJournal {
  header: JournalHeader;
  entries: EntryRef[];
  /** bytes at the end that did not form a valid entry (a torn tail: ignored) */
  tornBytes: number;
}

/** Read and check a journal: the header must be valid; entries are read up to the first invalid one. */
export async function readJournal(path: string): Promise<ReadJournal> {
  await initHash();
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw ioError(e, `cannot open the undo journal ${path}`);
  }
  try {
    const size = (await fh.stat()).size;
    const bad = (why: string): UnsafeError => new UnsafeError('JOURNAL_CORRUPT', `undo journal ${path}: ${why}; cannot roll back with it`);
    const fixed = Buffer.alloc(12);
    if ((await fh.read(fixed, 0, 12, 0)).bytesRead < 12 || !fixed.subarray(0, 8).equals(MAGIC)) throw bad('not an undo journal (bad magic)');
    const jlen = fixed.readUInt32LE(8);
    if (jlen > MAX_HEADER_JSON || 12 + jlen + 8 > size) throw bad('torn or oversized header');
    const rest = Buffer.alloc(jlen + 8);
    await fh.read(rest, 0, rest.length, 12);
    const json = rest.subarray(0, jlen);
    if (rest.readBigUInt64LE(jlen) !== xxh64Parts(MAGIC, fixed.subarray(8, 12), json)) throw bad('header checksum mismatch');
    let header: JournalHeader;
    try {
      header = JSON.parse(json.toString('utf8')) as JournalHeader;
    } catch {
      throw bad('header is not JSON');
    }
    if (header.version !== 1 || typeof header.archiveId !== 'string' || !Number.isSafeInteger(header.prevSize)) throw bad('unknown header');
    const entries: EntryRef[] = [];
    let pos = 12 + jlen + 8;
    const eh = Buffer.alloc(ENTRY_HEADER);
    const sum = Buffer.alloc(ENTRY_TRAILER);
    while (pos + ENTRY_HEADER + ENTRY_TRAILER <= size) {
      await fh.read(eh, 0, ENTRY_HEADER, pos);
      if (eh.readUInt32LE(0) !== ENTRY_MAGIC) break;
      const kind = eh.readUInt8(4) as EntryKind;
      const offset = Number(eh.readBigUInt64LE(8));
      const length = Number(eh.readBigUInt64LE(16));
      const index = Number(eh.readBigUInt64LE(24));
      if (kind !== EntryKind.DATA && kind !== EntryKind.ZERO && kind !== EntryKind.HOLE) break;
      if (index !== entries.length || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length)) break;
      const plen = kind === EntryKind.DATA ? length : 0;
      if (plen > MAX_ENTRY || pos + ENTRY_HEADER + plen + ENTRY_TRAILER > size) break;
      const payload = Buffer.alloc(plen);
      if (plen) await fh.read(payload, 0, plen, pos + ENTRY_HEADER);
      await fh.read(sum, 0, ENTRY_TRAILER, pos + ENTRY_HEADER + plen);
      if (sum.readBigUInt64LE(0) !== (plen ? xxh64Parts(eh, payload) : xxh64Parts(eh))) break;
      entries.push({ kind, offset, length, at: pos + ENTRY_HEADER });
      pos += ENTRY_HEADER + plen + ENTRY_TRAILER;
    }
    return { header, entries, tornBytes: size - pos };
  } finally {
    await fh.close();
  }
}

/** What rolling back needs from the target. */
export interface RollbackTarget extends JournaledTarget {
  write(buf: Uint8Array, position: number): Promise<void>;
  zero(offset: number, length: number): Promise<void>;
  /** make an image exactly this size (block devices: no-op) */
  setSize(size: number): Promise<void>;
  sync(): Promise<void>;
}

/** Replay a journal onto its target, newest entry first; then flush the target. Returns the bytes restored. */
export async function replayJournal(path: string, j: ReadJournal, target: RollbackTarget): Promise<{ entries: number; bytes: number }> {
  if (target.kind === 'image') await target.setSize(j.header.prevSize);
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw ioError(e, `cannot open the undo journal ${path}`);
  }
  let bytes = 0;
  try {
    for (let i = j.entries.length - 1; i >= 0; i--) {
      const e = j.entries[i]!;
      if (e.kind === EntryKind.DATA) {
        const buf = Buffer.alloc(e.length);
        const { bytesRead } = await fh.read(buf, 0, e.length, e.at);
        if (bytesRead !== e.length) throw new ThinarchiveError('JOURNAL_READ', `undo journal ${path}: short read at ${e.at}`);
        await target.write(buf, e.offset);
      } else if (e.kind === EntryKind.HOLE && target.kind === 'image') {
        try {
          thinio().punchHole(target.fd, e.offset, e.length);
        } catch {
          await target.zero(e.offset, e.length);
        }
      } else {
        await target.zero(e.offset, e.length);
      }
      bytes += e.length;
    }
  } finally {
    await fh.close();
  }
  await target.sync();
  return { entries: j.entries.length, bytes };
}
