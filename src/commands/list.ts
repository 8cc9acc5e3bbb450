/** list: the chains of a store (directory or URL) and their archives, from headers and trailers only. */
import { ThinarchiveError } from '../errors.js';
import { groupPoints, type GroupArchiveSeen, type GroupPoint } from '../chain/group.js';
import { groupOf, type GroupMeta } from '../format/group.js';
import { mergedInfo, readVerification, type MergedInfo, type VerificationRecord } from '../chain/chain.js';
import { leaseState, readLease, type LeaseRecord, type LeaseState } from '../store/lease.js';
import { isEncrypted } from '../store/layout.js';
import { openStored, storeFor, type StoreOptions } from '../store/refs.js';

export interface ListedArchive {
  path: string;
  sequence: number;
  archiveId: string;
  parentId: string | null;
  full: boolean;
  created: string | null;
  volume: string | null;
  volumeSize: number | null;
  bytes: number;
  rawBytes: number | null;
  /** A merged archive (merge, prune): the sequences it covers; it holds the state of `toSequence`. */
  merged?: MergedInfo | null;
  /** 'complete': header and trailer read and consistent; otherwise the reason it is not. */
  status: string;
  /** The consistency group the archive was sent in (FORMAT.md §2.3.1), null for none. */
  group?: GroupMeta | null;
}

/** The chain's lease (store/lease.ts, FORMAT.md §3.3): who writes it, as of the listing. */
export type ListedLease = { state: LeaseState } & Pick<LeaseRecord, 'host' | 'pid' | 'job' | 'volume' | 'source' | 'acquired' | 'renewed' | 'expires'>;

export interface ListedChain {
  chainId: string;
  dir: string;
  /** The host that wrote the newest archive (its header's `source.host`), else the lease holder's; null when neither tells. */
  host: string | null;
  /** The chain's lease, null when it never had one (or it is unreadable). */
  lease: ListedLease | null;
  /** The last `verify --against` of the chain (directory stores), or null. */
  verified: VerificationRecord | null;
  volume: string | null;
  volumeUuid: string | null;
  archives: ListedArchive[];
}

/** `chainId`: that chain only (the others' archives are not opened: what a daemon run needs after its send). */
export async function list(opts: { dir: string; chainId?: string; storeOptions?: StoreOptions }): Promise<ListedChain[]> {
  const out: ListedChain[] = [];
  const store = await storeFor(opts.dir, opts.storeOptions);
  for (const c of await store.listChains()) {
    if (opts.chainId !== undefined && c.chainId !== opts.chainId) continue;
    const l = await readLease(store, c.chainId);
    const lease: ListedLease | null = l && {
      state: leaseState(l), host: l.host, pid: l.pid, job: l.job, volume: l.volume, source: l.source, acquired: l.acquired, renewed: l.renewed, expires: l.expires,
    };
    const chain: ListedChain = {
      chainId: c.chainId, dir: c.dir, host: null, lease, volume: null, volumeUuid: null, archives: [], verified: await readVerification(c.dir),
    };
    for (const a of c.archives) {
      const item: ListedArchive = {
        path: a.path, sequence: a.sequence, archiveId: a.archiveId, parentId: null, full: false, created: null,
        volume: null, volumeSize: null, bytes: 0, rawBytes: null, status: 'complete',
      };
      try {
        if (isEncrypted(a) && !opts.storeOptions?.identities?.length) {
          // Without the identity: what the name and the store tell (FORMAT.md §3.4).
          const src = await store.openArchive(a);
          item.bytes = src.size;
          await src.close();
          item.status = 'encrypted (no identity given)';
          chain.archives.push(item);
          continue;
        }
        const f = await openStored(store, a, opts.storeOptions);
        try {
          const h = f.header;
          Object.assign(item, {
            parentId: h.parentId, full: h.full, created: new Date(h.createdMs).toISOString(), volume: h.meta.volume.name,
            volumeSize: h.volumeSize, bytes: f.size, rawBytes: f.trailer.rawBytes, merged: mergedInfo(h) ?? null, group: groupOf(h.meta, h.archiveId),
          });
          if (h.archiveId !== a.archiveId || h.sequence !== a.sequence || h.chainId !== c.chainId) item.status = 'misnamed: the header does not match the file name';
          chain.volume ??= h.meta.volume.name;
          chain.host = h.meta.source?.host ?? chain.host;
          chain.volumeUuid ??= h.volumeUuid;
        } finally {
          await f.close();
        }
      } catch (e) {
        if (!(e instanceof ThinarchiveError)) throw e;
        item.status = `unreadable: ${e.message}`;
      }
      chain.archives.push(item);
    }
    chain.host ??= lease?.host ?? null;
    chain.volume ??= lease?.volume ?? null;
    // Archives a merged archive covers are superseded (left by merge --keep-originals or an interrupted prune).
    for (const x of chain.archives) {
      const xs = x.sequence;
      const xe = x.merged?.toSequence ?? x.sequence;
      if (x.status === 'complete' && chain.archives.some((y) => y !== x && y.merged && y.merged.fromSequence <= xs && xe <= y.merged.toSequence
        && (y.merged.toSequence - y.merged.fromSequence > xe - xs))) {
        x.status = 'superseded by a merged archive (the next prune deletes it)';
      }
    }
    out.push(chain);
  }
  return out;
}

/** Every archive of a listing as the group points see it (chain/group.ts): a merged archive at the point it holds. */
export function groupArchivesSeen(chains: readonly ListedChain[]): GroupArchiveSeen[] {
  return chains.flatMap((c) => c.archives.map((a) => ({
    chainId: c.chainId, chainDir: c.dir, archiveId: a.archiveId, sequence: a.merged?.toSequence ?? a.sequence, status: a.status, group: a.group ?? null,
  })));
}

/** The group points of a listing (oldest first), each with whether every member's archive is there (chain/group.ts). */
export function listGroups(chains: readonly ListedChain[], name?: string): GroupPoint[] {
  return groupPoints(groupArchivesSeen(chains)).filter((p) => name === undefined || p.name === name);
}
