// The order test files start in. Vitest's own order (failed first, then longest first, from its cache)
// is kept for everything but the thin-LVM lab tests, which start first, longest first: at most two
// lab guests run at a time (test/lab/lab.ts, lab slots), each takes minutes on a 2-core machine, and a
// long one started last would leave the rest of the suite waiting on it alone (a clean CI checkout
// has no cache, so vitest would start them in path order, the longest among the last).
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/** lab test files by cost, most expensive first (minutes alone on the 2-core CI machine) */
export const LAB_ORDER = [
  'daemon-lv', // ~20
  'crash-lv', // ~10
  'pool-watch', // ~11
  'group', // ~6
  'mount', // ~5
  'migrate',
  'sync',
  'send-lv-resize',
  'apply-lv',
  'send-lv',
  'chain-verify',
  'encrypted-lv',
  'lvm',
  'lab-harness',
  'eio',
  'lab',
];

function labRank(moduleId: string): number {
  const m = /[\\/]test[\\/]lab[\\/]([^\\/]+)\.test\.ts$/.exec(moduleId);
  if (!m) return -1;
  const i = LAB_ORDER.indexOf(m[1]!);
  return i === -1 ? LAB_ORDER.length : i;
}

export default class LabFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const rest = await super.sort(files.filter((f) => labRank(f.moduleId) < 0));
    const labs = files.filter((f) => labRank(f.moduleId) >= 0).sort((a, b) => labRank(a.moduleId) - labRank(b.moduleId));
    return [...labs, ...rest];
  }
}
