/**
 * The README's library example, run exactly as written: the TypeScript block between the
 * `library-example` markers is transpiled, placed inside the package (so that `import ... from
 * 'thinarchive'` resolves through package.json "exports" to the built dist/, as for a user), and run
 * in a child node process.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import ts from 'typescript';
import { afterAll, describe, expect, it } from 'vitest';
import { CLAIM_NAME, LEASE_NAME, REPO, sha256, tempDir } from '../helpers/cli.js';
import { noiseBytes } from '../helpers/volume-model.js';

function readmeExample(): string {
  const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
  const m = /<!-- library-example[^>]*-->\s*```ts\n([\s\S]*?)```\s*<!-- \/library-example -->/.exec(readme);
  if (!m) throw new Error('README.md has no library-example block');
  return m[1];
}

describe('README library example', () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('sends, applies (same sha256), verifies, and a cancelled send leaves nothing', async () => {
    const work = await tempDir('api');
    dirs.push(work.path);
    const image = work.join('disk.img');
    writeFileSync(image, noiseBytes(64 << 20));
    const store = work.join('store');
    const copy = work.join('copy.img');

    // Inside the package, so that 'thinarchive' resolves to this package by its own name.
    const here = mkdtempSync(join(REPO, 'test', 'api', '.example-'));
    dirs.push(here);
    const js = ts.transpileModule(readmeExample(), { compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 } }).outputText;
    writeFileSync(join(here, 'example.mjs'), js);
    const run = spawnSync(process.execPath, ['--input-type=module', '-e',
      `const { example } = await import(${JSON.stringify(join(here, 'example.mjs'))}); await example(...${JSON.stringify([image, store, copy])});`],
    { encoding: 'utf8', timeout: 120_000 });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/^archive [0-9a-f-]{36}: \d+ bytes of data, \d+ bytes written$/m);
    expect(run.stdout).toContain(`${copy} holds archive`);
    expect(run.stdout).toContain('send cancelled, nothing written');

    expect(await sha256(copy)).toBe(await sha256(image));
    // The cancelled send left no archive and no temporary file: one chain with its one archive.
    const files = readdirSync(store, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => e.name);
    expect(files.filter((n) => n.endsWith('.tna'))).toHaveLength(1);
    expect(files.filter((n) => !n.endsWith('.tna') && !CLAIM_NAME.test(n) && !LEASE_NAME.test(n))).toEqual([]);
    // One claim, the sent archive's: the cancelled send claimed nothing.
    expect(files.filter((n) => CLAIM_NAME.test(n))).toHaveLength(1);
  });
});
