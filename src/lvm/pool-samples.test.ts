import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  addSample, FILL_WINDOW_MS, fillRate, FORGET_POOL_MS, MAX_SAMPLES, MIN_FILL_SPAN_MS, POOL_SAMPLES_FILE, readPoolSamples, updatePoolSamples, type PoolSample,
} from './pool-samples.js';

const T0 = Date.parse('2026-05-01T12:00:00Z');
const MIN = 60_000;
const sample = (t: number, dataUsed: number): PoolSample => ({ t, dataUsed, dataTotal: 1000, metadataUsed: 1, metadataTotal: 10 });

describe('fillRate: least squares over the last hour', () => {
  it('a steady fill: the exact rate and the time to full', () => {
    // 1 MiB a minute for 30 minutes, 100 MiB left
    const pts = Array.from({ length: 31 }, (_, i) => ({ t: T0 + i * MIN, used: 500 * 2 ** 20 + i * 2 ** 20 }));
    const now = T0 + 30 * MIN;
    const r = fillRate(pts, 530 * 2 ** 20, 630 * 2 ** 20, now);
    expect(r.bytesPerSecond).toBeCloseTo(2 ** 20 / 60, 6);
    expect(r.secondsToFull).toBe(6000);
    expect(r).toMatchObject({ samples: 31, spanSeconds: 1800 });
  });

  it('noise around a trend: the fitted slope, not the last two points', () => {
    const noise = [0, 30, -20, 10, -40, 25, -5, 15, -30, 20, 0];
    const pts = noise.map((n, i) => ({ t: T0 + i * 5 * MIN, used: 1000 + i * 300 + n }));
    const r = fillRate(pts, pts.at(-1)!.used, 100_000, T0 + 50 * MIN);
    // the least-squares slope of the samples above, per second
    const mt = pts.reduce((a, p) => a + p.t, 0) / pts.length;
    const mu = pts.reduce((a, p) => a + p.used, 0) / pts.length;
    const slope = pts.reduce((a, p) => a + ((p.t - mt) / 1000) * (p.used - mu), 0) / pts.reduce((a, p) => a + ((p.t - mt) / 1000) ** 2, 0);
    expect(r.bytesPerSecond).toBeCloseTo(slope, 9);
    expect(r.bytesPerSecond! * 300).toBeGreaterThan(290);
    expect(r.bytesPerSecond! * 300).toBeLessThan(310);
    expect(r.secondsToFull).toBe(Math.round((100_000 - pts.at(-1)!.used) / slope));
  });

  it('nothing to predict: one sample, too short a span, a space that shrinks or stays; a full one is 0', () => {
    expect(fillRate([{ t: T0, used: 5 }], 5, 10, T0)).toMatchObject({ bytesPerSecond: null, secondsToFull: null, samples: 1 });
    expect(fillRate([{ t: T0, used: 5 }, { t: T0 + MIN_FILL_SPAN_MS - 1, used: 9 }], 9, 10, T0 + MIN_FILL_SPAN_MS)).toMatchObject({ bytesPerSecond: null, secondsToFull: null });
    const down = [{ t: T0, used: 9 }, { t: T0 + 10 * MIN, used: 5 }];
    expect(fillRate(down, 5, 10, T0 + 10 * MIN)).toMatchObject({ secondsToFull: null });
    expect(fillRate(down, 5, 10, T0 + 10 * MIN).bytesPerSecond).toBeLessThan(0);
    expect(fillRate([{ t: T0, used: 5 }, { t: T0 + 10 * MIN, used: 5 }], 5, 10, T0 + 10 * MIN)).toMatchObject({ bytesPerSecond: 0, secondsToFull: null });
    expect(fillRate([{ t: T0, used: 5 }, { t: T0 + 10 * MIN, used: 10 }], 10, 10, T0 + 10 * MIN)).toMatchObject({ secondsToFull: 0 });
  });

  it('only the last hour counts: an old fast fill does not make a quiet pool look full soon', () => {
    const pts = [{ t: T0, used: 0 }, { t: T0 + 10 * MIN, used: 800 }, ...Array.from({ length: 7 }, (_, i) => ({ t: T0 + (80 + i * 10) * MIN, used: 800 }))];
    expect(fillRate(pts, 800, 1000, T0 + 140 * MIN)).toMatchObject({ bytesPerSecond: 0, secondsToFull: null, samples: 7, spanSeconds: 3600 });
  });
});

describe('addSample keeps the list bounded', () => {
  it('a sample within the minimum gap replaces the previous one; the window (and one sample before it) is kept', () => {
    let s: PoolSample[] = [];
    s = addSample(s, sample(T0, 1));
    s = addSample(s, sample(T0 + 5_000, 2));
    expect(s.map((x) => x.dataUsed)).toEqual([2]);
    for (let i = 1; i <= 120; i++) s = addSample(s, sample(T0 + i * MIN, i));
    expect(s[0]!.t).toBe(T0 + 120 * MIN - FILL_WINDOW_MS - MIN);
    expect(s).toHaveLength(62);
    // a sample older than the newest (the clock went back): the newer ones go
    expect(addSample(s, sample(T0 + 100 * MIN + 1, 7)).at(-1)).toEqual(sample(T0 + 100 * MIN + 1, 7));
  });
  it('at most MAX_SAMPLES, the oldest going first', () => {
    let s: PoolSample[] = [];
    for (let i = 0; i < MAX_SAMPLES + 50; i++) s = addSample(s, sample(T0 + i * 11_000, i));
    expect(s).toHaveLength(MAX_SAMPLES);
    expect(s.at(-1)!.dataUsed).toBe(MAX_SAMPLES + 49);
  });
});

describe('the samples file', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  const dir = async (): Promise<string> => {
    const d = await mkdtemp(join(tmpdir(), 'ta-samples-'));
    dirs.push(d);
    return d;
  };

  it('round-trips, drops pools not sampled for a day, and starts over from a bad or newer file', async () => {
    const d = await dir();
    expect(await readPoolSamples(join(d, 'missing'))).toEqual({ version: 1, pools: {} });
    await updatePoolSamples(d, T0, (f) => {
      f.pools['vg/a'] = { samples: [sample(T0, 5)], held: { root: 82, since: new Date(T0).toISOString() } };
      f.pools['vg/old'] = { samples: [sample(T0 - FORGET_POOL_MS - 1, 5)], held: null };
    });
    const text = await readFile(join(d, POOL_SAMPLES_FILE), 'utf8');
    expect(JSON.parse(text)).toEqual({ version: 1, pools: { 'vg/a': { samples: [sample(T0, 5)], held: { root: 82, since: '2026-05-01T12:00:00.000Z' } } } });
    expect(await readPoolSamples(d)).toEqual(JSON.parse(text));
    await writeFile(join(d, POOL_SAMPLES_FILE), '{"version":1,"pools":{"vg/a":{"samples":[{"t":1},{"t":2,"dataUsed":1,"dataTotal":2,"metadataUsed":0,"metadataTotal":1}],"held":{"root":"x"}}}}');
    expect(await readPoolSamples(d)).toEqual({ version: 1, pools: { 'vg/a': { samples: [{ t: 2, dataUsed: 1, dataTotal: 2, metadataUsed: 0, metadataTotal: 1 }], held: null } } });
    for (const bad of ['{', '{"version":2,"pools":{}}', 'null']) {
      await writeFile(join(d, POOL_SAMPLES_FILE), bad);
      expect(await readPoolSamples(d)).toEqual({ version: 1, pools: {} });
    }
  });
});
