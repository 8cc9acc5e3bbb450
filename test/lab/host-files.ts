// Host-side helpers of the lab tests: hashing images and temporary directories removed after the file's tests.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

const made: string[] = [];

/**
 * A new directory under os.tmpdir(). The test file removes it with `afterAll(removeHostTempDirs)` at
 * its top level (a hook registered inside a running test never runs: these directories, 20-140 MB,
 * used to stay in /tmp).
 */
export async function hostTempDir(prefix: string): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), prefix));
  made.push(d);
  return d;
}

/** Remove every directory hostTempDir made in this test file (passing or failing). */
export async function removeHostTempDirs(): Promise<void> {
  for (const d of made.splice(0)) await rm(d, { recursive: true, force: true });
}
