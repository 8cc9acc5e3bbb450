/**
 * The pool space pinned by thinarchive's own base snapshots (docs/LVM.md section 8): for each base
 * snapshot of a managed chain, the pool blocks it maps that its origin no longer maps to the same
 * data block (the origin rewrote or discarded them), read from the pool metadata under a reserved
 * metadata snapshot (lvm/metadata-snap.ts): `thin_delta -m --snap1 ORIGIN --snap2 BASE`, whose
 * `different` and `right_only` runs are exactly those blocks. A base whose origin is gone pins
 * every block it maps (thin_dump).
 */
import { createReadStream } from 'node:fs';
import type { Logger } from '../log.js';
import type { LvmExec } from '../lvm/exec.js';
import { withMetadataSnapshot } from '../lvm/metadata-snap.js';
import type { LvInfo } from '../lvm/report.js';
import { openThinDelta } from '../lvm/thin-delta.js';
import { openThinDump } from '../lvm/thin-dump.js';
import { thinDelta, thinDump, type ToolOutput } from '../lvm/tools.js';
import { parseSnapshotTags } from './snapshot-chain.js';

/** A base snapshot of a managed chain, and its origin (null when the origin LV is gone). */
export interface BaseSnapshot {
  vg: string;
  name: string;
  thinId: number;
  chain: string;
  origin: { name: string; thinId: number } | null;
}

export interface PinnedSnapshot {
  /** VG/LV of the base snapshot */
  snapshot: string;
  /** VG/LV of its origin, null when the origin is gone */
  origin: string | null;
  chain: string;
  bytes: number;
}

export interface PinnedSpace {
  bytes: number;
  snapshots: PinnedSnapshot[];
}

/** The base snapshots (tagged thinarchive's, not pending) of the thin pool `pool` among `lvs` (one VG's). */
export function baseSnapshotsIn(lvs: readonly LvInfo[], pool: string): BaseSnapshot[] {
  const out: BaseSnapshot[] = [];
  for (const lv of lvs) {
    if (lv.pool !== pool || lv.thinId === null || lv.hidden) continue;
    const tags = parseSnapshotTags(lv.tags);
    if (!tags || tags.pending) continue;
    const origin = lv.origin === null ? undefined : lvs.find((o) => o.name === lv.origin && !o.hidden && o.thinId !== null);
    out.push({ vg: lv.vg, name: lv.name, thinId: lv.thinId, chain: tags.chain, origin: origin ? { name: origin.name, thinId: origin.thinId! } : null });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

export interface PinnedOptions {
  exec: LvmExec;
  logger: Logger;
  stateDir?: string;
  lockTimeoutMs?: number;
  signal?: AbortSignal;
  tmpDir?: string;
}

/** Pool blocks of a thin_delta file (origin -> base) that the base maps and the origin does not share, in bytes. */
async function deltaPinned(file: string): Promise<number> {
  const d = await openThinDelta(createReadStream(file), { file });
  let blocks = 0;
  for await (const r of d.ranges) if (r.kind === 'data') blocks += r.length;
  return blocks * d.header.blockSizeBytes;
}

async function dumpMapped(file: string, devId: number): Promise<number> {
  const d = await openThinDump(createReadStream(file), { file, devId });
  let blocks = 0;
  for await (const r of d.ranges) blocks += r.length;
  return blocks * d.header.blockSizeBytes;
}

/** The space each base snapshot of `bases` (all in `vg/pool`) pins, read under one reserved metadata snapshot. */
export async function pinnedSpace(vg: string, pool: string, bases: readonly BaseSnapshot[], o: PinnedOptions): Promise<PinnedSpace> {
  if (bases.length === 0) return { bytes: 0, snapshots: [] };
  const snapshots = await withMetadataSnapshot({ vg, pool }, {
    exec: o.exec, logger: o.logger, ...(o.stateDir !== undefined ? { stateDir: o.stateDir } : {}),
    ...(o.lockTimeoutMs !== undefined ? { lockTimeoutMs: o.lockTimeoutMs } : {}), ...(o.signal ? { signal: o.signal } : {}),
  }, async (tmeta, held) => {
    const signal = o.signal ? AbortSignal.any([o.signal, held.signal]) : held.signal;
    const run = { exec: o.exec, signal, ...(o.tmpDir !== undefined ? { dir: o.tmpDir } : {}) };
    const out: PinnedSnapshot[] = [];
    for (const b of bases) {
      let file: ToolOutput | undefined;
      try {
        file = b.origin ? await thinDelta(tmeta, b.origin.thinId, b.thinId, run) : await thinDump(tmeta, b.thinId, run);
        const bytes = b.origin ? await deltaPinned(file.path) : await dumpMapped(file.path, b.thinId);
        out.push({ snapshot: `${vg}/${b.name}`, origin: b.origin ? `${vg}/${b.origin.name}` : null, chain: b.chain, bytes });
      } finally {
        await file?.remove();
      }
    }
    return out;
  });
  return { bytes: snapshots.reduce((a, s) => a + s.bytes, 0), snapshots };
}
