// Host-side helpers of the lab tests: hashing images and temporary directories removed after the file's tests.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

const made: string[] = [];
let hooked = false;

/** A new directory under os.tmpdir(), removed after the calling test file's tests. */
export async function hostTempDir(prefix: string): Promise<string> {
  if (!hooked) {
    hooked = true;
    afterAll(async () => {
      for (const d of made.splice(0)) await rm(d, { recursive: true, force: true });
    });
  }
  const d = await mkdtemp(join(tmpdir(), prefix));
  made.push(d);
  return d;
}
