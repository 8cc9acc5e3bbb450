/**
 * Where the CLI starts (bin/thinarchive, and the lab's launcher): the build's bundle,
 * dist/thinarchive.mjs (scripts/bundle.mjs: a few files to read instead of hundreds of modules), or
 * its modules, dist/cli/main.js, when they are newer (tsc was run without the bundle step) or there is
 * no bundle.
 */
import { statSync } from 'node:fs';

type Main = (argv: string[]) => Promise<number>;

function mtime(u: URL): number {
  try {
    return statSync(u).mtimeMs;
  } catch {
    return -1;
  }
}

/** The CLI's `main`, from the bundle or the modules of the build this file belongs to. */
export async function loadMain(): Promise<Main> {
  const bundle = new URL('../thinarchive.mjs', import.meta.url);
  const modules = new URL('./main.js', import.meta.url);
  const m = (await import(mtime(bundle) >= mtime(modules) ? bundle.href : modules.href)) as { main: Main };
  return m.main;
}
