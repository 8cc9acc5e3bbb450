/**
 * merge DIR --from SEQ --to SEQ: replace consecutive archives of a chain by one equivalent archive
 * (chain/merge-plan.ts), durable before any original is deleted (docs/FORMAT.md, "Merged archives").
 */
import { UsageError } from '../errors.js';
import { mergeGroup, refuseUndeletable, type MergedArchive } from '../chain/merge-plan.js';
import { openChain, type ChainArchive } from '../chain/chain.js';
import { openStore, type StoreOptions } from '../store/open.js';

export interface MergeOptions {
  dir: string;
  /** sequence of the first archive to merge */
  from: number;
  /** sequence of the last archive to merge (its point: for a merged archive, its last sequence) */
  to: number;
  /** another store to write the merged archive to (the originals are then kept) */
  out?: string;
  /** keep the originals in the store (the chain then lists both; readers use the merged one) */
  keepOriginals?: boolean;
  level?: number;
  signal?: AbortSignal;
  storeOptions?: StoreOptions;
}

export interface MergeResult extends MergedArchive {
  deleted: string[];
  seconds: number;
}



/** Which archives of the chain `--from`/`--to` name (indexes into chain.archives). */
export function mergeRange(archives: ChainArchive[], from: number, to: number): [number, number] {
  const i = archives.findIndex((a) => a.header.sequence === from);
  const j = archives.findIndex((a) => a.point === to);
  if (i < 0) throw new UsageError(`no archive with sequence ${from} starts a step of the chain (sequences: ${archives.map((a) => a.header.sequence).join(', ')})`);
  if (j < 0) throw new UsageError(`no archive holds the state of sequence ${to} (points: ${archives.map((a) => a.point).join(', ')})`);
  if (j <= i) throw new UsageError(`--from ${from} --to ${to}: nothing to merge (give at least two consecutive archives, --from before --to)`);
  return [i, j];
}

export async function merge(opts: MergeOptions): Promise<MergeResult> {
  const started = performance.now();
  const chain = await openChain(opts.dir, opts.storeOptions);
  try {
    const [i, j] = mergeRange(chain.archives, opts.from, opts.to);
    const group = chain.archives.slice(i, j + 1);
    for (const a of group) await a.file.preflight();
    const deleting = opts.out === undefined && !opts.keepOriginals;
    if (deleting) await refuseUndeletable(chain.store, group.map((a) => a.stored), 'merge');
    const outStore = opts.out !== undefined ? await openStore(opts.out, opts.storeOptions) : chain.writeStore;
    try {
      const r = await mergeGroup(group, outStore, opts);
      const deleted: string[] = [];
      if (deleting) {
        // The merged archive is durable: the originals can go (the one sharing its id last).
        for (const a of group) {
          await chain.store.deleteArchive(a.stored);
          deleted.push(a.stored.path);
        }
      }
      return { ...r, deleted, seconds: (performance.now() - started) / 1000 };
    } finally {
      if (opts.out !== undefined) await outStore.close();
    }
  } finally {
    await chain.close();
  }
}
