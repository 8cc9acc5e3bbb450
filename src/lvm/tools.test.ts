import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CommandError, ThinarchiveError, UnsafeError, UsageError } from '../errors.js';
import { type ExecOptions, type LvmExec, commandError } from './exec.js';
import {
  activateReadOnly, addTag, checkThinToolsVersion, createThinSnapshot, deactivate, delTag, getLv, listLvs, listVgs,
  parseThinToolsVersion, poolMessage, poolStatus, readThinDeltaFile, readThinDumpFile, removeLv, thinDelta, thinDump,
  thinToolsVersion,
} from './tools.js';

const FIXTURES = fileURLToPath(new URL('../../fixtures/lvm/', import.meta.url));
const fixture = (name: string): string => readFileSync(FIXTURES + name, 'utf8');
const ERRORS = JSON.parse(fixture('errors.json')) as Record<string, { argv: string[]; exitCode: number; stdout: string; stderr: string }>;

/** A fake LvmExec: answers by the first matching handler, records every call. */
function fake(handlers: [RegExp, (argv: readonly string[], o: ExecOptions) => string | Promise<string>][]): LvmExec & { calls: string[] } {
  const calls: string[] = [];
  const exec = (async (argv: readonly string[], o: ExecOptions = {}) => {
    const line = argv.join(' ');
    calls.push(line);
    for (const [re, h] of handlers) if (re.test(line)) return h(argv, o);
    throw new Error(`unexpected command: ${line}`);
  }) as LvmExec & { calls: string[] };
  exec.calls = calls;
  return exec;
}

/** Fail like the real command did (errors.json). */
const realFailure = (name: string) => (argv: readonly string[]): never => {
  const e = ERRORS[name]!;
  throw commandError(argv, { exitCode: e.exitCode, stdout: e.stdout, stderr: e.stderr });
};

const LVS = /^lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_uuid,thin_id,pool_lv,origin,lv_size,chunk_size,data_percent,metadata_percent,lv_attr,lv_tags,lv_active lab-vg$/;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'thinarchive-tools-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('reports', () => {
  it('listLvs / getLv / listVgs run the documented argv and parse it', async () => {
    const exec = fake([[LVS, () => fixture('lvs.json')], [/^vgs /, () => fixture('vgs.json')]]);
    expect((await listLvs('lab-vg', { exec })).map((l) => l.name).sort()).toEqual(['snap1', 'snap2', 'thin-pool', 'vol']);
    expect((await getLv('lab-vg', 'snap1', { exec })).thinId).toBe(2);
    await expect(getLv('lab-vg', 'nope', { exec })).rejects.toMatchObject({ code: 'LV_NOT_FOUND' });
    expect((await listVgs({ exec }))[0]!.name).toBe('lab-vg');
    expect(exec.calls.at(-1)).toBe('vgs --reportformat json --units b --nosuffix -o vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_attr,vg_tags');
    await expect(listLvs('bad vg', { exec })).rejects.toBeInstanceOf(UsageError);
  });
});

describe('pool status and messages', () => {
  it('poolStatus reads the -tpool device with doubled dashes', async () => {
    const exec = fake([[/^dmsetup status lab--vg-thin--pool-tpool$/, () => fixture('status-held.txt')]]);
    const st = await poolStatus('lab-vg', 'thin-pool', { exec });
    expect(st.state === 'ok' && st.heldRoot).toBeGreaterThan(0);
  });
  it('a missing device is POOL_NOT_ACTIVE (real dmsetup stderr)', async () => {
    const exec = fake([[/^dmsetup status/, realFailure('dmsetup-status-no-dev')]]);
    const e = await poolStatus('lab-vg', 'thin-pool', { exec }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ThinarchiveError);
    expect(e).toMatchObject({ code: 'POOL_NOT_ACTIVE' });
    expect((e as Error).message).toMatch(/lab--vg-thin--pool-tpool/);
  });
  it('poolMessage', async () => {
    const exec = fake([[/^dmsetup message lab--vg-thin--pool-tpool 0 reserve_metadata_snap$/, () => '']]);
    await poolMessage('lab-vg', 'thin-pool', 'reserve_metadata_snap', { exec });
    expect(exec.calls).toHaveLength(1);
  });
});

describe('logical volumes', () => {
  it('createThinSnapshot: lvcreate -s -n NAME --addtag ... VG/ORIGIN, then checks the result', async () => {
    const exec = fake([[/^lvcreate /, () => ''], [LVS, () => fixture('lvs.json')]]);
    const lv = await createThinSnapshot('lab-vg', 'vol', 'snap1', ['thinarchive', 'thinarchive:base=1'], { exec });
    expect(exec.calls[0]).toBe('lvcreate -s -n snap1 --addtag thinarchive --addtag thinarchive:base=1 lab-vg/vol');
    expect(lv).toMatchObject({ name: 'snap1', origin: 'vol', isThinVolume: true, tags: ['thinarchive', 'thinarchive:base=1'] });
    // the "snapshot" found is not a snapshot of that origin
    await expect(createThinSnapshot('lab-vg', 'other', 'snap1', [], { exec })).rejects.toMatchObject({ code: 'NOT_THIN_SNAPSHOT' });
    await expect(createThinSnapshot('lab-vg', 'vol', 'snap1', ['a,b'], { exec })).rejects.toBeInstanceOf(UsageError);
  });

  it('createThinSnapshot: an existing name fails with the real lvcreate message', async () => {
    const exec = fake([[/^lvcreate /, realFailure('lvcreate-exists')]]);
    const e = await createThinSnapshot('lab-vg', 'vol', 'snap2', [], { exec }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CommandError);
    expect((e as Error).message).toMatch(/already exists in volume group/);
  });

  it('activateReadOnly: -pr first, then -ay -K, as two calls; skips what is already so', async () => {
    let exec = fake([[LVS, () => fixture('lvs.json')], [/^lvchange /, () => '']]);
    expect(await activateReadOnly('lab-vg', 'snap1', { exec })).toBe('/dev/lab-vg/snap1');
    expect(exec.calls.filter((c) => c.startsWith('lvchange'))).toEqual(['lvchange -pr lab-vg/snap1', 'lvchange -ay -K lab-vg/snap1']);
    // already read-only and active (the real report after activation): nothing to do
    exec = fake([[LVS, () => fixture('lvs-snap1-active-ro.json')]]);
    expect(await activateReadOnly('lab-vg', 'snap1', { exec })).toBe('/dev/lab-vg/snap1');
    expect(exec.calls).toHaveLength(1);
    // active and writable: refused
    exec = fake([[LVS, () => fixture('lvs.json')]]);
    const e = await activateReadOnly('lab-vg', 'vol', { exec }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UnsafeError);
    expect(e).toMatchObject({ code: 'LV_ACTIVE_WRITABLE' });
    // the caller's own report of a snapshot it has just created: no lvs, the same two changes
    exec = fake([[/^lvchange /, () => '']]);
    expect(await activateReadOnly('lab-vg', 'snap1', { exec }, { active: false, readOnly: false })).toBe('/dev/lab-vg/snap1');
    expect(exec.calls).toEqual(['lvchange -pr lab-vg/snap1', 'lvchange -ay -K lab-vg/snap1']);
  });

  it('deactivate, addTag, delTag', async () => {
    const exec = fake([[/^lvchange /, () => '']]);
    await deactivate('lab-vg', 'snap1', { exec });
    await addTag('lab-vg', 'snap1', 'thinarchive:x=1', { exec });
    await delTag('lab-vg', 'snap1', 'thinarchive:x=1', { exec });
    expect(exec.calls).toEqual(['lvchange -an lab-vg/snap1', 'lvchange --addtag thinarchive:x=1 lab-vg/snap1', 'lvchange --deltag thinarchive:x=1 lab-vg/snap1']);
    await expect(addTag('lab-vg', 'snap1', 'no spaces', { exec })).rejects.toBeInstanceOf(UsageError);
  });

  it('removeLv: with requireTag only LVs carrying it', async () => {
    const exec = fake([[LVS, () => fixture('lvs.json')], [/^lvremove /, () => '']]);
    await removeLv('lab-vg', 'snap1', { exec, requireTag: 'thinarchive' });
    expect(exec.calls.at(-1)).toBe('lvremove -y lab-vg/snap1');
    const e = await removeLv('lab-vg', 'snap2', { exec, requireTag: 'thinarchive' }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'LV_NOT_OURS' });
    expect(exec.calls.filter((c) => c.startsWith('lvremove'))).toHaveLength(1);
    await removeLv('lab-vg', 'snap2', { exec });
    expect(exec.calls.at(-1)).toBe('lvremove -y lab-vg/snap2');
    // the caller's report of that LV: its tags decide, no lvs
    const known = fake([[/^lvremove /, () => '']]);
    await removeLv('lab-vg', 'snap1', { exec: known, requireTag: 'thinarchive', known: { name: 'snap1', tags: ['thinarchive'] } });
    expect(known.calls).toEqual(['lvremove -y lab-vg/snap1']);
    expect(await removeLv('lab-vg', 'snap1', { exec: known, requireTag: 'thinarchive', known: { name: 'snap1', tags: ['other'] } }).catch((x: unknown) => x)).toMatchObject({ code: 'LV_NOT_OURS' });
    expect(known.calls).toHaveLength(1);
  });

  it('createThinSnapshot read-only and active: -pr -ay -K in the one lvcreate', async () => {
    const exec = fake([[/^lvcreate /, () => ''], [LVS, () => fixture('lvs.json')]]);
    await createThinSnapshot('lab-vg', 'vol', 'snap1', ['thinarchive'], { exec }, true);
    expect(exec.calls[0]).toBe('lvcreate -s -pr -ay -K -n snap1 --addtag thinarchive lab-vg/vol');
  });
});

describe('thin-provisioning-tools version', () => {
  it('parses the forms the tools print', () => {
    expect(parseThinToolsVersion(fixture('thin-tools-version.txt'))).toMatchObject({ text: '0.9.0', major: 0, minor: 9, patch: 0 }); // real
    expect(parseThinToolsVersion('1.0.9\n')).toMatchObject({ major: 1, minor: 0, patch: 9 });
    expect(parseThinToolsVersion('thin_delta 1.0.4\n')).toMatchObject({ major: 1, minor: 0, patch: 4 });
    expect(parseThinToolsVersion('1.1.0-rc1')).toMatchObject({ text: '1.1.0-rc1', minor: 1 });
    expect(() => parseThinToolsVersion('unknown')).toThrow(/cannot read a version/);
  });
  it('accepts 0.9.x and >= 1.0.6, refuses 1.0.0-1.0.5 and others', () => {
    for (const ok of ['0.9.0', '0.9.3', '1.0.6', '1.0.12', '1.1.0', '2.0.0']) expect(() => checkThinToolsVersion(parseThinToolsVersion(ok))).not.toThrow();
    for (const bad of ['1.0.0', '1.0.5', '0.8.5', '0.7.0']) {
      let err: unknown;
      try {
        checkThinToolsVersion(parseThinToolsVersion(bad));
      } catch (e) {
        err = e;
      }
      expect(err, bad).toBeInstanceOf(UnsafeError);
      expect(err).toMatchObject({ code: 'THIN_TOOLS_VERSION' });
    }
    expect(() => checkThinToolsVersion(parseThinToolsVersion('1.0.5'))).toThrow(/1\.0\.0 to 1\.0\.5/);
  });
  it('thinToolsVersion runs -V once per exec and tool; a failure is not remembered', async () => {
    let n = 0;
    const exec = fake([[/^thin_delta -V$/, () => (++n === 1 ? Promise.reject(new Error('boom')) : '0.9.0\n')]]);
    await expect(thinToolsVersion('thin_delta', { exec })).rejects.toThrow('boom');
    expect((await thinToolsVersion('thin_delta', { exec })).text).toBe('0.9.0');
    await thinToolsVersion('thin_delta', { exec });
    expect(n).toBe(2);
  });
});

describe('thinDelta / thinDump', () => {
  const TMETA = '/dev/mapper/lab--vg-thin--pool_tmeta';

  it('thinDelta: plain -m, output to a temporary file, read back with the streaming parser', async () => {
    const exec = fake([
      [/^thin_delta -V$/, () => '0.9.0\n'],
      [/^thin_delta -m --snap1 2 --snap2 3 \/dev\/mapper\/lab--vg-thin--pool_tmeta$/, async (_a, o) => {
        await writeFile(o.stdoutFile!, fixture('delta-snap1-snap2.xml'));
        return '';
      }],
    ]);
    const out = await thinDelta(TMETA, 2, 3, { exec, dir });
    expect(out.path.startsWith(join(dir, 'thinarchive-'))).toBe(true);
    const delta = await readThinDeltaFile(out.path);
    expect(delta.header).toMatchObject({ snap1: 2, snap2: 3, blockSizeBytes: 65536 });
    const ranges = [];
    for await (const r of delta.ranges) ranges.push(r);
    // REAL: different 100, left_only 1000+5, right_only 2000+4 (fixtures/lvm/README.md)
    expect(ranges).toEqual([
      { begin: 100, length: 1, kind: 'data' },
      { begin: 1000, length: 5, kind: 'unmap' },
      { begin: 2000, length: 4, kind: 'data' },
    ]);
    await out.remove();
    expect(existsSync(dirname(out.path))).toBe(false);
  });

  it('thinDump: -m --dev-id N to the given file', async () => {
    const exec = fake([
      [/^thin_dump -V$/, () => '0.9.0\n'],
      [/^thin_dump -m --dev-id 3 /, async (_a, o) => {
        await writeFile(o.stdoutFile!, fixture('dump-snap2.xml'));
        return '';
      }],
    ]);
    const file = join(dir, 'dump.xml');
    const out = await thinDump(TMETA, 3, { exec, outFile: file });
    expect(out.path).toBe(file);
    const dump = await readThinDumpFile(file, { devId: 3 });
    const ranges = [];
    for await (const r of dump.ranges) ranges.push(r);
    expect(ranges).toEqual([{ begin: 0, length: 4 }, { begin: 100, length: 1 }, { begin: 1005, length: 5 }, { begin: 2000, length: 4 }]);
    await out.remove();
    expect(existsSync(file)).toBe(false);
  });

  it('maps the real 0.9 failures to typed errors and removes the partial output', async () => {
    for (const [name, code] of [['delta-unknown-dev', 'THIN_DEVICE_NOT_FOUND'], ['delta-no-msnap', 'METADATA_SNAP_MISSING']] as const) {
      const exec = fake([[/^thin_delta -V$/, () => '0.9.0\n'], [/^thin_delta -m/, async (argv, o) => {
        await writeFile(o.stdoutFile!, '<superblock');
        return realFailure(name)(argv);
      }]]);
      const file = join(dir, `${name}.xml`);
      const e = await thinDelta(TMETA, 77, 3, { exec, outFile: file }).catch((x: unknown) => x);
      expect(e).toMatchObject({ code });
      expect(existsSync(file)).toBe(false);
    }
  });

  it('refuses bad thin tools before running anything else', async () => {
    const exec = fake([[/^thin_delta -V$/, () => '1.0.3\n']]);
    await expect(thinDelta(TMETA, 1, 2, { exec })).rejects.toMatchObject({ code: 'THIN_TOOLS_VERSION' });
    expect(exec.calls).toEqual(['thin_delta -V']);
    await expect(thinDelta(TMETA, -1, 2, { exec })).rejects.toBeInstanceOf(UsageError);
    await expect(thinDump(TMETA, 1.5, { exec })).rejects.toBeInstanceOf(UsageError);
  });
});
