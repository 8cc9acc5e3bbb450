// Layers import downward only (docs/ARCHITECTURE.md):
//   base -> format | crypto -> archive -> lvm -> store | target | source | nbd -> chain -> commands -> api -> daemon -> cli
// store, target, source and nbd share a rank and do not import each other; no command imports another;
// no import cycles; only the CLI prints or exits; the CLI calls the library through src/api (and the
// daemon through src/daemon) only; the daemon uses src/api and the base layer only.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = resolve(__dirname, '..', 'src');
const RANK: Record<string, number> = {
  '': 0, format: 1, crypto: 1, archive: 2, lvm: 3, store: 4, target: 4, source: 4, nbd: 4, chain: 5, commands: 6, api: 7, daemon: 8, cli: 9,
};

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : /\.(ts|cjs)$/.test(n) && !n.endsWith('.test.ts') ? [p] : [];
  });
}

function layerOf(file: string): string {
  const rel = relative(SRC, file).split('/');
  return rel.length > 1 ? rel[0] : '';
}

/** Every relative import of a file in src/, resolved to the imported .ts file. */
function importsOf(f: string): string[] {
  const text = readFileSync(f, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/(?:from|import\()\s*['"](\.[^'"]+)['"]/g)) {
    const target = resolve(dirname(f), m[1]).replace(/\.js$/, '.ts');
    if (target.startsWith(SRC)) out.push(target);
  }
  return out;
}

const ALL = files(SRC);

describe('layering', () => {
  it('every import in src/ goes to the same or a lower layer, and same-rank layers do not import each other', () => {
    const violations: string[] = [];
    for (const f of ALL) {
      const from = layerOf(f);
      expect(RANK[from], `unknown layer of ${f}`).toBeDefined();
      for (const target of importsOf(f)) {
        const to = layerOf(target);
        if (RANK[to] > RANK[from] || (RANK[to] === RANK[from] && to !== from)) violations.push(`${relative(SRC, f)} -> ${relative(SRC, target)}`);
      }
    }
    expect(violations).toEqual([]);
  });

  it('no command module imports another; the CLI reaches the library only through src/api and src/daemon; the daemon only through src/api', () => {
    const violations: string[] = [];
    for (const f of ALL) {
      for (const target of importsOf(f)) {
        const [from, to] = [layerOf(f), layerOf(target)];
        if (from === 'commands' && to === 'commands') violations.push(`${relative(SRC, f)} -> ${relative(SRC, target)}`);
        if (from === 'cli' && to !== 'cli' && to !== 'api' && to !== 'daemon') violations.push(`${relative(SRC, f)} -> ${relative(SRC, target)}`);
        if (from === 'daemon' && to !== 'daemon' && to !== 'api' && to !== '') violations.push(`${relative(SRC, f)} -> ${relative(SRC, target)}`);
      }
    }
    expect(violations).toEqual([]);
  });

  it('there is no import cycle', () => {
    const graph = new Map(ALL.map((f) => [f, importsOf(f).filter((t) => ALL.includes(t))]));
    const state = new Map<string, 'open' | 'done'>();
    const cycles: string[] = [];
    const visit = (f: string, path: string[]): void => {
      if (state.get(f) === 'done') return;
      if (state.get(f) === 'open') {
        cycles.push([...path.slice(path.indexOf(f)), f].map((p) => relative(SRC, p)).join(' -> '));
        return;
      }
      state.set(f, 'open');
      for (const t of graph.get(f) ?? []) visit(t, [...path, f]);
      state.set(f, 'done');
    };
    for (const f of ALL) visit(f, []);
    expect(cycles).toEqual([]);
  });

  it('only the CLI prints or exits', () => {
    const offenders = ALL
      .filter((f) => layerOf(f) !== 'cli')
      .filter((f) => /console\.(log|error|warn)|process\.exit\(|process\.(stdout|stderr)\.write/.test(readFileSync(f, 'utf8')))
      .map((f) => relative(SRC, f));
    expect(offenders).toEqual([]);
  });
});
