/**
 * What an image send records of the newest archive it sent of each chain, in the state directory:
 * `STATE_DIR/sent/<chain-id>.json` (README "Encrypted archives"). An incremental send of an encrypted
 * chain takes its parent's chain id, archive id, sequence, volume uuid and block size from here when
 * it holds no identity to read the parent: a host that only has the recipients can write a chain it
 * cannot read (write-only).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ioError } from '../errors.js';
import { makeDirs, writeFileAtomic } from '../fsutil.js';

export interface SentRecord {
  version: 1;
  chainId: string;
  archiveId: string;
  sequence: number;
  volumeUuid: string;
  blockSize: number;
  volumeName: string;
  encrypted: boolean;
}

function recordPath(stateDir: string, chainId: string): string {
  return join(stateDir, 'sent', `${chainId}.json`);
}

/** The record of chain `chainId`, or undefined when there is none (or it is unreadable). */
export async function readSentRecord(stateDir: string, chainId: string): Promise<SentRecord | undefined> {
  try {
    const r = JSON.parse(await readFile(recordPath(stateDir, chainId), 'utf8')) as SentRecord;
    return r.version === 1 && r.chainId === chainId && typeof r.archiveId === 'string' && Number.isSafeInteger(r.sequence) ? r : undefined;
  } catch {
    return undefined;
  }
}

/** Replace the record of `r.chainId` (atomically). */
export async function writeSentRecord(stateDir: string, r: SentRecord): Promise<void> {
  try {
    await makeDirs(join(stateDir, 'sent'));
    await writeFileAtomic(recordPath(stateDir, r.chainId), `${JSON.stringify(r, null, 2)}\n`);
  } catch (e) {
    throw ioError(e, `the archive is stored, but its record ${recordPath(stateDir, r.chainId)} could not be written (the next incremental send needs --identity)`);
  }
}
