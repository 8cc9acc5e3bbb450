/**
 * A full garbage collection (the main thread's and the shared worker threads'), and the freed memory
 * handed back to the system, once the daemon goes idle (no run in progress for a second), at most
 * once every three seconds (tens of milliseconds for the daemon's heap: at most about 1% of a core
 * even when units run every second). A run leaves
 * megabytes of record buffers and pipeline garbage that V8 collects only under allocation pressure,
 * and freed memory stays with the C allocator; without this an idle daemon's RSS depends on how far
 * the collector had got when the last run ended (±10% in the 1,000-run leak check).
 */
import { collectSharedWorkers } from '../api/index.js';
import { collectAndTrim } from '../gc.js';

export class IdleCollector {
  private timer: NodeJS.Timeout | undefined;
  private last = 0;
  /** Collections done (for tests). */
  collections = 0;

  /** `busy`: whether any run is in progress now. */
  constructor(private readonly busy: () => boolean, private readonly delayMs = 1000, private readonly minGapMs = 3000) {}

  /** After a run ends: collect once nothing has run for `delayMs` (and the last collection is `minGapMs` old). */
  poke(): void {
    if (this.timer) return;
    const wait = Math.max(this.delayMs, this.last + this.minGapMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.busy()) return; // the run that ends this one pokes again
      // The shared workers' heaps first, so that what they free is trimmed too.
      void collectSharedWorkers().catch(() => {}).then(() => {
        if (this.busy() || !collectAndTrim()) return;
        this.last = Date.now();
        this.collections++;
      });
    }, wait);
    this.timer.unref();
  }

  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
