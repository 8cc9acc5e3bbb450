// How many of the daemon's units may run at once (`max_concurrent_runs`, docs/DAEMON.md). A unit that
// is due takes a slot before its run and gives it back after; units waiting for one are served in the
// order they asked. The limit may change while units run or wait (a reload): more slots serve waiting
// units at once, fewer let the running ones finish.

export class RunSlots {
  private active = 0;
  private readonly waiting: { grant: () => void }[] = [];

  constructor(private max: number) {}

  /** The limit (a reload may change it). */
  set limit(n: number) {
    this.max = n;
    this.pump();
  }

  get limit(): number {
    return this.max;
  }

  /** runs holding a slot now */
  get running(): number {
    return this.active;
  }

  /** units waiting for a slot now */
  get queued(): number {
    return this.waiting.length;
  }

  /**
   * Wait for a slot: true when taken (give it back with release()), false when `signal` was aborted
   * first (nothing taken).
   */
  acquire(signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) return Promise.resolve(false);
    if (this.active < this.max && this.waiting.length === 0) {
      this.active++;
      return Promise.resolve(true);
    }
    return new Promise<boolean>((resolve) => {
      const entry = {
        grant: (): void => {
          signal.removeEventListener('abort', onAbort);
          resolve(true);
        },
      };
      const onAbort = (): void => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        resolve(false);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(entry);
    });
  }

  release(): void {
    this.active--;
    this.pump();
  }

  private pump(): void {
    while (this.active < this.max && this.waiting.length > 0) {
      this.active++;
      this.waiting.shift()!.grant();
    }
  }
}
