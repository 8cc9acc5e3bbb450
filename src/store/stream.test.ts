import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { PIPE_BYTES, widenPipe } from './stream.js';

const dir = mkdtempSync(join(tmpdir(), 'ta-pipe-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const withFd = (fd: number): Writable => ({ fd } as unknown as Writable);

describe('widenPipe', () => {
  it('raises a pipe\'s buffer to 1 MiB, and leaves a file, or a stream without a descriptor, alone', () => {
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    // (read-write: a FIFO opened so does not wait for the other end)
    const p = openSync(fifo, constants.O_RDWR);
    const f = openSync(join(dir, 'file'), 'w');
    try {
      expect(widenPipe(withFd(p))).toBe(PIPE_BYTES);
      expect(widenPipe(withFd(p))).toBe(PIPE_BYTES); // already so
      expect(widenPipe(withFd(f))).toBe(-1);
      expect(widenPipe({} as Writable)).toBe(-1);
    } finally {
      closeSync(p);
      closeSync(f);
    }
  });
});
