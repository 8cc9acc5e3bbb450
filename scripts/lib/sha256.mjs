// sha256 of a file or block device, read in 4 MiB pieces (for the benchmark scripts).
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';

export function sha256File(path) {
  const h = createHash('sha256');
  const fd = fs.openSync(path, 'r');
  const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
  try {
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0;) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}
