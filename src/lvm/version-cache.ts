/**
 * What `thin_delta -V` / `thin_dump -V` printed, remembered across processes in
 * `<stateDir>/tool-versions.json` for the binary the command runs (the first match on PATH, then its
 * device, inode, size and modification time), so a one-shot send does not start the tool once more
 * only to ask its version: a process costs 0.1-0.5 s in user-mode Linux. Any other binary, or any
 * change to it, is a miss (the tool is asked, and the answer replaces the entry). Format:
 * docs/LVM-METADATA.md section 11. Failures to read or write the file are misses, never errors.
 */
import { constants } from 'node:fs';
import { access, readFile, stat } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { makeDirs, writeFileAtomic } from '../fsutil.js';

export const VERSION_CACHE_FILE = 'tool-versions.json';

/** One entry: the binary's identity and the tool's own output (trimmed). */
export interface ToolVersionEntry {
  path: string;
  dev: number;
  ino: number;
  size: number;
  mtimeNs: string;
  output: string;
}

interface CacheFile {
  version: 1;
  tools: Record<string, ToolVersionEntry>;
}

/** The binary `name` runs as: the first executable file of that name on PATH, its identity; null when none. */
export async function resolveBinary(name: string, path = process.env.PATH ?? ''): Promise<Omit<ToolVersionEntry, 'output'> | null> {
  for (const dir of path.split(delimiter)) {
    if (dir === '') continue;
    const p = join(dir, name);
    try {
      const st = await stat(p, { bigint: true });
      if (!st.isFile()) continue;
      await access(p, constants.X_OK);
      return { path: p, dev: Number(st.dev), ino: Number(st.ino), size: Number(st.size), mtimeNs: String(st.mtimeNs) };
    } catch {
      // not here
    }
  }
  return null;
}

async function readCache(file: string): Promise<CacheFile> {
  try {
    const v = JSON.parse(await readFile(file, 'utf8')) as CacheFile;
    if (v && v.version === 1 && v.tools && typeof v.tools === 'object') return v;
  } catch {
    // missing or unreadable: empty
  }
  return { version: 1, tools: {} };
}

const same = (a: Omit<ToolVersionEntry, 'output'>, b: ToolVersionEntry): boolean =>
  a.path === b.path && a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && typeof b.output === 'string';

/**
 * The version output of `tool`: from the cache when the binary on PATH is the one recorded, else from
 * `ask()` (then recorded). Without a binary on PATH, `ask()` decides (its failure says the tool is missing).
 */
export async function cachedToolVersion(stateDir: string, tool: string, ask: () => Promise<string>): Promise<string> {
  const bin = await resolveBinary(tool);
  if (!bin) return ask();
  const file = join(stateDir, VERSION_CACHE_FILE);
  const cache = await readCache(file);
  const hit = cache.tools[tool];
  if (hit && same(bin, hit)) return hit.output;
  const output = (await ask()).trim();
  try {
    await makeDirs(stateDir, 0o700);
    cache.tools[tool] = { ...bin, output };
    await writeFileAtomic(file, `${JSON.stringify(cache, null, 2)}\n`);
  } catch {
    // not recorded: the next process asks again
  }
  return output;
}
