// Test helpers written in TypeScript (the lab harness test/lab/lab.ts, the test servers in
// test/servers/) for plain node scripts (the demo, the benchmarks): the one TypeScript source,
// stripped of its types by the project's own TypeScript compiler into node_modules/.cache/thinarchive-lab/
// (redone when the source changes; under node_modules so that its imports resolve to the project's
// packages) and imported from there. Its relative imports (`./x.js` of a `./x.ts`) are transpiled the
// same way and point at their outputs; node:* and npm packages are imported as they are.
// See test/lab/lab.ts for the lab API: labAvailable, runInLab, labPoolSetup, shq, dmName, ...
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join, posix } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The lab harness module. Throws a one-line Error when TypeScript is not installed (npm install). */
export function loadLab() {
  return loadTsModule('test/lab/lab.ts');
}

/**
 * The lab harness for a benchmark named `name`, or null when the lab cannot run here (then one line
 * says why and the exit code is 2).
 */
export async function labForBench(name) {
  const lab = await loadLab();
  const avail = await lab.labAvailable();
  if (avail.ok) return lab;
  console.error(`${name}: the thin-LVM lab cannot run here: ${avail.reason}`);
  process.exitCode = 2;
  return null;
}

/** A TypeScript module of this repository (path relative to its root), as a loaded ES module. */
export async function loadTsModule(relPath) {
  return import(pathToFileURL(transpiled(relPath, [])).href);
}

/** `from './x.js'` and `import('./x.js')` of a module of this repository. */
const LOCAL_IMPORT = /(\bfrom\s*|\bimport\s*\(\s*)(['"])(\.\.?\/[^'"]+)\.js\2/g;

/** The path of `relPath` transpiled (and of its local imports, first), made when missing. */
function transpiled(relPath, chain) {
  if (chain.includes(relPath)) throw new Error(`import cycle: ${[...chain, relPath].join(' -> ')}`);
  const source = join(ROOT, relPath);
  const text = readFileSync(source, 'utf8');
  const deps = new Map();
  for (const m of text.matchAll(LOCAL_IMPORT)) {
    if (!deps.has(m[3])) deps.set(m[3], transpiled(`${posix.join(posix.dirname(relPath), m[3])}.ts`, [...chain, relPath]));
  }
  // The name changes with the source and with what its imports became.
  const hash = createHash('sha256').update(text).update([...deps.values()].join('\0')).digest('hex').slice(0, 16);
  const out = join(ROOT, 'node_modules', '.cache', 'thinarchive-lab', `${basename(relPath, '.ts')}-${hash}.mjs`);
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
    }).outputText.replace(LOCAL_IMPORT, (all, pre, q, spec) => `${pre}${q}./${basename(deps.get(spec))}${q}`);
    mkdirSync(dirname(out), { recursive: true });
    const tmp = `${out}.${process.pid}.tmp`;
    writeFileSync(tmp, `// generated from ${relPath} by scripts/lib/lab.mjs: do not edit\n${js}`);
    renameSync(tmp, out); // whole or not at all, also with two scripts starting at once
  }
  return out;
}
