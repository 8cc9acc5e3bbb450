// Layers import downward only: base -> format -> archive -> lvm/store/target/source -> commands -> cli.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = resolve(__dirname, '..', 'src');
const RANK: Record<string, number> = { '': 0, format: 1, archive: 2, lvm: 3, store: 3, target: 3, source: 3, commands: 4, cli: 5 };

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

describe('layering', () => {
  it('every import in src/ goes to the same or a lower layer, and same-rank layers do not import each other', () => {
    const violations: string[] = [];
    for (const f of files(SRC)) {
      const from = layerOf(f);
      expect(RANK[from], `unknown layer of ${f}`).toBeDefined();
      const text = readFileSync(f, 'utf8');
      for (const m of text.matchAll(/(?:from|import\()\s*['"](\.[^'"]+)['"]/g)) {
        const target = resolve(dirname(f), m[1]);
        if (!target.startsWith(SRC)) continue;
        const to = layerOf(target);
        if (RANK[to] > RANK[from] || (RANK[to] === RANK[from] && to !== from)) violations.push(`${relative(SRC, f)} -> ${relative(SRC, target)}`);
      }
    }
    expect(violations).toEqual([]);
  });

  it('only the CLI prints or exits', () => {
    const offenders = files(SRC)
      .filter((f) => layerOf(f) !== 'cli')
      .filter((f) => /console\.(log|error|warn)|process\.exit\(|process\.(stdout|stderr)\.write/.test(readFileSync(f, 'utf8')))
      .map((f) => relative(SRC, f));
    expect(offenders).toEqual([]);
  });
});
