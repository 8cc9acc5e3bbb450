/**
 * An NBD server (doc/proto.md of the NBD project): fixed-newstyle handshake (EXPORT_NAME, GO, INFO,
 * LIST, ABORT, STRUCTURED_REPLY, LIST/SET_META_CONTEXT with base:allocation), then READ, WRITE, FLUSH,
 * TRIM, WRITE_ZEROES, BLOCK_STATUS and DISC with simple or structured replies. What is served comes
 * from an ExportProvider; this module knows nothing of archives.
 *
 * Robustness: each connection is independent; a protocol violation (bad magic, oversized option or
 * write payload, unknown client flags) ends that connection only; a request out of range or with
 * bad flags gets an error reply. Requests run concurrently per connection up to a bound of requests
 * and of bytes in flight, after which the connection is not read (a flood is slowed, not buffered).
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import { ThinarchiveError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import {
  BASE_ALLOCATION, CMD, CMD_FLAG, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO, MAX_OPTION_DATA,
  MAX_PAYLOAD, NBD_ERR, NBDMAGIC, OPT, OPT_REPLY_MAGIC, REP, REPLY_FLAG_DONE, REPLY_TYPE, REQUEST_MAGIC, REQUEST_SIZE, SIMPLE_REPLY_MAGIC,
  STATE_HOLE, STATE_ZERO, STRUCTURED_REPLY_MAGIC, TFLAG,
} from './protocol.js';

/** A piece of a read: bytes, or a run of zeroes. */
export type NbdPiece = { offset: number; data: Uint8Array } | { offset: number; hole: number };

/** A read's pieces; `release` (when given) is called once they have been written to the client. */
export interface NbdRead {
  pieces: NbdPiece[];
  release?: () => void;
}

/** What a client sees: a read-only (or writable) device. Offsets and lengths are checked by the server. */
export interface NbdExport {
  readonly name: string;
  readonly description: string;
  readonly size: number;
  /** Preferred block size (a power of two, at least 512). */
  readonly preferredBlock: number;
  read(offset: number, length: number): Promise<NbdRead>;
  /** Allocation runs of [offset, offset + length), in order, covering it. */
  status(offset: number, length: number): Promise<{ length: number; hole: boolean }[]>;
  /** Present on writable exports. */
  write?(offset: number, data: Uint8Array): Promise<void>;
  zero?(offset: number, length: number): Promise<void>;
  flush?(): Promise<void>;
}

export interface ExportProvider {
  /** The exports LIST shows. */
  list(): { name: string; description: string }[];
  /** The export of that name (the default for ''), or undefined when there is none. May fail. */
  open(name: string): Promise<NbdExport | undefined>;
}

export interface NbdServerOptions {
  log?: Logger;
  /** Connections served at once; more are closed at once. Default 128. */
  maxConnections?: number;
  /** A read failed (the client got EIO). */
  onReadError?: (e: unknown, exportName: string, offset: number, length: number) => void;
}

export interface NbdServerStats {
  connections: number;
  requests: number;
  bytesRead: number;
  bytesWritten: number;
  /** Reads answered with EIO (a record failed its checks or could not be read). */
  readErrors: number;
  /** Connections closed for a protocol violation. */
  protocolErrors: number;
}

export type ListenAddress = { socket: string } | { host: string; port: number };

const MAX_INFLIGHT = 64;
const MAX_INFLIGHT_BYTES = 64 * 1024 * 1024;
const HANDSHAKE_TIMEOUT_MS = 30_000;
const MAX_DESCRIPTORS = 1 << 20;
const ZEROES = Buffer.alloc(1 << 20);

/** The connection broke the protocol or went away: it is closed, nothing is replied. */
class Hangup extends Error {}

/** Bytes arriving on a socket, read in exact amounts; the socket is paused while enough is buffered. */
class Incoming {
  private chunks: Buffer[] = [];
  private len = 0;
  private want = 0;
  private wake: (() => void) | undefined;
  private ended = false;

  constructor(private readonly sock: Socket) {
    sock.on('data', (b: Buffer) => {
      this.chunks.push(b);
      this.len += b.length;
      if (this.len >= Math.max(this.want, 1 << 20)) sock.pause();
      this.signal();
    });
    const end = (): void => {
      this.ended = true;
      this.signal();
    };
    sock.on('end', end);
    sock.on('close', end);
    sock.on('error', end);
  }

  private signal(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Stop: pending and later reads fail. */
  stop(): void {
    this.ended = true;
    this.signal();
  }

  async read(n: number): Promise<Buffer> {
    while (this.len < n) {
      if (this.ended) throw new Hangup('connection closed');
      this.want = n;
      this.sock.resume();
      await new Promise<void>((r) => { this.wake = r; });
    }
    this.want = 0;
    let out: Buffer;
    if (this.chunks[0].length >= n) {
      out = this.chunks[0].subarray(0, n);
      this.chunks[0] = this.chunks[0].subarray(n);
      if (this.chunks[0].length === 0) this.chunks.shift();
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.chunks[0];
        const k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.len -= n;
    if (this.len < 1 << 20) this.sock.resume();
    return out;
  }
}

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
}
function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}
function u64(v: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
}

interface Request { flags: number; type: number; cookie: Buffer; offset: number; length: number; payload?: Buffer }

class Connection {
  private readonly in: Incoming;
  private structured = false;
  private noZeroes = false;
  private metaExport: string | undefined; // export the base:allocation context was selected for
  private exp: NbdExport | undefined;
  private exportName = '';
  private inflight = 0;
  private inflightBytes = 0;
  private slotWaiters: (() => void)[] = [];
  private readonly pending = new Set<Promise<void>>();
  private stopping = false;

  constructor(private readonly sock: Socket, private readonly server: NbdServer) {
    this.in = new Incoming(sock);
    sock.setNoDelay(true);
    sock.on('error', () => {});
  }

  stop(): void {
    this.stopping = true;
    this.in.stop();
  }

  /** Write `bufs` in order, nothing in between; `done` once they are handed to the kernel (or dropped). */
  private send(bufs: Uint8Array[], done?: () => void): void {
    if (this.sock.destroyed) {
      done?.();
      return;
    }
    for (let i = 0; i < bufs.length; i++) {
      if (i === bufs.length - 1 && done) this.sock.write(bufs[i], () => done());
      else this.sock.write(bufs[i]);
    }
    if (bufs.length === 0) done?.();
  }

  private drained: Promise<void> | undefined;

  /** Wait until the socket has room again (one listener shared by every request waiting). */
  private drain(): Promise<void> {
    if (this.sock.destroyed || !this.sock.writableNeedDrain) return Promise.resolve();
    this.drained ??= new Promise<void>((r) => {
      const done = (): void => {
        this.sock.off('drain', done);
        this.sock.off('close', done);
        this.drained = undefined;
        r();
      };
      this.sock.on('drain', done);
      this.sock.on('close', done);
    });
    return this.drained;
  }

  async run(): Promise<void> {
    const log = this.server.log;
    try {
      this.sock.setTimeout(HANDSHAKE_TIMEOUT_MS, () => this.sock.destroy());
      const go = await this.handshake();
      this.sock.setTimeout(0);
      if (go) await this.transmission();
    } catch (e) {
      if (!(e instanceof Hangup)) log.warn({ err: String(e) }, 'nbd connection failed');
      else if (e.message !== 'connection closed' && e.message !== 'abort') {
        this.server.stats.protocolErrors++;
        log.warn({ reason: e.message }, 'nbd client disconnected for a protocol violation');
      }
    } finally {
      await Promise.allSettled([...this.pending]);
      if (!this.sock.destroyed) {
        await new Promise<void>((r) => this.sock.end(r));
        this.sock.destroy();
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Handshake

  private optReply(opt: number, type: number, data: Uint8Array[] = []): void {
    const len = data.reduce((n, d) => n + d.length, 0);
    this.send([u64(OPT_REPLY_MAGIC), u32(opt), u32(type), u32(len), ...data]);
  }

  private optError(opt: number, type: number, message: string): void {
    this.optReply(opt, type, [Buffer.from(message, 'utf8')]);
  }

  /** The handshake; true when the client went into transmission with `this.exp`. */
  private async handshake(): Promise<boolean> {
    this.send([u64(NBDMAGIC), u64(IHAVEOPT), u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)]);
    const cflags = (await this.in.read(4)).readUInt32BE(0);
    if (cflags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) throw new Hangup(`unknown client flags 0x${cflags.toString(16)}`);
    this.noZeroes = (cflags & FLAG_C_NO_ZEROES) !== 0;
    for (;;) {
      if (this.stopping) throw new Hangup('abort');
      const h = await this.in.read(16);
      if (h.readBigUInt64BE(0) !== IHAVEOPT) throw new Hangup('bad option magic');
      const opt = h.readUInt32BE(8);
      const len = h.readUInt32BE(12);
      if (len > MAX_OPTION_DATA) throw new Hangup(`option data of ${len} bytes`);
      const data = len > 0 ? await this.in.read(len) : Buffer.alloc(0);
      switch (opt) {
        case OPT.EXPORT_NAME: {
          const name = data.toString('utf8');
          const { exp } = await this.openExport(name);
          if (!exp) throw new Hangup('unknown export');
          this.exp = exp;
          this.exportName = name;
          this.send([u64(exp.size), u16(this.transmissionFlags(exp)), ...(this.noZeroes ? [] : [Buffer.alloc(124)])]);
          return true;
        }
        case OPT.ABORT:
          this.optReply(opt, REP.ACK);
          return false;
        case OPT.LIST:
          if (len !== 0) {
            this.optError(opt, REP.ERR_INVALID, 'LIST takes no data');
            break;
          }
          for (const e of this.server.provider.list()) {
            const name = Buffer.from(e.name, 'utf8');
            this.optReply(opt, REP.SERVER, [u32(name.length), name, Buffer.from(e.description, 'utf8')]);
          }
          this.optReply(opt, REP.ACK);
          break;
        case OPT.INFO:
        case OPT.GO:
          if (await this.infoOrGo(opt, data)) return true;
          break;
        case OPT.STRUCTURED_REPLY:
          if (len !== 0) this.optError(opt, REP.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
          else {
            this.structured = true;
            this.optReply(opt, REP.ACK);
          }
          break;
        case OPT.LIST_META_CONTEXT:
        case OPT.SET_META_CONTEXT:
          await this.metaContext(opt, data);
          break;
        default:
          this.optError(opt, REP.ERR_UNSUP, `option ${opt} is not supported`);
      }
    }
  }

  /** The export of that name; `why` when there is none (unknown, or it failed to open). */
  private async openExport(name: string): Promise<{ exp?: NbdExport; why: string }> {
    try {
      const exp = await this.server.provider.open(name);
      return { exp, why: `no export named ${JSON.stringify(name)}` };
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      this.server.log.warn({ export: name, err: why }, 'nbd export cannot be opened');
      return { why: `export ${JSON.stringify(name)} cannot be opened: ${why}` };
    }
  }

  private transmissionFlags(exp: NbdExport): number {
    let f = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.CAN_MULTI_CONN;
    if (this.structured) f |= TFLAG.SEND_DF;
    if (exp.write) f |= TFLAG.SEND_FUA | TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES;
    else f |= TFLAG.READ_ONLY;
    return f;
  }

  private async infoOrGo(opt: number, data: Buffer): Promise<boolean> {
    if (data.length < 6) {
      this.optError(opt, REP.ERR_INVALID, 'option data too short');
      return false;
    }
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 6) {
      this.optError(opt, REP.ERR_INVALID, 'export name length past the option data');
      return false;
    }
    const name = data.toString('utf8', 4, 4 + nameLen);
    const n = data.readUInt16BE(4 + nameLen);
    if (data.length !== 6 + nameLen + 2 * n) {
      this.optError(opt, REP.ERR_INVALID, 'information request count does not match the option length');
      return false;
    }
    const wanted = new Set<number>();
    for (let i = 0; i < n; i++) wanted.add(data.readUInt16BE(6 + nameLen + 2 * i));
    const { exp, why } = await this.openExport(name);
    if (!exp) {
      this.optError(opt, REP.ERR_UNKNOWN, why);
      return false;
    }
    this.optReply(opt, REP.INFO, [u16(INFO.EXPORT), u64(exp.size), u16(this.transmissionFlags(exp))]);
    if (wanted.has(INFO.NAME)) this.optReply(opt, REP.INFO, [u16(INFO.NAME), Buffer.from(exp.name, 'utf8')]);
    if (wanted.has(INFO.DESCRIPTION)) this.optReply(opt, REP.INFO, [u16(INFO.DESCRIPTION), Buffer.from(exp.description, 'utf8')]);
    this.optReply(opt, REP.INFO, [u16(INFO.BLOCK_SIZE), u32(1), u32(exp.preferredBlock), u32(MAX_PAYLOAD)]);
    this.optReply(opt, REP.ACK);
    if (opt !== OPT.GO) return false;
    this.exp = exp;
    this.exportName = name;
    return true;
  }

  private async metaContext(opt: number, data: Buffer): Promise<void> {
    if (opt === OPT.SET_META_CONTEXT) this.metaExport = undefined; // replaced, also when this fails
    if (!this.structured) {
      this.optError(opt, REP.ERR_INVALID, 'negotiate structured replies first');
      return;
    }
    const bad = (): void => this.optError(opt, REP.ERR_INVALID, 'malformed meta context request');
    if (data.length < 8) return bad();
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 8) return bad();
    const name = data.toString('utf8', 4, 4 + nameLen);
    let at = 4 + nameLen;
    const count = data.readUInt32BE(at);
    at += 4;
    const queries: string[] = [];
    for (let i = 0; i < count; i++) {
      if (at + 4 > data.length) return bad();
      const ql = data.readUInt32BE(at);
      at += 4;
      if (at + ql > data.length) return bad();
      queries.push(data.toString('utf8', at, at + ql));
      at += ql;
    }
    if (at !== data.length) return bad();
    const { exp, why } = await this.openExport(name);
    if (!exp) {
      this.optError(opt, REP.ERR_UNKNOWN, why);
      return;
    }
    const ctx = Buffer.from(BASE_ALLOCATION, 'utf8');
    const matches = opt === OPT.LIST_META_CONTEXT
      ? queries.length === 0 || queries.some((q) => q === BASE_ALLOCATION || q === 'base:')
      : queries.some((q) => q === BASE_ALLOCATION);
    if (matches) this.optReply(opt, REP.META_CONTEXT, [u32(opt === OPT.SET_META_CONTEXT ? 1 : 0), ctx]);
    if (matches && opt === OPT.SET_META_CONTEXT) this.metaExport = name;
    this.optReply(opt, REP.ACK);
  }

  // -------------------------------------------------------------------------------------------
  // Transmission

  private async slot(bytes: number): Promise<void> {
    while (this.inflight > 0 && (this.inflight >= MAX_INFLIGHT || this.inflightBytes + bytes > MAX_INFLIGHT_BYTES)) {
      await new Promise<void>((r) => this.slotWaiters.push(r));
    }
    this.inflight++;
    this.inflightBytes += bytes;
  }

  private release(bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    const w = this.slotWaiters.shift();
    w?.();
  }

  private async transmission(): Promise<void> {
    const exp = this.exp!;
    this.server.log.info({ export: exp.name, structured: this.structured }, 'nbd client connected');
    for (;;) {
      if (this.stopping) return;
      const h = await this.in.read(REQUEST_SIZE);
      if (h.readUInt32BE(0) !== REQUEST_MAGIC) throw new Hangup('bad request magic');
      const off = h.readBigUInt64BE(16);
      const req: Request = {
        flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: Buffer.from(h.subarray(8, 16)),
        offset: off > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(off), length: h.readUInt32BE(24),
      };
      if (req.type === CMD.WRITE) {
        // The payload follows the header whatever the answer will be; one larger than the maximum
        // payload is a protocol violation that cannot be skipped safely.
        if (req.length > MAX_PAYLOAD) throw new Hangup(`write payload of ${req.length} bytes`);
        req.payload = await this.in.read(req.length);
      }
      if (req.type === CMD.DISC) return;
      this.server.stats.requests++;
      const bytes = req.type === CMD.READ || req.type === CMD.WRITE ? req.length : 0;
      await this.slot(bytes);
      const p = this.handle(exp, req).catch((e: unknown) => {
        this.server.log.warn({ err: String(e) }, 'nbd request failed');
        this.sock.destroy();
      }).finally(() => {
        this.release(bytes);
        this.pending.delete(p);
      });
      this.pending.add(p);
    }
  }

  private simple(req: Request, error: number, data: Uint8Array[] = []): void {
    this.send([u32(SIMPLE_REPLY_MAGIC), u32(error), req.cookie, ...data]);
  }

  private chunkHead(req: Request, flags: number, type: number, length: number): Buffer {
    const b = Buffer.allocUnsafe(20);
    b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
    b.writeUInt16BE(flags, 4);
    b.writeUInt16BE(type, 6);
    req.cookie.copy(b, 8);
    b.writeUInt32BE(length, 16);
    return b;
  }

  /** An error reply: structured (with a message) for READ and BLOCK_STATUS when negotiated, else simple. */
  private error(req: Request, error: number, message: string): void {
    if (this.structured && (req.type === CMD.READ || req.type === CMD.BLOCK_STATUS)) {
      const msg = Buffer.from(message.slice(0, 1024), 'utf8');
      this.send([this.chunkHead(req, REPLY_FLAG_DONE, REPLY_TYPE.ERROR, 6 + msg.length), u32(error), u16(msg.length), msg]);
    } else this.simple(req, error);
  }

  private async handle(exp: NbdExport, req: Request): Promise<void> {
    const { type, flags, offset, length } = req;
    const inRange = offset + length <= exp.size;
    const allowed: Record<number, number> = {
      [CMD.READ]: this.structured ? CMD_FLAG.DF : 0,
      [CMD.WRITE]: CMD_FLAG.FUA,
      [CMD.FLUSH]: 0,
      [CMD.TRIM]: CMD_FLAG.FUA,
      [CMD.WRITE_ZEROES]: CMD_FLAG.FUA | CMD_FLAG.NO_HOLE,
      [CMD.BLOCK_STATUS]: CMD_FLAG.REQ_ONE,
    };
    if (!(type in allowed)) return this.error(req, NBD_ERR.EINVAL, `unknown command ${type}`);
    if (flags & ~allowed[type]) return this.error(req, NBD_ERR.EINVAL, `flags 0x${flags.toString(16)} are not valid for command ${type}`);
    switch (type) {
      case CMD.READ: {
        if (!inRange) return this.error(req, NBD_ERR.EINVAL, 'read past the end of the export');
        if (length > MAX_PAYLOAD) return this.error(req, NBD_ERR.EINVAL, 'read larger than the maximum payload');
        let r: NbdRead;
        try {
          r = length === 0 ? { pieces: [] } : await exp.read(offset, length);
        } catch (e) {
          this.server.stats.readErrors++;
          this.server.onReadError(e, exp.name, offset, length);
          return this.error(req, NBD_ERR.EIO, e instanceof ThinarchiveError ? e.message : 'read failed');
        }
        this.server.stats.bytesRead += length;
        this.sendRead(req, r.pieces, (flags & CMD_FLAG.DF) !== 0, r.release);
        return this.drain();
      }
      case CMD.FLUSH:
        await exp.flush?.();
        return this.simple(req, 0);
      case CMD.WRITE:
      case CMD.TRIM:
      case CMD.WRITE_ZEROES: {
        if (!exp.write || !exp.zero) return this.simple(req, NBD_ERR.EPERM);
        if (!inRange) return this.simple(req, NBD_ERR.ENOSPC);
        try {
          if (type === CMD.WRITE) await exp.write(offset, req.payload!);
          else if (length > 0) await exp.zero(offset, length);
          if (flags & CMD_FLAG.FUA) await exp.flush?.();
        } catch (e) {
          this.server.log.warn({ export: exp.name, offset, length, err: e instanceof Error ? e.message : String(e) }, 'nbd write failed');
          return this.simple(req, NBD_ERR.EIO);
        }
        if (type === CMD.WRITE) this.server.stats.bytesWritten += length;
        return this.simple(req, 0);
      }
      case CMD.BLOCK_STATUS: {
        if (this.metaExport === undefined || this.metaExport !== this.exportName) return this.error(req, NBD_ERR.EINVAL, 'no metadata context was selected');
        if (!inRange || length === 0) return this.error(req, NBD_ERR.EINVAL, 'block status past the end of the export');
        const runs = await exp.status(offset, length);
        const desc: Buffer[] = [];
        for (const r of runs) {
          let left = r.length;
          while (left > 0 && desc.length < MAX_DESCRIPTORS) {
            const n = Math.min(left, 0x80000000);
            const b = Buffer.allocUnsafe(8);
            b.writeUInt32BE(n, 0);
            b.writeUInt32BE(r.hole ? STATE_HOLE | STATE_ZERO : 0, 4);
            desc.push(b);
            left -= n;
          }
          if ((flags & CMD_FLAG.REQ_ONE) && desc.length > 0) break;
        }
        if (flags & CMD_FLAG.REQ_ONE) desc.length = 1;
        this.send([this.chunkHead(req, REPLY_FLAG_DONE, REPLY_TYPE.BLOCK_STATUS, 4 + 8 * desc.length), u32(1), ...desc]);
        return this.drain();
      }
    }
  }

  private sendRead(req: Request, pieces: NbdPiece[], df: boolean, done?: () => void): void {
    const zeroes = (n: number): Uint8Array[] => {
      const out: Uint8Array[] = [];
      for (; n > 0; n -= ZEROES.length) out.push(n >= ZEROES.length ? ZEROES : ZEROES.subarray(0, n));
      return out;
    };
    const flat = (): Uint8Array[] => pieces.flatMap((p) => ('data' in p ? [p.data] : zeroes(p.hole)));
    if (!this.structured) return this.send([u32(SIMPLE_REPLY_MAGIC), u32(0), req.cookie, ...flat()], done);
    if (pieces.length === 0) return this.send([this.chunkHead(req, REPLY_FLAG_DONE, REPLY_TYPE.NONE, 0)], done);
    if (df) return this.send([this.chunkHead(req, REPLY_FLAG_DONE, REPLY_TYPE.OFFSET_DATA, 8 + req.length), u64(req.offset), ...flat()], done);
    const out: Uint8Array[] = [];
    pieces.forEach((p, i) => {
      const fl = i === pieces.length - 1 ? REPLY_FLAG_DONE : 0;
      if ('data' in p) out.push(this.chunkHead(req, fl, REPLY_TYPE.OFFSET_DATA, 8 + p.data.length), u64(p.offset), p.data);
      else out.push(this.chunkHead(req, fl, REPLY_TYPE.OFFSET_HOLE, 12), u64(p.offset), u32(p.hole));
    });
    this.send(out, done);
  }
}

/** The server: listens on a unix socket or TCP address and serves each connection independently. */
export class NbdServer {
  readonly log: Logger;
  readonly stats: NbdServerStats = { connections: 0, requests: 0, bytesRead: 0, bytesWritten: 0, readErrors: 0, protocolErrors: 0 };
  private server: Server | undefined;
  private socketPath: string | undefined;
  private readonly conns = new Map<Connection, Promise<void>>();
  private readonly maxConnections: number;
  readonly onReadError: (e: unknown, exportName: string, offset: number, length: number) => void;

  constructor(readonly provider: ExportProvider, opts: NbdServerOptions = {}) {
    this.log = opts.log ?? silentLogger;
    this.maxConnections = opts.maxConnections ?? 128;
    this.onReadError = opts.onReadError ?? (() => {});
  }

  /** Start listening; returns the address in words (`unix:PATH` or `HOST:PORT`). */
  async listen(addr: ListenAddress): Promise<string> {
    if ('socket' in addr) await removeStaleSocket(addr.socket);
    const server = createServer({ pauseOnConnect: false }, (sock) => this.accept(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if ('socket' in addr) server.listen(addr.socket, resolve);
      else server.listen(addr.port, addr.host, resolve);
    }).catch((e: NodeJS.ErrnoException) => {
      const where = 'socket' in addr ? addr.socket : `${addr.host}:${addr.port}`;
      throw new ThinarchiveError('NBD_LISTEN', `cannot listen on ${where}: ${e.code ?? e.message}`);
    });
    server.on('error', (e) => this.log.warn({ err: String(e) }, 'nbd listener error'));
    this.server = server;
    if ('socket' in addr) {
      this.socketPath = addr.socket;
      return `unix:${addr.socket}`;
    }
    const a = server.address();
    return typeof a === 'object' && a ? `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}` : String(a);
  }

  private accept(sock: Socket): void {
    if (this.conns.size >= this.maxConnections) {
      this.log.warn({ max: this.maxConnections }, 'nbd connection refused: too many connections');
      sock.destroy();
      return;
    }
    this.stats.connections++;
    const c = new Connection(sock, this);
    const p = c.run().finally(() => this.conns.delete(c));
    this.conns.set(c, p);
  }

  /** Connections open now. */
  get openConnections(): number {
    return this.conns.size;
  }

  /** Stop accepting, let requests in flight finish, close every connection and the socket. */
  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    const closed = server ? new Promise<void>((r) => server.close(() => r())) : Promise.resolve();
    for (const c of this.conns.keys()) c.stop();
    await Promise.allSettled([...this.conns.values()]);
    await closed;
    if (this.socketPath) await unlink(this.socketPath).catch(() => {});
  }
}

/** A unix socket path left by a server that is gone is removed; one in use (or not a socket) is refused. */
async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = await lstat(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new ThinarchiveError('NBD_LISTEN', `cannot listen on ${path}: it exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new ThinarchiveError('NBD_LISTEN', `cannot listen on ${path}: another server is listening there`);
  await unlink(path);
}
