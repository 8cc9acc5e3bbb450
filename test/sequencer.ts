// The order test files start in. Vitest's own order (failed first, then longest first, from its cache)
// is kept for everything but the thin-LVM lab tests, which start first, longest first: at most two
// lab guests run at a time (test/lab/lab.ts, lab slots), each takes minutes on a 2-core machine, and a
// long one started last would leave the rest of the suite waiting on it alone (a clean CI checkout
// has no cache, so vitest would start them in path order, the longest among the last). A few long
// files bound by the clock (BESIDE_LABS) start right after the first two lab files.
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
 * Files that start right after the two longest lab files, on the third worker, whose next lab file
 * would only wait for a lab slot: long tests bound by the clock more than by the CPU. Left to vitest's
 * order (without a cache: the largest files first) the leak check, a small file, started last and
 * ran alone for 13 minutes at the end of the CI run.
 */
export const BESIDE_LABS = ['test/daemon/leak.test.ts'];

function labRank(moduleId: string): number {
  const m = /[\\/]test[\\/]lab[\\/]([^\\/]+)\.test\.ts$/.exec(moduleId);
  if (!m) return -1;
  const i = LAB_ORDER.indexOf(m[1]!);
  return i === -1 ? LAB_ORDER.length : i;
}

const beside = (moduleId: string): boolean => BESIDE_LABS.some((b) => moduleId.replaceAll('\\', '/').endsWith(`/${b}`));

export default class LabFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const rest = await super.sort(files.filter((f) => labRank(f.moduleId) < 0 && !beside(f.moduleId)));
    const labs = files.filter((f) => labRank(f.moduleId) >= 0).sort((a, b) => labRank(a.moduleId) - labRank(b.moduleId));
    const early = files.filter((f) => beside(f.moduleId));
    return [...labs.slice(0, 2), ...early, ...labs.slice(2), ...rest];
  }
}
