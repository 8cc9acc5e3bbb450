/** list: the chains of a directory store and their archives, from headers and trailers only. */
import { ArchiveFile } from '../archive/reader.js';
import { ThinarchiveError } from '../errors.js';
import { DirectoryStore } from '../store/dir.js';

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
  /** 'complete': header and trailer read and consistent; otherwise the reason it is not. */
  status: string;
}

export interface ListedChain {
  chainId: string;
  dir: string;
  volume: string | null;
  volumeUuid: string | null;
  archives: ListedArchive[];
}

export async function list(opts: { dir: string }): Promise<ListedChain[]> {
  const out: ListedChain[] = [];
  for (const c of await new DirectoryStore(opts.dir).listChains()) {
    const chain: ListedChain = { chainId: c.chainId, dir: c.dir, volume: null, volumeUuid: null, archives: [] };
    for (const a of c.archives) {
      const item: ListedArchive = {
        path: a.path, sequence: a.sequence, archiveId: a.archiveId, parentId: null, full: false, created: null,
        volume: null, volumeSize: null, bytes: 0, rawBytes: null, status: 'complete',
      };
      try {
        const f = await ArchiveFile.open(a.path);
        try {
          const h = f.header;
          Object.assign(item, {
            parentId: h.parentId, full: h.full, created: new Date(h.createdMs).toISOString(), volume: h.meta.volume.name,
            volumeSize: h.volumeSize, bytes: f.size, rawBytes: f.trailer.rawBytes,
          });
          if (h.archiveId !== a.archiveId || h.sequence !== a.sequence || h.chainId !== c.chainId) item.status = 'misnamed: the header does not match the file name';
          chain.volume ??= h.meta.volume.name;
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
    out.push(chain);
  }
  return out;
}
