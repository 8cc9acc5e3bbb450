/**
 * The state record of a target: which archive it holds, and whether an archive is being applied.
 * Kept beside an image (`IMAGE.thinarchive.json`), in the state directory for a block device, or in
 * LV tags (lv-tags.ts). Specified in docs/JOURNAL.md ("Target state") and docs/LVM-METADATA.md.
 */
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ioError, UnsafeError } from '../errors.js';
import type { ArchiveHeader } from '../format/types.js';
import { defaultStateDir, makeDirs, writeFileAtomic } from '../fsutil.js';

export type TargetKind = 'image' | 'blockdev' | 'lv';

export interface TargetState {
  version: 1;
  volumeUuid: string;
  chainId: string;
  blockSize: number;
  volumeSize: number;
  /** The last archive fully applied; the target holds exactly its state. */
  archiveId: string;
  sequence: number;
  status: 'clean' | 'applying';
  /** Set while an archive is being applied: the target is between `archiveId` and this one. */
  applying?: {
    archiveId: string; parentId: string | null; sequence: number; chainId: string; startedAt: string;
    /** the undo journal of this apply (absent with --no-undo, and for thin LV targets) */
    undo?: string;
  };
  updatedAt: string;
}

/** Where a target's state is kept: a JSON file (images, block devices) or LV tags (LV targets). */
export interface TargetStateStore {
  /** Names the place, for messages. */
  readonly where: string;
  read(): Promise<TargetState | null>;
  /** Replace the state atomically and durably. */
  write(s: TargetState): Promise<void>;
}

function parseState(text: string): TargetState | null {
  try {
    const s = JSON.parse(text) as TargetState;
    if (s.version === 1 && typeof s.archiveId === 'string' && (s.status === 'clean' || s.status === 'applying')) return s;
  } catch {
    // fall through
  }
  return null;
}

/** State in a JSON file, replaced atomically (temporary file, fsync, rename, fsync directory). */
export class JsonStateStore implements TargetStateStore {
  constructor(readonly where: string) {}

  async read(): Promise<TargetState | null> {
    let text: string;
    try {
      text = await readFile(this.where, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw ioError(e, `cannot read target state ${this.where}`);
    }
    const s = parseState(text);
    if (!s) throw new UnsafeError('TARGET_STATE_CORRUPT', `target state file ${this.where} is unreadable; refusing to guess the target's state`);
    return s;
  }

  async write(s: TargetState): Promise<void> {
    try {
      await makeDirs(dirname(this.where));
      await writeFileAtomic(this.where, JSON.stringify(s, null, 2) + '\n');
    } catch (e) {
      throw ioError(e, `cannot write target state ${this.where}`);
    }
  }
}

export function stateFileFor(kind: TargetKind, path: string, stateDir = defaultStateDir()): string {
  if (kind === 'image') return `${path}.thinarchive.json`;
  return join(stateDir, 'blockdev', `${encodeURIComponent(path)}.json`);
}

/** The undo journal's place: beside the state file (IMAGE.thinarchive.undo; STATE_DIR/blockdev/DEV.undo). */
export function undoFileFor(kind: TargetKind, path: string, stateDir = defaultStateDir()): string {
  return stateFileFor(kind, path, stateDir).replace(/\.json$/, '.undo');
}


/**
 * Mark a target as being rebuilt (restore, repair) towards the state of `h`: status "applying" under
 * a marker id that no archive has, so that an interrupted rebuild is never taken for an applied
 * archive. The previous state's archive stays recorded.
 */
export async function markRebuilding(target: { writeState(s: TargetState): Promise<void> }, state: TargetState | null, h: ArchiveHeader, marker: string): Promise<void> {
  const now = new Date().toISOString();
  await target.writeState({
    version: 1, volumeUuid: h.volumeUuid, chainId: h.chainId, blockSize: h.blockSize, volumeSize: h.volumeSize,
    archiveId: state?.archiveId ?? '', sequence: state?.sequence ?? -1, status: 'applying',
    applying: { archiveId: marker, parentId: null, sequence: h.sequence, chainId: h.chainId, startedAt: now },
    updatedAt: now,
  });
}
