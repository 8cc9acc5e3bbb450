// send VG/LV against an emulated LVM (lvs / lvcreate / lvchange / lvremove / dmsetup / thin tools
// answered from an in-memory pool): tags, the pool checks, clean-up of interrupted runs, dry runs and
// failures. Dry runs read no device, so the whole managed flow up to the data runs here;
// test/lab/send-lv.test.ts runs real sends on a real pool.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { UnsafeError } from '../errors.js';
import { commandError, type LvmExec } from '../lvm/exec.js';
import { isLvmTag } from '../lvm/names.js';
import { parsePoolStatus } from '../lvm/pool-status.js';
import type { LvInfo } from '../lvm/report.js';
import { archiveFileName } from '../store/dir.js';
import { withPool } from '../archive/pool.js';
import { writeArchive } from '../archive/writer.js';
import { checkPoolForSend } from '../lvm/pool-status.js';
import { classifyChainSnapshots, parseSnapshotTags, snapshotName, snapshotTags, TAG_OURS, TAG_PENDING, volumeUuidForLv } from '../source/snapshot-chain.js';
import { sendLv } from './send-lv.js';

const VG = 'lab-vg';
const POOL = 'thin-pool';
const TPOOL = 'lab--vg-thin--pool-tpool';
const CHUNK = 65536;
const VOL_UUID = '54Gnkf-KZ8v-UJv8-nBhH-eXaC-7ioi-tTMYwJ';
const GiB = 1024 ** 3;

interface FakeLv {
  name: string;
  uuid: string;
  thinId: number | null;
  pool: string;
  origin: string;
  size: number;
  chunk: number;
  attr: string;
  tags: string[];
  active: boolean;
  /** mapped pool blocks (thin volumes) */
  mapped: [number, number][];
}

interface World {
  exec: LvmExec;
  lvs: FakeLv[];
  calls: string[];
  held: number | null;
  dataUsed: number;
  mode: string;
  failDelta: boolean;
  /** thin_delta output ranges for the next delta (pool blocks) */
  delta: { kind: 'different' | 'right_only' | 'left_only' | 'same'; begin: number; length: number }[];
}

let uuidN = 0;
function lvmUuid(): string {
  uuidN++;
  return `AAAAAA-BBBB-CCCC-DDDD-EEEE-FFFF-${String(uuidN).padStart(6, '0')}`;
}

function world(): World {
  let nextThin = 2;
  const w: World = {
    lvs: [
      { name: POOL, uuid: lvmUuid(), thinId: null, pool: '', origin: '', size: GiB, chunk: CHUNK, attr: 'twi-aot---', tags: [], active: true, mapped: [] },
      { name: 'vol', uuid: VOL_UUID, thinId: 1, pool: POOL, origin: '', size: 2 * GiB, chunk: 0, attr: 'Vwi-aot---', tags: [], active: true, mapped: [[0, 4], [100, 1], [1000, 10]] },
    ],
    calls: [],
    held: null,
    dataUsed: 20,
    mode: 'rw',
    failDelta: false,
    delta: [{ kind: 'same', begin: 0, length: 4 }, { kind: 'different', begin: 100, length: 1 }, { kind: 'left_only', begin: 1000, length: 5 }, { kind: 'right_only', begin: 2000, length: 4 }],
    exec: async (argv, opts) => {
      const line = argv.join(' ');
      w.calls.push(line);
      const lvOf = (ref: string): FakeLv => {
        const lv = w.lvs.find((l) => `${VG}/${l.name}` === ref);
        if (!lv) throw commandError(argv, { exitCode: 5, stdout: '', stderr: `  Failed to find logical volume "${ref}"\n` });
        return lv;
      };
      const [cmd, ...args] = argv;
      if ((cmd === 'thin_delta' || cmd === 'thin_dump') && args[0] === '-V') return '0.9.0\n';
      if (cmd === 'lvs') {
        return JSON.stringify({
          report: [{
            lv: w.lvs.map((l) => ({
              lv_name: l.name, vg_name: VG, lv_uuid: l.uuid, thin_id: l.thinId === null ? '' : String(l.thinId), pool_lv: l.pool, origin: l.origin,
              lv_size: String(l.size), chunk_size: String(l.chunk), data_percent: '', metadata_percent: '', lv_attr: l.attr,
              lv_tags: l.tags.join(','), lv_active: l.active ? 'active' : '',
            })),
          }],
        });
      }
      if (line === `dmsetup status ${TPOOL}`) return `0 2097152 thin-pool 3 115/1024 ${w.dataUsed}/100 ${w.held ?? '-'} ${w.mode} no_discard_passdown queue_if_no_space - 256\n`;
      if (line === `dmsetup message ${TPOOL} 0 reserve_metadata_snap`) {
        w.held = 77;
        return '';
      }
      if (line === `dmsetup message ${TPOOL} 0 release_metadata_snap`) {
        w.held = null;
        return '';
      }
      if (cmd === 'lvcreate') {
        const name = args[args.indexOf('-n') + 1]!;
        const origin = lvOf(args.at(-1)!);
        const tags = args.flatMap((a, i) => (args[i - 1] === '--addtag' ? [a] : []));
        w.lvs.push({ ...origin, name, uuid: lvmUuid(), thinId: nextThin++, origin: origin.name, attr: 'Vwi---t--k', tags, active: false, mapped: [...origin.mapped] });
        return '';
      }
      if (cmd === 'lvremove') {
        const lv = lvOf(args.at(-1)!);
        w.lvs = w.lvs.filter((l) => l !== lv);
        return '';
      }
      if (cmd === 'lvchange' && args[0] === '--deltag') {
        const lv = lvOf(args[2]!);
        lv.tags = lv.tags.filter((t) => t !== args[1]);
        return '';
      }
      if (cmd === 'thin_dump' && w.held !== null) {
        const id = Number(args[args.indexOf('--dev-id') + 1]);
        const lv = w.lvs.find((l) => l.thinId === id)!;
        const maps = lv.mapped.map(([b, n]) => `<range_mapping origin_begin="${b}" data_begin="${b + 5000}" length="${n}" time="0"/>`).join('\n');
        await writeFile(opts!.stdoutFile!, `<superblock uuid="" time="2" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="0">
<device dev_id="${id}" mapped_blocks="${lv.mapped.reduce((s, [, n]) => s + n, 0)}" transaction="2" creation_time="2" snap_time="2">
${maps}
</device>
</superblock>
`);
        return '';
      }
      if (cmd === 'thin_delta' && w.held !== null) {
        if (w.failDelta) throw commandError(argv, { exitCode: 1, stdout: '', stderr: 'thin_delta: metadata contains errors (run thin_check for details).\n' });
        const s1 = args[args.indexOf('--snap1') + 1];
        const s2 = args[args.indexOf('--snap2') + 1];
        const body = w.delta.map((d) => `<${d.kind} begin="${d.begin}" length="${d.length}"/>`).join('\n');
        await writeFile(opts!.stdoutFile!, `<superblock uuid="" time="2" transaction="3" data_block_size="128" nr_data_blocks="0">\n<diff left="${s1}" right="${s2}">\n${body}\n</diff>\n</superblock>\n`);
        return '';
      }
      throw new Error(`unexpected command ${line}`);
    },
  };
  return w;
}

function lvInfo(name: string, tags: string[], extra: Partial<LvInfo> = {}): LvInfo {
  return {
    vg: VG, name, hidden: false, uuid: `u-${name}`, thinId: 5, pool: POOL, origin: 'vol', sizeBytes: GiB, chunkSizeBytes: 0, dataPercent: null,
    metadataPercent: null, attr: 'Vwi---t--k', tags, active: false, isThinPool: false, isThinVolume: true, readOnly: false, activationSkip: true,
    health: '-', ...extra,
  };
}

const CHAIN_ID = '11111111-2222-4333-8444-555555555555';
const ARCH = (n: number): string => `aaaaaaaa-bbbb-4ccc-8ddd-${String(n).padStart(12, '0')}`;

describe('managed snapshot tags and names', () => {
  it('round-trip, and every tag is a valid LVM tag of [A-Za-z0-9_+.-]', () => {
    const t = { originUuid: VOL_UUID, chain: 'off-site.2', chainId: CHAIN_ID, archiveId: ARCH(7), sequence: 12, createdAt: '2024-05-06T07:08:09.123Z' };
    const tags = snapshotTags(t, true);
    for (const tag of tags) {
      expect(isLvmTag(tag)).toBe(true);
      expect(tag).toMatch(/^[A-Za-z0-9_+.-]+$/);
    }
    expect(tags).toContain(TAG_OURS);
    expect(tags).toContain(TAG_PENDING);
    expect(tags).toContain('ta_time_20240506T070809Z');
    expect(parseSnapshotTags(tags)).toEqual({ ...t, createdAt: '2024-05-06T07:08:09Z', pending: true });
    expect(parseSnapshotTags(snapshotTags(t, false))!.pending).toBe(false);
    // a missing or doubled tag is not a usable base
    expect(parseSnapshotTags(tags.filter((x) => !x.startsWith('ta_seq_')))).toBeNull();
    expect(parseSnapshotTags([...tags, 'ta_seq_13'])).toBeNull();
    expect(parseSnapshotTags(tags.filter((x) => x !== TAG_OURS))).toBeNull();
  });

  it('derives a stable RFC 4122 volume UUID from an lv_uuid', () => {
    const u = volumeUuidForLv(VOL_UUID);
    expect(u).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(volumeUuidForLv(VOL_UUID)).toBe(u);
    expect(volumeUuidForLv('cm4XB9-79ef-nkEb-PJ94-Sly2-tqlT-9q01TR')).not.toBe(u);
  });

  it('names snapshots after the volume, chain and sequence, shorter when that is too long', () => {
    expect(snapshotName('vol', 'default', 3, ARCH(1))).toBe('vol_ta_default_3');
    expect(snapshotName('v'.repeat(120), 'default', 3, ARCH(1))).toBe('ta_aaaaaaaa_3');
  });

  it('classifies a chain: newest base, older bases, pending snapshots, other chains ignored', () => {
    const mk = (name: string, seq: number, pending: boolean, chain = 'default', chainId = CHAIN_ID): LvInfo =>
      lvInfo(name, snapshotTags({ originUuid: VOL_UUID, chain, chainId, archiveId: ARCH(seq), sequence: seq, createdAt: '2024-01-01T00:00:00Z' }, pending));
    const lvs = [mk('b3', 3, false), mk('b4', 4, false), mk('p5', 5, true), mk('other', 9, false, 'offsite'), lvInfo('foreign', ['thinarchive'])];
    const c = classifyChainSnapshots(lvs, VOL_UUID, 'default');
    expect(c.base!.lv.name).toBe('b4');
    expect(c.olderBases.map((l) => l.name)).toEqual(['b3']);
    expect(c.pending.map((p) => p.lv.name)).toEqual(['p5']);
    expect(classifyChainSnapshots(lvs, 'other-uuid', 'default')).toEqual({ base: null, pending: [], olderBases: [] });
    expect(() => classifyChainSnapshots([mk('b3', 3, false), mk('x', 4, false, 'default', '99999999-2222-4333-8444-555555555555')], VOL_UUID, 'default'))
      .toThrow(/different archive chains/);
    const broken = lvInfo('broken', [TAG_OURS, `ta_origin_${VOL_UUID}`, 'ta_chain_default']);
    expect(() => classifyChainSnapshots([broken], VOL_UUID, 'default')).toThrow(UnsafeError);
    // a pending snapshot with incomplete tags is still a pending snapshot (removed by the next run)
    expect(classifyChainSnapshots([lvInfo('half', [...broken.tags, TAG_PENDING])], VOL_UUID, 'default').pending).toHaveLength(1);
  });

  it('refuses a managed snapshot of an unknown tag-scheme version (ta_fmt_<n>, docs/LVM-METADATA.md): neither used nor removed', () => {
    const tags = snapshotTags({ originUuid: VOL_UUID, chain: 'default', chainId: CHAIN_ID, archiveId: ARCH(3), sequence: 3, createdAt: '2024-01-01T00:00:00Z' }, false);
    for (const extra of [[], [TAG_PENDING]]) {
      const lvs = [lvInfo('future', [...tags, ...extra, 'ta_fmt_2'])];
      expect(() => classifyChainSnapshots(lvs, VOL_UUID, 'default')).toThrow(expect.objectContaining({ code: 'BAD_CHAIN_TAGS', exitClass: 'unsafe', message: expect.stringMatching(/tag scheme ta_fmt_2/) }));
    }
    // unknown ta_* keys without a version tag are ignored (a later version adds only keys a 1.x reader may ignore)
    expect(classifyChainSnapshots([lvInfo('b3', [...tags, 'ta_note_x'])], VOL_UUID, 'default').base!.tags.sequence).toBe(3);
  });
});

describe('pool checks before snapshotting', () => {
  const st = (data: string, meta: string, rest = '- rw no_discard_passdown queue_if_no_space - 256') =>
    parsePoolStatus(`0 2097152 thin-pool 3 ${meta} ${data} ${rest}`);
  const limits = { maxDataPercent: 90, maxMetadataPercent: 80 };
  it('refuses high usage (POOL_CRITICAL) naming the value, by how much, and the flag, and unhealthy pools', () => {
    expect(() => checkPoolForSend('vg/pool', st('50/100', '10/100'), limits)).not.toThrow();
    expect(() => checkPoolForSend('vg/pool', st('90/100', '80/100'), limits)).not.toThrow();
    expect(() => checkPoolForSend('vg/pool', st('91/100', '10/100'), limits)).toThrow(/thin pool vg\/pool is critical: data usage is 91\.00%, 1\.00 points above the critical threshold of 90% \(--max-data-percent\)\. No snapshot was created/);
    expect(() => checkPoolForSend('vg/pool', st('10/100', '81/100'), limits)).toThrow(/metadata usage is 81\.00%, 1\.00 points above the critical threshold of 80% \(--max-metadata-percent\)/);
    expect(() => checkPoolForSend('vg/pool', st('95/100', '85/100'), limits)).toThrow(expect.objectContaining({
      code: 'POOL_CRITICAL', exitClass: 'unsafe', message: expect.stringMatching(/data usage is 95\.00%, 5\.00 points above .*; metadata usage is 85\.00%, 5\.00 points above/),
    }));
    expect(() => checkPoolForSend('vg/pool', st('10/100', '10/100', '- ro no_discard_passdown queue_if_no_space - 256'), limits)).toThrow(/read-only/);
    expect(() => checkPoolForSend('vg/pool', st('10/100', '10/100', '- out_of_data_space no_discard_passdown queue_if_no_space - 256'), limits)).toThrow(/out of data space/);
    expect(() => checkPoolForSend('vg/pool', st('10/100', '10/100', '- rw no_discard_passdown queue_if_no_space needs_check 256'), limits)).toThrow(/needs_check/);
    expect(() => checkPoolForSend('vg/pool', parsePoolStatus('0 2097152 thin-pool Fail'), limits)).toThrow(/failure mode/);
  });
});

describe('sendLv against an emulated pool', () => {
  let dir: string;
  let store: string;
  let w: World;
  const base = (): { to: string; stateDir: string; tmpDir: string; exec: LvmExec } => ({ to: store, stateDir: join(dir, 'state'), tmpDir: dir, exec: w.exec });
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ta-sendlv-'));
    store = join(dir, 'store');
    await mkdir(store);
    w = world();
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const names = (): string[] => w.lvs.map((l) => l.name).sort();

  it('a full dry run counts the mapped blocks from thin_dump, and leaves nothing behind', async () => {
    const r = await sendLv({ ...base(), volume: `${VG}/vol`, dryRun: true });
    expect(r).toMatchObject({
      dryRun: true, full: true, sequence: 0, parentId: null, blockSize: CHUNK, volumeSize: 2 * GiB, dataBytes: 15 * CHUNK, managed: true, chain: 'default',
      pool: `${VG}/${POOL}`, poolChunkSize: CHUNK, base: null, removed: ['vol_ta_default_0'], volume: { vg: VG, lv: 'vol', lvUuid: VOL_UUID },
    });
    expect(r.unmapBytes).toBe(2 * GiB - 15 * CHUNK);
    expect(names()).toEqual([POOL, 'vol']);
    expect(w.held).toBeNull();
    // the snapshot was created before the metadata snapshot was reserved, and tagged
    const create = w.calls.findIndex((c) => c.startsWith('lvcreate'));
    const reserve = w.calls.findIndex((c) => c.endsWith('reserve_metadata_snap'));
    const status = w.calls.findIndex((c) => c.startsWith('dmsetup status'));
    expect(status).toBeLessThan(create);
    expect(create).toBeLessThan(reserve);
    expect(w.calls[create]).toContain(`--addtag ${TAG_PENDING}`);
    expect(w.calls[create]).toContain(`--addtag ta_origin_${VOL_UUID}`);
    expect(w.calls.some((c) => c.startsWith('lvchange -ay'))).toBe(false); // no data read
  });

  it('an incremental dry run counts thin_delta: different + right_only to copy, left_only to unmap', async () => {
    w.lvs.push({ ...w.lvs[1]!, name: 'vol_ta_default_4', uuid: lvmUuid(), thinId: 9, origin: 'vol', attr: 'Vri---t--k', active: false,
      tags: snapshotTags({ originUuid: VOL_UUID, chain: 'default', chainId: CHAIN_ID, archiveId: ARCH(4), sequence: 4, createdAt: '2024-01-01T00:00:00Z' }, false) });
    await mkdir(join(store, CHAIN_ID));
    await writeFile(join(store, CHAIN_ID, archiveFileName(4, ARCH(4))), '');
    const r = await sendLv({ ...base(), volume: `${VG}/vol`, dryRun: true });
    expect(r).toMatchObject({ full: false, sequence: 5, chainId: CHAIN_ID, parentId: ARCH(4), dataBytes: 5 * CHUNK, unmapBytes: 5 * CHUNK });
    expect(r.base).toMatchObject({ name: 'vol_ta_default_4', thinId: 9, createdAt: '2024-01-01T00:00:00Z' });
    expect(w.calls.some((c) => /^thin_delta -m --snap1 9 --snap2 \d+ /.test(c))).toBe(true);
    expect(names()).toEqual([POOL, 'vol', 'vol_ta_default_4']);
    // the store must hold the base's archive for an incremental
    await rm(join(store, CHAIN_ID), { recursive: true });
    await expect(sendLv({ ...base(), volume: `${VG}/vol`, dryRun: true })).rejects.toMatchObject({ code: 'PARENT_NOT_IN_STORE' });
    // --full makes a full archive continuing the chain
    const f = await sendLv({ ...base(), volume: `${VG}/vol`, dryRun: true, full: true });
    expect(f).toMatchObject({ full: true, sequence: 5, parentId: ARCH(4), chainId: CHAIN_ID, dataBytes: 15 * CHUNK, base: null });
    // a base made writable may have changed: refused (but --full is fine)
    w.lvs.find((l) => l.name === 'vol_ta_default_4')!.attr = 'Vwi---t--k';
    await expect(sendLv({ ...base(), to: { sink: { write: async () => {} }, label: 'pipe' }, volume: `${VG}/vol`, dryRun: true }))
      .rejects.toMatchObject({ code: 'BASE_WRITABLE' });
    expect((await sendLv({ ...base(), volume: `${VG}/vol`, dryRun: true, full: true })).full).toBe(true);
  });

  it('an incremental of a volume grown since its base takes the new area from thin_dump: mapped DATA, the rest UNMAP', async () => {
    // base 1 GiB (16384 blocks), volume now 2 GiB; blocks 20000-20005 are mapped in both (kept by an
    // lvreduce before the growth), which thin_delta calls `same`: they must be sent all the same
    w.lvs[1]!.mapped.push([20000, 6]);
    w.delta.push({ kind: 'same', begin: 20000, length: 6 });
    w.lvs.push({ ...w.lvs[1]!, name: 'vol_ta_default_4', uuid: lvmUuid(), thinId: 9, origin: 'vol', attr: 'Vri---t--k', active: false, size: GiB,
      tags: snapshotTags({ originUuid: VOL_UUID, chain: 'default', chainId: CHAIN_ID, archiveId: ARCH(4), sequence: 4, createdAt: '2024-01-01T00:00:00Z' }, false) });
    await mkdir(join(store, CHAIN_ID));
    await writeFile(join(store, CHAIN_ID, archiveFileName(4, ARCH(4))), '');
    const r = await sendLv({ ...base(), volume: `${VG}/vol`, dryRun: true });
    const from = GiB / CHUNK;
    // below the base's end: the delta (different 100, right_only 2000-2003; left_only 1000-1004);
    // past it: 20000-20005 DATA, the other blocks UNMAP
    expect(r).toMatchObject({ full: false, volumeSize: 2 * GiB, dataBytes: (5 + 6) * CHUNK, unmapBytes: (5 + from - 6) * CHUNK });
    expect(w.calls.filter((c) => /^thin_(delta|dump) /.test(c) && !c.includes(' -V')).map((c) => c.split(' ')[0])).toEqual(['thin_delta', 'thin_dump']);
    expect(w.held).toBeNull();
    expect(names()).toEqual([POOL, 'vol', 'vol_ta_default_4']);
  });

  it('refuses a pool above the data threshold before creating anything', async () => {
    w.dataUsed = 95;
    await expect(sendLv({ ...base(), volume: `${VG}/vol` })).rejects.toMatchObject({ code: 'POOL_CRITICAL', message: expect.stringMatching(/data usage is 95\.00%, 5\.00 points above the critical threshold of 90%/) });
    expect(w.calls.some((c) => c.startsWith('lvcreate'))).toBe(false);
    const r = await sendLv({ ...base(), volume: `${VG}/vol`, dryRun: true, maxDataPercent: 96 });
    expect(r.dryRun).toBe(true);
    // the configuration's thresholds for this pool (pools."VG/POOL", then pools.default) guard it when no option is given
    await expect(sendLv({ ...base(), volume: `${VG}/vol`, dryRun: true, poolThresholds: { default: { crit: { data: 97 } } } })).resolves.toMatchObject({ dryRun: true });
    await expect(sendLv({ ...base(), volume: `${VG}/vol`, poolThresholds: { default: { crit: { data: 97 } }, [`${VG}/${POOL}`]: { warn: { data: 50 }, crit: { data: 94 } } } }))
      .rejects.toMatchObject({ code: 'POOL_CRITICAL', message: expect.stringMatching(/1\.00 points above the critical threshold of 94%/) });
    w.dataUsed = 20;
    await expect(sendLv({ ...base(), volume: `${VG}/vol`, maxMetadataPercent: 1 })).rejects.toMatchObject({ code: 'POOL_CRITICAL', exitClass: 'unsafe' });
    w.mode = 'out_of_data_space';
    await expect(sendLv({ ...base(), volume: `${VG}/vol` })).rejects.toMatchObject({ code: 'POOL_OUT_OF_SPACE' });
    expect(names()).toEqual([POOL, 'vol']);
  });

  it('a failing thin_delta surfaces, removes the new snapshot, keeps the base and releases the metadata snapshot', async () => {
    w.lvs.push({ ...w.lvs[1]!, name: 'b', uuid: lvmUuid(), thinId: 9, origin: 'vol', attr: 'Vri---t--k', active: false,
      tags: snapshotTags({ originUuid: VOL_UUID, chain: 'default', chainId: CHAIN_ID, archiveId: ARCH(0), sequence: 0, createdAt: '2024-01-01T00:00:00Z' }, false) });
    w.failDelta = true;
    await expect(sendLv({ ...base(), to: { sink: { write: async () => {} }, label: 'pipe' }, volume: `${VG}/vol` }))
      .rejects.toThrow(/thin_delta -m --snap1 9 --snap2 \d+ .*: exit 1: thin_delta: metadata contains errors/);
    expect(names()).toEqual(['b', POOL, 'vol']);
    expect(w.held).toBeNull();
  });

  it('removes pending snapshots of interrupted runs; promotes one whose archive is committed in the store', async () => {
    const t = (seq: number, pending: boolean): string[] =>
      snapshotTags({ originUuid: VOL_UUID, chain: 'default', chainId: CHAIN_ID, archiveId: ARCH(seq), sequence: seq, createdAt: '2024-01-01T00:00:00Z' }, pending);
    const snap = (name: string, thinId: number, tags: string[]): FakeLv => ({ ...w.lvs[1]!, name, uuid: lvmUuid(), thinId, origin: 'vol', attr: 'Vri---t--k', active: false, tags });
    w.lvs.push(snap('vol_ta_default_0', 7, t(0, false)), snap('vol_ta_default_1', 8, t(1, true)));
    await mkdir(join(store, CHAIN_ID));
    await writeFile(join(store, CHAIN_ID, archiveFileName(0, ARCH(0))), '');
    // archive 1 not committed: its snapshot goes
    let r = await sendLv({ ...base(), volume: `${VG}/vol`, dryRun: true });
    expect(r.removed).toEqual(['vol_ta_default_1', 'vol_ta_default_1']); // the stray, then the dry run's own
    expect(r).toMatchObject({ sequence: 1, parentId: ARCH(0), recovered: [] });
    // archive 1 committed: its snapshot becomes the base, the old base goes
    w.lvs.push(snap('vol_ta_default_1', 8, t(1, true)));
    await writeFile(join(store, CHAIN_ID, archiveFileName(1, ARCH(1))), '');
    r = await sendLv({ ...base(), volume: `${VG}/vol`, dryRun: true });
    expect(r).toMatchObject({ sequence: 2, parentId: ARCH(1), recovered: ['vol_ta_default_1'], removed: ['vol_ta_default_0', 'vol_ta_default_2'] });
    expect(names()).toEqual([POOL, 'vol', 'vol_ta_default_1']);
    expect(w.lvs.find((l) => l.name === 'vol_ta_default_1')!.tags).not.toContain(TAG_PENDING);
  });

  it('usage errors', async () => {
    const v = `${VG}/vol`;
    await expect(sendLv({ ...base(), volume: v, parent: store })).rejects.toMatchObject({ exitClass: 'usage', message: expect.stringMatching(/--parent/) });
    await expect(sendLv({ ...base(), volume: v, base: `${VG}/x` })).rejects.toMatchObject({ exitClass: 'usage' });
    await expect(sendLv({ ...base(), volume: v, chain: 'a/b' })).rejects.toMatchObject({ exitClass: 'usage', message: expect.stringMatching(/chain name/) });
    await expect(sendLv({ ...base(), volume: 'vol' })).rejects.toMatchObject({ exitClass: 'usage' });
    await expect(sendLv({ ...base(), volume: `${VG}/${POOL}` })).rejects.toMatchObject({ code: 'NOT_THIN_VOLUME' });
    await expect(sendLv({ ...base(), snapshot: `${VG}/s`, base: `${VG}/b` })).rejects.toThrow(/needs --parent/);
    await expect(sendLv({ ...base(), snapshot: `${VG}/s`, chain: 'x' })).rejects.toThrow(/--chain/);
    await expect(sendLv({ ...base(), volume: v, maxDataPercent: 101 })).rejects.toMatchObject({ exitClass: 'usage' });
    expect(w.calls.some((c) => c.startsWith('lvcreate'))).toBe(false);
  });

  it('a user-managed incremental: the parent archive must hold --base', async () => {
    const snapLv = (name: string, thinId: number): FakeLv => ({ ...w.lvs[1]!, name, uuid: lvmUuid(), thinId, origin: 'vol', attr: 'Vri---t--k', active: false, tags: [] });
    const s1 = snapLv('s1', 7);
    w.lvs.push(s1, snapLv('s2', 8));
    const parentOf = async (snapshotUuid: string): Promise<string> => {
      const chunks: Uint8Array[] = [];
      await withPool((pool) => writeArchive({
        header: {
          full: true, blockSize: CHUNK, parentId: null, chainId: CHAIN_ID, sequence: 0, volumeUuid: volumeUuidForLv(VOL_UUID), volumeSize: 2 * GiB,
          sourceChunkSize: CHUNK, meta: { volume: { name: `${VG}/vol` }, snapshot: { name: `${VG}/s1`, uuid: snapshotUuid }, tool: 'test' },
        },
        extents: (async function* () {})(), source: { size: 2 * GiB, read: async () => 0 }, pool, sink: { write: async (c) => void chunks.push(c.slice()) },
      }));
      const path = join(dir, `parent-${snapshotUuid}.tna`);
      await writeFile(path, Buffer.concat(chunks));
      return path;
    };
    await expect(sendLv({ ...base(), snapshot: `${VG}/s2`, base: `${VG}/s1`, parent: await parentOf('some-other-uuid'), dryRun: true }))
      .rejects.toMatchObject({ code: 'BASE_MISMATCH', exitClass: 'unsafe' });
    const r = await sendLv({ ...base(), snapshot: `${VG}/s2`, base: `${VG}/s1`, parent: await parentOf(s1.uuid), dryRun: true });
    expect(r).toMatchObject({ full: false, sequence: 1, chainId: CHAIN_ID, dataBytes: 5 * CHUNK, base: { name: 's1', thinId: 7 }, snapshot: { name: 's2', thinId: 8 } });
    expect(w.calls.some((c) => /^thin_delta -m --snap1 7 --snap2 8 /.test(c))).toBe(true);
  });

  it('a user-managed snapshot: nothing created, tagged or removed', async () => {
    w.lvs.push({ ...w.lvs[1]!, name: 's1', uuid: lvmUuid(), thinId: 7, origin: 'vol', attr: 'Vri---t--k', active: false, tags: [] });
    const r = await sendLv({ ...base(), snapshot: `${VG}/s1`, dryRun: true });
    expect(r).toMatchObject({ managed: false, chain: null, full: true, dataBytes: 15 * CHUNK, snapshot: { name: 's1', thinId: 7 }, volume: { lv: 'vol', lvUuid: VOL_UUID } });
    expect(w.calls.filter((c) => /^(lvcreate|lvremove|lvchange)/.test(c))).toEqual([]);
    expect(names()).toEqual(['s1', POOL, 'vol']);
  });
});
