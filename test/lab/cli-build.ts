// The build of the CLI that lab tests run (in the guest and on the host), shared by the lab tests.
import { copyFileSync, existsSync, readdirSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join, relative, resolve } from 'node:path';

const ROOT = resolve(__dirname, '..', '..');

function sourcesOf(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourcesOf(p);
    return (e.name.endsWith('.ts') && !e.name.endsWith('.test.ts')) || e.name.endsWith('.cjs') ? [p] : [];
  });
}

/**
 * The build the CLI runs from: dist/ when no source is newer than its output, otherwise a fresh
 * compile of src/ into a cache directory (with worker.cjs, and links to build/ and package.json).
 * `cacheName` names the cache directory (one per test file: test files may run at the same time).
 */
export function cliBuild(cacheName = 'thinarchive-lab-send'): { dir: string; how: string } {
  // A build frozen elsewhere (a long soak that must not pick up a rebuild of dist/ halfway)
  const frozen = process.env['THINARCHIVE_LAB_DIST'];
  if (frozen) return { dir: resolve(frozen), how: `THINARCHIVE_LAB_DIST=${frozen}` };
  const src = join(ROOT, 'src');
  const outOf = (base: string, f: string): string => join(base, relative(src, f).replace(/\.ts$/, '.js'));
  const dist = join(ROOT, 'dist');
  const newer = sourcesOf(src).filter((f) => !existsSync(outOf(dist, f)) || statSync(outOf(dist, f)).mtimeMs < statSync(f).mtimeMs);
  if (newer.length === 0) return { dir: dist, how: 'dist/' };
  const cache = join(ROOT, 'node_modules', '.cache', cacheName);
  const out = join(cache, 'dist');
  rmSync(out, { recursive: true, force: true });
  const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json'), '--outDir', out], { encoding: 'utf8' });
  if (!existsSync(join(out, 'cli', 'main.js'))) throw new Error(`compiling src/ failed:\n${tsc.stdout}${tsc.stderr}`);
  copyFileSync(join(src, 'archive', 'worker.cjs'), join(out, 'archive', 'worker.cjs'));
  // dist/ finds the native addon at ../build and its version at ../package.json
  for (const f of ['build', 'package.json']) if (!existsSync(join(cache, f))) symlinkSync(join(ROOT, f), join(cache, f));
  return { dir: out, how: `a fresh compile in ${out} (dist/ is older than ${relative(ROOT, newer[0]!)}${newer.length > 1 ? ` and ${newer.length - 1} more` : ''})` };
}
