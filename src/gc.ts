/**
 * Garbage collections on demand. Minor (young-generation) ones for code that makes garbage V8 is slow to
 * collect: Node's ciphers have no output-buffer form, so every `update()` allocates its result (64 KiB
 * per age chunk), garbage as soon as it is copied out, and V8 collects such buffers only after tens of
 * MiB of them have piled up (external memory), which shows as that much more peak RSS.
 * `madeGarbage(n)` counts the bytes and runs a minor collection every GARBAGE_STEP of them: a small
 * young generation makes that well under a millisecond. `gc` is obtained as jest's leak detector does
 * (`--expose-gc` set at run time, `gc` taken from a new context); where that fails, nothing is
 * collected early. (The worker threads do the same: src/archive/worker.cjs.)
 * `collectAndTrim()`: a full collection, then the freed memory handed back to the system (glibc's
 * malloc_trim through the native addon), for a long-running process once it is idle (the daemon:
 * daemon/idle-gc.ts).
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { thinio } from './native.js';

const GARBAGE_STEP = 4 << 20;

/** V8's `gc`: a full collection without options (with `{type: 'major'}` WeakRef targets survived). */
type Collect = (o?: { type: 'minor' | 'major'; execution: 'sync' | 'async' }) => void;

let collect: Collect | null | undefined;
let since = 0;

function collector(): Collect | null {
  if (collect === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      collect = runInNewContext('gc') as Collect;
    } catch {
      collect = null;
    }
  }
  return collect;
}

/** `n` bytes were made garbage: collect the young generation every GARBAGE_STEP bytes. */
export function madeGarbage(n: number): void {
  since += n;
  if (since < GARBAGE_STEP) return;
  since = 0;
  collector()?.({ type: 'minor', execution: 'sync' });
}

/**
 * A full (major) collection, then malloc_trim: what the heap no longer needs goes back to the system.
 * False when no collector could be had (nothing done).
 */
export function collectAndTrim(): boolean {
  const c = collector();
  if (!c) return false;
  c();
  try {
    thinio().mallocTrim();
  } catch {
    // (an addon built before mallocTrim existed: the collection alone)
  }
  return true;
}

/**
 * For a long-running process (the daemon): blocks of `bytes` or more (record buffers are 4 MiB) get
 * mappings of their own, returned to the system when freed. Left to glibc, they come from the heap
 * once the first one is freed (it raises its threshold), stay with it when freed and fragment it: the
 * idle daemon's RSS then swung by tens of MiB from one burst of runs to the next. A few page faults
 * per record buffer are the cost. False where it could not be set (not glibc, an older addon).
 */
export function mapLargeAllocations(bytes = 1 << 20): boolean {
  try {
    return thinio().mallocMmapThreshold(bytes);
  } catch {
    return false;
  }
}
