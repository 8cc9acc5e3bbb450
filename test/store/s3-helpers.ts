/** Helpers for the S3 store tests: a raw S3 client for the test Ceph, fresh buckets, and a TCP proxy that can drop connections. */
import { randomBytes } from 'node:crypto';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { CreateBucketCommand, ListMultipartUploadsCommand, S3Client } from '@aws-sdk/client-s3';
import type { Ceph } from '../servers/ceph.js';

export function rawClient(c: Ceph, endpoint = c.endpoint): S3Client {
  return new S3Client({
    endpoint, region: c.region, forcePathStyle: true, credentials: { accessKeyId: c.accessKey, secretAccessKey: c.secretKey },
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

/** A new bucket with a unique name (object lock on request: it can only be enabled at creation). */
export async function newBucket(client: S3Client, label: string, objectLock = false): Promise<string> {
  const name = `ta-${label}-${randomBytes(4).toString('hex')}`;
  await client.send(new CreateBucketCommand({ Bucket: name, ObjectLockEnabledForBucket: objectLock || undefined }));
  return name;
}

/** Keys of incomplete multipart uploads under `prefix`. */
export async function incompleteUploads(client: S3Client, bucket: string, prefix = ''): Promise<string[]> {
  const r = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: prefix }));
  return (r.Uploads ?? []).map((u) => u.Key!).sort();
}

/**
 * A TCP proxy on 127.0.0.1 to `target`. `drop()` destroys every open connection and stops listening
 * (new connections are refused), like a network failure or a dead gateway; `restore()` listens again
 * on the same port.
 */
export class DropProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  port = 0;
  constructor(private readonly targetPort: number) {}

  async start(port = 0): Promise<this> {
    const server = createServer((client) => {
      const up = connect(this.targetPort, '127.0.0.1');
      this.sockets.add(client);
      this.sockets.add(up);
      const end = (): void => {
        client.destroy();
        up.destroy();
        this.sockets.delete(client);
        this.sockets.delete(up);
      };
      client.on('error', end).on('close', end);
      up.on('error', end).on('close', end);
      client.pipe(up);
      up.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    this.server = server;
    this.port = (server.address() as { port: number }).port;
    return this;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get open(): number {
    return this.sockets.size;
  }

  async drop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    for (const sock of this.sockets) sock.destroy();
    this.sockets.clear();
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  restore(): Promise<this> {
    return this.start(this.port);
  }
}
