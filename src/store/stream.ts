/** Pipes: an archive written to a Writable (stdout) with backpressure, or read from a Readable (stdin). */
import type { Readable, Writable } from 'node:stream';
import { ioError } from '../errors.js';
import type { ArchiveSink } from '../archive/writer.js';
import { thinio } from '../native.js';

/** The buffer a pipe an archive goes through is given: Linux's default pipe-max-size (1 MiB). */
export const PIPE_BYTES = 1 << 20;

/**
 * Raise the buffer of the pipe behind a stream with a file descriptor (stdout) to PIPE_BYTES:
 * 64 KiB by default, a 4 MiB record then crosses it in 64 pieces, each a switch between writer and
 * reader. Nothing happens for a file, a terminal, or where it is not allowed. Returns the new size or -1.
 */
export function widenPipe(stream: Readable | Writable): number {
  const fd = (stream as { fd?: unknown }).fd;
  if (typeof fd !== 'number') return -1;
  try {
    return thinio().pipeSize(fd, PIPE_BYTES);
  } catch {
    return -1; // (no native addon)
  }
}

export function writableSink(w: Writable, what = 'standard output'): ArchiveSink {
  widenPipe(w);
  let failure: unknown;
  w.on('error', (e) => {
    failure = e;
  });
  return {
    // Resolves once the stream has handed the chunk to the OS (its write callback), not when it only
    // queued it: the archive writer reuses the chunk's memory afterwards (ArchiveSink).
    write(chunk: Uint8Array): Promise<void> {
      if (failure) return Promise.reject(ioError(failure, `cannot write to ${what}`));
      return new Promise((resolve, reject) => {
        const onError = (e: unknown): void => reject(ioError(e, `cannot write to ${what}`));
        w.once('error', onError);
        w.write(chunk, (e) => {
          w.off('error', onError);
          if (e) reject(ioError(e, `cannot write to ${what}`));
          else resolve();
        });
      });
    },
  };
}

/** Resolves when everything written to `w` has been handed to the OS. */
export function endWritable(w: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    if (w === process.stdout) {
      // stdout is never ended; wait for its buffer to drain.
      if (w.writableLength === 0) resolve();
      else w.once('drain', () => resolve());
      return;
    }
    w.once('error', reject);
    w.end(() => resolve());
  });
}

export function readableSource(r: Readable): AsyncIterable<Uint8Array> {
  return r as AsyncIterable<Uint8Array>;
}

/** An in-process pipe (sync --to, migrate --to: both sides in one process); chunks are copied (writers reuse theirs). */
export class MemoryPipe implements AsyncIterable<Uint8Array> {
  private readonly queue: Uint8Array[] = [];
  private queued = 0;
  private ended = false;
  private failure: unknown;
  private wake: (() => void) | undefined;
  private drained: (() => void) | undefined;
  private static readonly HIGH = 8 << 20;

  readonly sink: ArchiveSink = {
    write: async (chunk: Uint8Array): Promise<void> => {
      if (this.failure !== undefined) throw this.failure;
      if (this.ended) throw new Error('write after the end of an in-process pipe');
      // (a copy: a Buffer's slice() would share the writer's memory, which it reuses)
      this.queue.push(new Uint8Array(chunk));
      this.queued += chunk.length;
      this.wake?.();
      while (this.queued > MemoryPipe.HIGH && this.failure === undefined && !this.ended) await new Promise<void>((r) => (this.drained = r));
    },
  };

  end(): void {
    this.ended = true;
    this.wake?.();
    this.drained?.();
  }

  fail(e: unknown): void {
    this.failure ??= e;
    this.wake?.();
    this.drained?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array> {
    for (;;) {
      if (this.queue.length > 0) {
        const c = this.queue.shift()!;
        this.queued -= c.length;
        if (this.queued <= MemoryPipe.HIGH) this.drained?.();
        yield c;
        continue;
      }
      if (this.failure !== undefined) throw this.failure;
      if (this.ended) return;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
  }
}
