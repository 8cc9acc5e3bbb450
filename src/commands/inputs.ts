/** Resolving what the user names on the command line into archives. */
import { stat } from 'node:fs/promises';
import { ioError, UsageError } from '../errors.js';
import { DirectoryStore } from '../store/dir.js';

export type ArchiveInput = { kind: 'file'; path: string } | { kind: 'stdin' };

async function kindOf(path: string): Promise<'file' | 'dir'> {
  try {
    const st = await stat(path);
    if (st.isDirectory()) return 'dir';
    if (st.isFile()) return 'file';
  } catch (e) {
    throw ioError(e, `cannot open ${path}`);
  }
  throw new UsageError(`${path} is neither an archive file nor a directory`);
}

/** An archive file, or a store/chain directory meaning its newest archive. */
export async function resolveArchiveRef(ref: string): Promise<string> {
  if ((await kindOf(ref)) === 'file') return ref;
  const chain = await new DirectoryStore(ref).onlyChain();
  return chain.archives[chain.archives.length - 1].path;
}

/**
 * Archive files and directories (each meaning every archive of its one chain, in order), or `-` alone
 * for standard input.
 */
export async function resolveArchiveInputs(refs: string[]): Promise<ArchiveInput[]> {
  if (refs.length === 0) throw new UsageError('no archive given');
  if (refs.includes('-')) {
    if (refs.length > 1) throw new UsageError("'-' (standard input) cannot be combined with other archives");
    return [{ kind: 'stdin' }];
  }
  const out: ArchiveInput[] = [];
  for (const ref of refs) {
    if ((await kindOf(ref)) === 'file') out.push({ kind: 'file', path: ref });
    else for (const a of (await new DirectoryStore(ref).onlyChain()).archives) out.push({ kind: 'file', path: a.path });
  }
  return out;
}
