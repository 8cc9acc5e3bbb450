/**
 * Issue 14, start-up (docs/PERFORMANCE.md, "Start-up"): a CLI command loads only what it runs.
 * --version and --help load no operation, no daemon module and none of the large dependencies;
 * `info` loads the info command and nothing of the other commands. What a run loads is recorded by
 * a module-loader hook (NODE_OPTIONS=--import); nothing here is timed.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, runOk, show, tempDir, type TempDir } from '../helpers/cli.js';

/** Packages no command needs at start-up (the S3 client, the daemon's, LVM's command runner, logging). */
const HEAVY = ['@aws-sdk', 'execa', 'pino', 'ajv', 'yaml', 'prom-client', 'nodemailer', 'cron-parser', 'sax', 'zstd-napi'];

let dir: TempDir;
let register: string;
let archive: string;

beforeAll(async () => {
  dir = await tempDir('startup');
  const hook = dir.join('hook.mjs');
  writeFileSync(hook, "export async function load(url, context, next) { process.stderr.write(`LOADED ${url}\\n`); return next(url, context); }\n");
  register = dir.join('register.mjs');
  writeFileSync(register, `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hook).href)});\n`);
  writeFileSync(dir.join('image'), randomBytes(1 << 20));
  const sent = await runOk(['send', '--image', dir.join('image'), '--to', dir.join('store'), '--json']);
  archive = JSON.parse(sent.stdout).path;
});

afterAll(async () => {
  await dir?.remove();
});

/** Which modules each file of the CLI's bundle holds (scripts/bundle.mjs writes it): "dist/x.mjs" -> inputs. */
function bundleInputs(): Map<string, string[]> {
  const meta = JSON.parse(readFileSync(join(REPO, 'dist', 'bundle-meta.json'), 'utf8')) as { outputs: Record<string, { inputs: Record<string, unknown> }> };
  return new Map(Object.entries(meta.outputs).map(([file, o]) => [file, Object.keys(o.inputs)]));
}

/**
 * Run the CLI under the hook: its output, and what it loaded: dist/ modules relative to dist/, and
 * packages by name. A file of the bundle counts as the modules it holds.
 */
async function loaded(args: string[]): Promise<{ stdout: string; own: string[]; packages: string[]; files: string[] }> {
  const r = await runOk(args, { env: { NODE_OPTIONS: `--import=${pathToFileURL(register).href}` } });
  const urls = r.stderr.split('\n').filter((l) => l.startsWith('LOADED ')).map((l) => l.slice('LOADED '.length));
  expect(urls.length, show(r)).toBeGreaterThan(0);
  const root = `${pathToFileURL(REPO).href}/`;
  const inBundle = bundleInputs();
  // what was loaded, as paths from the repository's root: bundle files stand for what they hold
  const files = urls.filter((u) => u.startsWith(root)).map((u) => u.slice(root.length));
  const paths = files.flatMap((f) => inBundle.get(f) ?? [f]);
  const own = paths.filter((p) => p.startsWith('dist/')).map((p) => p.slice('dist/'.length));
  const packages = [...new Set(paths.map((p) => /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(p)?.[1]).filter((p): p is string => !!p))];
  return { stdout: r.stdout, own, packages, files };
}

const heavyOf = (packages: string[]): string[] => packages.filter((p) => HEAVY.some((h) => p === h || p.startsWith(`${h}/`)));

describe('start-up: each command loads only what it uses', () => {
  for (const args of [['--version'], ['--help'], ['info', '--help']]) {
    it(`${args.join(' ')} loads no operation, no daemon module and no large dependency`, async () => {
      const r = await loaded(args);
      expect(r.stdout).toMatch(args[0] === '--version' ? /^\d+\.\d+\.\d+/ : /Usage: thinarchive/);
      expect(r.own).toContain('cli/main.js');
      // the CLI runs from its bundle (scripts/bundle.mjs), not from hundreds of modules
      expect(r.files).toContain('dist/thinarchive.mjs');
      expect(r.own.filter((m) => m.startsWith('commands/') || m === 'api/index.js' || (m.startsWith('daemon/') && m !== 'daemon/config-path.js'))).toEqual([]);
      expect(r.own.filter((m) => /^(archive|chain|store|target|source\/(?!chain-name|tracker-size)|nbd|format)\b/.test(m))).toEqual([]);
      expect(heavyOf(r.packages)).toEqual([]);
    });
  }

  it('info ARCHIVE loads the info command and none of the other commands, the daemon or a large dependency', async () => {
    const r = await loaded(['info', archive]);
    expect(r.stdout).toContain(`archive:     ${archive}`);
    expect(r.own.filter((m) => m.startsWith('commands/'))).toEqual(['commands/info.js']);
    expect(r.own.filter((m) => m === 'api/index.js' || (m.startsWith('daemon/') && m !== 'daemon/config-path.js'))).toEqual([]);
    expect(heavyOf(r.packages)).toEqual([]);
  });
});
