// Prints, after vitest's own summary: when each long test file started and how long it ran (the
// suite's timeline, to see where a CI run's time went; the CI log keeps only the end of the output),
// then one plain closing line, "N passed, N failed, N skipped", so the result of a run can be read
// by tools that know no vitest output.
import { relative } from 'node:path';
import type { Reporter, TestModule } from 'vitest/node';

/** files that ran at least this long are listed in the timeline */
const LONG_MS = 30_000;

export default class SummaryReporter implements Reporter {
  private readonly started = Date.now();
  private readonly spans = new Map<string, { from: number; to?: number }>();

  onTestModuleStart(m: TestModule): void {
    this.spans.set(m.moduleId, { from: Date.now() });
  }

  onTestModuleEnd(m: TestModule): void {
    const s = this.spans.get(m.moduleId);
    if (s) s.to = Date.now();
  }

  onTestRunEnd(testModules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<unknown>): void {
    let passed = 0;
    let failed = unhandledErrors.length;
    let skipped = 0;
    for (const m of testModules) {
      if (m.state() === 'failed' && [...m.children.allTests()].length === 0) failed++;
      for (const t of m.children.allTests()) {
        const s = t.result().state;
        if (s === 'passed') passed++;
        else if (s === 'failed') failed++;
        else skipped++;
      }
    }
    const mmss = (ms: number): string => `${Math.floor(ms / 60_000)}:${String(Math.floor(ms / 1000) % 60).padStart(2, '0')}`;
    const now = Date.now();
    const long = [...this.spans].map(([id, s]) => ({ id, from: s.from - this.started, ms: (s.to ?? now) - s.from, open: s.to === undefined }))
      .filter((x) => x.ms >= LONG_MS).sort((a, b) => a.from - b.from);
    if (long.length) {
      process.stdout.write(`\ntest files that ran ${LONG_MS / 1000} s or more (start after the run's start, duration):\n`);
      for (const x of long) process.stdout.write(`  +${mmss(x.from).padStart(5)}  ${mmss(x.ms).padStart(5)}${x.open ? ' (unfinished)' : ''}  ${relative(process.cwd(), x.id)}\n`);
    }
    process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  }
}
