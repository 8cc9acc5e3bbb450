/**
 * Where the package's own files are: its root directory (package.json, bin/, build/ for the native
 * addon, dist/ for the worker script). This module sits directly in dist/, as does every file of the
 * CLI's bundle (dist/thinarchive.mjs and its chunks, scripts/bundle.mjs), so the root is one level up
 * from it in both layouts.
 */
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

export const PACKAGE_ROOT: string = fileURLToPath(new URL('..', import.meta.url));

/** A path inside the package, e.g. packagePath('bin', 'thinarchive'). */
export function packagePath(...parts: string[]): string {
  return join(PACKAGE_ROOT, ...parts);
}
