// The order test files start in. Vitest's own order (failed first, then longest first, from its cache)
// is kept for everything but the thin-LVM lab tests, which start first, longest first: at most two
// lab guests run at a time (test/lab/lab.ts, lab slots), each takes minutes on a 2-core machine, and a
// long one started last would leave the rest of the suite waiting on it alone (a clean CI checkout
// has no cache, so vitest would start them in path order, the longest among the last). A few long
// files (FIRST_OF_REST) start right after the lab files.
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/** lab test files by cost, most expensive first (minutes, two guests at once, on the current 2-core machines) */
export const LAB_ORDER = [
  'daemon-lv', // ~16-25
  'crash-lv', // ~13
  'pool-watch', // ~12
  'migrate', // ~10-12
  'sync', // ~10
  'send-lv-resize', // ~10
  'group', // ~6-10
  'mount', // ~5
  'classic-lv', // ~5-7
  'apply-lv',
  'send-lv',
  'chain-verify',
  'encrypted-lv',
  'lvm',
  'lab-harness',
  'eio',
  'lab',
];

/**
 * Files that start first of the rest, as soon as the lab queue is drained (on the worker that would
 * otherwise wait for a lab slot): long ones. Left to vitest's order (without a cache: the largest
 * files first) the leak check, a small file, started last and ran alone for 13 minutes at the end of
 * the CI run; started beside the first lab files instead, its daemon (ten runs at once) slowed the
 * lab guests until they timed out.
 */
export const FIRST_OF_REST = ['test/daemon/leak.test.ts'];

function labRank(moduleId: string): number {
  const m = /[\\/]test[\\/]lab[\\/]([^\\/]+)\.test\.ts$/.exec(moduleId);
  if (!m) return -1;
  const i = LAB_ORDER.indexOf(m[1]!);
  return i === -1 ? LAB_ORDER.length : i;
}

const first = (moduleId: string): boolean => FIRST_OF_REST.some((b) => moduleId.replaceAll('\\', '/').endsWith(`/${b}`));

export default class LabFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const rest = await super.sort(files.filter((f) => labRank(f.moduleId) < 0 && !first(f.moduleId)));
    const labs = files.filter((f) => labRank(f.moduleId) >= 0).sort((a, b) => labRank(a.moduleId) - labRank(b.moduleId));
    return [...labs, ...files.filter((f) => first(f.moduleId)), ...rest];
  }
}
