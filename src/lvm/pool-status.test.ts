import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { FormatError } from '../errors.js';
import { assertLvmName, assertLvmTag, dmName, isLvmName, isLvmTag, lvDevicePath, poolDmName, tmetaPath } from './names.js';
import { parsePoolStatus } from './pool-status.js';

const FIXTURES = fileURLToPath(new URL('../../fixtures/lvm/', import.meta.url));
const fixture = (name: string): string => readFileSync(FIXTURES + name, 'utf8');

describe('parsePoolStatus on real Linux 6.1 output', () => {
  it('idle pool (held root "-"; the line ends with a space)', () => {
    expect(fixture('status-idle.txt')).toMatch(/ \n$/);
    expect(parsePoolStatus(fixture('status-idle.txt'))).toEqual({
      state: 'ok', start: 0, length: 2097152, transactionId: 3,
      metadataUsedBlocks: 114, metadataTotalBlocks: 1024, dataUsedBlocks: 20, dataTotalBlocks: 16384,
      heldRoot: null, mode: 'rw', discard: 'no_passdown', whenFull: 'queue', needsCheck: false,
      metadataLowWatermark: 256, dataPercent: (100 * 20) / 16384, metadataPercent: (100 * 114) / 1024,
    });
  });

  it('held metadata snapshot: the root block number', () => {
    const st = parsePoolStatus(fixture('status-held.txt'));
    expect(st.state).toBe('ok');
    if (st.state !== 'ok') return;
    expect(st.heldRoot).toBeGreaterThan(0);
    expect(st.metadataUsedBlocks).toBe(115); // the snapshot costs a metadata block
  });

  it('out of data space, error_if_no_space', () => {
    expect(parsePoolStatus(fixture('status-out-of-data-space.txt'))).toMatchObject({
      state: 'ok', length: 16384, mode: 'out_of_data_space', whenFull: 'error', dataUsedBlocks: 128, dataTotalBlocks: 128, dataPercent: 100,
    });
  });

  it('the lines quoted in the brief', () => {
    expect(parsePoolStatus('0 6291456 thin-pool 3 126/1024 1189/49152 - rw no_discard_passdown queue_if_no_space - 256')).toMatchObject({ heldRoot: null, transactionId: 3, dataUsedBlocks: 1189 });
    expect(parsePoolStatus('0 6291456 thin-pool 3 127/1024 1189/49152 82 rw no_discard_passdown queue_if_no_space - 256')).toMatchObject({ heldRoot: 82 });
  });
});

describe('parsePoolStatus on the other forms of drivers/md/dm-thin.c pool_status()', () => {
  it('Fail and Error', () => {
    expect(parsePoolStatus('0 6291456 thin-pool Fail\n')).toEqual({ state: 'fail', start: 0, length: 6291456 });
    expect(parsePoolStatus('0 6291456 thin-pool Error')).toEqual({ state: 'error', start: 0, length: 6291456 });
  });
  it('read-only, needs_check, discard_passdown, ignore_discard', () => {
    expect(parsePoolStatus('0 8 thin-pool 1 10/100 5/50 - ro discard_passdown queue_if_no_space needs_check 16')).toMatchObject({ mode: 'ro', discard: 'passdown', needsCheck: true });
    expect(parsePoolStatus('0 8 thin-pool 1 10/100 5/50 - rw ignore_discard error_if_no_space -')).toMatchObject({ discard: 'ignore', metadataLowWatermark: null });
  });
  it('older kernels stop after the held root', () => {
    expect(parsePoolStatus('0 8 thin-pool 1 10/100 5/50 -')).toMatchObject({ heldRoot: null, mode: null, discard: null, whenFull: null, needsCheck: false, metadataLowWatermark: null });
  });
  it('an empty pool has 0 %', () => {
    expect(parsePoolStatus('0 8 thin-pool 0 0/0 0/0 -')).toMatchObject({ dataPercent: 0, metadataPercent: 0 });
  });
  it('refuses anything else', () => {
    const bad = (s: string, re: RegExp): void => {
      expect(() => parsePoolStatus(s)).toThrow(FormatError);
      expect(() => parsePoolStatus(s)).toThrow(re);
    };
    bad('', /empty/);
    bad('0 8 thin-pool 1 10/100 5/50 -\n0 8 thin-pool 1 10/100 5/50 -', /2 lines/);
    bad('0 8 thin 254:2 2', /not thin-pool/);
    bad('0 8 thin-pool 1 10/100 5/50', /too few/);
    bad('0 8 thin-pool 1 10-100 5/50 -', /metadata usage/);
    bad('0 8 thin-pool 1 101/100 5/50 -', /used exceeds total/);
    bad('0 8 thin-pool 1 10/100 5/50 x', /held metadata root/);
    bad('0 8 thin-pool 1 10/100 5/50 - rwx', /pool mode/);
    bad('0 8 thin-pool 1 10/100 5/50 - rw passdown', /discard mode/);
    bad('0 8 thin-pool 1 10/100 5/50 - rw ignore_discard queue', /no-space mode/);
    bad('0 8 thin-pool 1 10/100 5/50 - rw ignore_discard queue_if_no_space check', /needs_check/);
    bad('0 8 thin-pool 1 10/100 5/50 - rw ignore_discard queue_if_no_space - 1 extra', /unexpected field/);
    bad('0 8 thin-pool Fail now', /after Fail/);
    bad('0 8 thin-pool 99999999999999999999 10/100 5/50 -', /too large/);
  });
});

describe('names', () => {
  it('dm names double every dash in VG and LV names', () => {
    expect(dmName('my-vg', 'p')).toBe('my--vg-p');
    expect(poolDmName('my-vg', 'p')).toBe('my--vg-p-tpool');
    expect(poolDmName('lab-vg', 'thin-pool')).toBe('lab--vg-thin--pool-tpool'); // the real one, fixtures/lvm
    expect(tmetaPath('lab-vg', 'thin-pool')).toBe('/dev/mapper/lab--vg-thin--pool_tmeta');
    expect(poolDmName('vg', 'pool')).toBe('vg-pool-tpool');
    expect(lvDevicePath('vg', 'snap')).toBe('/dev/vg/snap');
  });
  it('LVM names and tags', () => {
    for (const ok of ['vg', 'my-vg', 'a.b_c+d', 'x'.repeat(127)]) expect(isLvmName(ok)).toBe(true);
    for (const bad of ['', '-vg', '.', '..', 'a/b', 'a b', 'x'.repeat(128), 'ä']) expect(isLvmName(bad)).toBe(false);
    expect(() => assertLvmName('a;b', 'VG')).toThrow(/bad VG name/);
    for (const ok of ['thinarchive', 'thinarchive:base=1', 'a/b#c&d!e']) expect(isLvmTag(ok)).toBe(true);
    for (const bad of ['', 'a b', 'a,b', 'x'.repeat(1025)]) expect(isLvmTag(bad)).toBe(false);
    expect(() => assertLvmTag('a,b')).toThrow(/bad LVM tag/);
  });
});
