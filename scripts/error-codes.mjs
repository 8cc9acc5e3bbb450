// Writes README.md's "Error codes" table from the registry (src/error-codes.ts, built into dist/).
// Run after `npm run build` (or `npx tsc -p tsconfig.json`): node scripts/error-codes.mjs
// src/error-codes.test.ts fails when the README and the registry differ.
import { readFileSync, writeFileSync } from 'node:fs';
import { errorCodeTable } from '../dist/error-codes.js';

const path = new URL('../README.md', import.meta.url);
const readme = readFileSync(path, 'utf8');
const m = /\n## Error codes\n([\s\S]*?)(?=\n## )/.exec(readme);
if (!m) throw new Error('README.md has no "## Error codes" section (add one after "## Exit codes")');
const body = m[1];
const lines = body.split('\n');
const first = lines.findIndex((l) => l.startsWith('|'));
const last = lines.length - 1 - [...lines].reverse().findIndex((l) => l.startsWith('|'));
const next = first < 0 ? [...lines.slice(0, -1), errorCodeTable(), ''] : [...lines.slice(0, first), errorCodeTable(), ...lines.slice(last + 1)];
writeFileSync(path, readme.replace(body, next.join('\n')));
