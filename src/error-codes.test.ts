// The registry (src/error-codes.ts) against the code: every code used in src/ is declared, every
// declared code is used, each error is raised with its declared exit class, and the README's
// "Error codes" table is the registry's.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { declarationOf, ERROR_FAMILIES, ERRORS, errorCodeTable, exitClassOf, type ExitClass } from './error-codes.js';
import { CommandError, FormatError, ioError, ThinarchiveError, UnsafeError, UsageError } from './errors.js';

const SRC = resolve(__dirname);
const README = resolve(__dirname, '..', 'README.md');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : /\.(ts|cjs)$/.test(n) && !n.endsWith('.test.ts') ? [p] : [];
  });
}

/** The exit class each error class gives; the index of its code argument. */
const CLASSES: Record<string, { exit?: ExitClass; codeArg: number }> = {
  ThinarchiveError: { codeArg: 0 },
  UsageError: { exit: 'usage', codeArg: 1 },
  FormatError: { exit: 'verify', codeArg: 0 },
  UnsafeError: { exit: 'unsafe', codeArg: 0 },
  CommandError: { exit: 'runtime', codeArg: 0 },
};
/** Helpers that take a code as their first argument (`this.fail(code, ...)`, `this.error(code, ...)`). */
const HELPERS = new Set(['fail', 'error']);
const CODE_SHAPE = /^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$/;

interface Use { code: string; where: string; exit: ExitClass | 'any' }

function literalsIn(node: ts.Node): string[] {
  if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) return CODE_SHAPE.test(node.text) ? [node.text] : [];
  const out: string[] = [];
  node.forEachChild((c) => { out.push(...literalsIn(c)); });
  return out;
}

/** Every string literal in a code position in src/, with the exit class its site gives. */
function scan(): { uses: Use[]; allLiterals: Map<string, string[]> } {
  const uses: Use[] = [];
  const allLiterals = new Map<string, string[]>();
  for (const f of files(SRC)) {
    const rel = relative(SRC, f);
    const sf = ts.createSourceFile(f, readFileSync(f, 'utf8'), ts.ScriptTarget.Latest, true);
    const where = (n: ts.Node): string => `${rel}:${sf.getLineAndCharacterOfPosition(n.getStart(sf)).line + 1}`;
    const visit = (n: ts.Node): void => {
      if ((ts.isStringLiteral(n) || ts.isNoSubstitutionTemplateLiteral(n)) && rel !== 'error-codes.ts') {
        const at = allLiterals.get(n.text) ?? [];
        at.push(where(n));
        allLiterals.set(n.text, at);
      }
      if (ts.isNewExpression(n) && ts.isIdentifier(n.expression) && CLASSES[n.expression.text]) {
        const cls = CLASSES[n.expression.text]!;
        const args = n.arguments ?? [];
        const codeArg = args[cls.codeArg];
        let exit: ExitClass | 'any' = cls.exit ?? 'runtime';
        if (!cls.exit && args[2]) exit = ts.isStringLiteral(args[2]) ? (args[2].text as ExitClass) : 'any';
        if (codeArg) for (const code of literalsIn(codeArg)) uses.push({ code, where: where(n), exit });
        else if (n.expression.text === 'UsageError') uses.push({ code: 'USAGE', where: where(n), exit });
      }
      if (ts.isCallExpression(n) && ts.isPropertyAccessExpression(n.expression) && HELPERS.has(n.expression.name.text) && n.arguments[0]) {
        for (const code of literalsIn(n.arguments[0])) uses.push({ code, where: where(n), exit: 'any' });
      }
      n.forEachChild(visit);
    };
    visit(sf);
  }
  return { uses, allLiterals };
}

describe('error-code registry', () => {
  const { uses, allLiterals } = scan();

  it('finds the error sites (the scan works)', () => {
    expect(uses.length).toBeGreaterThan(250);
    expect(uses.some((u) => u.code === 'POOL_FAILED')).toBe(true);
  });

  it('every code raised in src/ is declared', () => {
    const undeclared = uses.filter((u) => declarationOf(u.code) === undefined).map((u) => `${u.where}: ${u.code}`);
    expect(undeclared).toEqual([]);
  });

  it('every error is raised with the exit class its code declares', () => {
    const wrong = uses
      .filter((u) => u.exit !== 'any' && exitClassOf(u.code) !== u.exit)
      .map((u) => `${u.where}: ${u.code} raised as ${u.exit}, declared ${exitClassOf(u.code)}`);
    expect(wrong).toEqual([]);
  });

  it('every declared code is used in src/', () => {
    const unused = Object.keys(ERRORS).filter((c) => !allLiterals.has(c));
    expect(unused).toEqual([]);
    const text = files(SRC).filter((f) => !f.endsWith('error-codes.ts')).map((f) => readFileSync(f, 'utf8')).join('\n');
    const producers: Record<keyof typeof ERROR_FAMILIES, RegExp> = { IO_: /`IO_\$\{/, S3_: /\bs3Code\(/ };
    for (const [fam, re] of Object.entries(producers)) expect(re.test(text), `family ${fam} has no producer`).toBe(true);
  });

  it('no code is declared by name inside the IO_<ERRNO> family', () => {
    for (const code of Object.keys(ERRORS)) {
      expect(code, 'IO_ is a family only').not.toMatch(/^IO_/);
    }
  });

  it('the classes take their exit class from the registry', () => {
    expect(new UnsafeError('POOL_FAILED', 'x').exitClass).toBe('unsafe');
    expect(new ThinarchiveError('POOL_FAILED', 'x').exitClass).toBe('unsafe');
    expect(new ThinarchiveError('LV_NOT_FOUND', 'x').exitClass).toBe('runtime');
    expect(new UsageError('x').code).toBe('USAGE');
    expect(new UsageError('x').exitClass).toBe('usage');
    expect(new FormatError('TRUNCATED', 'x').exitClass).toBe('verify');
    expect(new CommandError('LVM_COMMAND', 'x', [], 1, '').exitClass).toBe('runtime');
    const io = ioError(Object.assign(new Error('gone'), { code: 'ENOENT' }), 'reading x');
    expect(io).toMatchObject({ code: 'IO_ENOENT', exitClass: 'runtime', message: 'reading x: no such file or directory' });
    expect(ThinarchiveError.prefixed(new UnsafeError('TARGET_BUSY', 'busy'), 'merge refused: ')).toMatchObject({ code: 'TARGET_BUSY', exitClass: 'unsafe', message: 'merge refused: busy' });
  });

  it('the compiler rejects an undeclared code and a mismatching exit class', () => {
    // @ts-expect-error: not a declared code
    void new ThinarchiveError('NO_SUCH_CODE', 'x');
    // @ts-expect-error: POOL_FAILED is declared 'unsafe'
    void new ThinarchiveError('POOL_FAILED', 'x', 'runtime');
    // @ts-expect-error: TRUNCATED is a 'verify' code, not 'unsafe'
    void new UnsafeError('TRUNCATED', 'x');
    // @ts-expect-error: usage codes only
    void new UsageError('x', 'LV_NOT_FOUND');
  });

  it("README's Error codes table is the registry's", () => {
    const readme = readFileSync(README, 'utf8');
    const m = /\n## Error codes\n([\s\S]*?)(?=\n## )/.exec(readme);
    expect(m, 'README has an "## Error codes" section').not.toBeNull();
    const table = m![1]!.split('\n').filter((l) => l.startsWith('|')).join('\n');
    expect(table).toBe(errorCodeTable());
  });
});
