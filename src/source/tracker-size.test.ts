import { describe, expect, it } from 'vitest';
import { parseTrackerSize, trackerBytes } from './tracker-size.js';

const size = (s: string): number | undefined => (/^\d+[MG]?$/.test(s) ? Number(s.replace(/[MG]$/, '')) * (s.endsWith('G') ? 1 << 30 : s.endsWith('M') ? 1 << 20 : 1) : undefined);

describe('--tracker-size', () => {
  it('reads a percentage of the origin or a size; refuses the rest', () => {
    expect(parseTrackerSize('20%', size)).toEqual({ percent: 20 });
    expect(parseTrackerSize('2.5 %', size)).toEqual({ percent: 2.5 });
    expect(parseTrackerSize('512M', size)).toEqual({ bytes: 512 << 20 });
    for (const bad of ['0%', '101%', '0', 'lots', '-5%']) expect(parseTrackerSize(bad, size), bad).toBeUndefined();
  });
  it('rounds up to whole extents, at least one', () => {
    const ext = 4 << 20;
    expect(trackerBytes({ percent: 20 }, 100 << 20, ext)).toBe(20 << 20);
    expect(trackerBytes({ percent: 1 }, 100 << 20, ext)).toBe(4 << 20);
    expect(trackerBytes({ bytes: 5 << 20 }, 1 << 30, ext)).toBe(8 << 20);
  });
});
