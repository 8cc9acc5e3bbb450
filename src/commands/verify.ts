/**
 * verify: read archives completely, decompress every payload and check every block's hash, every
 * frame check, the structure, the trailer totals and digest, and the links between archives of a
 * chain. Reports all findings, typed, rather than stopping at the first: a bad payload is recorded
 * and the archive read on; a structural error ends that archive's check (what follows cannot be
 * trusted) and the next archive is checked.
 *
 * Sampled (`samplePercent`): every archive's header, map, index chain and trailer totals are checked
 * (ArchiveFile.preflight, no payload), the chain links too, and a random PERCENT of its data records
 * (at least one when it has any; chosen uniformly, without repeats) is read, decompressed and
 * hashed. Not checked: the digest over the whole archive and the records not drawn. Repeated sampled
 * runs cover the archives; a full run is the complete check.
 */
import { stat } from 'node:fs/promises';
import { FormatError, ioError, ThinarchiveError, UsageError } from '../errors.js';
import { PayloadBatcher, payloadStart, RecordBuffers, withPool, type BatchRecord, type WorkerPool } from '../archive/pool.js';
import { checkAgeStructure, isAgeSource, plainStream } from '../archive/encrypted.js';
import { ArchiveFile, FileByteSource, filePositionalSource, readArchive, type ByteSource, type PositionalSource } from '../archive/reader.js';
import { FrameType } from '../format/constants.js';
import type { ArchiveHeader, DataRecordHead, IndexEntry, Trailer } from '../format/types.js';
import { DirectoryStore } from '../store/dir.js';
import { isStoreUrl } from '../store/open.js';
import type { Finding, FindingCode } from '../chain/findings.js';
import { isEncrypted } from '../store/layout.js';
import { isAgeFile, openLocalArchive, plainSource, pooledLocal, remoteReadGroups, storeFor, type StoreOptions } from '../store/refs.js';

export interface VerifiedArchive {
  archive: string;
  ok: boolean;
  archiveId?: string;
  chainId?: string;
  sequence?: number;
  full?: boolean;
  bytes: number;
  dataBlocks: number;
  zeroBlocks: number;
  rawBytes: number;
}

export interface VerifyResult {
  ok: boolean;
  /**
   * full: every byte read; sample: structure and links, and a random share of the data records;
   * structure: header, map, index and trailer of each archive, and of an encrypted archive read
   * without its identity only its age structure (header, chunk lengths)
   */
  mode: 'full' | 'sample' | 'structure';
  samplePercent?: number;
  archives: VerifiedArchive[];
  findings: Finding[];
  /** full: archive bytes read; sample: bytes of the data records drawn */
  bytesRead: number;
  /** sample: data records in the archives, and how many were read and checked */
  dataRecords?: number;
  recordsChecked?: number;
  seconds: number;
}

export interface VerifyOptions {
  inputs: string[];
  stdin?: AsyncIterable<Uint8Array>;
  onProgress?: (p: { archive: string; bytesRead: number }) => void;
  signal?: AbortSignal;
  /** Options for remote stores (ssh options, S3 endpoint, ...). */
  storeOptions?: StoreOptions;
  /** Sampled verification (see above): the percentage (0 < p <= 100) of each archive's data records to read. */
  samplePercent?: number;
  /**
   * Check only the structure (README "Encrypted archives"): a plain (or decryptable) archive's header,
   * map, index and trailer (no payload); an encrypted archive without an identity, its age header and
   * chunk lengths.
   */
  structureOnly?: boolean;
  /** test hook: random numbers in [0, 1) for sampling */
  random?: () => number;
  /** Only these chains (ids) of a store named in `inputs` (verify --group: the member chains); default every chain. */
  chains?: readonly string[];
}

function findingOf(e: unknown, archive: string): Finding {
  if (e instanceof FormatError) {
    const code: FindingCode = e.code === 'TRUNCATED' ? 'TRUNCATED' : e.code === 'PAYLOAD_CORRUPT' ? 'PAYLOAD_CORRUPT' : 'STRUCTURE';
    return { code, detail: e.code, archive, message: e.detail, offset: e.offset };
  }
  if (e instanceof ThinarchiveError) return { code: 'UNREADABLE', detail: e.code, archive, message: e.message };
  throw e;
}

/** Decompress and hash one record's payload on the pool; what does not match becomes findings. */
async function checkPayload(
  pool: WorkerPool, buffers: RecordBuffers, buf: ArrayBuffer, len: number, r: DataRecordHead, blockSize: number, label: string, offset: number, findings: Finding[],
): Promise<void> {
  const res = await pool.decodeRecycled(buf, len, r, blockSize, false);
  for (const b of res.spare) buffers.give(b);
  if (!res.ok) recordFindings(res, r, label, offset, findings);
}

/** Records whose payloads share a buffer (PayloadBatcher), checked as one job; what does not match becomes findings. */
async function checkBatch(
  pool: WorkerPool, buffers: RecordBuffers, buf: ArrayBuffer, items: { rec: BatchRecord; tag: RecordAt }[], blockSize: number, label: string, findings: Finding[],
): Promise<void> {
  const res = await pool.decodeBatch(buf, items.map((i) => i.rec), blockSize);
  buffers.give(res.stored);
  for (const f of res.failed) recordFindings(f, items[f.index].tag, label, items[f.index].tag.offset, findings);
}

/** A record of a batch: its first block, and its offset in the archive. */
type RecordAt = Pick<DataRecordHead, 'firstBlock'> & { offset: number };

/** The findings of a record that failed its checks, at `offset` of the archive. */
function recordFindings(res: { error?: string; badBlocks?: number[] }, r: Pick<DataRecordHead, 'firstBlock'>, label: string, offset: number, findings: Finding[]): void {
  if (res.badBlocks?.length) {
    for (const i of res.badBlocks) {
      findings.push({ code: 'CHECKSUM_MISMATCH', detail: 'BLOCK_CHECKSUM', archive: label, offset, block: r.firstBlock + i,
        message: `block ${r.firstBlock + i} does not match its checksum (record at offset ${offset})` });
    }
  } else {
    findings.push({ code: 'PAYLOAD_CORRUPT', detail: 'PAYLOAD_CORRUPT', archive: label, offset, block: r.firstBlock,
      message: `record at block ${r.firstBlock}: ${res.error}` });
  }
}

/** `k` of `items` drawn uniformly without repeats (a partial Fisher-Yates shuffle of a copy). */
export function drawSample<T>(items: readonly T[], k: number, random: () => number = Math.random): T[] {
  const a = items.slice();
  const n = Math.min(k, a.length);
  for (let i = 0; i < n; i++) {
    const j = i + Math.min(a.length - i - 1, Math.floor(random() * (a.length - i)));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a.slice(0, n);
}

/** Data records to draw from `n`: PERCENT of them, rounded up (at least one when there are any). */
export function sampleSize(n: number, percent: number): number {
  return Math.min(n, Math.ceil((n * percent) / 100));
}

/** Sampled check of one stored archive (see the top of this file). */
async function sampleOne(
  label: string, openFile: () => Promise<ArchiveFile>, pool: WorkerPool, findings: Finding[], opts: VerifyOptions, buffers: RecordBuffers,
): Promise<{ v: VerifiedArchive; header?: ArchiveHeader; bytesRead: number; dataRecords: number; checked: number }> {
  const v: VerifiedArchive = { archive: label, ok: false, bytes: 0, dataBlocks: 0, zeroBlocks: 0, rawBytes: 0 };
  const before = findings.length;
  const pending: Promise<void>[] = [];
  const limit = pool.size * 3;
  let header: ArchiveHeader | undefined;
  let af: ArchiveFile | undefined;
  let bytesRead = 0;
  let dataRecords = 0;
  let checked = 0;
  try {
    af = await openFile();
    header = af.header;
    Object.assign(v, { archiveId: header.archiveId, chainId: header.chainId, sequence: header.sequence, full: header.full, bytes: af.size });
    Object.assign(v, { dataBlocks: af.trailer.dataBlocks, zeroBlocks: af.trailer.zeroBlocks, rawBytes: af.trailer.rawBytes });
    await af.preflight();
    const data: IndexEntry[] = [];
    for (const ix of await af.loadIndexes()) for (const e of await af.indexEntriesAt(ix.offset)) if (e.type === FrameType.DATA) data.push(e);
    dataRecords = data.length;
    const drawn = drawSample(data, sampleSize(data.length, opts.samplePercent!), opts.random).sort((a, b) => a.offset - b.offset);
    for (const e of drawn) {
      opts.signal?.throwIfAborted();
      const into = buffers.take();
      const r = await af.readRecordAt(e.offset, into, e).catch((err: unknown) => {
        buffers.give(into);
        throw err;
      });
      const p = r.payload!;
      if (p.buffer !== into) buffers.give(into);
      bytesRead += p.length;
      checked++;
      pending.push(checkPayload(pool, buffers, payloadStart(p), p.length, r.data!, header.blockSize, label, e.offset, findings));
      if (pending.length >= limit) await pending.shift();
      opts.onProgress?.({ archive: label, bytesRead: e.offset });
    }
  } catch (e) {
    findings.push(findingOf(e, label));
  } finally {
    await Promise.all(pending);
    await af?.close();
  }
  v.ok = findings.length === before;
  return { v, header, bytesRead, dataRecords, checked };
}

async function verifyOne(
  label: string, source: AsyncIterable<Uint8Array> | PositionalSource, pool: WorkerPool, findings: Finding[], opts: VerifyOptions, buffers: RecordBuffers,
): Promise<{ v: VerifiedArchive; header?: ArchiveHeader }> {
  const v: VerifiedArchive = { archive: label, ok: false, bytes: 0, dataBlocks: 0, zeroBlocks: 0, rawBytes: 0 };
  let header: ArchiveHeader | undefined;
  let trailer: Trailer | undefined;
  const before = findings.length;
  const pending: Promise<void>[] = [];
  const limit = pool.size * 3;
  // Payloads are gathered several to a buffer and checked a batch at a time.
  const batcher = new PayloadBatcher<RecordAt>(buffers);
  const dispatch = (): void => {
    for (const b of batcher.takeReady()) pending.push(checkBatch(pool, buffers, b.buf, b.items, header!.blockSize, label, findings));
  };
  try {
    for await (const ev of readArchive(source, { file: label, payloadBuffer: batcher.slot })) {
      opts.signal?.throwIfAborted();
      if (ev.type === 'header') {
        header = ev.header;
        Object.assign(v, { archiveId: header.archiveId, chainId: header.chainId, sequence: header.sequence, full: header.full });
      } else if (ev.type === 'data') {
        const r = ev.record;
        const p = ev.payload;
        // In the batch's buffer, or (larger than any buffer) in one of its own: checked alone.
        if (!batcher.add(p, r, { firstBlock: r.firstBlock, offset: ev.offset })) pending.push(checkPayload(pool, buffers, payloadStart(p), p.length, r, header!.blockSize, label, ev.offset, findings));
        dispatch();
        while (pending.length >= limit) await pending.shift();
      } else if (ev.type === 'trailer') {
        trailer = ev.trailer;
        v.bytes = ev.size;
      }
      opts.onProgress?.({ archive: label, bytesRead: ev.offset });
    }
  } catch (e) {
    findings.push(findingOf(e, label));
  } finally {
    // The records gathered last are checked too, also those read before an error.
    batcher.flush();
    dispatch();
    batcher.dispose();
    await Promise.all(pending);
  }
  if (trailer) {
    v.dataBlocks = trailer.dataBlocks;
    v.zeroBlocks = trailer.zeroBlocks;
    v.rawBytes = trailer.rawBytes;
  }
  v.ok = findings.length === before && trailer !== undefined;
  return { v, header };
}

/**
 * Check the links of one chain's archives, given in sequence order. A chain read from a store must
 * start with its full archive; archive files named on their own are checked only against each other.
 */
function checkLinks(chain: { v: VerifiedArchive; header?: ArchiveHeader; store: boolean }[], findings: Finding[]): void {
  let prev: ArchiveHeader | undefined;
  for (const { v, header } of chain) {
    if (!header) {
      prev = undefined;
      continue;
    }
    if (!prev) {
      if (chain[0].store && !header.full && header.sequence > 0 && chain[0].header === header) {
        findings.push({ code: 'MISSING_ARCHIVE', detail: 'CHAIN_START', archive: v.archive,
          message: `the chain starts at sequence ${header.sequence}: archives 0..${header.sequence - 1} are missing` });
      }
    } else if (header.parentId === prev.archiveId && header.sequence > prev.sequence) {
      // Linked to the archive before it: a sequence gap there is a merged archive (docs/FORMAT.md, "Merged archives").
    } else if (header.sequence !== prev.sequence + 1) {
      findings.push({ code: 'MISSING_ARCHIVE', detail: 'SEQUENCE_GAP', archive: v.archive,
        message: `sequence ${prev.sequence + 1}${header.sequence > prev.sequence + 2 ? `..${header.sequence - 1}` : ''} is missing before sequence ${header.sequence}` });
    } else if (header.parentId !== prev.archiveId) {
      findings.push({ code: 'BROKEN_LINK', detail: 'PARENT_MISMATCH', archive: v.archive,
        message: `parent is ${header.parentId ?? 'none'}, but the archive before it is ${prev.archiveId}` });
    }
    prev = header;
  }
}

/** One archive's structure (VerifyOptions.structureOnly); problems become findings. `raw`: its stored bytes. */
async function structureOne(raw: ByteSource, encrypted: boolean, opts: VerifyOptions, findings: Finding[]): Promise<VerifiedArchive> {
  const v: VerifiedArchive = { archive: raw.label, ok: false, bytes: raw.size, dataBlocks: 0, zeroBlocks: 0, rawBytes: 0 };
  const before = findings.length;
  try {
    if (encrypted && !opts.storeOptions?.identities?.length) {
      await checkAgeStructure(raw);
      await raw.close();
    } else {
      const f = await ArchiveFile.openSource(await plainSource(raw, encrypted, opts.storeOptions));
      try {
        await f.preflight();
        const h = f.header;
        Object.assign(v, { archiveId: h.archiveId, chainId: h.chainId, sequence: h.sequence, full: h.full, dataBlocks: f.trailer.dataBlocks, zeroBlocks: f.trailer.zeroBlocks, rawBytes: f.trailer.rawBytes });
      } finally {
        await f.close();
      }
    }
  } catch (e) {
    await raw.close().catch(() => {});
    if (e instanceof UsageError) throw e;
    findings.push(findingOf(e, raw.label));
  }
  v.ok = findings.length === before;
  return v;
}

/** verify --structure-only: every archive of the stores or files named, without payloads (see structureOne). */
async function verifyStructure(opts: VerifyOptions, started: number): Promise<VerifyResult> {
  const findings: Finding[] = [];
  const archives: VerifiedArchive[] = [];
  for (const ref of opts.inputs) {
    if (ref === '-') throw new UsageError('--structure-only reads archives in files or a store, not standard input');
    let isFile = false;
    if (!isStoreUrl(ref)) {
      try {
        isFile = (await stat(ref)).isFile();
      } catch (e) {
        throw ioError(e, `cannot open archive ${ref}`);
      }
    }
    if (isFile) {
      const raw = await FileByteSource.open(ref);
      archives.push(await structureOne(raw, await isAgeSource(raw), opts, findings));
      continue;
    }
    const store = await storeFor(ref, opts.storeOptions);
    for (const c of await store.listChains()) {
      for (const a of c.archives) {
        opts.signal?.throwIfAborted();
        archives.push(await structureOne(await store.openArchive(a), isEncrypted(a), opts, findings));
      }
    }
  }
  return { ok: findings.length === 0, mode: 'structure', archives, findings, bytesRead: 0, seconds: (performance.now() - started) / 1000 };
}

export async function verify(opts: VerifyOptions): Promise<VerifyResult> {
  const started = performance.now();
  if (opts.structureOnly) {
    if (opts.samplePercent !== undefined) throw new UsageError('--structure-only and --sample do not go together');
    return verifyStructure(opts, started);
  }
  const pct = opts.samplePercent;
  if (pct !== undefined && (!(pct > 0) || pct > 100)) throw new UsageError('--sample must be a percentage above 0 and at most 100');
  const findings: Finding[] = [];
  const archives: VerifiedArchive[] = [];
  // Group inputs: a directory is every chain in it (each checked for links); files are checked alone
  // and, when several of one chain are named, for links too. `file` opens a stored archive for
  // random access (sampled verification).
  type Item = { label: string; open: (pool: WorkerPool) => AsyncIterable<Uint8Array> | PositionalSource; file?: () => Promise<ArchiveFile> };
  type Group = { label: string; store: boolean; items: Item[] };
  const groups: Group[] = [];
  for (const ref of opts.inputs) {
    if (ref === '-') {
      if (!opts.stdin) throw new ThinarchiveError('USAGE', 'no standard input', 'usage');
      if (pct !== undefined) throw new UsageError('--sample reads archives in files or a store, not standard input');
      groups.push({ label: '-', store: false, items: [{ label: 'standard input', open: () => plainStream(opts.stdin!, opts.storeOptions?.identities ?? [], 'standard input') }] });
      continue;
    }
    if (isStoreUrl(ref)) {
      // A remote store (every chain in it) or one archive URL, read through as streams.
      const remote = await remoteReadGroups(ref, opts.storeOptions, opts.chains);
      if (remote.length === 0) findings.push({ code: 'MISSING_ARCHIVE', detail: 'EMPTY_STORE', archive: ref, message: 'no archives in this store' });
      groups.push(...remote);
      continue;
    }
    let isDir = false;
    try {
      isDir = (await stat(ref)).isDirectory();
    } catch (e) {
      // An input named that is not there is a runtime error (exit 1), as for info and apply; an
      // archive missing inside a chain is a finding.
      throw ioError(e, `cannot open archive ${ref}`);
    }
    // Positional reads; an encrypted archive (FORMAT.md §3.4) decrypted on the worker pool, ahead of the reader.
    const local = (path: string, encrypted: boolean): Item => ({
      label: path, open: (pool) => (encrypted ? pooledLocal(path, opts.storeOptions ?? {}, pool) : filePositionalSource(path)), file: () => openLocalArchive(path, opts.storeOptions),
    });
    if (isDir) {
      const chains = (await new DirectoryStore(ref).listChains()).filter((c) => c.archives.length > 0 && (!opts.chains || opts.chains.includes(c.chainId)));
      if (chains.length === 0) findings.push({ code: 'MISSING_ARCHIVE', detail: 'EMPTY_STORE', archive: ref, message: 'no archives in this directory' });
      for (const c of chains) groups.push({ label: c.dir, store: true, items: c.archives.map((a) => local(a.path, isEncrypted(a))) });
    } else {
      groups.push({ label: ref, store: false, items: [local(ref, await isAgeFile(ref))] });
    }
  }
  let bytesRead = 0;
  let dataRecords = 0;
  let recordsChecked = 0;
  const buffers = new RecordBuffers();
  await withPool(async (pool) => {
    const byChain = new Map<string, { v: VerifiedArchive; header?: ArchiveHeader; store: boolean }[]>();
    for (const g of groups) {
      const results: { v: VerifiedArchive; header?: ArchiveHeader; store: boolean }[] = [];
      for (const it of g.items) {
        let r: { v: VerifiedArchive; header?: ArchiveHeader };
        if (pct !== undefined) {
          const s = await sampleOne(it.label, it.file!, pool, findings, opts, buffers);
          bytesRead += s.bytesRead;
          dataRecords += s.dataRecords;
          recordsChecked += s.checked;
          r = s;
        } else {
          r = await verifyOne(it.label, it.open(pool), pool, findings, opts, buffers);
          bytesRead += r.v.bytes;
        }
        archives.push(r.v);
        results.push({ v: r.v, header: r.header, store: g.store });
      }
      for (const r of results) {
        const key = r.header?.chainId ?? `?${r.v.archive}`;
        if (!byChain.has(key)) byChain.set(key, []);
        byChain.get(key)!.push(r);
      }
    }
    for (const chain of byChain.values()) {
      chain.sort((a, b) => (a.header?.sequence ?? 0) - (b.header?.sequence ?? 0));
      checkLinks(chain, findings);
    }
  });
  const seconds = (performance.now() - started) / 1000;
  if (pct === undefined) return { ok: findings.length === 0, mode: 'full', archives, findings, bytesRead, seconds };
  return { ok: findings.length === 0, mode: 'sample', samplePercent: pct, archives, findings, bytesRead, dataRecords, recordsChecked, seconds };
}
