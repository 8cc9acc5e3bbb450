/**
 * The map of a thin snapshot from pool metadata: thin_delta from a base snapshot (incremental) or
 * thin_dump of the snapshot (full: mapped blocks only), read under a reserved metadata snapshot
 * (lvm/metadata-snap.ts) into temporary files, then streamed as archive extents.
 */
import type { MapExtent } from '../format/types.js';
import { ExtentKind } from '../format/constants.js';
import { volumeBlocks } from '../format/types.js';
import { ThinarchiveError } from '../errors.js';
import type { Logger } from '../log.js';
import type { LvmExec } from '../lvm/exec.js';
import { withMetadataSnapshot } from '../lvm/metadata-snap.js';
import { openThinDelta } from '../lvm/thin-delta.js';
import { openThinDump } from '../lvm/thin-dump.js';
import { thinDelta, thinDump, type ToolOutput } from '../lvm/tools.js';
import { poolFileExtents, type PoolRange } from './extents.js';

/** What to map: a snapshot (thin id) of a pool, against a base snapshot or (base null) on its own. */
export interface ThinMapRequest {
  vg: string;
  pool: string;
  /** the pool's chunk size in bytes (the metadata must agree) */
  chunk: number;
  blockSize: number;
  volumeSize: number;
  snapThinId: number;
  base: { thinId: number; sizeBytes: number } | null;
}

export interface ThinMapOptions {
  exec: LvmExec;
  logger: Logger;
  signal?: AbortSignal;
  stateDir?: string;
  /** release a metadata snapshot held by another program */
  forceRelease?: boolean;
  lockTimeoutMs?: number;
  /** where the temporary XML files go */
  tmpDir?: string;
}

/** A snapshot's map, held in temporary files until `remove`. `extents()` may be called more than once. */
export interface ThinMap {
  extents(): AsyncGenerator<MapExtent>;
  remove(): Promise<void>;
}

async function* asData(ranges: AsyncIterable<{ begin: number; length: number }>): AsyncGenerator<PoolRange> {
  for await (const r of ranges) yield { begin: r.begin, length: r.length, kind: 'data' };
}

/** The first archive block of the area an incremental takes from thin_dump (past the base's end), or null. */
function grownFrom(t: ThinMapRequest): number | null {
  if (!t.base || t.base.sizeBytes >= t.volumeSize) return null;
  return Math.floor(t.base.sizeBytes / t.blockSize);
}

type MapFiles = { main: ToolOutput; grown: ToolOutput | null };

/** Run thin_delta / thin_dump for one request under a held metadata snapshot. */
async function mapFiles(t: ThinMapRequest, tmeta: string, run: { exec: LvmExec; signal: AbortSignal; dir?: string }): Promise<MapFiles> {
  if (!t.base) return { main: await thinDump(tmeta, t.snapThinId, run), grown: null };
  const main = await thinDelta(tmeta, t.base.thinId, t.snapThinId, run);
  try {
    return { main, grown: grownFrom(t) === null ? null : await thinDump(tmeta, t.snapThinId, run) };
  } catch (e) {
    await main.remove();
    throw e;
  }
}

function mapOf(t: ThinMapRequest, files: MapFiles): ThinMap {
  return {
    extents: () => {
      const from = grownFrom(t);
      if (files.grown && from !== null) {
        return grownExtents(mapFile(t, files.main.path, t.base), mapFile(t, files.grown.path, null), from, volumeBlocks(t.volumeSize, t.blockSize));
      }
      return mapFile(t, files.main.path, t.base);
    },
    remove: async () => {
      await files.main.remove();
      await files.grown?.remove();
    },
  };
}

/** Reserve the pool's metadata snapshot, run thin_delta / thin_dump into temporary files, release it. */
export async function readThinMap(t: ThinMapRequest, o: ThinMapOptions): Promise<ThinMap> {
  return (await readThinMaps([t], o))[0]!;
}

/**
 * The maps of several snapshots (a consistency group): one metadata-snapshot reservation per pool
 * serves every request of that pool. Returned in the order of `ts`; on failure nothing is left behind.
 */
export async function readThinMaps(ts: readonly ThinMapRequest[], o: ThinMapOptions): Promise<ThinMap[]> {
  const out: (ThinMap | undefined)[] = new Array<ThinMap | undefined>(ts.length);
  const pools = new Map<string, number[]>();
  ts.forEach((t, i) => {
    const k = `${t.vg}/${t.pool}`;
    pools.set(k, [...(pools.get(k) ?? []), i]);
  });
  try {
    for (const idx of pools.values()) {
      const first = ts[idx[0]!]!;
      await withMetadataSnapshot({ vg: first.vg, pool: first.pool }, {
        ...(o.stateDir !== undefined ? { stateDir: o.stateDir } : {}),
        force: !!o.forceRelease, logger: o.logger, exec: o.exec,
        ...(o.lockTimeoutMs !== undefined ? { lockTimeoutMs: o.lockTimeoutMs } : {}),
        ...(o.signal ? { signal: o.signal } : {}),
      }, async (tmeta, held): Promise<void> => {
        const signal = o.signal ? AbortSignal.any([o.signal, held.signal]) : held.signal;
        const run = { exec: o.exec, signal, ...(o.tmpDir !== undefined ? { dir: o.tmpDir } : {}) };
        for (const i of idx) out[i] = mapOf(ts[i]!, await mapFiles(ts[i]!, tmeta, run));
      });
    }
  } catch (e) {
    for (const m of out) await m?.remove().catch(() => undefined);
    throw e;
  }
  return out as ThinMap[];
}

/**
 * An incremental of a volume grown since its base: the delta's extents before block `from`, then the
 * new snapshot's whole map from there (mapped: DATA, the rest: UNMAP). The delta alone is not enough
 * there: the area past the base's end held whatever the target holds there (an image reads zeroes, an
 * LV target older data), and lvreduce keeps the pool's mappings past the new end, so a volume grown
 * again reads old data there that thin_delta calls `same`.
 */
async function* grownExtents(delta: AsyncIterable<MapExtent>, dump: AsyncIterable<MapExtent>, from: number, blocks: number): AsyncGenerator<MapExtent> {
  for await (const e of delta) {
    if (e.firstBlock >= from) continue;
    yield { ...e, blockCount: Math.min(e.blockCount, from - e.firstBlock) };
  }
  let at = from;
  for await (const e of dump) {
    const end = e.firstBlock + e.blockCount;
    if (end <= from) continue;
    const first = Math.max(e.firstBlock, from);
    if (first > at) yield { firstBlock: at, blockCount: first - at, kind: ExtentKind.UNMAP };
    yield { firstBlock: first, blockCount: end - first, kind: ExtentKind.DATA };
    at = end;
  }
  if (at < blocks) yield { firstBlock: at, blockCount: blocks - at, kind: ExtentKind.UNMAP };
}

/** The extents of one map file: a thin_delta from `base` to the snapshot, or (base null) its thin_dump. */
function mapFile(t: ThinMapRequest, file: string, base: { thinId: number } | null): AsyncGenerator<MapExtent> {
  const { blockSize, volumeSize } = t;
  const checkChunk = (bytes: number): void => {
    if (bytes !== t.chunk) {
      throw new ThinarchiveError('POOL_CHUNK_MISMATCH', `${file}: the pool metadata says blocks of ${bytes} bytes, lvs says the pool's chunk size is ${t.chunk}`);
    }
  };
  if (base) {
    return poolFileExtents(file, async (stream) => {
      const d = await openThinDelta(stream, { file });
      checkChunk(d.header.blockSizeBytes);
      if ((d.header.snap1 !== undefined && d.header.snap1 !== base.thinId) || (d.header.snap2 !== undefined && d.header.snap2 !== t.snapThinId)) {
        throw new ThinarchiveError('DELTA_DEVICES', `${file}: thin_delta compared devices ${d.header.snap1} and ${d.header.snap2}, not ${base.thinId} and ${t.snapThinId}`);
      }
      return { poolBytes: d.header.blockSizeBytes, ranges: d.ranges };
    }, blockSize, volumeSize);
  }
  return poolFileExtents(file, async (stream) => {
    const d = await openThinDump(stream, { devId: t.snapThinId, file });
    checkChunk(d.header.blockSizeBytes);
    return { poolBytes: d.header.blockSizeBytes, ranges: asData(d.ranges) };
  }, blockSize, volumeSize);
}
