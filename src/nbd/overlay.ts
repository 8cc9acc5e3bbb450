/**
 * A copy-on-write overlay over a read-only export (serve --writable): writes land in a sparse file,
 * an interval list (sorted, merged runs; nothing per block) says which bytes the overlay holds and
 * which it has zeroed (TRIM, WRITE_ZEROES: no bytes stored). Reads combine the overlay and the
 * export below; the export below is never written. Writes are aligned to 4 KiB granules: a partial
 * granule is read (through the overlay) and completed first.
 *
 * An overlay is either discarded (close: the file is deleted) or kept (keep: the file is synced and
 * left; `runs` says what it holds), and a kept one is resumed from its file and runs (resume).
 * Where the runs are recorded is the caller's business (serve --keep-overlay: a JSON sidecar).
 */
import { open, unlink, type FileHandle } from 'node:fs/promises';
import type { NbdExport, NbdPiece, NbdRead } from './server.js';

const G = 4096;
const DATA = 1;
const ZERO = 2;

/** What an overlay holds, as [offset, length] runs in byte order: bytes written, and ranges zeroed. */
export interface OverlayRuns {
  data: [number, number][];
  zero: [number, number][];
}

/**
 * Why `runs` cannot be the runs of an overlay of `size` bytes (undefined when they can): every run
 * is a pair of non-negative integers with a length over 0, inside [0, size), starting and ending on
 * a 4 KiB boundary (or at `size`), and no two runs (of either list) overlap.
 */
export function checkOverlayRuns(runs: OverlayRuns, size: number): string | undefined {
  const all: [number, number][] = [];
  for (const key of ['data', 'zero'] as const) {
    const list: unknown = runs[key];
    if (!Array.isArray(list)) return `"${key}" is not a list`;
    for (const r of list as unknown[]) {
      if (!Array.isArray(r) || r.length !== 2 || !r.every((x) => Number.isSafeInteger(x) && (x as number) >= 0)) return `"${key}" has a run that is not [offset, length]: ${JSON.stringify(r)}`;
      const [o, n] = r as [number, number];
      if (n === 0 || o + n > size) return `"${key}" run [${o}, ${n}] is empty or past the end (${size} bytes)`;
      if (o % G !== 0 || ((o + n) % G !== 0 && o + n !== size)) return `"${key}" run [${o}, ${n}] is not on ${G}-byte boundaries`;
      all.push([o, o + n]);
    }
  }
  all.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < all.length; i++) if (all[i][0] < all[i - 1][1]) return `runs overlap at byte ${all[i][0]}`;
  return undefined;
}

/** Sorted, non-overlapping, merged runs [start, end) with a kind. */
export class IntervalMap {
  starts: number[] = [];
  ends: number[] = [];
  kinds: number[] = [];

  /** Index of the first run that ends after `pos`. */
  private first(pos: number): number {
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.ends[mid] <= pos) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  set(start: number, end: number, kind: number): void {
    let i = this.first(start);
    const ns: number[] = [];
    const ne: number[] = [];
    const nk: number[] = [];
    let j = i;
    // Runs overlapping [start, end): keep their parts outside it.
    while (j < this.starts.length && this.starts[j] < end) {
      if (this.starts[j] < start) { ns.push(this.starts[j]); ne.push(start); nk.push(this.kinds[j]); }
      j++;
    }
    ns.push(start); ne.push(end); nk.push(kind);
    if (j > i && this.ends[j - 1] > end) { ns.push(end); ne.push(this.ends[j - 1]); nk.push(this.kinds[j - 1]); }
    this.starts.splice(i, j - i, ...ns);
    this.ends.splice(i, j - i, ...ne);
    this.kinds.splice(i, j - i, ...nk);
    // Merge touching runs of one kind around what changed.
    i = Math.max(0, i - 1);
    const stop = Math.min(this.starts.length - 1, i + ns.length + 1);
    for (let k = stop; k > i; k--) {
      if (this.ends[k - 1] === this.starts[k] && this.kinds[k - 1] === this.kinds[k]) {
        this.ends[k - 1] = this.ends[k];
        this.starts.splice(k, 1);
        this.ends.splice(k, 1);
        this.kinds.splice(k, 1);
      }
    }
  }

  /** [start, end) split into runs: kind 0 where the map has nothing. */
  split(start: number, end: number): { start: number; end: number; kind: number }[] {
    const out: { start: number; end: number; kind: number }[] = [];
    let p = start;
    for (let i = this.first(start); p < end; i++) {
      if (i >= this.starts.length || this.starts[i] >= end) {
        out.push({ start: p, end, kind: 0 });
        break;
      }
      if (this.starts[i] > p) out.push({ start: p, end: this.starts[i], kind: 0 });
      const s = Math.max(p, this.starts[i]);
      const e = Math.min(end, this.ends[i]);
      out.push({ start: s, end: e, kind: this.kinds[i] });
      p = e;
    }
    return out;
  }

  get runs(): number {
    return this.starts.length;
  }

  /** The runs of one kind as [offset, length] pairs, in order. */
  list(kind: number): [number, number][] {
    const out: [number, number][] = [];
    for (let i = 0; i < this.starts.length; i++) if (this.kinds[i] === kind) out.push([this.starts[i], this.ends[i] - this.starts[i]]);
    return out;
  }
}

export class OverlayExport implements NbdExport {
  readonly name: string;
  readonly description: string;
  readonly size: number;
  readonly preferredBlock: number;
  private readonly map = new IntervalMap();
  private lock: Promise<void> = Promise.resolve();

  private constructor(private readonly base: NbdExport, private readonly fh: FileHandle, readonly path: string) {
    this.name = base.name;
    this.description = `${base.description} (writable overlay)`;
    this.size = base.size;
    this.preferredBlock = Math.max(G, base.preferredBlock);
  }

  /** Create the overlay file at `path` (it must not exist); it is deleted by close(), left by keep(). */
  static async create(base: NbdExport, path: string): Promise<OverlayExport> {
    const fh = await open(path, 'wx+', 0o600);
    await fh.truncate(base.size);
    return new OverlayExport(base, fh, path);
  }

  /**
   * Resume an overlay kept at `path` holding `runs` (checked: checkOverlayRuns). The file must be
   * the export's size. Fails (nothing changed) when the runs are invalid or the file is not right.
   */
  static async resume(base: NbdExport, path: string, runs: OverlayRuns): Promise<OverlayExport> {
    const bad = checkOverlayRuns(runs, base.size);
    if (bad) throw new Error(bad);
    const fh = await open(path, 'r+');
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new Error(`${path} is not a regular file`);
      if (st.size !== base.size) throw new Error(`${path} is ${st.size} bytes, not the volume's ${base.size}`);
    } catch (e) {
      await fh.close();
      throw e;
    }
    const o = new OverlayExport(base, fh, path);
    const sorted = [...runs.data.map(([s, n]) => [s, s + n, DATA]), ...runs.zero.map(([s, n]) => [s, s + n, ZERO])].sort((a, b) => a[0] - b[0]);
    for (const [s, e, k] of sorted) o.map.set(s, e, k); // in order: each set appends
    return o;
  }

  /** Bytes the overlay holds or has zeroed, as runs (for reporting). */
  get overlayRuns(): number {
    return this.map.runs;
  }

  /** What the overlay holds now (after the writes so far). */
  runs(): OverlayRuns {
    return { data: this.map.list(DATA), zero: this.map.list(ZERO) };
  }

  async read(offset: number, length: number): Promise<NbdRead> {
    const out: NbdPiece[] = [];
    const releases: (() => void)[] = [];
    const release = (): void => {
      for (const r of releases.splice(0)) r();
    };
    try {
      for (const r of this.map.split(offset, offset + length)) {
        if (r.kind === ZERO) out.push({ offset: r.start, hole: r.end - r.start });
        else if (r.kind === DATA) {
          const b = Buffer.allocUnsafe(r.end - r.start);
          const { bytesRead } = await this.fh.read(b, 0, b.length, r.start);
          if (bytesRead < b.length) b.fill(0, bytesRead);
          out.push({ offset: r.start, data: b });
        } else {
          const got = await this.base.read(r.start, r.end - r.start);
          if (got.release) releases.push(got.release);
          out.push(...got.pieces);
        }
      }
    } catch (e) {
      release();
      throw e;
    }
    return { pieces: out, release };
  }

  async status(offset: number, length: number): Promise<{ length: number; hole: boolean }[]> {
    const out: { length: number; hole: boolean }[] = [];
    const add = (n: number, hole: boolean): void => {
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += n;
      else out.push({ length: n, hole });
    };
    for (const r of this.map.split(offset, offset + length)) {
      if (r.kind === 0) for (const s of await this.base.status(r.start, r.end - r.start)) add(s.length, s.hole);
      else add(r.end - r.start, r.kind === ZERO);
    }
    return out;
  }

  /** Run `fn` after every write before it (writes read-modify-write granules). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const r = this.lock.then(fn);
    this.lock = r.then(() => {}, () => {});
    return r;
  }

  /** The bytes of [start, end) as the client sees them now. */
  private async current(start: number, end: number): Promise<Buffer> {
    const b = Buffer.alloc(end - start);
    const r = await this.read(start, end - start);
    for (const p of r.pieces) if ('data' in p) b.set(p.data, p.offset - start);
    r.release?.();
    return b;
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.serial(async () => {
      const end = offset + data.length;
      const a = Math.floor(offset / G) * G;
      const b = Math.min(this.size, Math.ceil(end / G) * G);
      let buf: Buffer;
      if (a === offset && b === end) buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      else {
        buf = Buffer.alloc(b - a);
        if (a < offset) buf.set(await this.current(a, Math.min(a + G, b)), 0);
        if (end < b) {
          const t = Math.max(a, b - G);
          buf.set(await this.current(t, b), t - a);
        }
        buf.set(data, offset - a);
      }
      let at = 0;
      while (at < buf.length) at += (await this.fh.write(buf, at, buf.length - at, a + at)).bytesWritten;
      this.map.set(a, b, DATA);
    });
  }

  async zero(offset: number, length: number): Promise<void> {
    const end = offset + length;
    const a = Math.ceil(offset / G) * G;
    const b = end === this.size ? end : Math.floor(end / G) * G;
    if (a >= b) return this.write(offset, new Uint8Array(length));
    if (offset < a) await this.write(offset, new Uint8Array(a - offset));
    await this.serial(async () => this.map.set(a, b, ZERO));
    if (b < end) await this.write(b, new Uint8Array(end - b));
  }

  async flush(): Promise<void> {
    await this.serial(() => this.fh.sync());
  }

  /** Close and delete the overlay file: what was written is discarded. */
  async close(): Promise<void> {
    await this.lock;
    await this.fh.close().catch(() => {});
    await unlink(this.path).catch(() => {});
  }

  /** Let writes in progress finish, sync the file to disk and close it, leaving it in place; returns its runs. */
  async keep(): Promise<OverlayRuns> {
    await this.lock;
    try {
      await this.fh.sync();
    } finally {
      await this.fh.close();
    }
    return this.runs();
  }
}
