// The pure parts of LV targets: the tag scheme, the target spec, how a zeroed range is split on a
// thin LV, and which snapshots are ours. The LVM side runs in the lab (test/lab/apply-lv.test.ts).
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { LvInfo } from '../lvm/report.js';
import type { ZeroStats } from '../target/file-target.js';
import type { TargetState } from '../target/state.js';
import { ourSnapshots, snapOfTag, stateTags, stateToTags, tagsToState } from './lv-tags.js';
import { lvTargetSpec, parsePoolSpec, thinZeroMethods } from './lv-target.js';

const U = (n: number): string => `${String(n).repeat(8)}-1111-2222-3333-444455556666`;

const clean: TargetState = {
  version: 1, volumeUuid: U(1), chainId: U(2), blockSize: 65536, volumeSize: 67108864, archiveId: U(3), sequence: 4,
  status: 'clean', updatedAt: '2026-01-02T03:04:05.678Z',
};
const applyingFirst: TargetState = {
  version: 1, volumeUuid: U(1), chainId: U(2), blockSize: 65536, volumeSize: 67108864, archiveId: '', sequence: -1,
  status: 'applying', updatedAt: '2026-01-02T03:04:05.678Z',
  applying: { archiveId: U(5), parentId: null, sequence: 0, chainId: U(2), startedAt: '2026-01-02T03:04:05.000Z' },
};
const applyingNext: TargetState = {
  ...clean, status: 'applying',
  applying: { archiveId: U(6), parentId: U(3), sequence: 5, chainId: U(2), startedAt: '2026-01-02T03:04:06.000Z' },
};

describe('LV tag state scheme', () => {
  it('round-trips clean and applying states through tags of the allowed characters only', () => {
    for (const s of [clean, applyingFirst, applyingNext]) {
      const tags = stateToTags(s);
      for (const t of tags) expect(t).toMatch(/^ta_[A-Za-z0-9_+.-]+$/);
      expect(new Set(tags).size).toBe(tags.length);
      expect(tagsToState([...tags].reverse(), 'vg/lv')).toEqual(s);
    }
    expect(stateToTags(clean).sort()).toEqual([
      'ta_archive_33333333-1111-2222-3333-444455556666', 'ta_bs_65536', 'ta_chainid_22222222-1111-2222-3333-444455556666', 'ta_fmt_1',
      'ta_seq_4', 'ta_size_67108864', 'ta_state_clean', `ta_updated_${Date.parse(clean.updatedAt)}`, 'ta_volume_11111111-1111-2222-3333-444455556666',
    ]);
    // the first archive of a target: no last-applied archive yet, no parent
    expect(stateToTags(applyingFirst).filter((t) => /^ta_(archive|seq|applyingparent)_/.test(t))).toEqual([]);
  });

  it('no state tags is no state; other tags are ignored', () => {
    expect(tagsToState([], 'vg/lv')).toBeNull();
    expect(tagsToState(['backup', 'ta_created', 'ta_snap', 'owner:me'], 'vg/lv')).toBeNull();
    expect(tagsToState([...stateToTags(clean), 'ta_created', 'other'], 'vg/lv')).toEqual(clean);
    expect(stateTags(['ta_created', 'ta_snap', 'ta_snapof_x', 'ta_seq_1', 'x'])).toEqual(['ta_seq_1']);
  });

  it('refuses inconsistent tags instead of guessing', () => {
    const tags = stateToTags(clean);
    const bad: string[][] = [
      tags.filter((t) => !t.startsWith('ta_state_')), // no status
      [...tags, 'ta_state_applying'], // two statuses
      tags.filter((t) => !t.startsWith('ta_seq_')), // archive without sequence
      tags.filter((t) => !t.startsWith('ta_volume_')),
      tags.map((t) => (t === 'ta_fmt_1' ? 'ta_fmt_2' : t)),
      tags.map((t) => (t.startsWith('ta_bs_') ? 'ta_bs_x' : t)),
      [...tags, 'ta_applying_abc'], // clean with an applying tag
      stateToTags(applyingNext).filter((t) => !t.startsWith('ta_applyingseq_')),
    ];
    for (const b of bad) expect(() => tagsToState(b, 'vg/lv'), b.join(',')).toThrow(expect.objectContaining({ code: 'TARGET_STATE_CORRUPT', exitClass: 'unsafe' }));
  });

  it('refuses to record a value with characters outside the tag set', () => {
    expect(() => stateToTags({ ...clean, chainId: 'a b' })).toThrow(expect.objectContaining({ code: 'TAG_VALUE' }));
  });
});

describe('lvTargetSpec / parsePoolSpec', () => {
  it('VG/LV is an LV unless it is an existing path or a new file in an existing directory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lvspec-'));
    const cwd = process.cwd();
    try {
      process.chdir(dir);
      expect(await lvTargetSpec('vg2/replica')).toEqual({ vg: 'vg2', lv: 'replica' });
      expect(await lvTargetSpec('my-vg/lv_1.x')).toEqual({ vg: 'my-vg', lv: 'lv_1.x' });
      await mkdir('images');
      expect(await lvTargetSpec('images/new.img')).toBeNull();
      await writeFile('images/old.img', '');
      expect(await lvTargetSpec('images/old.img')).toBeNull();
      for (const p of ['/dev/vg/lv', 'vg/lv/x', 'lv', 'vg/-lv', 'v g/lv', './x']) expect(await lvTargetSpec(p), p).toBeNull();
    } finally {
      process.chdir(cwd);
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('--pool is VG/POOL or POOL, in the target VG', () => {
    expect(parsePoolSpec('vg2/pool', 'vg2')).toBe('pool');
    expect(parsePoolSpec('pool', 'vg2')).toBe('pool');
    expect(() => parsePoolSpec('vg1/pool', 'vg2')).toThrow(/is in VG vg1/);
    expect(() => parsePoolSpec('vg2/-x', 'vg2')).toThrow(/bad pool name/);
  });
});

describe('thinZeroMethods', () => {
  const K = 1024;
  const run = (offset: number, length: number, opts: { discardFails?: string } = {}) => {
    const calls: string[] = [];
    const stats: ZeroStats = { punched: 0, zeroedRange: 0, zeroedOut: 0, written: 0 };
    const io = {
      blkDiscard: (_fd: number, o: number, l: number) => {
        if (opts.discardFails) throw Object.assign(new Error('x'), { code: opts.discardFails });
        calls.push(`discard ${o / K}K+${l / K}K`);
      },
      blkZeroOut: (_fd: number, o: number, l: number) => void calls.push(`zeroout ${o / K}K+${l / K}K`),
    };
    const [m, fallback] = thinZeroMethods(64 * K, () => stats, io);
    // what FileTarget.zero does: run, then credit the whole range to the method's stat
    m!.run(3, offset, length);
    stats[m!.stat] += length;
    return { calls, stats, fallback: fallback!.stat };
  };

  it('discards whole chunks and zeroes out the unaligned head and tail', () => {
    expect(run(12 * K, 4096 * K + 56 * K)).toEqual({
      calls: ['discard 64K+4096K', 'zeroout 12K+52K', 'zeroout 4160K+4K'],
      stats: { punched: 4096 * K, zeroedRange: 0, zeroedOut: 56 * K, written: 0 },
      fallback: 'zeroedOut',
    });
    expect(run(128 * K, 256 * K).calls).toEqual(['discard 128K+256K']);
    expect(run(128 * K, 256 * K).stats.zeroedOut).toBe(0);
  });

  it('a range within one chunk (or two partial chunks) is zeroed out only', () => {
    expect(run(4 * K, 8 * K).calls).toEqual(['zeroout 4K+8K']);
    expect(run(60 * K, 8 * K)).toMatchObject({ calls: ['zeroout 60K+8K'], stats: { punched: 0, zeroedOut: 8 * K } });
  });

  it('an unsupported discard is thrown before anything else, so FileTarget falls back to the whole range', () => {
    expect(() => run(12 * K, 1024 * K, { discardFails: 'EOPNOTSUPP' })).toThrow(expect.objectContaining({ code: 'EOPNOTSUPP' }));
  });
});

describe('ourSnapshots', () => {
  const lv = (name: string, tags: string[]): LvInfo => ({
    vg: 'vg2', name, hidden: false, uuid: `uuid-${name}`, thinId: 1, pool: 'pool', origin: 'replica', sizeBytes: 1, chunkSizeBytes: 0,
    dataPercent: 0, metadataPercent: null, attr: 'Vri---tz-k', tags, active: false, isThinPool: false, isThinVolume: true,
    readOnly: true, activationSkip: true, health: '-',
  });
  it('only LVs tagged ta_snap and ta_snapof_<this uuid>, newest first', () => {
    const of = snapOfTag('U1');
    const got = ourSnapshots([
      lv('replica_ta_1', ['ta_snap', of, 'ta_seq_1', 'ta_archive_a1', 'ta_taken_1000']),
      lv('replica_ta_3', ['ta_snap', of, 'ta_seq_3', 'ta_archive_a3', 'ta_taken_3000']),
      lv('replica_ta_2', ['ta_snap', of, 'ta_seq_2', 'ta_archive_a2', 'ta_taken_2000']),
      lv('other_ta_9', ['ta_snap', snapOfTag('U2'), 'ta_seq_9', 'ta_taken_9000']),
      lv('user_snap', [of, 'ta_taken_9999']),
      lv('replica', ['ta_state_clean']),
    ], 'U1');
    expect(got.map((s) => [s.name, s.sequence, s.archiveId])).toEqual([['replica_ta_3', 3, 'a3'], ['replica_ta_2', 2, 'a2'], ['replica_ta_1', 1, 'a1']]);
  });
});
