/**
 * Classic (thick) LVs as sources of `send VG/LV` and `sync VG/LV` (docs/LVM.md, section 10). A classic
 * LV has no pool metadata to say what changed, so the chain's base is a classic (copy-on-write)
 * snapshot that doubles as the change tracker: it records every origin chunk written after it was
 * taken. A send takes a new classic snapshot (the frozen state it reads and the next tracker), reads
 * the base's exception table (lvm/cow-store.ts) to list the chunks written since the base, archives
 * those blocks from the new snapshot, and, once the archive is committed, the new snapshot replaces
 * the base: the managed chain of source/snapshot-chain.ts, with classic snapshots.
 *
 * A tracker that filled up (its copy-on-write store is full) is invalid: what changed since it is
 * unknown, and the send is refused (TRACKER_OVERFLOW); `sync` brings a target up to date by hashes and
 * leaves a new tracker as the base, or `send --full` starts a new chain.
 */
import { ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import { ExtentKind } from '../format/constants.js';
import type { MapExtent } from '../format/types.js';
import { changedBlockRuns, readCowDevice } from '../lvm/cow-store.js';
import type { LvInfo } from '../lvm/report.js';
import { cowDevicePath, createClassicSnapshot, flushBuffers, listVgs, type ToolOptions } from '../lvm/tools.js';
import type { Logger } from '../log.js';
import type { ThinMap } from './thin-map.js';
import { trackerBytes, type TrackerSize } from './tracker-size.js';

export { DEFAULT_TRACKER_SIZE, parseTrackerSize, trackerBytes, type TrackerSize } from './tracker-size.js';

/** The chunk size of the classic snapshots thinarchive makes, and the block size of their archives. */
export const CLASSIC_CHUNK = 64 * 1024;

/**
 * A new classic snapshot of `origin` as the chain's pending snapshot: sized by `size` (checked against
 * the VG's free space first: TRACKER_NO_SPACE), chunks of CLASSIC_CHUNK.
 */
export async function createClassicPending(vg: string, origin: LvInfo, name: string, tags: string[], size: TrackerSize, o: { tools: ToolOptions; log: Logger }): Promise<LvInfo> {
  const vgInfo = (await listVgs(o.tools)).find((v) => v.name === vg);
  if (!vgInfo) throw new ThinarchiveError('LV_NOT_FOUND', `volume group ${vg} not found`);
  const bytes = trackerBytes(size, origin.sizeBytes, vgInfo.extentSizeBytes);
  if (bytes > vgInfo.freeBytes) {
    throw new UsageError(`${vg} has ${vgInfo.freeBytes} bytes free; the classic snapshot of ${vg}/${origin.name} needs ${bytes} (--tracker-size ${'bytes' in size ? size.bytes : `${size.percent}%`}); `
      + 'free space in the VG or give a smaller --tracker-size (it must hold every chunk written between two sends)', 'TRACKER_NO_SPACE');
  }
  const snap = await createClassicSnapshot(vg, origin.name, name, tags, bytes, CLASSIC_CHUNK, o.tools);
  o.log.info({ snapshot: `${vg}/${name}`, cowBytes: bytes }, 'created the classic snapshot');
  return snap;
}

/** Refuse a base (tracker) that overflowed: what changed since it is unknown. */
export function checkTracker(base: LvInfo, volume: string): void {
  if (base.snapshotInvalid) throw overflow(base, volume);
}

function overflow(base: LvInfo, volume: string): UnsafeError {
  return new UnsafeError('TRACKER_OVERFLOW', `the change tracker of ${volume}, classic snapshot ${base.vg}/${base.name}, overflowed (its copy-on-write store filled up): `
    + `what changed since its archive is unknown; run \`thinarchive sync ${volume} --to TARGET\` to bring a target up to date by hashes (it leaves a new tracker), `
    + 'or send --full to start a new chain; a larger --tracker-size, or sending more often, keeps it from filling');
}

/**
 * The map of a classic LV's send: every block (a full: the archive writer stores all-zero blocks as
 * zero ranges), or the blocks of the chunks the base's exception table lists.
 */
export async function classicMap(vg: string, base: LvInfo | null, volume: string, blockSize: number, volumeSize: number, tools: ToolOptions): Promise<ThinMap> {
  const blocks = Math.ceil(volumeSize / blockSize);
  let runs: { firstBlock: number; blockCount: number }[];
  if (!base) {
    runs = blocks > 0 ? [{ firstBlock: 0, blockCount: blocks }] : [];
  } else {
    checkTracker(base, volume);
    const dev = cowDevicePath(vg, base.name);
    const table = await readCowDevice(dev, () => flushBuffers(dev, tools));
    if (!table.valid) throw overflow(base, volume);
    runs = [...changedBlockRuns(table, blockSize, volumeSize)];
  }
  return {
    extents: async function* (): AsyncGenerator<MapExtent> {
      for (const r of runs) yield { firstBlock: r.firstBlock, blockCount: r.blockCount, kind: ExtentKind.DATA };
    },
    remove: async () => {},
  };
}
