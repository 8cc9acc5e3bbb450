/**
 * info: what an archive holds, from its header, map and trailer, without reading any payload when
 * it is stored (a file, or an archive in a store: ranged reads); from standard input the archive is
 * read through, payloads unverified. A store or chain (directory or URL) means its newest archive.
 */
import { readArchive } from '../archive/reader.js';
import { FormatError } from '../errors.js';
import type { ArchiveHeader, MapEnd, Trailer } from '../format/types.js';
import { openArchiveRef, type StoreOptions } from '../store/refs.js';

export interface ArchiveInfo {
  archive: string;
  header: ArchiveHeader;
  map: MapEnd;
  trailer: Trailer;
  bytes: number;
}

export async function info(opts: { archive: string; stdin?: AsyncIterable<Uint8Array>; storeOptions?: StoreOptions }): Promise<ArchiveInfo> {
  if (opts.archive === '-') {
    let header: ArchiveHeader | undefined;
    let map: MapEnd | undefined;
    for await (const ev of readArchive(opts.stdin!, { file: 'standard input' })) {
      if (ev.type === 'header') header = ev.header;
      else if (ev.type === 'map-end') map = ev.mapEnd;
      else if (ev.type === 'trailer') return { archive: '-', header: header!, map: map!, trailer: ev.trailer, bytes: ev.size };
    }
    throw new FormatError('TRUNCATED', 'archive ended without a trailer', undefined, 'standard input');
  }
  const f = await openArchiveRef(opts.archive, opts.storeOptions);
  try {
    const map = await f.preflight();
    return { archive: f.path, header: f.header, map, trailer: f.trailer, bytes: f.size };
  } finally {
    await f.close();
  }
}
