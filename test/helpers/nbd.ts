/**
 * Helpers for the serve tests: start `thinarchive serve` and wait until it listens, run libnbd's and
 * qemu's tools, and a raw NBD client (fixed newstyle, hand-made bytes) for hostile-client tests.
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { createConnection, type Socket } from 'node:net';
import { promisify } from 'node:util';
import { collect, spawnCli, waitFor, type RunResult } from './cli.js';

const exec = promisify(execFile);

export interface Served {
  child: ChildProcess;
  socket: string;
  /** nbd+unix URI of an export ('' = the default). */
  uri(name?: string): string;
  stderr(): string;
  /** SIGTERM (or the signal given), and the CLI's result. */
  stop(signal?: NodeJS.Signals): Promise<RunResult>;
}

/** `thinarchive serve ARGS --socket SOCKET`, once it says it is serving. */
export async function startServe(args: string[], socket: string, env?: Record<string, string>): Promise<Served> {
  const child = spawnCli(['serve', ...args, '--socket', socket], { env });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => { err += b.toString(); });
  const done = collect(child, 600_000);
  let exited = false;
  done.then(() => { exited = true; }, () => { exited = true; });
  await waitFor(() => {
    if (exited) throw new Error(`serve exited early: ${err}`);
    return err.includes('serving chain') ? true : undefined;
  }, 60_000);
  return {
    child, socket,
    uri: (name = '') => `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`,
    stderr: () => err,
    stop: async (signal = 'SIGTERM') => {
      child.kill(signal);
      const r = await done;
      return { ...r, stderr: err };
    },
  };
}

export async function tool(cmd: string, args: string[]): Promise<string> {
  const { stdout } = await exec(cmd, args, { maxBuffer: 64 << 20, timeout: 120_000 });
  return stdout;
}

/** A raw NBD client: bytes in, exact reads out. */
export class RawNbd {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;

  private constructor(readonly sock: Socket) {
    sock.on('data', (b: Buffer) => {
      this.buf = Buffer.concat([this.buf, b]);
      for (const w of this.waiters.splice(0)) w();
    });
    const end = (): void => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w();
    };
    sock.on('close', end);
    sock.on('error', end);
  }

  static connect(path: string): Promise<RawNbd> {
    return new Promise((resolve, reject) => {
      const s = createConnection(path);
      s.once('connect', () => resolve(new RawNbd(s)));
      s.once('error', reject);
    });
  }

  /** Exactly n bytes; rejects when the server closes first. */
  async read(n: number, timeoutMs = 20_000): Promise<Buffer> {
    const t0 = Date.now();
    while (this.buf.length < n) {
      if (this.closed) throw new Error('closed by the server');
      if (Date.now() - t0 > timeoutMs) throw new Error('timeout');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 200);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Resolves true when the server closes the connection within the time. */
  async closedByServer(timeoutMs = 10_000): Promise<boolean> {
    const t0 = Date.now();
    while (!this.closed && Date.now() - t0 < timeoutMs) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }

  write(b: Buffer): void {
    this.sock.write(b);
  }

  destroy(): void {
    this.sock.destroy();
  }

  /** Read the server's greeting and send client flags (fixed newstyle, no zeroes). */
  async greet(): Promise<void> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== 0x4e42444d41474943n || g.readBigUInt64BE(8) !== 0x49484156454f5054n) throw new Error('bad greeting');
    this.write(u32(3));
  }

  option(opt: number, data: Buffer = Buffer.alloc(0)): void {
    this.write(Buffer.concat([u64(0x49484156454f5054n), u32(opt), u32(data.length), data]));
  }

  /** One option reply: [type, data]. */
  async optReply(): Promise<{ opt: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== 0x3e889045565a9n) throw new Error('bad option reply magic');
    const len = h.readUInt32BE(16);
    return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data: Buffer.from(await this.read(len)) };
  }

  /** NBD_OPT_GO on `name` (simple replies); returns the export size. */
  async go(name = ''): Promise<number> {
    const n = Buffer.from(name);
    this.option(7, Buffer.concat([u32(n.length), n, u16(0)]));
    let size = -1;
    for (;;) {
      const r = await this.optReply();
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) size = Number(r.data.readBigUInt64BE(2));
      else if (r.type === 1) return size;
      else if (r.type >= 0x80000000) throw new Error(`GO failed: ${r.type.toString(16)} ${r.data.toString()}`);
    }
  }

  request(type: number, cookie: number, offset: number, length: number, flags = 0, payload?: Buffer): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(BigInt(cookie), 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.write(payload ? Buffer.concat([h, payload]) : h);
  }

  /** A simple reply: error and cookie (read `dataLen` more bytes when the error is 0). */
  async simpleReply(dataLen = 0): Promise<{ error: number; cookie: number; data: Buffer }> {
    const h = await this.read(16);
    if (h.readUInt32BE(0) !== 0x67446698) throw new Error(`bad reply magic ${h.readUInt32BE(0).toString(16)}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLen > 0 ? Buffer.from(await this.read(dataLen)) : Buffer.alloc(0);
    return { error, cookie: Number(h.readBigUInt64BE(8)), data };
  }
}

export function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
}
export function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}
export function u64(v: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
}

export { waitFor };
