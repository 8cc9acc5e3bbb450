import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { askDaemon } from './daemon.js';
import { SOCKET_FILE } from './state.js';

let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

describe('askDaemon', () => {
  it('waits for a daemon that accepted but answers late, beyond the connect timeout', async () => {
    dir = mkdtempSync(join(tmpdir(), 'ta-ask-'));
    const answer = { version: 1, source: 'daemon', units: [] };
    const server = createServer((c) => {
      setTimeout(() => c.end(JSON.stringify(answer)), 400);
    });
    await new Promise<void>((r) => server.listen(join(dir!, SOCKET_FILE), r));
    try {
      expect(await askDaemon(dir, 100, 5000)).toEqual(answer);
      // and gives up on one that never answers, after the answer timeout
      expect(await askDaemon(dir, 100, 200)).toBeUndefined();
    } finally {
      server.close();
    }
  });

  it('answers undefined at once when nothing listens', async () => {
    dir = mkdtempSync(join(tmpdir(), 'ta-ask-'));
    const t = Date.now();
    expect(await askDaemon(dir, 5000, 5000)).toBeUndefined();
    expect(Date.now() - t).toBeLessThan(4000);
  });
});
