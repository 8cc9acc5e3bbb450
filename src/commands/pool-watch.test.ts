import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CommandError } from '../errors.js';
import { DEFAULT_POOL_THRESHOLDS } from '../lvm/pool-status.js';
import { poolCondition, watchPools, worstState, type PoolReport } from './pool-watch.js';

const fill = { bytesPerSecond: null, secondsToFull: null, samples: 1, spanSeconds: 0 };
const space = (percent: number) => ({ percent, usedBytes: percent, totalBytes: 100, fill });
const armed = { armed: true, threshold: 80, percent: 20, monitored: true, vgFreeBytes: 1e9, stepBytes: 1e8, reasons: [], required: true };

function report(o: Partial<Omit<PoolReport, 'condition'>> = {}): Omit<PoolReport, 'condition'> {
  return {
    pool: 'vg/pool', error: null, thresholds: DEFAULT_POOL_THRESHOLDS, data: space(45.123), metadata: space(11.7), secondsToFull: null, mode: 'rw', needsCheck: false,
    whenFull: 'queue', autoextend: armed, pinned: { bytes: 0, snapshots: [], error: null }, heldMetadataSnapshot: null, ...o,
  };
}

describe('poolCondition', () => {
  it('OK: the usage in one line, with pinned space and time to full when known', () => {
    expect(poolCondition(report())).toEqual({
      pool: 'vg/pool', state: 'OK', problems: [], message: 'vg/pool OK: data 45.12%, metadata 11.70%',
      values: { dataPercent: 45.123, metadataPercent: 11.7, pinnedBytes: 0, secondsToFull: null },
    });
    expect(poolCondition(report({ pinned: { bytes: 13 * 2 ** 20, snapshots: [], error: null }, secondsToFull: 7200 })).message)
      .toBe('vg/pool OK: data 45.12%, metadata 11.70%, pinned by base snapshots 13.0 MiB, full in 2h at the last hour\'s rate');
  });

  it('thresholds are exceeded strictly: 80.00 is OK, 80.01 a warning, above critical critical', () => {
    expect(poolCondition(report({ data: space(80) })).state).toBe('OK');
    expect(poolCondition(report({ data: space(80.01) }))).toMatchObject({ state: 'WARNING', message: 'vg/pool WARNING: data 80.01% > 80% (warning)' });
    expect(poolCondition(report({ data: space(90.5), metadata: space(71) }))).toMatchObject({
      state: 'CRITICAL', message: 'vg/pool CRITICAL: data 90.50% > 90% (critical); metadata 71.00% > 70% (warning)',
    });
    expect(poolCondition(report({ metadata: space(80.2) })).problems).toEqual([{ state: 'CRITICAL', message: 'metadata 80.20% > 80% (critical)' }]);
  });

  it('pool states: failed, needs_check, read-only, out of data space are critical', () => {
    expect(poolCondition(report({ mode: 'failed', data: null, metadata: null })).message).toBe('vg/pool CRITICAL: the pool is in failure mode (repair it: lvconvert --repair)');
    expect(poolCondition(report({ needsCheck: true })).state).toBe('CRITICAL');
    expect(poolCondition(report({ mode: 'ro' })).message).toMatch(/read-only/);
    expect(poolCondition(report({ mode: 'out_of_data_space', whenFull: 'error', data: space(100) })).message)
      .toBe('vg/pool CRITICAL: the pool is out of data space (writes fail); data 100.00% > 90% (critical)');
  });

  it('autoextend not armed is a warning unless not required', () => {
    const not = { ...armed, armed: false, reasons: ['activation/thin_pool_autoextend_threshold is 100 (100 means never)', 'the volume group has no free extents'] };
    expect(poolCondition(report({ autoextend: not })).message)
      .toBe('vg/pool WARNING: autoextend is not armed: activation/thin_pool_autoextend_threshold is 100 (100 means never), the volume group has no free extents');
    expect(poolCondition(report({ autoextend: { ...not, required: false } })).state).toBe('OK');
  });

  it('a metadata snapshot: a running thinarchive holding it is fine; another program, or a dead thinarchive, past the limit is a warning', () => {
    const held = { root: 82, since: '2026-05-01T12:00:00.000Z', seconds: 1800, maxSeconds: 900 };
    expect(poolCondition(report({ heldMetadataSnapshot: { ...held, holder: 'thinarchive' } })).state).toBe('OK');
    expect(poolCondition(report({ heldMetadataSnapshot: { ...held, holder: 'other', seconds: 900 } })).state).toBe('OK');
    expect(poolCondition(report({ heldMetadataSnapshot: { ...held, holder: 'other' } })).message).toBe('vg/pool WARNING: a metadata snapshot (root 82) has been held by '
      + 'another program for 30m (more than 15m): it costs metadata space and thinarchive sends on this pool are refused until it is released');
    expect(poolCondition(report({ heldMetadataSnapshot: { ...held, holder: 'thinarchive-gone' } })).message).toMatch(/by a thinarchive process that is gone .* \(the next send on the pool releases it\)$/);
  });

  it('a pool that cannot be read is UNKNOWN with the reason; CRITICAL ranks above UNKNOWN above WARNING', () => {
    expect(poolCondition(report({ error: { code: 'POOL_NOT_ACTIVE', message: 'thin pool vg/pool is not active' }, data: null, metadata: null, mode: null, autoextend: null })))
      .toMatchObject({ state: 'UNKNOWN', message: 'vg/pool UNKNOWN: cannot read the pool: thin pool vg/pool is not active', values: { dataPercent: null } });
    expect(worstState(['OK', 'WARNING', 'UNKNOWN'])).toBe('UNKNOWN');
    expect(worstState(['UNKNOWN', 'CRITICAL', 'WARNING'])).toBe('CRITICAL');
    expect(worstState([])).toBe('OK');
  });
});

describe('watchPools against an emulated pool (no pinned space measured)', () => {
  it('records samples and predicts the time to full, remembers since when a metadata snapshot is held, reports a missing pool as UNKNOWN', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'ta-watch-'));
    let used = 1000;
    let held = '-';
    const lvsRow = {
      lv_name: 'pool', vg_name: 'vg', lv_attr: 'twi-aotz--', lv_size: String(4096 * 65536), lv_metadata_size: '2097152', chunk_size: '65536', lv_when_full: 'queue',
      seg_monitor: 'monitored', lv_profile: '', vg_profile: '', vg_free: String(2 ** 30), vg_extent_size: '4194304',
    };
    const exec = async (argv: readonly string[]): Promise<string> => {
      if (argv[0] === 'lvs' && argv.at(-1) === 'vg/pool') return JSON.stringify({ report: [{ lv: [lvsRow] }] });
      if (argv[0] === 'lvs') throw new CommandError('LVM_COMMAND', 'x', argv, 5, `  Failed to find logical volume "${argv.at(-1)}"`);
      if (argv[0] === 'lvm') return 'thin_pool_autoextend_threshold=80\nthin_pool_autoextend_percent=20\nmonitoring=1\n';
      if (argv[0] === 'dmsetup') return `0 524288 thin-pool 1 100/512 ${used}/4096 ${held} rw no_discard_passdown queue_if_no_space - 128\n`;
      throw new Error(argv.join(' '));
    };
    try {
      const t0 = Date.parse('2026-05-01T12:00:00Z');
      const at = (min: number, o: { pools?: string[] } = {}) => watchPools({
        pools: o.pools ?? ['vg/pool'], stateDir, exec, pinned: false, now: () => t0 + min * 60_000, settings: { default: { heldMetadataSnapshotMs: 5 * 60_000 } },
      });
      const [first] = await at(0);
      expect(first!).toMatchObject({ pool: 'vg/pool', error: null, mode: 'rw', whenFull: 'queue', secondsToFull: null, pinned: { bytes: null, error: 'not measured this time' } });
      expect(first!.data).toMatchObject({ usedBytes: 1000 * 65536, totalBytes: 4096 * 65536, percent: (100 * 1000) / 4096 });
      expect(first!.metadata).toMatchObject({ usedBytes: 100 * 4096, totalBytes: 512 * 4096 });
      expect(first!.condition.state).toBe('OK');
      // 96 chunks in 10 minutes: 3000 chunks left fill in 312.5 minutes (the metadata space does not grow)
      used = 1096;
      held = '82';
      const [second] = await at(10);
      expect(second!.data!.fill).toMatchObject({ samples: 2, spanSeconds: 600, secondsToFull: Math.round(3000 * 65536 / (96 * 65536 / 600)) });
      expect(second!.secondsToFull).toBe(18750);
      expect(second!.heldMetadataSnapshot).toMatchObject({ root: 82, holder: 'other', since: '2026-05-01T12:10:00.000Z', seconds: 0, maxSeconds: 300 });
      const [third] = await at(16);
      expect(third!.heldMetadataSnapshot).toMatchObject({ root: 82, since: '2026-05-01T12:10:00.000Z', seconds: 360 });
      expect(third!.condition).toMatchObject({ state: 'WARNING', message: expect.stringMatching(/held by another program for 6m \(more than 5m\)/) });
      const [gone, still] = await at(17, { pools: ['vg/gone', 'vg/pool'] });
      expect(gone!).toMatchObject({ pool: 'vg/gone', error: { code: 'LV_NOT_FOUND', message: 'thin pool vg/gone not found' }, data: null, condition: { state: 'UNKNOWN' } });
      expect(still!.data!.fill.samples).toBe(4);
      await expect(at(18, { pools: ['pool'] })).rejects.toMatchObject({ exitClass: 'usage', message: 'a pool is VG/POOL, got "pool"' });
    } finally {
      await rm(stateDir, { recursive: true, force: true });
    }
  });
});
