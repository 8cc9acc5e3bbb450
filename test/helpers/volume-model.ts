/**
 * A sparse image file that stands in for a thin volume in end-to-end tests, with a record of which
 * 64 KiB pool blocks changed since the last snapshot, so a test can write the thin_delta XML that
 * `thin_delta` would print for the change (see fixtures/thin-delta/v0.9-plain.xml).
 *
 * Model of a thin volume: a pool block is "mapped" once anything is written to it and "unmapped"
 * when it is discarded whole (here: a hole punched over the whole block). thin_delta reports, per
 * pool block, `different` (mapped before and after, contents changed), `right_only` (newly mapped)
 * and `left_only` (mapped before, unmapped now).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { mulberry32Float } from '../../scripts/lib/prng.mjs';

export const POOL_BLOCK = 64 * 1024;

/** Small deterministic PRNG (mulberry32): floats in [0, 1). */
export const prng = mulberry32Float;

const WORDS = (
  'thin pool volume snapshot archive block extent metadata chain sequence parent device mapper ' +
  'logical physical sector zero hole discard compress checksum verify apply send store backup ' +
  'restore journal inode superblock transaction kernel the a of and to in is for on with'
).split(' ');

/** Compressible text (words from a small vocabulary, numbered lines). */
export function textBytes(rand: () => number, n: number): Buffer {
  const parts: string[] = [];
  let len = 0;
  let line = 0;
  while (len < n) {
    const words: string[] = [`${line++}:`];
    const k = 4 + Math.floor(rand() * 10);
    for (let i = 0; i < k; i++) words.push(WORDS[Math.floor(rand() * WORDS.length)]);
    const s = words.join(' ') + '\n';
    parts.push(s);
    len += s.length;
  }
  return Buffer.from(parts.join('')).subarray(0, n);
}

/** Incompressible bytes. */
export function noiseBytes(n: number): Buffer {
  return randomBytes(n);
}

export type Change = 'data' | 'unmap';

export class VolumeModel {
  readonly blocks: number;
  /** Per pool block: mapped (1) or not (0), now. */
  private mapped: Uint8Array;
  /** Per pool block: mapped at the last snapshot. */
  private mappedAtSnap: Uint8Array;
  /** Pool blocks changed since the last snapshot. */
  private changed = new Set<number>();
  private fd: number;

  constructor(readonly path: string, readonly size: number, create = true) {
    this.blocks = Math.ceil(size / POOL_BLOCK);
    this.mapped = new Uint8Array(this.blocks);
    this.mappedAtSnap = new Uint8Array(this.blocks);
    this.fd = openSync(path, create ? 'w+' : 'r+');
    if (create) ftruncateSync(this.fd, size);
  }

  private touch(offset: number, length: number): void {
    const first = Math.floor(offset / POOL_BLOCK);
    const last = Math.floor((offset + length - 1) / POOL_BLOCK);
    for (let b = first; b <= last; b++) {
      this.mapped[b] = 1;
      this.changed.add(b);
    }
  }

  write(offset: number, buf: Buffer): void {
    if (offset < 0 || offset + buf.length > this.size) throw new Error(`write ${offset}+${buf.length} outside the volume`);
    let at = 0;
    while (at < buf.length) at += writeSync(this.fd, buf, at, buf.length - at, offset + at);
    this.touch(offset, buf.length);
  }

  /** Write zeroes (the blocks stay mapped: a thin volume allocates on any write). */
  writeZeroes(offset: number, length: number): void {
    this.write(offset, Buffer.alloc(length));
  }

  /**
   * Punch a hole. Whole pool blocks inside the range become unmapped (a discard); pool blocks only
   * partly covered stay mapped with zeroes in part (a change of contents).
   */
  punch(offset: number, length: number): void {
    execFileSync('fallocate', ['-p', '-o', String(offset), '-l', String(length), this.path]);
    const end = offset + length;
    const first = Math.floor(offset / POOL_BLOCK);
    const last = Math.floor((end - 1) / POOL_BLOCK);
    for (let b = first; b <= last; b++) {
      const bs = b * POOL_BLOCK;
      const be = Math.min(bs + POOL_BLOCK, this.size);
      if (offset <= bs && end >= be) {
        this.mapped[b] = 0;
        this.changed.add(b);
      } else if (this.mapped[b]) {
        this.changed.add(b);
      }
    }
  }

  isMapped(block: number): boolean {
    return this.mapped[block] === 1;
  }

  /** Pool blocks mapped now. */
  mappedBlocks(): number[] {
    const out: number[] = [];
    for (let b = 0; b < this.blocks; b++) if (this.mapped[b]) out.push(b);
    return out;
  }

  /** Pool blocks changed since the last snapshot, with what thin_delta would say about each. */
  changes(): Map<number, 'different' | 'right_only' | 'left_only'> {
    const out = new Map<number, 'different' | 'right_only' | 'left_only'>();
    for (const b of [...this.changed].sort((x, y) => x - y)) {
      const before = this.mappedAtSnap[b] === 1;
      const now = this.mapped[b] === 1;
      if (before && now) out.set(b, 'different');
      else if (!before && now) out.set(b, 'right_only');
      else if (before && !now) out.set(b, 'left_only');
      // unmapped before and after: no change
    }
    return out;
  }

  /**
   * The thin_delta XML (0.9 plain form) of the changes since the last snapshot, and take a new
   * snapshot. `extra` can force blocks to a kind (e.g. report zeroed blocks as left_only).
   */
  snapshotDelta(extra: Map<number, 'different' | 'right_only' | 'left_only'> = new Map()): string {
    const ch = this.changes();
    for (const [b, k] of extra) ch.set(b, k);
    const xml = thinDeltaXml(ch, this.blocks);
    this.mappedAtSnap = this.mapped.slice();
    this.changed.clear();
    return xml;
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** thin_delta's plain XML for per-block kinds: adjacent blocks of one kind merged, `same` in the gaps. */
export function thinDeltaXml(kinds: Map<number, string>, volumeBlocks: number): string {
  const lines = [
    `<superblock uuid="" time="3" transaction="7" data_block_size="128" nr_data_blocks="${volumeBlocks * 2}">`,
    '  <diff left="1" right="2">',
  ];
  const sorted = [...kinds.entries()].sort((a, b) => a[0] - b[0]);
  let pos = 0;
  let i = 0;
  while (i < sorted.length) {
    const [begin, kind] = sorted[i];
    let j = i + 1;
    while (j < sorted.length && sorted[j][0] === sorted[j - 1][0] + 1 && sorted[j][1] === kind) j++;
    if (begin > pos) lines.push(`    <same begin="${pos}" length="${begin - pos}"/>`);
    lines.push(`    <${kind} begin="${begin}" length="${j - i}"/>`);
    pos = begin + (j - i);
    i = j;
  }
  lines.push('  </diff>', '</superblock>', '');
  return lines.join('\n');
}
