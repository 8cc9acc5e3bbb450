/**
 * `s3://bucket/prefix` store: any S3-compatible object store (AWS S3, Ceph radosgw, ...), through
 * @aws-sdk/client-s3.
 *
 * Layout as the directory store: `prefix/<chain-id>/<sequence, 10 digits>-<archive-id>.tna`; a prefix
 * whose last component is a chain id and that holds archives directly is that one chain.
 *
 * Settings: endpoint, region and credentials come from the SDK's default chain (AWS_* environment
 * variables, ~/.aws/config and ~/.aws/credentials, AWS_PROFILE, ...); `s3Endpoint` (`--s3-endpoint`),
 * AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL name a non-AWS endpoint (path-style addressing is then used).
 * Without a configured region, us-east-1.
 *
 * Writing (bounded memory, never a visible partial archive):
 * - Bytes collect in one part buffer. An archive smaller than one part is stored with a single
 *   PutObject; a larger one with a multipart upload, started when the first part is full, with at most
 *   MAX_IN_FLIGHT parts uploading while the next one fills. Part size: `s3PartSize` (default 8 MiB),
 *   doubled every 1000 parts up to 128 MiB (S3 allows 10000 parts: archives up to about 860 GiB with
 *   the default), so memory is at most (MAX_IN_FLIGHT + 1) part buffers whatever the archive size.
 * - The object appears only at CompleteMultipartUpload (or the PutObject), complete.
 * - Write-once: PutObject carries `If-None-Match: *` (Ceph and AWS refuse with 412 when the key
 *   exists). Ceph 16 ignores If-None-Match on CompleteMultipartUpload (found by experiment: it
 *   overwrites), so before completing, a HeadObject checks the key is free and the complete is sent
 *   with If-None-Match too (for servers that honour it). Race: two writers completing the *same* key
 *   between that HeadObject and the complete could both succeed on Ceph 16 (in a versioned bucket the
 *   first version stays). Keys contain a fresh random archive id, so only a retried write of the very
 *   same archive can collide.
 * - One publisher per sequence (types.ts): before the PutObject or the complete, `commit` claims the
 *   sequence with a small PutObject of `<chain-id>/.<sequence>.seq` carrying `If-None-Match: *`, which
 *   Ceph (16 included) and AWS honour on a single PUT: of writers racing for one sequence exactly one
 *   gets 200, the others 412 (or 409 while the winner's PUT is in flight) and fail with CHAIN_FORK.
 *   A commit that fails after claiming deletes its claim. That conditional PUT (`createExclusive`) is
 *   the store's one exclusive-create primitive; markers (leases) use it too. Ceph 16 does not support
 *   `If-Match` (found by experiment: a PUT with the object's current ETag is refused with 412, and a
 *   DELETE ignores it), so nothing here replaces an object conditionally.
 * - `abort()` aborts the multipart upload (best effort: if that fails, the next writer's sweep does it).
 * - Interrupted uploads (killed process, lost network): incomplete multipart uploads cannot be seen
 *   by listing, but cost storage. Every `createArchive` lists the incomplete uploads under the store's
 *   prefix and aborts those of our naming whose last activity (the newest part, or the initiation when
 *   there is none) is older than `s3StaleUploadSeconds` (default 3600 s). A live writer uploads a part
 *   every few seconds, so an upload idle for an hour has no writer left; the listing does not name
 *   the writer, so a dead writer's upload cannot be recognised sooner.
 *
 * Object lock (`retainDays`): every new archive gets COMPLIANCE retention until now + N days: no user,
 * not even the bucket owner or the host that wrote it, can delete or overwrite that version before
 * then (GOVERNANCE could be bypassed by credentials holding s3:BypassGovernanceRetention, which a
 * compromised source host might have). The bucket must have been created with object lock enabled
 * (checked before writing: a clear error otherwise). PutObject carries the retention headers; for a
 * multipart upload they are sent at creation and, because Ceph 16 ignores them there, also set with
 * PutObjectRetention on the new version right after the complete (a failure there is an error: the
 * archive exists but is not protected). A plain DELETE still hides a locked archive behind a delete
 * marker, but cannot destroy it; `deleteArchive` deletes the current *version*, which the server
 * refuses (403) while it is retained.
 *
 * Reading: ranged GetObject for `read`, a streaming GetObject (`Range: bytes=N-`) for `stream`,
 * resumed from where it stopped when the connection drops; size from the listing or HeadObject.
 *
 * Errors from the SDK or the network become one-line ThinarchiveErrors (exit class runtime, codes
 * `S3_*`), never a stack trace.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
  UploadPartCommand,
  type CompletedPart,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import { ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import { s3Code } from '../error-codes.js';
import { claimLost, claimSequence, claimText, parseClaim } from './claims.js';
import type { ByteSource } from '../archive/reader.js';
import type { ArchiveStore, ChainListing, CreateArchiveOptions, PendingArchive, StoredArchive } from './types.js';
import {
  archiveFileName, CHAIN_RE, checkChainId, checkMarker, claimFileName, MARKER_RE, NAME_RE, onlyChainOf, sortArchives,
} from './layout.js';

const MIB = 1 << 20;
export const DEFAULT_PART_SIZE = 8 * MIB;
const MAX_PART_SIZE = 128 * MIB;
const MIN_PART_SIZE = 5 * MIB;
const MAX_PARTS = 10_000;
const MAX_IN_FLIGHT = 2;
export const DEFAULT_STALE_UPLOAD_SECONDS = 3600;

export interface S3StoreOptions {
  /** Endpoint URL (`--s3-endpoint`); overrides AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL. */
  s3Endpoint?: string;
  /** Object-lock (COMPLIANCE) retention of new archives, in days. */
  retainDays?: number;
  /** First part size of multipart uploads, bytes (at least 5 MiB). */
  s3PartSize?: number;
  /** Incomplete uploads idle longer than this are aborted by the next createArchive. */
  s3StaleUploadSeconds?: number;
  /** Extra client settings (library use and tests: credentials, retries). */
  s3ClientConfig?: Partial<S3ClientConfig>;
  [key: string]: unknown;
}

export interface S3Location {
  bucket: string;
  /** Key prefix without leading or trailing '/' ('' for the bucket's root). */
  prefix: string;
}

/** Parse `s3://bucket[/prefix]`. */
export function parseS3Url(url: string): S3Location {
  const m = /^s3:\/\/([^/]*)(?:\/(.*))?$/i.exec(url);
  if (!m || !m[1]) throw new UsageError(`invalid S3 store ${url}: expected s3://bucket/prefix`);
  const bucket = m[1];
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$/.test(bucket)) throw new UsageError(`invalid S3 bucket name in ${url}`);
  const prefix = (m[2] ?? '').replace(/^\/+|\/+$/g, '').replace(/\/{2,}/g, '/');
  return { bucket, prefix };
}

/** Part size for part number `n` (1-based): the base size, doubled every 1000 parts, at most 128 MiB. */
export function partSizeFor(n: number, base: number): number {
  return Math.min(MAX_PART_SIZE, base * 2 ** Math.floor((n - 1) / 1000));
}

interface SdkError {
  name?: string;
  Code?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  cause?: unknown;
}

const NETWORK: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  EPIPE: 'connection closed',
  ETIMEDOUT: 'connection timed out',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'host name lookup failed',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ECONNABORTED: 'connection aborted',
};

function errName(e: unknown): string {
  const x = e as SdkError;
  return (x?.Code ?? x?.name ?? '') as string;
}

function httpStatus(e: unknown): number | undefined {
  return (e as SdkError)?.$metadata?.httpStatusCode;
}

/** The SDK's and Node's errors as one line: `what: reason`. */
export function s3Error(e: unknown, what: string, endpoint?: string): ThinarchiveError {
  if (e instanceof ThinarchiveError) return e;
  const x = (e ?? {}) as SdkError;
  let sys = typeof x.code === 'string' ? x.code : undefined;
  if (!sys && x.cause && typeof (x.cause as SdkError).code === 'string') sys = (x.cause as SdkError).code;
  const name = errName(e);
  const status = httpStatus(e);
  const msg = x.message && x.message !== 'UnknownError' && x.message !== name ? x.message : '';
  let code = name || sys || 'ERROR';
  let reason: string;
  if (sys && NETWORK[sys]) {
    code = sys;
    reason = `cannot reach ${endpoint ?? 'the S3 endpoint'}: ${NETWORK[sys]}`;
  } else if (name === 'NoSuchBucket') reason = 'no such bucket';
  else if (name === 'InvalidAccessKeyId') reason = 'access key not recognised by the server (check AWS_ACCESS_KEY_ID / the credentials file)';
  else if (name === 'SignatureDoesNotMatch') reason = 'request signature rejected: wrong secret key (check AWS_SECRET_ACCESS_KEY / the credentials file)';
  else if (name === 'CredentialsProviderError' || /could not load credentials/i.test(x.message ?? '')) {
    code = 'NO_CREDENTIALS';
    reason = 'no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials)';
  } else if (name === 'AccessDenied' || status === 403) reason = `access denied${msg ? ` (${msg})` : ''}`;
  else if (name === 'TimeoutError' || name === 'RequestTimeout') reason = `timed out talking to ${endpoint ?? 'the S3 endpoint'}`;
  else if (name === 'AbortError') reason = 'interrupted';
  else reason = [name || sys, status ? `HTTP ${status}` : '', msg].filter(Boolean).join(': ') || 'unknown error';
  const c = s3Code(code);
  return new ThinarchiveError(c, `${what}: ${reason.replace(/\s*\n\s*/g, ' ')}`, 'runtime', { cause: e });
}

/**
 * An authentication or authorization failure (wrong access key or secret key, access denied) as one
 * STORE_AUTH error naming the store, not the request that met it; undefined for any other error.
 */
export function s3AuthError(e: unknown, url: string, endpoint?: string): ThinarchiveError | undefined {
  if (e instanceof ThinarchiveError) return undefined;
  const name = errName(e);
  const at = endpoint ? ` (endpoint ${endpoint})` : '';
  let reason: string;
  if (name === 'InvalidAccessKeyId') reason = 'the access key is not known to the server (check AWS_ACCESS_KEY_ID / the credentials file)';
  else if (name === 'SignatureDoesNotMatch') reason = 'the request signature was rejected: wrong secret key (check AWS_SECRET_ACCESS_KEY / the credentials file)';
  else if (name === 'AccessDenied' || httpStatus(e) === 403) reason = 'access denied to these credentials (check the bucket policy and the user\'s permissions)';
  else return undefined;
  return new ThinarchiveError('STORE_AUTH', `${url}${at} rejected the credentials: ${reason}`, 'runtime', { cause: e });
}

function isName(e: unknown, ...names: string[]): boolean {
  return names.includes(errName(e));
}

let warningSilenced = false;
/**
 * The SDK prints a multi-line NodeVersionSupportWarning on Node < 22 (its future releases will need
 * 22); the released versions this package uses work on Node 20. Keep stderr to our own one-line
 * messages unless the user set the variable themselves.
 */
function silenceSdkNodeWarning(): void {
  if (warningSilenced) return;
  warningSilenced = true;
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
}

export class S3Store implements ArchiveStore {
  readonly url: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly endpoint: string | undefined;
  private client: S3Client | undefined;
  private clientReady: Promise<S3Client> | undefined;
  private readonly partSize: number;
  private readonly staleSeconds: number;
  private lockChecked = false;

  constructor(url: string, private readonly opts: S3StoreOptions = {}) {
    const loc = parseS3Url(url);
    this.bucket = loc.bucket;
    this.prefix = loc.prefix;
    this.url = `s3://${loc.bucket}${loc.prefix ? `/${loc.prefix}` : ''}`;
    const env = process.env;
    this.endpoint = opts.s3Endpoint || env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined;
    if (this.endpoint !== undefined && !/^https?:\/\/[^/]/i.test(this.endpoint)) {
      throw new UsageError(`invalid S3 endpoint ${this.endpoint}: expected http(s)://host[:port]`);
    }
    this.partSize = opts.s3PartSize ?? DEFAULT_PART_SIZE;
    if (!Number.isInteger(this.partSize) || this.partSize < MIN_PART_SIZE || this.partSize > MAX_PART_SIZE) {
      throw new UsageError(`S3 part size must be between 5 MiB and 128 MiB, not ${this.partSize}`);
    }
    this.staleSeconds = opts.s3StaleUploadSeconds ?? DEFAULT_STALE_UPLOAD_SECONDS;
    if (opts.retainDays !== undefined && (!Number.isInteger(opts.retainDays) || opts.retainDays < 1)) {
      throw new UsageError(`--retain-days must be a whole number of days, at least 1, not ${opts.retainDays}`);
    }
  }

  /** `s3://bucket/key` for messages and StoredArchive.path. */
  private keyUrl(key: string): string {
    return `s3://${this.bucket}/${key}`;
  }

  private root(): string {
    return this.prefix ? `${this.prefix}/` : '';
  }

  private makeClient(region?: string): S3Client {
    silenceSdkNodeWarning();
    const cfg: S3ClientConfig = {
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 3,
      requestHandler: { connectionTimeout: 10_000, requestTimeout: 120_000 },
      ...(this.endpoint ? { endpoint: this.endpoint, forcePathStyle: true } : {}),
      ...(region ? { region } : {}),
      ...this.opts.s3ClientConfig,
    };
    return new S3Client(cfg);
  }

  /** The client, with a region: the configured one, or us-east-1 when none is configured. */
  private s3(): Promise<S3Client> {
    this.clientReady ??= (async () => {
      let c = this.makeClient();
      try {
        await c.config.region();
      } catch {
        c.destroy();
        c = this.makeClient('us-east-1');
      }
      this.client = c;
      return c;
    })();
    return this.clientReady;
  }

  /** Send one command; failures become one-line errors naming `what`. */
  private async send<T>(what: string, cmd: object, signal?: AbortSignal): Promise<T> {
    const c = await this.s3();
    try {
      return (await c.send(cmd as never, { abortSignal: signal })) as T;
    } catch (e) {
      if (isName(e, 'NoSuchBucket')) throw s3Error(e, `${what} (bucket ${this.bucket})`, this.endpoint);
      // Rejected credentials read the same whichever step met them (README, "Error codes": STORE_AUTH).
      const auth = s3AuthError(e, this.url, this.endpoint);
      throw Object.assign(auth ?? s3Error(e, what, this.endpoint), { sdkName: errName(e), status: httpStatus(e) });
    }
  }

  /** Every object key under the store's prefix (paginated), with sizes. */
  private async listKeys(prefix: string): Promise<{ key: string; size: number }[]> {
    const out: { key: string; size: number }[] = [];
    let token: string | undefined;
    do {
      const r = await this.send<{ Contents?: { Key?: string; Size?: number }[]; IsTruncated?: boolean; NextContinuationToken?: string }>(
        `cannot list ${this.url}`,
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token }),
      );
      for (const o of r.Contents ?? []) if (o.Key) out.push({ key: o.Key, size: o.Size ?? 0 });
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  private stored(key: string, chainId: string, size: number | undefined): StoredArchive | undefined {
    const name = key.slice(key.lastIndexOf('/') + 1);
    const m = NAME_RE.exec(name);
    if (!m) return undefined;
    return { name, path: this.keyUrl(key), chainId, sequence: Number(m[1]), archiveId: m[2], ...(size !== undefined ? { size } : {}) };
  }

  async listChains(): Promise<ChainListing[]> {
    const root = this.root();
    const keys = await this.listKeys(root);
    const chains = new Map<string, StoredArchive[]>();
    const direct: StoredArchive[] = [];
    const last = this.prefix.slice(this.prefix.lastIndexOf('/') + 1);
    for (const { key, size } of keys) {
      const rest = key.slice(root.length).split('/');
      if (rest.length === 2 && CHAIN_RE.test(rest[0])) {
        const a = this.stored(key, rest[0], size);
        if (a) chains.set(rest[0], [...(chains.get(rest[0]) ?? []), a]);
      } else if (rest.length === 1 && CHAIN_RE.test(last)) {
        const a = this.stored(key, last, size);
        if (a) direct.push(a);
      }
    }
    // A prefix that is itself a chain (archives directly under it) is that one chain.
    if (direct.length) return [{ chainId: last, dir: this.url, archives: sortArchives(direct) }];
    return [...chains.keys()].sort().map((id) => ({ chainId: id, dir: `${this.url}/${id}`, archives: sortArchives(chains.get(id)!) }));
  }

  async onlyChain(): Promise<ChainListing> {
    return onlyChainOf(this.url, await this.listChains());
  }

  async chainArchives(chainId: string): Promise<StoredArchive[]> {
    const dir = `${this.root()}${chainId}/`;
    const out: StoredArchive[] = [];
    for (const { key, size } of await this.listKeys(dir)) {
      if (key.slice(dir.length).includes('/')) continue;
      const a = this.stored(key, chainId, size);
      if (a) out.push(a);
    }
    return sortArchives(out);
  }

  private keyOf(a: StoredArchive): string {
    const pre = `s3://${this.bucket}/`;
    if (!a.path.startsWith(pre)) throw new UsageError(`${a.path} is not in ${this.url}`);
    return a.path.slice(pre.length);
  }

  async openArchive(a: StoredArchive): Promise<ByteSource> {
    const key = this.keyOf(a);
    let size = a.size;
    if (size === undefined) {
      const h = await this.send<{ ContentLength?: number }>(`cannot open archive ${a.path}`, new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      size = h.ContentLength ?? 0;
    }
    return new S3ObjectSource(this, key, a.path, size);
  }

  /** @internal ranged GET for S3ObjectSource. */
  async getRange(key: string, label: string, start: number, end?: number): Promise<{ Body?: unknown }> {
    return this.send(`cannot read archive ${label}`, new GetObjectCommand({ Bucket: this.bucket, Key: key, Range: `bytes=${start}-${end ?? ''}` }));
  }

  /**
   * Delete the archive's current version (a true delete, not a delete marker). While object-lock
   * retention holds, the server refuses (403): one line naming the date.
   */
  async deleteArchive(a: StoredArchive): Promise<void> {
    const key = this.keyOf(a);
    const h = await this.send<{ VersionId?: string; ObjectLockRetainUntilDate?: Date; ObjectLockMode?: string }>(
      `cannot delete ${a.path}`,
      new HeadObjectCommand({ Bucket: this.bucket, Key: key }),
    );
    try {
      await this.send(`cannot delete ${a.path}`, new DeleteObjectCommand({ Bucket: this.bucket, Key: key, ...(h.VersionId && h.VersionId !== 'null' ? { VersionId: h.VersionId } : {}) }));
    } catch (e) {
      if ((e as { status?: number }).status === 403 && h.ObjectLockRetainUntilDate) {
        throw new ThinarchiveError('S3_OBJECT_LOCKED', `cannot delete ${a.path}: protected by object lock (${h.ObjectLockMode ?? 'retention'}) until ${h.ObjectLockRetainUntilDate.toISOString()}`, 'runtime');
      }
      throw e;
    }
  }

  async checkDeletable(archives: StoredArchive[]): Promise<void> {
    for (const a of archives) {
      const h = await this.send<{ ObjectLockRetainUntilDate?: Date; ObjectLockMode?: string; ObjectLockLegalHoldStatus?: string }>(
        `cannot delete ${a.path}`,
        new HeadObjectCommand({ Bucket: this.bucket, Key: this.keyOf(a) }),
      );
      if (h.ObjectLockLegalHoldStatus === 'ON') {
        throw new ThinarchiveError('S3_OBJECT_LOCKED', `cannot delete ${a.path}: under an object-lock legal hold`, 'runtime');
      }
      if (h.ObjectLockRetainUntilDate && h.ObjectLockRetainUntilDate.getTime() > Date.now()) {
        throw new ThinarchiveError('S3_OBJECT_LOCKED', `cannot delete ${a.path}: protected by object lock (${h.ObjectLockMode ?? 'retention'}) until ${h.ObjectLockRetainUntilDate.toISOString()}`, 'runtime');
      }
    }
  }

  async close(): Promise<void> {
    this.client?.destroy();
    this.client = undefined;
    this.clientReady = undefined;
  }

  /** With --retain-days: the bucket must have object lock enabled. */
  private async checkObjectLock(): Promise<void> {
    if (this.opts.retainDays === undefined || this.lockChecked) return;
    let enabled = false;
    try {
      const r = await this.send<{ ObjectLockConfiguration?: { ObjectLockEnabled?: string } }>(
        `cannot read the object-lock configuration of bucket ${this.bucket}`,
        new GetObjectLockConfigurationCommand({ Bucket: this.bucket }),
      );
      enabled = r.ObjectLockConfiguration?.ObjectLockEnabled === 'Enabled';
    } catch (e) {
      if ((e as { sdkName?: string }).sdkName !== 'ObjectLockConfigurationNotFoundError') throw e;
    }
    if (!enabled) {
      throw new UsageError(`--retain-days needs a bucket with object lock enabled; bucket ${this.bucket} has none (object lock can only be enabled when a bucket is created)`, 'S3_NO_OBJECT_LOCK');
    }
    this.lockChecked = true;
  }

  /** @internal retention settings for a new archive. */
  retention(): { ObjectLockMode: 'COMPLIANCE'; ObjectLockRetainUntilDate: Date } | undefined {
    if (this.opts.retainDays === undefined) return undefined;
    return { ObjectLockMode: 'COMPLIANCE', ObjectLockRetainUntilDate: new Date(Date.now() + this.opts.retainDays * 86_400_000) };
  }

  /**
   * Abort incomplete multipart uploads of archives under the store's prefix (of one chain, when
   * given) whose last activity is older than the stale age. Returns the keys aborted.
   */
  async sweepStaleUploads(chainId?: string): Promise<string[]> {
    const aborted: string[] = [];
    const now = Date.now();
    let keyMarker: string | undefined;
    let idMarker: string | undefined;
    for (;;) {
      const r = await this.send<{ Uploads?: { Key?: string; UploadId?: string; Initiated?: Date }[]; IsTruncated?: boolean; NextKeyMarker?: string; NextUploadIdMarker?: string }>(
        `cannot list incomplete uploads in ${this.url}`,
        new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: `${this.root()}${chainId === undefined ? '' : `${chainId}/`}`, KeyMarker: keyMarker, UploadIdMarker: idMarker }),
      );
      for (const u of r.Uploads ?? []) {
        if (!u.Key || !u.UploadId || !NAME_RE.test(u.Key.slice(u.Key.lastIndexOf('/') + 1))) continue;
        let lastActive = u.Initiated?.getTime() ?? 0;
        if (now - lastActive < this.staleSeconds * 1000) continue;
        try {
          const parts = await this.send<{ Parts?: { LastModified?: Date }[] }>('list parts', new ListPartsCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }));
          for (const p of parts.Parts ?? []) lastActive = Math.max(lastActive, p.LastModified?.getTime() ?? 0);
        } catch (e) {
          if ((e as { sdkName?: string }).sdkName === 'NoSuchUpload') continue;
          throw e;
        }
        if (now - lastActive < this.staleSeconds * 1000) continue;
        try {
          await this.send('abort upload', new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }));
          aborted.push(u.Key);
        } catch (e) {
          if ((e as { sdkName?: string }).sdkName !== 'NoSuchUpload') throw e;
        }
      }
      if (!r.IsTruncated) break;
      keyMarker = r.NextKeyMarker;
      idMarker = r.NextUploadIdMarker;
    }
    return aborted;
  }

  /** @internal */
  exists(key: string, what: string): Promise<boolean> {
    return this.send(what, new HeadObjectCommand({ Bucket: this.bucket, Key: key })).then(
      () => true,
      (e) => {
        if ((e as { status?: number }).status === 404) return false;
        throw e;
      },
    );
  }

  /** @internal */
  sendCmd<T>(what: string, cmd: object): Promise<T> {
    return this.send<T>(what, cmd);
  }

  async sweep(chainId: string): Promise<string[]> {
    checkChainId(chainId);
    return (await this.sweepStaleUploads(chainId)).map((k) => this.keyUrl(k));
  }

  async createArchive(chainId: string, sequence: number, archiveId: string, opts: CreateArchiveOptions = {}): Promise<PendingArchive> {
    checkChainId(chainId);
    const key = `${this.root()}${chainId}/${archiveFileName(sequence, archiveId, opts.encrypted)}`;
    const path = this.keyUrl(key);
    await this.checkObjectLock();
    await this.sweepStaleUploads();
    const claimKey = `${this.root()}${chainId}/${claimFileName(sequence)}`;
    return new S3Upload(this, key, path, this.partSize, {
      take: () => this.claim(claimKey, chainId, sequence, archiveId, opts),
      // Right after the archive appeared: is the claim still this writer's? (claims.ts; a stalled
      // writer's claim may have been removed as an orphan: the archive is withdrawn.)
      check: async () => {
        if (opts.replaces) return;
        const holder = parseClaim((await this.readSmall(claimKey, `cannot read ${this.keyUrl(claimKey)}`)) ?? '').archiveId;
        if (holder === archiveId) return;
        await this.send(`cannot withdraw ${path}`, new DeleteObjectCommand({ Bucket: this.bucket, Key: key }));
        throw claimLost(this.url, chainId, sequence, holder);
      },
      release: () => this.send(`cannot remove ${this.keyUrl(claimKey)}`, new DeleteObjectCommand({ Bucket: this.bucket, Key: claimKey })).then(() => {}, () => {}),
    });
  }

  /**
   * The exclusive-create primitive (types.ts, markers): a PutObject with `If-None-Match: *`, which
   * Ceph (16 included) and AWS honour on a single PUT. True when this call created `key`; false on 412
   * (it exists) or 409 (another PUT of that key is in flight: it is taken all the same).
   */
  private async createExclusive(key: string, content: string, what: string): Promise<boolean> {
    const body = Buffer.from(content);
    try {
      await this.send(what, new PutObjectCommand({
        Bucket: this.bucket, Key: key, Body: body, ContentLength: body.length, ContentType: 'text/plain', IfNoneMatch: '*',
        ContentMD5: createHash('md5').update(body).digest('base64'),
      }));
      return true;
    } catch (e) {
      const status = (e as { status?: number }).status;
      if (status === 412 || status === 409) return false;
      throw e;
    }
  }

  /** The body of a small object; undefined when there is none. */
  private async readSmall(key: string, what: string): Promise<string | undefined> {
    try {
      const r = await this.send<{ Body?: { transformToString(): Promise<string> } }>(what, new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      return (await r.Body?.transformToString()) ?? '';
    } catch (e) {
      if ((e as { status?: number }).status === 404) return undefined;
      throw e;
    }
  }

  /**
   * Claim a sequence (see the header): true when this call created the claim, false when it already
   * named `archiveId` (or, with `replaces`, any archive); CHAIN_FORK otherwise.
   */
  private async claim(key: string, chainId: string, sequence: number, archiveId: string, opts: CreateArchiveOptions): Promise<boolean> {
    return claimSequence({
      store: this, chainId, sequence, archiveId, where: this.keyUrl(key), log: opts.log, replaces: !!opts.replaces,
      create: () => this.createExclusive(key, claimText(archiveId, opts.leaseToken ?? null), `cannot claim sequence ${sequence} at ${this.keyUrl(key)}`),
    });
  }

  private markerKey(chainId: string, name: string): string {
    checkMarker(chainId, name);
    return `${this.root()}${chainId}/${name}`;
  }

  async createMarker(chainId: string, name: string, content: string): Promise<boolean> {
    const key = this.markerKey(chainId, name);
    return this.createExclusive(key, content, `cannot create ${this.keyUrl(key)}`);
  }

  async readMarker(chainId: string, name: string): Promise<string | undefined> {
    const key = this.markerKey(chainId, name);
    return this.readSmall(key, `cannot read ${this.keyUrl(key)}`);
  }

  async listMarkers(chainId: string, prefix: string): Promise<string[]> {
    checkChainId(chainId);
    const dir = `${this.root()}${chainId}/`;
    return (await this.listKeys(`${dir}${prefix}`)).map((k) => k.key.slice(dir.length)).filter((n) => n.startsWith(prefix) && MARKER_RE.test(n)).sort();
  }

  async deleteMarker(chainId: string, name: string): Promise<void> {
    const key = this.markerKey(chainId, name);
    await this.send(`cannot delete ${this.keyUrl(key)}`, new DeleteObjectCommand({ Bucket: this.bucket, Key: key }));
  }
}

/** One archive being written: see the header comment. */
class S3Upload implements PendingArchive {
  private buf: Buffer | undefined;
  private fill = 0;
  private partNo = 0;
  private uploadId: string | undefined;
  private creating: Promise<string> | undefined;
  private readonly parts: CompletedPart[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private failure: ThinarchiveError | undefined;
  private state: 'open' | 'committing' | 'committed' | 'aborted' = 'open';
  readonly sink: { write(chunk: Uint8Array): Promise<void> };

  constructor(private readonly store: S3Store, private readonly key: string, readonly path: string, private readonly basePart: number,
    private readonly seq: { take(): Promise<boolean>; check(): Promise<void>; release(): Promise<void> }) {
    this.sink = { write: (c) => this.write(c) };
  }

  private get bucket(): string {
    return this.store.bucket;
  }

  /**
   * With object lock, AWS requires Content-MD5 (or a checksum) on every upload that carries or will
   * carry retention; cheap at these part sizes, and checked by the server.
   */
  private md5(body: Uint8Array): { ContentMD5?: string } {
    return this.store.retention() ? { ContentMD5: createHash('md5').update(body).digest('base64') } : {};
  }

  /** Size of the part being filled. */
  private currentPartSize(): number {
    return partSizeFor(this.partNo + 1, this.basePart);
  }

  private async write(chunk: Uint8Array): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.state !== 'open') throw new UsageError(`${this.path}: write after commit or abort`);
    let at = 0;
    while (at < chunk.length) {
      const size = this.currentPartSize();
      this.buf ??= Buffer.allocUnsafeSlow(size);
      const n = Math.min(chunk.length - at, size - this.fill);
      this.buf.set(chunk.subarray(at, at + n), this.fill);
      this.fill += n;
      at += n;
      if (this.fill === size) await this.flushPart();
    }
  }

  /** Start uploading the buffered part; waits while MAX_IN_FLIGHT parts are uploading. */
  private async flushPart(): Promise<void> {
    const body = this.buf!.subarray(0, this.fill);
    this.buf = undefined;
    this.fill = 0;
    const n = ++this.partNo;
    if (n > MAX_PARTS) {
      throw (this.failure = new ThinarchiveError('S3_TOO_MANY_PARTS', `${this.path}: archive too large for one S3 upload (more than ${MAX_PARTS} parts)`, 'runtime'));
    }
    this.creating ??= this.store
      .sendCmd<{ UploadId?: string }>(`cannot start upload of ${this.path}`, new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: this.key, ContentType: 'application/octet-stream', ...this.store.retention() }))
      .then((r) => {
        if (!r.UploadId) throw new ThinarchiveError('S3_NO_UPLOAD_ID', `cannot start upload of ${this.path}: the server returned no upload id`, 'runtime');
        this.uploadId = r.UploadId;
        return r.UploadId;
      });
    const p: Promise<void> = this.creating
      .then((UploadId) => this.store.sendCmd<{ ETag?: string }>(`cannot upload part ${n} of ${this.path}`, new UploadPartCommand({ Bucket: this.bucket, Key: this.key, UploadId, PartNumber: n, Body: body, ContentLength: body.length, ...this.md5(body) })))
      .then((r) => {
        this.parts[n - 1] = { PartNumber: n, ETag: r.ETag };
      })
      .catch((e) => {
        this.failure ??= e instanceof ThinarchiveError ? e : new ThinarchiveError('S3_UPLOAD', `${this.path}: ${String(e)}`, 'runtime');
      })
      .finally(() => {
        this.inFlight.delete(p);
      });
    this.inFlight.add(p);
    while (this.inFlight.size >= MAX_IN_FLIGHT) await Promise.race(this.inFlight);
    if (this.failure) throw this.failure;
  }

  private async drain(): Promise<void> {
    while (this.inFlight.size) await Promise.race(this.inFlight);
  }

  async commit(): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.state !== 'open') throw new UsageError(`${this.path}: commit after commit or abort`);
    this.state = 'committing';
    const lock = this.store.retention();
    let claimed = false;
    if (this.partNo === 0) {
      // Smaller than one part: the sequence, then a single conditional PutObject.
      const body = this.buf ? this.buf.subarray(0, this.fill) : Buffer.alloc(0);
      try {
        claimed = await this.seq.take();
        await this.store.sendCmd(`cannot store ${this.path}`, new PutObjectCommand({ Bucket: this.bucket, Key: this.key, Body: body, ContentLength: body.length, ContentType: 'application/octet-stream', IfNoneMatch: '*', ...lock, ...this.md5(body) }));
      } catch (e) {
        this.state = 'open';
        if (claimed && (e as { status?: number }).status !== 412) await this.seq.release();
        if ((e as { status?: number }).status === 412) throw new UnsafeError('ARCHIVE_EXISTS', `${this.path} already exists; not replacing it`);
        throw e;
      }
      this.buf = undefined;
      this.state = 'committed';
      await this.seq.check();
      return;
    }
    try {
      if (this.fill > 0) await this.flushPart();
      await this.drain();
      if (this.failure) throw this.failure;
      // Ceph 16 ignores If-None-Match on the complete: check first (see the header for the race).
      if (await this.store.exists(this.key, `cannot check ${this.path}`)) throw new UnsafeError('ARCHIVE_EXISTS', `${this.path} already exists; not replacing it`);
      // The sequence, then the complete at once.
      claimed = await this.seq.take();
      let done: { VersionId?: string };
      try {
        done = await this.store.sendCmd(`cannot complete the upload of ${this.path}`, new CompleteMultipartUploadCommand({
          Bucket: this.bucket, Key: this.key, UploadId: this.uploadId, MultipartUpload: { Parts: this.parts }, IfNoneMatch: '*',
        }));
      } catch (e) {
        if ((e as { status?: number }).status === 412) throw new UnsafeError('ARCHIVE_EXISTS', `${this.path} already exists; not replacing it`);
        if (claimed) await this.seq.release();
        throw e;
      }
      this.state = 'committed';
      await this.seq.check();
      if (lock) {
        let versionId = done.VersionId;
        if (!versionId) versionId = (await this.store.sendCmd<{ VersionId?: string }>(`cannot read back ${this.path}`, new HeadObjectCommand({ Bucket: this.bucket, Key: this.key }))).VersionId;
        try {
          await this.store.sendCmd(`cannot set retention on ${this.path}`, new PutObjectRetentionCommand({
            Bucket: this.bucket, Key: this.key, VersionId: versionId, Retention: { Mode: lock.ObjectLockMode, RetainUntilDate: lock.ObjectLockRetainUntilDate },
          }));
        } catch (e) {
          throw new ThinarchiveError('S3_RETENTION', `${(e as Error).message} (the archive is stored but not protected by object lock)`, 'runtime', { cause: e });
        }
      }
    } catch (e) {
      if (this.state === 'committing') this.state = 'open';
      throw e;
    }
  }

  async abort(): Promise<void> {
    if (this.state === 'committed' || this.state === 'aborted') return;
    this.state = 'aborted';
    this.buf = undefined;
    await this.drain();
    await this.creating?.catch(() => undefined);
    if (!this.uploadId) return;
    try {
      await this.store.sendCmd(`cannot abort the upload of ${this.path}`, new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: this.key, UploadId: this.uploadId }));
    } catch {
      // Best effort: an upload left behind is aborted by the next writer's sweep once it is stale.
    }
  }
}

/** A ByteSource over one object: ranged GETs, and a streaming GET that resumes after a dropped connection. */
class S3ObjectSource implements ByteSource {
  constructor(private readonly store: S3Store, private readonly key: string, readonly label: string, readonly size: number) {}

  async read(offset: number, len: number): Promise<Uint8Array> {
    if (len <= 0 || offset >= this.size) return new Uint8Array(0);
    const end = Math.min(offset + len, this.size) - 1;
    const r = await this.store.getRange(this.key, this.label, offset, end);
    try {
      const bytes = await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray();
      return bytes;
    } catch (e) {
      throw s3Error(e, `cannot read archive ${this.label}`, this.store.endpoint);
    }
  }

  async *stream(start = 0): AsyncGenerator<Uint8Array> {
    let pos = start;
    let retries = 0;
    while (pos < this.size) {
      const r = await this.store.getRange(this.key, this.label, pos);
      const body = r.Body as AsyncIterable<Uint8Array> & { destroy?: () => void };
      try {
        for await (const chunk of body) {
          pos += chunk.length;
          retries = 0;
          yield chunk;
        }
        if (pos < this.size) throw Object.assign(new Error('connection closed early'), { code: 'ECONNRESET' });
      } catch (e) {
        if (++retries > 3) throw s3Error(e, `cannot read archive ${this.label}`, this.store.endpoint);
      } finally {
        body.destroy?.();
      }
    }
  }

  async close(): Promise<void> {}
}
