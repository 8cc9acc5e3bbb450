/**
 * serve STORE [--at POINT] (--socket PATH | --listen HOST:PORT) [--writable]: the volume as of any
 * point of a chain, served over NBD without restoring it. The chain is resolved once (openChain); an
 * export is the volume at one point (selectPoint: the default export is --at, other names are a
 * sequence number, archive id or time), indexed on first use (ChainVolume) after the archives up to
 * the point are pre-flighted, and shared by every client of that point. With --writable each point
 * gets a copy-on-write overlay file (OverlayExport), deleted when the server stops, or with
 * --keep-overlay DIR kept there with a JSON sidecar and resumed by the next server (KeptOverlays):
 * the archives are only ever read. Runs until `signal` fires.
 */
import { mkdtemp, open, readdir, readFile, rm, stat, unlink } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { withPool, type WorkerPool } from '../archive/pool.js';
import { FormatError, ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import { fsyncDir, makeDirs, writeFileAtomic } from '../fsutil.js';
import { silentLogger, type Logger } from '../log.js';
import type { StoreOptions } from '../store/open.js';
import { openChain, selectPoint, type ChainArchive, type OpenedChain } from '../chain/chain.js';
import { ChainVolume } from '../chain/volume.js';
import { checkOverlayRuns, OverlayExport, type OverlayRuns } from '../nbd/overlay.js';
import { NbdServer, type ExportProvider, type ListenAddress, type NbdExport, type NbdServerStats } from '../nbd/server.js';

export interface ServeOptions {
  /** Store, chain directory or URL (as restore takes). */
  dir: string;
  /** The default export's point (sequence, archive id or time); default: the newest. */
  at?: string;
  /** A unix socket path ... */
  socket?: string;
  /** ... or `HOST:PORT` (`[v6]:PORT`; a bare `PORT` or `:PORT` is 127.0.0.1). Port 0 picks one. */
  listen?: string;
  /** Accept writes into a copy-on-write overlay (discarded when the server stops unless `keepOverlay`). */
  writable?: boolean;
  /** Where overlay files go (default: the system's temporary directory); not with `keepOverlay`. */
  overlayDir?: string;
  /**
   * With `writable`: keep each point's written overlay in this directory when the server stops (a
   * sparse file and a JSON sidecar, docs/NBD.md), and resume the overlays kept there before. Created
   * when missing. One directory belongs to one chain: a kept overlay of another chain, archive or
   * size (OVERLAY_MISMATCH), one unreadable (OVERLAY_INVALID) or one in use (OVERLAY_IN_USE) refuses
   * the start.
   */
  keepOverlay?: string;
  /** Decoded records cached per export (4 MiB each at most). Default 8. */
  cacheRecords?: number;
  /** Connections served at once. Default 128. */
  maxConnections?: number;
  signal?: AbortSignal;
  log?: Logger;
  storeOptions?: StoreOptions;
  /** Called once the server listens. */
  onListening?: (info: ServeListening) => void;
  /** A read failed and was answered EIO (once per distinct failure: a record failing again is not repeated). */
  onReadError?: (e: { exportName: string; offset: number; length: number; code?: string; message: string }) => void;
}

export interface ServeListening {
  /** `unix:PATH` or `HOST:PORT`. */
  address: string;
  /** The NBD URI of the default export (nbd+unix:///?socket=PATH or nbd://HOST:PORT). */
  uri: string;
  chainId: string;
  /** The default export's point. */
  sequence: number;
  archiveId: string;
  volumeSize: number;
  /** Every point, by sequence: the export names LIST shows besides the default (''). */
  points: number[];
  writable: boolean;
  /** With `keepOverlay`: the default export resumed an overlay kept there. */
  resumedOverlay: boolean;
}

/** An overlay kept in the `keepOverlay` directory when the server stopped. */
export interface KeptOverlay {
  sequence: number;
  archiveId: string;
  /** The sparse overlay file and its JSON sidecar. */
  overlay: string;
  sidecar: string;
  /** Bytes the overlay holds (written) and has zeroed. */
  dataBytes: number;
  zeroBytes: number;
}

/** What was served (the server's counters), where. */
export interface ServeResult extends NbdServerStats {
  address: string;
  chainId: string;
  /** With `keepOverlay`: the overlays kept (those written to; the others were removed). */
  keptOverlays: KeptOverlay[];
  /** With `keepOverlay`: overlays that could not be kept (disk full, I/O error); their lock stays. */
  keepFailures: KeepFailure[];
}

export interface KeepFailure {
  sequence: number;
  message: string;
}

/** `HOST:PORT`, `[V6]:PORT`, `:PORT` or `PORT` (loopback). */
export function parseListen(v: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d+)$/.exec(v) ?? /^()()(\d+)$/.exec(v);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !Number.isInteger(port) || port > 65535) throw new UsageError(`--listen ${JSON.stringify(v)}: want HOST:PORT (e.g. 127.0.0.1:10809)`);
  return { host: m[1] || m[2] || '127.0.0.1', port };
}

interface PointExport { exp: NbdExport; volume: ChainVolume; overlay?: OverlayExport; archive: ChainArchive }

const SIDECAR_VERSION = 1;

/** The sidecar of a kept overlay, `point-N.json` (docs/NBD.md, "Kept overlays"). */
interface OverlaySidecar extends OverlayRuns {
  version: number;
  chainId: string;
  archiveId: string;
  sequence: number;
  volumeSize: number;
  keptAt: string;
}

/**
 * The overlays of serve --keep-overlay DIR, one per point: `point-N.overlay` (the sparse file),
 * `point-N.json` (its sidecar, written atomically when the server stops) and `point-N.lock`
 * (created exclusively while a server uses the point's overlay). A sidecar is trusted only when no
 * lock is present; resuming deletes it, so an overlay left by a server that did not stop cleanly is
 * never read as if it were kept.
 */
class KeptOverlays {
  private constructor(readonly dir: string, private readonly chain: OpenedChain, private readonly log: Logger) {}

  /** Create DIR if missing and check every overlay kept there against the chain. */
  static async open(dir: string, chain: OpenedChain, log: Logger): Promise<KeptOverlays> {
    await makeDirs(dir, 0o700);
    const k = new KeptOverlays(dir, chain, log);
    const points = new Set<number>();
    for (const n of await readdir(dir)) {
      const m = /^point-(\d+)\.(overlay|json|lock)$/.exec(n);
      if (m) points.add(Number(m[1]));
    }
    for (const n of [...points].sort((a, b) => a - b)) await k.check(n, false);
    return k;
  }

  private path(n: number, ext: 'overlay' | 'json' | 'lock'): string {
    return join(this.dir, `point-${n}.${ext}`);
  }

  private invalid(n: number, ext: 'overlay' | 'json', why: string): FormatError {
    return new FormatError('OVERLAY_INVALID', `kept overlay ${this.path(n, ext)}: ${why}; delete ${this.path(n, 'overlay')} and ${this.path(n, 'json')} to discard it`);
  }

  /** The lock of point n, described as an error (someone holds it, or held it and died). */
  private async inUse(n: number): Promise<UnsafeError> {
    const lock = this.path(n, 'lock');
    let who = 'a server that did not record itself';
    let gone = false;
    try {
      const l = JSON.parse(await readFile(lock, 'utf8')) as { pid?: unknown; host?: unknown; startedAt?: unknown };
      if (typeof l.pid === 'number' && typeof l.host === 'string') {
        who = `server pid ${l.pid} on ${l.host} (since ${String(l.startedAt)})`;
        if (l.host === hostname()) {
          try {
            process.kill(l.pid, 0);
          } catch (e) {
            gone = (e as NodeJS.ErrnoException).code === 'ESRCH';
          }
        }
      }
    } catch {
      // unreadable: described as unknown
    }
    return new UnsafeError('OVERLAY_IN_USE', gone
      ? `kept overlay of point ${n} in ${this.dir}: ${who} did not stop cleanly, so what the overlay holds is unknown; delete ${join(this.dir, `point-${n}.*`)} to discard it`
      : `kept overlay of point ${n} in ${this.dir} is in use by ${who}; stop that server first (if it is gone, delete ${join(this.dir, `point-${n}.*`)} to discard the overlay)`);
  }

  /**
   * Check what DIR holds for point n: nothing (undefined), or a kept overlay of the point of this
   * chain (its sidecar). Throws OVERLAY_IN_USE, OVERLAY_INVALID or OVERLAY_MISMATCH. `locked`: the
   * caller holds the lock.
   */
  private async check(n: number, locked: boolean): Promise<OverlaySidecar | undefined> {
    const exists = (p: string): Promise<boolean> => stat(p).then(() => true, (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    });
    if (!locked && (await exists(this.path(n, 'lock')))) throw await this.inUse(n);
    const hasSidecar = await exists(this.path(n, 'json'));
    const overlay = await stat(this.path(n, 'overlay')).catch(() => undefined);
    if (!hasSidecar) {
      if (overlay) throw this.invalid(n, 'overlay', 'it has no sidecar (the server that wrote it did not stop cleanly: what it holds is unknown)');
      return undefined;
    }
    let side: OverlaySidecar;
    try {
      side = JSON.parse(await readFile(this.path(n, 'json'), 'utf8')) as OverlaySidecar;
    } catch (e) {
      throw this.invalid(n, 'json', `not valid JSON (${e instanceof SyntaxError ? 'truncated or damaged' : (e as Error).message})`);
    }
    if (typeof side !== 'object' || side === null || Array.isArray(side)) throw this.invalid(n, 'json', 'not a JSON object');
    if (side.version !== SIDECAR_VERSION) throw this.invalid(n, 'json', `version ${JSON.stringify(side.version)} is not supported (this thinarchive reads version ${SIDECAR_VERSION})`);
    for (const k of ['chainId', 'archiveId'] as const) if (typeof side[k] !== 'string' || side[k] === '') throw this.invalid(n, 'json', `"${k}" is missing or not a string`);
    if (side.sequence !== n) throw this.invalid(n, 'json', `"sequence" is ${JSON.stringify(side.sequence)}, not ${n} as its name says`);
    if (!Number.isSafeInteger(side.volumeSize) || side.volumeSize <= 0) throw this.invalid(n, 'json', '"volumeSize" is not a positive integer');
    const bad = checkOverlayRuns(side, side.volumeSize);
    if (bad) throw this.invalid(n, 'json', bad);
    const mismatch = (why: string): UnsafeError => new UnsafeError('OVERLAY_MISMATCH', `kept overlay ${this.path(n, 'json')} ${why}; refusing to serve it over another volume (use another --keep-overlay directory)`);
    if (side.chainId !== this.chain.chainId) throw mismatch(`is of chain ${side.chainId}, not of the chain served (${this.chain.chainId})`);
    const a = this.chain.archives.find((x) => x.point === n);
    if (!a) throw mismatch(`is of point ${n}, which the chain no longer has (points: ${this.chain.archives.map((x) => x.point).join(', ')})`);
    if (side.archiveId !== a.header.archiveId) throw mismatch(`was written over archive ${side.archiveId}, but point ${n} is now archive ${a.header.archiveId}`);
    if (side.volumeSize !== a.header.volumeSize) throw mismatch(`is of a ${side.volumeSize}-byte volume, but point ${n} is ${a.header.volumeSize} bytes`);
    if (!overlay) throw this.invalid(n, 'json', `its overlay file ${this.path(n, 'overlay')} is missing`);
    if (!overlay.isFile() || overlay.size !== side.volumeSize) throw this.invalid(n, 'overlay', `it is ${overlay.size} bytes, not ${side.volumeSize} (truncated or replaced)`);
    return side;
  }

  /** The overlay of point `a` over `base`: the one kept in DIR (resumed), or a new one. Holds its lock until finish(). */
  async open(base: NbdExport, a: ChainArchive): Promise<{ overlay: OverlayExport; resumed: boolean }> {
    const n = a.point;
    const lock = this.path(n, 'lock');
    try {
      const fh = await open(lock, 'wx', 0o600);
      try {
        await fh.writeFile(JSON.stringify({ version: 1, pid: process.pid, host: hostname(), startedAt: new Date().toISOString(), chainId: this.chain.chainId, archiveId: a.header.archiveId, sequence: n }) + '\n');
        await fh.sync();
      } finally {
        await fh.close();
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw await this.inUse(n);
      throw e;
    }
    try {
      await fsyncDir(this.dir);
      const side = await this.check(n, true);
      if (!side) return { overlay: await OverlayExport.create(base, this.path(n, 'overlay')), resumed: false };
      let overlay: OverlayExport;
      try {
        overlay = await OverlayExport.resume(base, this.path(n, 'overlay'), side);
      } catch (e) {
        throw this.invalid(n, 'overlay', (e as Error).message);
      }
      // From here the file changes: the sidecar no longer describes it until finish() writes a new one.
      try {
        await unlink(this.path(n, 'json'));
        await fsyncDir(this.dir);
      } catch (e) {
        await overlay.keep().catch(() => {}); // closes the file, untouched
        throw e;
      }
      this.log.info({ point: n, dir: this.dir, dataRuns: side.data.length, zeroRuns: side.zero.length }, 'kept overlay resumed');
      return { overlay, resumed: true };
    } catch (e) {
      await unlink(lock).catch(() => {});
      throw e;
    }
  }

  /** Keep the overlay of point `a` (sync, sidecar) if it holds anything, else remove it; then release the lock. */
  async finish(overlay: OverlayExport, a: ChainArchive): Promise<KeptOverlay | undefined> {
    const n = a.point;
    let kept: KeptOverlay | undefined;
    if (overlay.overlayRuns > 0) {
      const runs = await overlay.keep();
      const side: OverlaySidecar = {
        version: SIDECAR_VERSION, chainId: this.chain.chainId, archiveId: a.header.archiveId, sequence: n, volumeSize: overlay.size,
        keptAt: new Date().toISOString(), data: runs.data, zero: runs.zero,
      };
      await writeFileAtomic(this.path(n, 'json'), JSON.stringify(side) + '\n');
      const sum = (l: [number, number][]): number => l.reduce((t, r) => t + r[1], 0);
      kept = { sequence: n, archiveId: a.header.archiveId, overlay: this.path(n, 'overlay'), sidecar: this.path(n, 'json'), dataBytes: sum(runs.data), zeroBytes: sum(runs.zero) };
    } else await overlay.close();
    await unlink(this.path(n, 'lock'));
    await fsyncDir(this.dir);
    return kept;
  }
}

/** The exports of one chain: one per point, built on first use. */
class ChainExports implements ExportProvider {
  private readonly built = new Map<number, Promise<PointExport>>();
  private readonly preflighted = new Set<number>();
  private overlayDir: string | undefined;
  /** Points whose kept overlay was resumed. */
  readonly resumed = new Set<number>();

  constructor(
    private readonly chain: OpenedChain, private readonly pool: WorkerPool, private readonly defaultPoint: number,
    private readonly opts: ServeOptions, private readonly log: Logger, private readonly kept?: KeptOverlays,
  ) {}

  list(): { name: string; description: string }[] {
    const d = this.chain.archives[this.defaultPoint];
    return [
      { name: '', description: `default: point ${d.point} (archive ${d.header.archiveId})` },
      ...this.chain.archives.map((a) => ({ name: String(a.point), description: `point ${a.point}, archive ${a.header.archiveId}, created ${new Date(a.header.createdMs).toISOString()}` })),
    ];
  }

  /** The point an export name names; undefined when none. */
  private pointOf(name: string): number | undefined {
    if (name === '') return this.defaultPoint;
    try {
      return selectPoint(this.chain.archives, name);
    } catch (e) {
      if (e instanceof UsageError) return undefined;
      throw e;
    }
  }

  async open(name: string): Promise<NbdExport | undefined> {
    const i = this.pointOf(name);
    if (i === undefined) return undefined;
    let p = this.built.get(i);
    if (!p) {
      p = this.build(i);
      this.built.set(i, p);
      // A failed build (a damaged map or index) is tried again by the next client.
      p.catch(() => this.built.delete(i));
    }
    return (await p).exp;
  }

  private async build(i: number): Promise<PointExport> {
    const used = this.chain.archives.slice(0, i + 1);
    for (let k = 0; k <= i; k++) {
      if (this.preflighted.has(k)) continue;
      await used[k].file.preflight();
      this.preflighted.add(k);
    }
    const a = used[i];
    const volume = await ChainVolume.open(used.map((u) => u.file), this.pool, { cacheRecords: this.opts.cacheRecords });
    this.log.info({ point: a.point, archiveId: a.header.archiveId, indexRuns: volume.indexRuns }, 'export indexed');
    const base: NbdExport = {
      name: String(a.point),
      description: `thinarchive chain ${this.chain.chainId}, point ${a.point} (archive ${a.header.archiveId})`,
      size: volume.size,
      preferredBlock: Math.max(4096, Math.min(volume.blockSize, 65536)),
      read: (offset, length) => volume.read(offset, length),
      status: async (offset, length) => volume.extents(offset, length),
    };
    if (!this.opts.writable) return { exp: base, volume, archive: a };
    try {
      if (this.kept) {
        const { overlay, resumed } = await this.kept.open(base, a);
        if (resumed) this.resumed.add(a.point);
        return { exp: overlay, volume, overlay, archive: a };
      }
      this.overlayDir ??= await mkdtemp(join(this.opts.overlayDir ?? tmpdir(), 'thinarchive-overlay-'));
      const overlay = await OverlayExport.create(base, join(this.overlayDir, `point-${a.point}.overlay`));
      return { exp: overlay, volume, overlay, archive: a };
    } catch (e) {
      await volume.close();
      throw e;
    }
  }

  /**
   * Close every export: overlays are discarded, or with a keep directory kept. A failure to keep one
   * (its lock stays: the next server refuses it) is returned with the others kept, not thrown.
   */
  async close(): Promise<{ kept: KeptOverlay[]; failed: KeepFailure[] }> {
    const kept: KeptOverlay[] = [];
    const failed: KeepFailure[] = [];
    for (const p of this.built.values()) {
      const e = await p.catch(() => undefined);
      if (!e) continue;
      if (e.overlay && this.kept) {
        try {
          const k = await this.kept.finish(e.overlay, e.archive);
          if (k) kept.push(k);
          this.log.info({ point: e.archive.point, kept: !!k }, k ? 'overlay kept' : 'overlay not written: removed');
        } catch (err) {
          const message = err instanceof Error ? err.message : String(err);
          this.log.warn({ point: e.archive.point, err: message }, 'overlay could not be kept');
          failed.push({ sequence: e.archive.point, message });
        }
      } else await e.overlay?.close();
      this.log.info({ export: e.exp.name, decodes: e.volume.decodes }, 'export closed');
      await e.volume.close();
    }
    if (this.overlayDir) await rm(this.overlayDir, { recursive: true, force: true });
    return { kept, failed };
  }
}

export async function serve(opts: ServeOptions): Promise<ServeResult> {
  const log = opts.log ?? silentLogger;
  if ((opts.socket === undefined) === (opts.listen === undefined)) throw new UsageError('serve: give exactly one of --socket PATH and --listen HOST:PORT');
  const addr: ListenAddress = opts.socket !== undefined ? { socket: opts.socket } : parseListen(opts.listen!);
  if (opts.keepOverlay !== undefined && !opts.writable) throw new UsageError('serve: --keep-overlay needs --writable');
  if (opts.keepOverlay !== undefined && opts.overlayDir !== undefined) throw new UsageError('serve: give --keep-overlay DIR or --overlay-dir DIR, not both');
  if (opts.keepOverlay === '') throw new UsageError('serve: --keep-overlay needs a directory');
  const chain = await openChain(opts.dir, opts.storeOptions);
  try {
    const def = selectPoint(chain.archives, opts.at);
    const kept = opts.keepOverlay !== undefined ? await KeptOverlays.open(opts.keepOverlay, chain, log) : undefined;
    return await withPool(async (pool) => {
      const exports = new ChainExports(chain, pool, def, opts, log, kept);
      const told = new Set<string>();
      const server = new NbdServer(exports, {
        log, maxConnections: opts.maxConnections,
        onReadError: (e, exportName, offset, length) => {
          const code = e instanceof ThinarchiveError ? e.code : undefined;
          const message = e instanceof Error ? e.message : String(e);
          log.warn({ export: exportName, offset, length, code, err: message }, 'read failed: answered EIO');
          if (!told.has(message) && told.size < 1000) {
            told.add(message);
            opts.onReadError?.({ exportName, offset, length, code, message });
          }
        },
      });
      let shut: Promise<{ kept: KeptOverlay[]; failed: KeepFailure[] }> | undefined;
      const stop = (): Promise<{ kept: KeptOverlay[]; failed: KeepFailure[] }> => (shut ??= server.close().then(() => exports.close()));
      try {
        // The default export is built before listening: a damaged chain (or a kept overlay that
        // does not match) fails here, not per client.
        await exports.open('');
        opts.signal?.throwIfAborted();
        const address = await server.listen(addr);
        const d = chain.archives[def];
        opts.onListening?.({
          address,
          uri: 'socket' in addr ? `nbd+unix:///?socket=${addr.socket}` : `nbd://${address}`,
          chainId: chain.chainId, sequence: d.point, archiveId: d.header.archiveId, volumeSize: d.header.volumeSize,
          points: chain.archives.map((a) => a.point), writable: !!opts.writable, resumedOverlay: exports.resumed.has(d.point),
        });
        await new Promise<void>((resolve) => {
          if (!opts.signal) return; // runs until the process ends
          if (opts.signal.aborted) resolve();
          else opts.signal.addEventListener('abort', () => resolve(), { once: true });
        });
        const { kept: keptOverlays, failed: keepFailures } = await stop();
        return { address, chainId: chain.chainId, ...server.stats, keptOverlays, keepFailures };
      } finally {
        await stop();
      }
    });
  } finally {
    await chain.close();
  }
}
