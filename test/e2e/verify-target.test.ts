/**
 * The replica's side of `verify VG/LV --against TARGET --host ssh://…` (docs/SYNC.md, the hash
 * exchange), run as the remote host runs it: `thinarchive verify-target` through bin/thinarchive. Its
 * output must be the hello line, then the xxh64 of each (sampled) block in block order, then the
 * hashed line: checked against hashes computed here from the image's bytes, for a sparse image whose
 * last block is short, in full and sampled. The whole exchange with a thin LV source runs in the lab
 * (test/lab/sync.test.ts). Also: the option errors of verify --host, each one line and exit 2.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sampledBlocks } from '../../src/chain/hash-exchange.js';
import { initHash, xxh64 } from '../../src/format/hash.js';
import { BIN, expectFailure, run, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, prng, textBytes } from '../helpers/volume-model.js';

const KiB = 1024;
const BS = 64 * KiB;
/** 8 MiB and 12 KiB: the last block is 12 KiB long. */
const SIZE = 8 * 1024 * KiB + 12 * KiB;
const BLOCKS = Math.ceil(SIZE / BS);

/** Run the CLI, collecting raw standard output. */
function runRaw(args: string[]): Promise<{ code: number | null; out: Buffer; err: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    c.stdout.on('data', (b: Buffer) => out.push(b));
    c.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    c.on('error', reject);
    c.on('close', (code) => resolve({ code, out: Buffer.concat(out), err }));
  });
}

/** Split the exchange: hello line, `n` hashes, hashed line. */
function parseExchange(out: Buffer, n: number): { hello: Record<string, unknown>; hashes: bigint[]; hashed: Record<string, unknown> } {
  const nl = out.indexOf(10);
  const hello = JSON.parse(out.subarray(0, nl).toString());
  const start = nl + 1;
  const hashes: bigint[] = [];
  for (let i = 0; i < n; i++) hashes.push(out.readBigUInt64LE(start + i * 8));
  const rest = out.subarray(start + n * 8).toString();
  expect(rest.endsWith('\n')).toBe(true);
  expect(rest.trim().split('\n')).toHaveLength(1);
  return { hello, hashes, hashed: JSON.parse(rest) };
}

describe('verify-target: the replica side of verify --host', () => {
  let tmp: TempDir;
  let img: string;
  let expected: bigint[];
  beforeAll(async () => {
    await initHash();
    tmp = await tempDir('verify-target');
    img = tmp.join('replica.img');
    // Sparse: data in the first 3 MiB and from 5 MiB + 64 KiB to the end; a hole between.
    const fd = openSync(img, 'w');
    const rand = prng(5);
    writeSync(fd, textBytes(rand, 3 * 1024 * KiB), 0, 3 * 1024 * KiB, 0);
    const tail = noiseBytes(SIZE - (5 * 1024 * KiB + BS));
    writeSync(fd, tail, 0, tail.length, 5 * 1024 * KiB + BS);
    closeSync(fd);
    const bytes = readFileSync(img);
    expect(bytes.length).toBe(SIZE);
    expected = [];
    for (let b = 0; b < BLOCKS; b++) expected.push(xxh64(bytes.subarray(b * BS, Math.min((b + 1) * BS, SIZE))));
  });
  afterAll(async () => {
    await tmp?.remove();
  });

  it('writes the hello line, the xxh64 of every block in order (holes as zeroes), and the hashed line', async () => {
    const r = await runRaw(['verify-target', img, '--block-size', String(BS), '--volume-size', String(SIZE)]);
    expect(r.code, r.err).toBe(0);
    const x = parseExchange(r.out, BLOCKS);
    expect(x.hello).toMatchObject({ protocol: 'thinarchive-sync', version: 1, target: img, targetKind: 'image', targetSize: SIZE, blockSize: BS, volumeSize: SIZE, blocks: BLOCKS, state: null });
    expect(x.hello.sample).toBeUndefined();
    expect(x.hashes).toEqual(expected);
    expect(x.hashed).toMatchObject({ hashedBlocks: expect.any(Number), bytesRead: expect.any(Number) });
    // The hole (3 MiB .. 5 MiB + 64 KiB) is not read when the file system reports it.
    expect(x.hashed.bytesRead as number).toBeLessThanOrEqual(SIZE);
    expect(x.hashed.bytesRead as number).toBeGreaterThanOrEqual(SIZE - (2 * 1024 * KiB + BS));
  });

  it('sampled: only the blocks the seeded selection picks, the same the other side computes', async () => {
    const sel = sampledBlocks(1234, 10);
    const picked = Array.from({ length: BLOCKS }, (_, b) => b).filter(sel);
    // About 10% of the blocks, a different set for another seed.
    expect(picked.length).toBeGreaterThan(BLOCKS * 0.03);
    expect(picked.length).toBeLessThan(BLOCKS * 0.2);
    const other = Array.from({ length: BLOCKS }, (_, b) => b).filter(sampledBlocks(1235, 10));
    expect(other).not.toEqual(picked);
    const r = await runRaw(['verify-target', img, '--block-size', String(BS), '--volume-size', String(SIZE), '--sample', '10', '--seed', '1234']);
    expect(r.code, r.err).toBe(0);
    const x = parseExchange(r.out, picked.length);
    expect(x.hello).toMatchObject({ sample: { seed: 1234, percent: 10 } });
    expect(x.hashes).toEqual(picked.map((b) => expected[b]));
    expect(x.hashed.hashedBlocks as number).toBeLessThanOrEqual(picked.length);
  });

  it('the selection keeps its share over a large volume and is all blocks at 100%', () => {
    const n = 200_000;
    for (const pct of [0.5, 5, 50]) {
      const sel = sampledBlocks(7, pct);
      let k = 0;
      for (let b = 0; b < n; b++) if (sel(b)) k++;
      expect(k / n).toBeGreaterThan((pct / 100) * 0.9);
      expect(k / n).toBeLessThan((pct / 100) * 1.1);
    }
    // Past 2^32 blocks (a huge volume at 4 KiB) the high bits count too.
    const hi = sampledBlocks(7, 50);
    const lowSet = Array.from({ length: 64 }, (_, i) => hi(i));
    const highSet = Array.from({ length: 64 }, (_, i) => hi(i + 0x100000000));
    expect(highSet).not.toEqual(lowSet);
    expect(sampledBlocks(9, 100)(12345)).toBe(true);
  });

  it('verify --host: wrong combinations are refused in one line, exit 2', async () => {
    expect(expectFailure(await run(['verify', 'vg/lv', '--against', 'vg/rep', '--host', 'root@standby']), 2)).toMatch(/--host must be an ssh:\/\/ URL/);
    expect(expectFailure(await run(['verify', 'vg/lv', '--against', 'vg/rep', '--host', 'ssh://standby', '--changed-only']), 2)).toMatch(/--changed-only does not go with --host/);
    expect(expectFailure(await run(['verify', 'vg/lv', '--against', 'vg/rep', '--host', 'ssh://standby', '--seed', '3']), 2)).toMatch(/--seed goes with --sample/);
    expect(expectFailure(await run(['verify', 'vg/lv', '--host', 'ssh://standby']), 2)).toMatch(/--host goes with --against TARGET/);
    expect(expectFailure(await run(['verify', tmp.join('store'), '--against', img, '--chain', 'x']), 2)).toMatch(/--chain goes with --host/);
    expect(expectFailure(await run(['verify-target', img, '--block-size', '64K', '--volume-size', '1M', '--sample', '10']), 2)).toMatch(/--sample and --seed go together/);
  });
});
