import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { FormatError } from '../errors.js';
import { LVS_FIELDS, type LvInfo, lvsByUuid, parseLvsReport, parseVgsReport } from './report.js';

const FIXTURES = fileURLToPath(new URL('../../fixtures/lvm/', import.meta.url));
const fixture = (name: string): string => readFileSync(FIXTURES + name, 'utf8');
const UUID = /^[A-Za-z0-9]{6}(-[A-Za-z0-9]{4}){5}-[A-Za-z0-9]{6}$/;

const byName = (lvs: LvInfo[]): Map<string, LvInfo> => new Map(lvs.map((l) => [l.name, l]));

function fails(input: unknown, re: RegExp): void {
  try {
    parseLvsReport(input);
  } catch (e) {
    expect(e).toBeInstanceOf(FormatError);
    expect((e as FormatError).code).toBe('LVS_REPORT');
    expect((e as Error).message).toMatch(re);
    return;
  }
  throw new Error('accepted');
}

describe('parseLvsReport on real lvm 2.03.16 output (every value a string)', () => {
  it('lvs.json: pool, origin and two snapshots, typed', () => {
    const lvs = parseLvsReport(fixture('lvs.json'));
    const m = byName(lvs);
    expect([...m.keys()].sort()).toEqual(['snap1', 'snap2', 'thin-pool', 'vol']);
    for (const lv of lvs) {
      expect(lv.vg).toBe('lab-vg');
      expect(lv.uuid).toMatch(UUID);
      expect(lv.hidden).toBe(false);
    }
    const pool = m.get('thin-pool')!;
    expect(pool).toMatchObject({
      isThinPool: true, isThinVolume: false, thinId: null, pool: null, origin: null,
      sizeBytes: 1024 ** 3, chunkSizeBytes: 65536, dataPercent: 0.12, metadataPercent: 11.13,
      attr: 'twi-aot---', tags: [], active: true, readOnly: false, activationSkip: false, health: '-',
    });
    const vol = m.get('vol')!;
    expect(vol).toMatchObject({
      isThinPool: false, isThinVolume: true, thinId: 1, pool: 'thin-pool', origin: null,
      sizeBytes: 2 * 1024 ** 3, chunkSizeBytes: 0, dataPercent: 0.04, metadataPercent: null, active: true,
    });
    const snap1 = m.get('snap1')!;
    expect(snap1).toMatchObject({
      isThinVolume: true, thinId: 2, pool: 'thin-pool', origin: 'vol', dataPercent: null, active: false,
      activationSkip: true, readOnly: false, tags: ['thinarchive', 'thinarchive:base=1'], attr: 'Vwi---t--k',
    });
    expect(m.get('snap2')).toMatchObject({ thinId: 3, origin: 'vol', tags: [], activationSkip: true });
    expect(lvsByUuid(lvs).size).toBe(4);
  });

  it('lvs-all.json: hidden LVs lose their brackets and are flagged', () => {
    const m = byName(parseLvsReport(fixture('lvs-all.json')));
    expect(m.get('thin-pool_tmeta')).toMatchObject({ hidden: true, attr: 'ewi-ao----', active: true });
    expect(m.get('thin-pool_tdata')).toMatchObject({ hidden: true, attr: 'Twi-ao----' });
    expect(m.get('lvol0_pmspare')).toMatchObject({ hidden: true, active: false });
    expect(m.get('vol')!.hidden).toBe(false);
  });

  it('lvs-snap1-active-ro.json: read-only and active after lvchange -pr; -ay -K', () => {
    const [snap] = parseLvsReport(fixture('lvs-snap1-active-ro.json'));
    expect(snap).toMatchObject({ name: 'snap1', attr: 'Vri-a-t--k', readOnly: true, active: true, activationSkip: true, dataPercent: 0.05 });
  });

  it('lvs-pool-full.json: a pool out of data space (health D, 100.00 %)', () => {
    const [pool] = parseLvsReport(fixture('lvs-pool-full.json'));
    expect(pool).toMatchObject({ name: 'small', isThinPool: true, health: 'D', dataPercent: 100, sizeBytes: 8 * 1024 * 1024 });
  });

  it('the stdout of lvs on a missing VG (exit 5) is a report with no LVs', () => {
    const errors = JSON.parse(fixture('errors.json')) as Record<string, { stdout: string; exitCode: number }>;
    expect(errors['lvs-no-vg']!.exitCode).toBe(5);
    expect(parseLvsReport(errors['lvs-no-vg']!.stdout)).toEqual([]);
  });

  it('LVS_FIELDS names exactly the fields of the captured report', () => {
    const doc = JSON.parse(fixture('lvs.json')) as { report: { lv: Record<string, string>[] }[] };
    expect(Object.keys(doc.report[0]!.lv[0]!).sort()).toEqual([...LVS_FIELDS].sort());
  });
});

describe('parseLvsReport on json_std (lvm >= 2.03.17; HAND-WRITTEN, see fixtures/lvm/README.md)', () => {
  it('numbers, null and tag arrays give the same LvInfo as the string form', () => {
    const std = byName(parseLvsReport(fixture('lvs-json-std.json')));
    expect(std.get('thin-pool')).toMatchObject({ thinId: null, sizeBytes: 1024 ** 3, chunkSizeBytes: 65536, dataPercent: 0.12, metadataPercent: 11.13, tags: [] });
    expect(std.get('snap1')).toMatchObject({ thinId: 2, origin: 'vol', dataPercent: null, tags: ['thinarchive', 'thinarchive:base=1'], active: false });
    expect(std.get('vol')).toMatchObject({ thinId: 1, metadataPercent: null, active: true });
  });

  it('an already-parsed object is accepted too', () => {
    expect(parseLvsReport(JSON.parse(fixture('lvs.json')))).toEqual(parseLvsReport(fixture('lvs.json')));
  });
});

describe('parseLvsReport refuses what it cannot trust', () => {
  const row = (over: Record<string, unknown>): unknown => ({
    report: [{ lv: [{ lv_name: 'a', vg_name: 'vg', lv_uuid: 'u1', lv_size: '1024', lv_attr: 'Vwi-a-t---', ...over }] }],
  });
  it('malformed documents', () => {
    fails('{"report": [', /not JSON/);
    fails('{}', /no "report" array/);
    fails({ report: [{ lv: {} }] }, /"lv" is not an array/);
    fails({ report: [{ lv: [1] }] }, /not an object/);
  });
  it('missing or malformed fields', () => {
    fails(row({ lv_uuid: undefined }), /lv_uuid missing/);
    fails(row({ lv_uuid: '' }), /empty lv_uuid/);
    fails(row({ lv_attr: 'Vwi' }), /not 10 characters/);
    fails(row({ lv_size: '1.00g' }), /lv_size .*--units b --nosuffix/);
    fails(row({ lv_size: '' }), /lv_size/);
    fails(row({ lv_size: -1 }), /lv_size/);
    fails(row({ lv_size: 2 ** 60 }), /lv_size/);
    fails(row({ thin_id: '1.5' }), /thin_id/);
    fails(row({ data_percent: 'n/a' }), /data_percent/);
    fails(row({ lv_tags: [1] }), /lv_tags/);
    fails(row({ lv_name: { x: 1 } }), /lv_name/);
  });
  it('optional fields may be absent', () => {
    const [lv] = parseLvsReport(row({}));
    expect(lv).toMatchObject({ thinId: null, pool: null, origin: null, chunkSizeBytes: 0, dataPercent: null, tags: [], active: true });
  });
  it('a duplicate lv_uuid is refused by lvsByUuid', () => {
    const lvs = parseLvsReport({ report: [{ lv: [
      { lv_name: 'a', vg_name: 'vg', lv_uuid: 'u1', lv_size: '1', lv_attr: 'Vwi-a-t---' },
      { lv_name: 'b', vg_name: 'vg', lv_uuid: 'u1', lv_size: '1', lv_attr: 'Vwi-a-t---' },
    ] }] });
    expect(() => lvsByUuid(lvs)).toThrow(/appears twice/);
  });
});

describe('parseVgsReport', () => {
  it('vgs.json (real)', () => {
    const [vg] = parseVgsReport(fixture('vgs.json'));
    expect(vg).toMatchObject({ name: 'lab-vg', sizeBytes: 4290772992, freeBytes: 3208642560, extentSizeBytes: 4194304, attr: 'wz--n-', tags: [] });
    expect(vg!.uuid).toMatch(UUID);
  });
  it('refuses a size with a suffix', () => {
    expect(() => parseVgsReport({ report: [{ vg: [{ vg_name: 'v', vg_uuid: 'u', vg_size: '4.00g', vg_free: '0', vg_extent_size: '4', vg_attr: 'wz--n-' }] }] }))
      .toThrow(/vg_size/);
  });
});
