import { describe, expect, it } from 'vitest';
import { CommandError, UsageError } from '../errors.js';
import { DEFAULT_POOL_THRESHOLDS, resolveThresholds } from './pool-status.js';
import { evaluateAutoextend, parseAutoextendConfig, readPoolFacts } from './pool-watch.js';
import { formatBytes } from '../units.js';
import { parsePoolReport, POOL_FIELDS } from './report.js';
import type { LvmExec } from './exec.js';

const MiB = 1024 * 1024;
const armed = { autoextend: { threshold: 80, percent: 20, monitoring: true }, monitor: 'monitored', dataBytes: 1000 * MiB, vgFreeBytes: 500 * MiB, vgExtentBytes: 4 * MiB };

describe('evaluateAutoextend', () => {
  it('armed: threshold below 100, percent above 0, monitored, room for one step (whole extents)', () => {
    expect(evaluateAutoextend(armed)).toEqual({ armed: true, threshold: 80, percent: 20, monitored: true, vgFreeBytes: 500 * MiB, stepBytes: 200 * MiB, reasons: [] });
    // 20 % of 1001 MiB is 200.2 MiB: 51 extents of 4 MiB
    expect(evaluateAutoextend({ ...armed, dataBytes: 1001 * MiB }).stepBytes).toBe(204 * MiB);
    expect(evaluateAutoextend({ ...armed, vgFreeBytes: 200 * MiB }).armed).toBe(true);
  });

  it('each missing link is a reason, all of them at once', () => {
    expect(evaluateAutoextend({ ...armed, autoextend: { ...armed.autoextend, threshold: 100 } }).reasons).toEqual(['activation/thin_pool_autoextend_threshold is 100 (100 means never)']);
    expect(evaluateAutoextend({ ...armed, autoextend: { ...armed.autoextend, percent: 0 } }).reasons).toEqual(['activation/thin_pool_autoextend_percent is 0']);
    expect(evaluateAutoextend({ ...armed, monitor: 'not monitored' }).reasons).toEqual(['dmeventd does not monitor the pool ("not monitored")']);
    expect(evaluateAutoextend({ ...armed, monitor: '', autoextend: { ...armed.autoextend, monitoring: false } }).reasons).toEqual(['dmeventd does not monitor the pool (no monitoring, activation/monitoring = 0)']);
    expect(evaluateAutoextend({ ...armed, vgFreeBytes: 0 }).reasons).toEqual(['the volume group has no free extents']);
    expect(evaluateAutoextend({ ...armed, vgFreeBytes: 196 * MiB }).reasons).toEqual(['the volume group has 196.0 MiB free, one 20% step needs 200.0 MiB']);
    const all = evaluateAutoextend({ autoextend: { threshold: 100, percent: 20, monitoring: false }, monitor: '', dataBytes: 10 * MiB, vgFreeBytes: 0, vgExtentBytes: MiB });
    expect(all.armed).toBe(false);
    expect(all.reasons).toHaveLength(3);
  });
});

describe('lvm config and lvs of a pool', () => {
  it('parseAutoextendConfig reads lvm config --typeconfig full output', () => {
    expect(parseAutoextendConfig('thin_pool_autoextend_threshold=70\nthin_pool_autoextend_percent=10\nmonitoring=0\n')).toEqual({ threshold: 70, percent: 10, monitoring: false });
    expect(() => parseAutoextendConfig('thin_pool_autoextend_threshold=70\nmonitoring=1\n')).toThrow(/thin_pool_autoextend_percent is missing/);
    expect(() => parseAutoextendConfig('thin_pool_autoextend_threshold=x\nthin_pool_autoextend_percent=1\nmonitoring=1')).toThrow(/threshold is "x"/);
  });

  // The row lvm 2.03.16 printed in the lab for a pool (every value a string).
  const row = {
    lv_name: 'pool', vg_name: 'vg', lv_attr: 'twi-aotz--', lv_size: '268435456', lv_metadata_size: '2097152', chunk_size: '65536', lv_when_full: 'queue',
    seg_monitor: 'monitored', lv_profile: '', vg_profile: 'tp', vg_free: '800063488', vg_extent_size: '1048576',
  };
  const doc = (r: object): string => JSON.stringify({ report: [{ lv: [r] }] });

  it('parsePoolReport: sizes, when-full, monitoring, the profile in effect', () => {
    expect(parsePoolReport(doc(row))).toEqual({
      vg: 'vg', name: 'pool', attr: 'twi-aotz--', isThinPool: true, dataBytes: 256 * MiB, metadataBytes: 2 * MiB, chunkBytes: 65536, whenFull: 'queue',
      monitor: 'monitored', profile: 'tp', vgFreeBytes: 800063488, vgExtentBytes: MiB,
    });
    expect(parsePoolReport(doc({ ...row, lv_profile: 'own', lv_when_full: '' }))).toMatchObject({ profile: 'own', whenFull: null });
    expect(() => parsePoolReport(doc({ ...row, lv_when_full: 'panic' }))).toThrow(/lv_when_full is "panic"/);
    expect(() => parsePoolReport(JSON.stringify({ report: [{ lv: [row, row] }] }))).toThrow(/2 rows/);
  });

  it('readPoolFacts runs lvs, lvm config (with the profile) and dmsetup status; not found / not a pool / an empty pool', async () => {
    const calls: string[] = [];
    let lvsRow: object = { ...row, lv_profile: 'tp' };
    let tpool = true;
    const exec: LvmExec = async (argv) => {
      calls.push(argv.join(' '));
      if (argv[0] === 'lvs') {
        if (argv.at(-1) === 'novg/p') throw new CommandError('LVM_COMMAND', 'x', argv, 5, '  Volume group "novg" not found\n');
        if (argv.at(-1) === 'vg/nolv') throw new CommandError('LVM_COMMAND', 'x', argv, 5, '  Failed to find logical volume "vg/nolv"\n');
        return doc(lvsRow);
      }
      if (argv[0] === 'lvm') return 'thin_pool_autoextend_threshold=70\nthin_pool_autoextend_percent=10\nmonitoring=1\n';
      if (argv[1] === 'status' && argv[2] === 'vg-pool-tpool') {
        if (!tpool) throw new CommandError('LVM_COMMAND', 'x', argv, 1, 'Device does not exist.\nCommand failed.\n');
        return '0 524288 thin-pool 1 66/512 1024/4096 - rw no_discard_passdown error_if_no_space - 128\n';
      }
      if (argv[1] === 'status' && argv[2] === 'vg-pool') return '0 524288 thin-pool 0 60/512 0/4096 - rw no_discard_passdown queue_if_no_space - 128\n';
      throw new Error(`unexpected ${argv.join(' ')}`);
    };
    const f = await readPoolFacts('vg', 'pool', { exec });
    expect(f.autoextend).toEqual({ threshold: 70, percent: 10, monitoring: true });
    expect(f.status).toMatchObject({ state: 'ok', dataUsedBlocks: 1024, whenFull: 'error' });
    expect(calls).toEqual([
      `lvs --reportformat json --units b --nosuffix -o ${POOL_FIELDS.join(',')} vg/pool`,
      'lvm config --typeconfig full --mergedconfig --metadataprofile tp activation/thin_pool_autoextend_threshold activation/thin_pool_autoextend_percent activation/monitoring',
      'dmsetup status vg-pool-tpool',
    ]);
    tpool = false; // a pool without thin volumes is the thin-pool target itself
    expect((await readPoolFacts('vg', 'pool', { exec })).status).toMatchObject({ dataUsedBlocks: 0, transactionId: 0 });
    await expect(readPoolFacts('novg', 'p', { exec })).rejects.toMatchObject({ code: 'LV_NOT_FOUND', message: 'thin pool novg/p not found: no volume group novg' });
    await expect(readPoolFacts('vg', 'nolv', { exec })).rejects.toMatchObject({ code: 'LV_NOT_FOUND', message: 'thin pool vg/nolv not found' });
    lvsRow = { ...row, lv_attr: 'Vwi-a-tz--' };
    await expect(readPoolFacts('vg', 'pool', { exec })).rejects.toMatchObject({ code: 'NOT_THIN_POOL', exitClass: 'usage' });
    await expect(readPoolFacts('vg', '-x', { exec })).rejects.toBeInstanceOf(UsageError);
  });
});

describe('thresholds', () => {
  it('the command line, then the pool, then default, then the built-in levels, key by key', () => {
    expect(resolveThresholds('vg/p', undefined)).toEqual(DEFAULT_POOL_THRESHOLDS);
    const byPool = { default: { warn: { data: 70 }, crit: { metadata: 85 } }, 'vg/p': { warn: { metadata: 50 }, crit: { data: 95 } } };
    expect(resolveThresholds('vg/p', byPool)).toEqual({ warn: { data: 70, metadata: 50 }, crit: { data: 95, metadata: 85 } });
    expect(resolveThresholds('vg/q', byPool)).toEqual({ warn: { data: 70, metadata: 70 }, crit: { data: 90, metadata: 85 } });
    expect(resolveThresholds('vg/p', byPool, { crit: { data: 99.5 } })).toEqual({ warn: { data: 70, metadata: 50 }, crit: { data: 99.5, metadata: 85 } });
  });
  it('refuses a warning level above the critical one, and values that are not percentages', () => {
    expect(() => resolveThresholds('vg/p', undefined, { warn: { data: 95 } })).toThrow(/vg\/p: the warning data threshold \(95%\) is above the critical one \(90%\)/);
    expect(() => resolveThresholds('vg/p', { default: { crit: { metadata: 101 } } })).toThrow(/critical metadata threshold of vg\/p must be a number from 0 to 100/);
    expect(() => resolveThresholds('vg/p', undefined, { warn: { data: Number.NaN } })).toThrow(UsageError);
  });
  it('formatBytes', () => {
    expect([formatBytes(512), formatBytes(1536), formatBytes(200 * MiB), formatBytes(3 * 1024 ** 3)]).toEqual(['512 B', '1.50 KiB', '200.0 MiB', '3.00 GiB']);
  });
});
