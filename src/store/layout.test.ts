import { describe, expect, it } from 'vitest';
import { archiveFileName, withoutSuperseded } from './layout.js';
import type { StoredArchive } from './types.js';

const id = (n: number): string => `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;
const ar = (sequence: number, idn: number): StoredArchive => {
  const name = archiveFileName(sequence, id(idn));
  return { name, path: `/s/c/${name}`, chainId: 'c', sequence, archiveId: id(idn) };
};
const seqs = (xs: StoredArchive[]): string[] => xs.map((a) => `${a.sequence}:${Number(a.archiveId.slice(-12))}`);

describe('withoutSuperseded', () => {
  it('keeps a chain without merged archives as it is', () => {
    const c = [ar(0, 0), ar(1, 1), ar(2, 2)];
    expect(withoutSuperseded(c)).toEqual(c);
  });
  it('a merged archive (first sequence, last id) stands in for the originals it covers', () => {
    // merge 1..3 kept the originals: the merged one is sequence 1 with the id of 3
    const c = [ar(0, 0), ar(1, 3), ar(1, 1), ar(2, 2), ar(3, 3), ar(4, 4)];
    expect(seqs(withoutSuperseded(c))).toEqual(['0:0', '1:3', '4:4']);
  });
  it('an interrupted prune: some originals already deleted, the one sharing the id still there', () => {
    const c = [ar(0, 3), ar(2, 2), ar(3, 3), ar(4, 4), ar(5, 5)];
    expect(seqs(withoutSuperseded(c))).toEqual(['0:3', '4:4', '5:5']);
  });
  it('a merge of a range holding a merged archive: the outer one wins', () => {
    // 1..2 merged (1:2), then 0..2 merged (0:2), every original kept
    const c = [ar(0, 2), ar(0, 0), ar(1, 2), ar(1, 1), ar(2, 2), ar(3, 3)];
    expect(seqs(withoutSuperseded(c))).toEqual(['0:2', '3:3']);
  });
});
