#!/usr/bin/env node
/**
 * The CLI's bundle (part of `npm run build`, after tsc): dist/cli/main.js and what it imports, as
 * dist/thinarchive.mjs plus one chunk file per lazily imported part (dist/bundle-*.mjs), so that a
 * command starts by reading a few files instead of hundreds of modules (execa alone is 60 files). It
 * matters most where opening a file is slow: in the thin-LVM lab (user-mode Linux over hostfs) a CLI
 * call that runs LVM commands started 1.0-1.5 s sooner (docs/PERFORMANCE.md, "Start-up").
 *
 * Every file of the bundle sits directly in dist/, as src/paths.ts does, so that the package root is
 * one level up from each (native addon, package.json, worker script, bin/). Packages used only by the
 * daemon or loaded once per process (the S3 client, pino, ajv, yaml, prom-client, cron-parser,
 * nodemailer) and those with native or wasm parts loaded by path (zstd-napi, xxhash-wasm) stay in
 * node_modules. The library API (dist/api/index.js) is not bundled.
 *
 * dist/bundle-meta.json (esbuild's metafile) says which modules each file holds: the start-up test
 * reads it to check that a command loads only what it uses.
 */
import { build } from 'esbuild';
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

export const EXTERNAL = ['@aws-sdk/*', '@smithy/*', 'zstd-napi', 'zstd-napi/*', 'xxhash-wasm', 'pino', 'ajv', 'ajv/*', 'yaml', 'prom-client', 'cron-parser', 'nodemailer', '*.node'];

// The chunks of earlier builds (their names are content hashes): nothing imports them any more.
for (const f of readdirSync(join(ROOT, 'dist'))) if (/^bundle-[A-Z0-9]+\.mjs$/.test(f)) rmSync(join(ROOT, 'dist', f));

const result = await build({
  entryPoints: { thinarchive: join(ROOT, 'dist', 'cli', 'main.js') },
  absWorkingDir: ROOT,
  outdir: join(ROOT, 'dist'),
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  outExtension: { '.js': '.mjs' },
  chunkNames: 'bundle-[hash]',
  external: EXTERNAL,
  // CommonJS packages inside an ES module bundle call require() for node's built-ins
  banner: { js: "import { createRequire as __taCreateRequire } from 'node:module'; const require = __taCreateRequire(import.meta.url);" },
  metafile: true,
  logLevel: 'warning',
  legalComments: 'none',
});
writeFileSync(join(ROOT, 'dist', 'bundle-meta.json'), `${JSON.stringify(result.metafile)}\n`);
