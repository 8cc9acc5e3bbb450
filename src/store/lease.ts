/**
 * Chain leases: one writer per chain, whatever the number of hosts writing into one store (FORMAT.md
 * §3.3). The lease of a chain is a sequence of generations, markers `<chain-id>/.lease.<N, 10 digits>`
 * created with the store's exclusive-create primitive (types.ts: the same one sequence claims use) and
 * never rewritten; the highest generation is the lease. Each holds a JSON record naming its owner
 * (host, machine id, pid, a random token per holder, job, volume, source) and when it expires.
 *
 * - Acquiring: create generation N+1 over the highest N, allowed when there is none, when N is
 *   released, expired, held by a process of this host that no longer runs, or (`take`) whatever N
 *   holds. Of callers racing for N+1 exactly one creates it; the others read it and are refused with
 *   CHAIN_LEASED. `take` only takes over the generation seen first, so forced takers do not take it
 *   from each other in turn.
 * - Renewing: the holder creates N+1 itself (same owner, later expiry), so a renewal and a takeover of
 *   one generation race for one name and exactly one wins: a holder whose renewal loses has lost the
 *   lease. Nothing is ever replaced, which is all radosgw 16.2 allows (it refuses PUT with If-Match).
 * - After creating N+1, the creator lists the generations: one higher than its own means it lost (a
 *   taker slower than a later renewal can re-create a deleted lower generation; it loses here); else
 *   it deletes the lower ones, so a chain normally has exactly one lease marker.
 * - Releasing: a last generation with `released: true` (a tombstone); the next writer takes over at
 *   once. A chain that was never published (the first send failed) has its lease markers deleted.
 *
 * The lease keeps cooperating writers apart and names who writes; the sequence claims stay the hard
 * guarantee that a chain never forks (a holder stalled past its expiry and then taken over is refused
 * at its commit, by `confirm` or at worst by the claim).
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { UnsafeError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { pidExists } from '../process.js';
import { TOOL_VERSION } from '../version.js';
import type { ArchiveStore } from './types.js';

export const LEASE_VERSION = 1;
/** What every lease marker's name starts with. */
export const LEASE_PREFIX = '.lease.';
const LEASE_RE = /^\.lease\.(\d{10})$/;
export const DEFAULT_LEASE_TTL_MS = 300_000;
export const MIN_LEASE_TTL_MS = 3_000;

/** The marker name of lease generation `generation`. */
export function leaseName(generation: number): string {
  return `${LEASE_PREFIX}${String(generation).padStart(10, '0')}`;
}

/** Who holds a lease: the host (name and /etc/machine-id) and process. */
export interface LeaseIdentity {
  host: string;
  machineId: string | null;
  pid: number;
}

/** One lease generation as stored (FORMAT.md §3.3). */
export interface LeaseRecord {
  version: number;
  chainId: string;
  generation: number;
  /** Random id of the holder (one per ChainLeaseHolder): tells apart holders that share a pid. */
  token: string;
  host: string;
  machineId: string | null;
  pid: number;
  /** The daemon job writing the chain; null for a one-shot send. */
  job: string | null;
  /** The volume's name as archive headers record it (`vg/lv`, or the image's file name). */
  volume: string | null;
  /** What is read: the image or block device path, or `/dev/VG/LV`. */
  source: string | null;
  /** When this holder first took the lease (kept by its renewals). */
  acquired: string;
  /** When this generation was written. */
  renewed: string;
  expires: string;
  ttlSeconds: number;
  /** A tombstone: the holder let go; anyone may take the lease at once. */
  released: boolean;
  tool: string;
}

/**
 * A lease as seen by a would-be writer: `held` (refused without take), `expired`, `released`, or
 * `holder-gone` (held by a process of this host that no longer runs: free at once).
 */
export type LeaseState = 'held' | 'expired' | 'released' | 'holder-gone';

let identityCache: Omit<LeaseIdentity, 'pid'> | undefined;

/** This host: its name and machine id (null when /etc/machine-id is unreadable). */
export function localIdentity(): LeaseIdentity {
  if (!identityCache) {
    let machineId: string | null = null;
    for (const f of ['/etc/machine-id', '/var/lib/dbus/machine-id']) {
      try {
        const id = readFileSync(f, 'utf8').trim();
        if (/^[0-9a-f]{32}$/i.test(id)) {
          machineId = id.toLowerCase();
          break;
        }
      } catch {
        // try the next
      }
    }
    identityCache = { host: hostname(), machineId };
  }
  return { ...identityCache, pid: process.pid };
}

function sameHost(r: Pick<LeaseRecord, 'host' | 'machineId'>, me: LeaseIdentity): boolean {
  return r.machineId && me.machineId ? r.machineId === me.machineId : r.host === me.host;
}

export function leaseState(r: LeaseRecord, now = Date.now(), me: LeaseIdentity = localIdentity()): LeaseState {
  if (r.released) return 'released';
  if (now >= Date.parse(r.expires)) return 'expired';
  if (sameHost(r, me) && r.pid !== me.pid && !pidExists(r.pid)) return 'holder-gone';
  return 'held';
}

/** A stored record, or null when it is not one this version understands. */
export function parseLease(text: string): LeaseRecord | null {
  try {
    const r = JSON.parse(text) as LeaseRecord;
    const str = (v: unknown): boolean => typeof v === 'string';
    const strOrNull = (v: unknown): boolean => v === null || typeof v === 'string';
    if (r === null || typeof r !== 'object' || r.version !== LEASE_VERSION || !Number.isInteger(r.generation) || !Number.isInteger(r.pid)
      || !str(r.chainId) || !str(r.token) || !str(r.host) || !strOrNull(r.machineId) || !strOrNull(r.job) || !strOrNull(r.volume)
      || !strOrNull(r.source) || !str(r.acquired) || !str(r.renewed) || Number.isNaN(Date.parse(r.expires)) || typeof r.released !== 'boolean') {
      return null;
    }
    return r;
  } catch {
    return null;
  }
}

/** The refusal of a writer whose chain another holds. */
export function chainLeased(url: string, chainId: string, r: LeaseRecord | null): UnsafeError {
  if (!r) return new UnsafeError('CHAIN_LEASED', `chain ${chainId} in ${url} was just leased by another writer; one writer per chain (try again later)`);
  const what = [r.job !== null ? `job ${r.job}` : 'a one-shot send', `volume ${r.volume ?? 'unknown'}`].join(', ');
  const here = sameHost(r, localIdentity()) ? ' (this host)' : '';
  return new UnsafeError('CHAIN_LEASED', `chain ${chainId} in ${url} is leased by host ${r.host}${here} pid ${r.pid} (${what}) until ${r.expires}; `
    + 'one writer per chain: wait until that writer stops or its lease expires, or take the lease over with --take-lease if that writer is gone');
}

/** The refusal when the chain's lease cannot be read (another version's, or damaged). */
function unreadableLease(url: string, chainId: string, generation: number): UnsafeError {
  return new UnsafeError('CHAIN_LEASED', `chain ${chainId} in ${url} has a lease this thinarchive cannot read (${leaseName(generation)}: another version's, or damaged); `
    + 'one writer per chain: take the lease over with --take-lease if no other writer is running');
}

function generations(names: string[]): number[] {
  return names.flatMap((n) => {
    const m = LEASE_RE.exec(n);
    return m ? [Number(m[1])] : [];
  }).sort((a, b) => a - b);
}

async function readGeneration(store: ArchiveStore, chainId: string, generation: number): Promise<LeaseRecord | null | undefined> {
  const text = await store.readMarker(chainId, leaseName(generation));
  return text === undefined ? undefined : parseLease(text);
}

/**
 * The chain's lease: its highest generation and that generation's record (null when unreadable: then
 * it counts as held, until taken over by force); undefined when the chain was never leased.
 */
export async function currentLease(store: ArchiveStore, chainId: string): Promise<{ generation: number; record: LeaseRecord | null } | undefined> {
  for (let i = 0; i < 5; i++) {
    const gens = generations(await store.listMarkers(chainId, LEASE_PREFIX));
    if (gens.length === 0) return undefined;
    const top = gens[gens.length - 1];
    const record = await readGeneration(store, chainId, top);
    // Deleted between the listing and the read (a newer generation was made, or the markers of a
    // chain that was never published were removed): look again.
    if (record !== undefined) return { generation: top, record };
  }
  return undefined;
}

/** The record of the chain's lease (null when never leased or unreadable). */
export async function readLease(store: ArchiveStore, chainId: string): Promise<LeaseRecord | null> {
  return (await currentLease(store, chainId))?.record ?? null;
}

/**
 * After creating `generation`: refuse (CHAIN_LEASED, naming the holder) when a higher one exists, and
 * remove the stray; otherwise delete the lower generations (best effort).
 */
async function settle(store: ArchiveStore, chainId: string, generation: number): Promise<void> {
  const gens = generations(await store.listMarkers(chainId, LEASE_PREFIX));
  const top = gens[gens.length - 1] ?? generation;
  if (top > generation) {
    await store.deleteMarker(chainId, leaseName(generation)).catch(() => {});
    throw chainLeased(store.url, chainId, (await readGeneration(store, chainId, top)) ?? null);
  }
  for (const g of gens) if (g < generation) await store.deleteMarker(chainId, leaseName(g)).catch(() => {});
}

/** Create generation `next.generation`; true when this holder has it (created now, or by an earlier try of ours). */
async function createGeneration(store: ArchiveStore, next: LeaseRecord): Promise<boolean> {
  if (await store.createMarker(next.chainId, leaseName(next.generation), `${JSON.stringify(next)}\n`)) return true;
  // A retried request whose first try did create it (the S3 client retries on a lost answer).
  return (await readGeneration(store, next.chainId, next.generation))?.token === next.token;
}

export interface LeaseHolderOptions {
  /** The daemon job (recorded in the lease); none for a one-shot send. */
  job?: string | null;
  /** How long a lease lasts without renewal; renewed every third of it. Default 5 minutes. */
  ttlMs?: number;
  log?: Logger;
  /** Who the lease names; default this host and process (tests name other hosts). */
  identity?: Partial<LeaseIdentity>;
}

/** What a send tells about itself when it takes a lease. */
export interface LeaseSubject {
  volume: string | null;
  source: string | null;
}

interface Held {
  store: ArchiveStore;
  chainId: string;
  record: LeaseRecord;
  timer: NodeJS.Timeout;
}

/**
 * The lease of the one chain a writer writes (a daemon unit, or a one-shot send): `hold` acquires it
 * (or keeps the one held), a timer renews it every third of its ttl until `release` (a tombstone) or
 * `discard` (markers deleted: the chain was never published). `confirm` right before a commit throws
 * if the lease was lost. Operations on one holder run one at a time.
 */
export class ChainLeaseHolder {
  readonly token = randomUUID();
  readonly ttlMs: number;
  private held: Held | undefined;
  private lost: UnsafeError | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly log: Logger;
  private readonly identity: LeaseIdentity;

  constructor(private readonly opts: LeaseHolderOptions = {}) {
    this.ttlMs = opts.ttlMs ?? DEFAULT_LEASE_TTL_MS;
    if (!Number.isInteger(this.ttlMs) || this.ttlMs < MIN_LEASE_TTL_MS) throw new UsageError(`a lease ttl must be at least ${MIN_LEASE_TTL_MS / 1000} s`);
    this.log = opts.log ?? silentLogger;
    this.identity = { ...localIdentity(), ...opts.identity };
  }

  /** The lease held now (null: none, or lost). */
  get record(): LeaseRecord | null {
    return this.held && !this.lost ? this.held.record : null;
  }

  private serial<T>(op: () => Promise<T>): Promise<T> {
    const p = this.queue.then(op);
    this.queue = p.catch(() => {});
    return p;
  }

  private same(store: ArchiveStore, chainId: string): boolean {
    return !!this.held && this.held.store.url === store.url && this.held.chainId === chainId;
  }

  /**
   * Hold the lease of `chainId` in `store`. Keeps the one held; a lease of another chain is released
   * first. Refused with CHAIN_LEASED while another writer holds it (unless `take`).
   */
  hold(store: ArchiveStore, chainId: string, subject: LeaseSubject, take = false): Promise<LeaseRecord> {
    return this.serial(async () => {
      if (this.same(store, chainId) && !this.lost) return this.held!.record;
      if (this.held) await this.let(this.lost ? 'forget' : 'release');
      const record = await this.acquire(store, chainId, subject, take);
      const timer = setInterval(() => { void this.serial(() => this.renew()).catch(() => {}); }, Math.floor(this.ttlMs / 3));
      timer.unref();
      this.held = { store, chainId, record, timer };
      this.lost = undefined;
      return record;
    });
  }

  /**
   * Right before a commit: renew now, which proves the lease is still this holder's (a takeover since
   * the last renewal made the next generation, or a higher one). Throws CHAIN_LEASED when it is lost.
   */
  confirm(): Promise<void> {
    return this.serial(async () => {
      if (this.lost) throw this.lost;
      if (!this.held) return;
      await this.renew(true);
      if (this.lost) throw this.lost;
    });
  }

  /** Let the lease go (a tombstone, so the next writer need not wait). Never throws. */
  release(): Promise<void> {
    return this.serial(() => this.let('release'));
  }

  /** Delete the lease markers of a chain that was never published (its first send failed). Never throws. */
  discard(): Promise<void> {
    return this.serial(() => this.let('discard'));
  }

  private async acquire(store: ArchiveStore, chainId: string, subject: LeaseSubject, take: boolean): Promise<LeaseRecord> {
    let seen: number | undefined;
    for (let attempt = 0; attempt < 5; attempt++) {
      const cur = await currentLease(store, chainId);
      if (cur && cur.record === null) {
        seen ??= cur.generation;
        if (!(take && cur.generation === seen)) throw unreadableLease(store.url, chainId, cur.generation);
      } else if (cur?.record && cur.record.token !== this.token) {
        seen ??= cur.generation;
        const state = leaseState(cur.record, Date.now(), this.identity);
        if (state === 'held' && !(take && cur.generation === seen)) throw chainLeased(store.url, chainId, cur.record);
        if (state !== 'released') {
          this.log.warn({ chainId, store: store.url, holder: `${cur.record.host} pid ${cur.record.pid}`, state },
            `taking over the lease of chain ${chainId} (${state === 'held' ? 'forced' : state})`);
        }
      }
      const now = Date.now();
      const next: LeaseRecord = {
        version: LEASE_VERSION, chainId, generation: (cur?.generation ?? 0) + 1, token: this.token,
        host: this.identity.host, machineId: this.identity.machineId, pid: this.identity.pid, job: this.opts.job ?? null,
        volume: subject.volume, source: subject.source, acquired: new Date(now).toISOString(), renewed: new Date(now).toISOString(),
        expires: new Date(now + this.ttlMs).toISOString(), ttlSeconds: this.ttlMs / 1000, released: false, tool: `thinarchive ${TOOL_VERSION}`,
      };
      if (await createGeneration(store, next)) {
        await settle(store, chainId, next.generation);
        return next;
      }
      // Another writer created that generation first: look again (its lease is live: refused).
    }
    throw chainLeased(store.url, chainId, await readLease(store, chainId));
  }

  /** Renew: the next generation, same owner. Losing it (or finding a newer one) loses the lease. */
  private async renew(throwIt = false): Promise<void> {
    const h = this.held;
    if (!h || this.lost) return;
    const now = Date.now();
    const next: LeaseRecord = { ...h.record, generation: h.record.generation + 1, renewed: new Date(now).toISOString(), expires: new Date(now + this.ttlMs).toISOString() };
    try {
      if (!(await createGeneration(h.store, next))) throw chainLeased(h.store.url, h.chainId, (await readGeneration(h.store, h.chainId, next.generation)) ?? null);
      await settle(h.store, h.chainId, next.generation);
      h.record = next;
    } catch (e) {
      if (e instanceof UnsafeError && e.code === 'CHAIN_LEASED') {
        this.lost = e;
        clearInterval(h.timer);
        this.log.warn({ chainId: h.chainId, store: h.store.url }, `lost the lease: ${e.message}`);
      } else {
        this.log.warn({ chainId: h.chainId, store: h.store.url, code: (e as { code?: string }).code }, `cannot renew the lease of chain ${h.chainId}: ${(e as Error).message}`);
      }
      if (throwIt) throw e;
    }
  }

  private async let(how: 'release' | 'discard' | 'forget'): Promise<void> {
    const h = this.held;
    this.held = undefined;
    const lost = this.lost;
    this.lost = undefined;
    if (!h) return;
    clearInterval(h.timer);
    if (lost || how === 'forget') return;
    try {
      if (how === 'discard') {
        for (const g of generations(await h.store.listMarkers(h.chainId, LEASE_PREFIX))) await h.store.deleteMarker(h.chainId, leaseName(g));
        return;
      }
      const now = new Date().toISOString();
      const tomb: LeaseRecord = { ...h.record, generation: h.record.generation + 1, renewed: now, expires: now, released: true };
      if (await createGeneration(h.store, tomb)) await settle(h.store, h.chainId, tomb.generation);
    } catch (e) {
      this.log.warn({ chainId: h.chainId, store: h.store.url }, `cannot ${how} the lease of chain ${h.chainId} (it expires by itself): ${(e as Error).message}`);
    }
  }
}

/**
 * Refuse early (CHAIN_LEASED) when another writer holds the chain's lease: what `hold` would refuse,
 * without taking anything. `holder`'s own lease, `take`, and a lease that is not live pass.
 */
export async function checkLease(store: ArchiveStore, chainId: string, holder?: ChainLeaseHolder, take = false): Promise<void> {
  if (take) return;
  const cur = await currentLease(store, chainId);
  if (cur && cur.record === null) throw unreadableLease(store.url, chainId, cur.generation);
  const r = cur?.record;
  if (r && r.token !== holder?.token && leaseState(r) === 'held') throw chainLeased(store.url, chainId, r);
}
