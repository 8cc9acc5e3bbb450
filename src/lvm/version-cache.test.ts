import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { thinToolsVersion } from './tools.js';
import { cachedToolVersion, resolveBinary, VERSION_CACHE_FILE } from './version-cache.js';

let dir: string;
let savedPath: string | undefined;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ta-vcache-'));
  savedPath = process.env.PATH;
});
afterEach(async () => {
  process.env.PATH = savedPath;
  await rm(dir, { recursive: true, force: true });
});

async function tool(binDir: string, body: string): Promise<string> {
  const p = join(binDir, 'thin_delta');
  await writeFile(p, `#!/bin/sh\n${body}\n`);
  await chmod(p, 0o755);
  return p;
}

describe('the tool version cache', () => {
  it('asks once per binary, and again when the binary changes', async () => {
    const bin = join(dir, 'bin');
    await mkdir(bin);
    const path = await tool(bin, 'echo 0.9.0');
    process.env.PATH = `${join(dir, 'nothing-here')}:${bin}`;
    expect((await resolveBinary('thin_delta'))?.path).toBe(path);
    const state = join(dir, 'state');
    let asked = 0;
    const ask = async (): Promise<string> => { asked++; return '0.9.0\n'; };
    expect(await cachedToolVersion(state, 'thin_delta', ask)).toBe('0.9.0');
    expect(await cachedToolVersion(state, 'thin_delta', ask)).toBe('0.9.0');
    expect(asked).toBe(1);
    const rec = JSON.parse(await readFile(join(state, VERSION_CACHE_FILE), 'utf8'));
    expect(rec).toMatchObject({ version: 1, tools: { thin_delta: { path, output: '0.9.0', size: expect.any(Number), ino: expect.any(Number) } } });
    // replaced (an upgrade): asked again, and the new answer kept
    await tool(bin, 'echo 1.0.9 # upgraded');
    const ask2 = async (): Promise<string> => { asked++; return '1.0.9\n'; };
    expect(await cachedToolVersion(state, 'thin_delta', ask2)).toBe('1.0.9');
    expect(await cachedToolVersion(state, 'thin_delta', ask2)).toBe('1.0.9');
    expect(asked).toBe(2);
  });

  it('asks every time when the binary is not on PATH, or the file is unreadable; never fails for the file', async () => {
    process.env.PATH = join(dir, 'empty');
    let asked = 0;
    const ask = async (): Promise<string> => { asked++; return '0.9.0'; };
    await cachedToolVersion(join(dir, 'state'), 'thin_delta', ask);
    await cachedToolVersion(join(dir, 'state'), 'thin_delta', ask);
    expect(asked).toBe(2);
    const bin = join(dir, 'bin2');
    await mkdir(bin);
    await tool(bin, 'echo 0.9.0');
    process.env.PATH = bin;
    await mkdir(join(dir, 'state'));
    await writeFile(join(dir, 'state', VERSION_CACHE_FILE), '{not json');
    expect(await cachedToolVersion(join(dir, 'state'), 'thin_delta', ask)).toBe('0.9.0');
    expect(asked).toBe(3);
    // a state directory that cannot be made (a file in the way): still answered
    await writeFile(join(dir, 'afile'), '');
    expect(await cachedToolVersion(join(dir, 'afile', 'state'), 'thin_delta', ask)).toBe('0.9.0');
  });

  it('thinToolsVersion never keeps what a fake exec said', async () => {
    const bin = join(dir, 'bin3');
    await mkdir(bin);
    await tool(bin, 'echo 0.9.0');
    process.env.PATH = bin;
    const fake = async (argv: readonly string[]): Promise<string> => (argv[1] === '-V' ? '1.0.3\n' : '');
    await expect(thinToolsVersion('thin_delta', { exec: fake, stateDir: join(dir, 'state') })).rejects.toMatchObject({ code: 'THIN_TOOLS_VERSION' });
    await expect(readFile(join(dir, 'state', VERSION_CACHE_FILE), 'utf8')).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
