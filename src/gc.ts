/**
 * Minor (young-generation) garbage collections on demand, for code that makes garbage V8 is slow to
 * collect: Node's ciphers have no output-buffer form, so every `update()` allocates its result (64 KiB
 * per age chunk), garbage as soon as it is copied out, and V8 collects such buffers only after tens of
 * MiB of them have piled up (external memory), which shows as that much more peak RSS.
 * `madeGarbage(n)` counts the bytes and runs a minor collection every GARBAGE_STEP of them: a small
 * young generation makes that well under a millisecond. `gc` is obtained as jest's leak detector does
 * (`--expose-gc` set at run time, `gc` taken from a new context); where that fails, nothing is
 * collected early. (The worker threads do the same: src/archive/worker.cjs.)
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

const GARBAGE_STEP = 4 << 20;

type Collect = (o: { type: 'minor' | 'major'; execution: 'sync' | 'async' }) => void;

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
