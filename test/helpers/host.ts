/**
 * Facts of the host the tests run on, shared by the lab harness and the test servers (and, through
 * scripts/lib/lab.mjs, by the demo and the benchmarks): whether this is CI, and a free TCP port.
 */
import { createServer } from 'node:net';

/** $CI is set (not empty, "0" or "false"): a tier that cannot run here is then a failure, not a skip. */
export function ciSet(): boolean {
  const v = (process.env.CI ?? '').trim().toLowerCase();
  return v !== '' && v !== '0' && v !== 'false';
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}
