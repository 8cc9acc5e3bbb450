// Test helpers written in TypeScript (the lab harness test/lab/lab.ts, the test servers in
// test/servers/) for plain node scripts (the demo, the benchmarks): the one TypeScript source,
// stripped of its types by the project's own TypeScript compiler into node_modules/.cache/thinarchive-lab/
// (redone when the source changes; under node_modules so that its imports resolve to the project's
// packages) and imported from there. Only single-file modules that import node:* and npm packages.
// See test/lab/lab.ts for the lab API: labAvailable, runInLab, labPoolSetup, shq, dmName, ...
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The lab harness module. Throws a one-line Error when TypeScript is not installed (npm install). */
export function loadLab() {
  return loadTsModule('test/lab/lab.ts');
}

/** A TypeScript module of this repository (path relative to its root), as a loaded ES module. */
export async function loadTsModule(relPath) {
  const source = join(ROOT, relPath);
  const text = readFileSync(source, 'utf8');
  const base = relPath.replace(/^.*\//, '').replace(/\.ts$/, '');
  const out = join(ROOT, 'node_modules', '.cache', 'thinarchive-lab', `${base}-${createHash('sha256').update(text).digest('hex').slice(0, 16)}.mjs`);
  if (!existsSync(out)) {
    let ts;
    try {
      ts = createRequire(import.meta.url)('typescript');
    } catch {
      throw new Error('the TypeScript compiler is not installed here: run npm install (with dev dependencies) first');
    }
    const js = ts.transpileModule(text, {
      fileName: source,
      compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext, verbatimModuleSyntax: false },
    }).outputText;
    mkdirSync(dirname(out), { recursive: true });
    const tmp = `${out}.${process.pid}.tmp`;
    writeFileSync(tmp, `// generated from ${relPath} by scripts/lib/lab.mjs: do not edit\n${js}`);
    renameSync(tmp, out); // whole or not at all, also with two scripts starting at once
  }
  return import(pathToFileURL(out).href);
}
