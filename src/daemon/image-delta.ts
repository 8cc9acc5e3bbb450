/**
 * Change tracking for image sources (jobs' `{image: PATH}`): an image has no thin metadata, so the
 * daemon keeps a hash of each block from the last successful run (in the state directory) and
 * describes the blocks whose hash changed as a thin_delta document, which `send --changes` takes.
 * The whole image is read each run; only changed blocks are archived. The image should not be written
 * during a run (there is no snapshot): a block written meanwhile is caught by the next run.
 *
 * The hash file (docs/DAEMON.md) is `blocks x 16-byte MD5 | u64 LE block size | 36-byte archive id`:
 * the archive id names the archive that holds exactly the hashed contents, so a restarted daemon
 * continues the chain from it whatever its state file says. The new hashes are written in two steps
 * around the archive's publish: `prepare(id)` writes `HASHFILE.new` naming the archive about to be
 * published, `commit()` renames it over `HASHFILE` after. A kill between the publish and the rename
 * leaves both files; the next run takes whichever names the newest archive of its chain (the caller's
 * `pickBase`), so no kill at any moment starts a new chain. Files without the id (older daemons) are
 * not used: a full is sent.
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ioError } from '../errors.js';
import { writeFileAtomic } from '../fsutil.js';

const HASH_BYTES = 16;
const ID_BYTES = 36;
const READ_BYTES = 4 << 20;

export interface ImageDelta {
  /** the thin_delta XML file for `send --changes` (undefined when there are no previous hashes: send a full) */
  changes?: string;
  changedBlocks: number;
  blocks: number;
  /** the archive the previous hashes belong to (the parent an incremental must have), when known */
  baseArchiveId?: string;
  /** write the new hashes as `HASHFILE.new`, naming archive `archiveId` (call before that archive is published) */
  prepare(archiveId: string): Promise<void>;
  /** make the prepared hashes the base of the next run (call after the archive is published) */
  commit(): Promise<void>;
  /** remove temporary files (a prepared `.new` stays: it is the base if its archive was published) */
  discard(): Promise<void>;
}

/**
 * Hash every `blockSize` block of `image`; compare with the hashes of the last run. Of the usable hash
 * files (`HASHFILE.new`, then `HASHFILE`), `pickBase` gets the archive ids they name and returns the one
 * to continue from (the newest archive of its chain), or undefined: then a full is sent.
 */
export async function imageDelta(image: string, blockSize: number, hashFile: string, tmpDir: string,
  pickBase: (archiveIds: string[]) => Promise<string | undefined>, signal?: AbortSignal): Promise<ImageDelta> {
  const olds = (await Promise.all([`${hashFile}.new`, hashFile].map((f) => readFile(f).catch(() => undefined)))).flatMap((b) => (b ? [b] : []));
  const fh = await open(image, 'r').catch((e) => { throw ioError(e, `image ${image}`); });
  let hashes: Buffer;
  try {
    const size = (await fh.stat()).size;
    const blocks = Math.ceil(size / blockSize);
    hashes = Buffer.alloc(blocks * HASH_BYTES + 8);
    hashes.writeBigUInt64LE(BigInt(blockSize), blocks * HASH_BYTES);
    const buf = Buffer.alloc(Math.max(READ_BYTES - (READ_BYTES % blockSize), blockSize));
    let off = 0;
    while (off < size) {
      signal?.throwIfAborted();
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - off), off);
      if (bytesRead === 0) break;
      for (let p = 0; p < bytesRead; p += blockSize) {
        const b = (off + p) / blockSize;
        createHash('md5').update(buf.subarray(p, Math.min(p + blockSize, bytesRead))).digest().copy(hashes, b * HASH_BYTES);
      }
      off += bytesRead;
    }
  } finally {
    await fh.close();
  }
  const blocks = (hashes.length - 8) / HASH_BYTES;
  const usable = olds.filter((o) => o.length === hashes.length + ID_BYTES && o.readBigUInt64LE(hashes.length - 8) === BigInt(blockSize));
  const idOf = (o: Buffer): string => o.subarray(hashes.length).toString('latin1');
  const baseArchiveId = usable.length ? await pickBase(usable.map(idOf)) : undefined;
  const old = usable.find((o) => idOf(o) === baseArchiveId);
  const newHashes = `${hashFile}.new`;
  let prepared = false;
  const prepare = async (archiveId: string): Promise<void> => {
    await writeFileAtomic(newHashes, Buffer.concat([hashes, Buffer.from(archiveId.padEnd(ID_BYTES).slice(0, ID_BYTES), 'latin1')]));
    prepared = true;
  };
  const commit = async (): Promise<void> => {
    if (!prepared) throw new Error('image hashes committed before prepare');
    await rename(newHashes, hashFile);
  };
  if (!old) return { changedBlocks: blocks, blocks, prepare, commit, discard: async () => {} };
  // thin_delta counts pool blocks of data_block_size sectors: one pool block = one archive block here.
  const lines: string[] = [];
  let changed = 0;
  let runStart = -1;
  for (let b = 0; b <= blocks; b++) {
    const differs = b < blocks && hashes.compare(old, b * HASH_BYTES, (b + 1) * HASH_BYTES, b * HASH_BYTES, (b + 1) * HASH_BYTES) !== 0;
    if (differs) {
      changed++;
      if (runStart < 0) runStart = b;
    } else if (runStart >= 0) {
      lines.push(`    <different begin="${runStart}" length="${b - runStart}"/>`);
      runStart = -1;
    }
  }
  const xml = `<superblock uuid="" time="0" transaction="0" data_block_size="${blockSize / 512}" nr_data_blocks="0">\n  <diff left="0" right="1">\n${lines.join('\n')}\n  </diff>\n</superblock>\n`;
  // (unique per call: units of one daemon often start in the same millisecond)
  const changes = join(tmpDir, `.image-delta-${process.pid}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}.xml`);
  await writeFileAtomic(changes, xml);
  return {
    changes, changedBlocks: changed, blocks, prepare, commit, baseArchiveId: baseArchiveId!,
    discard: async () => {
      await rm(changes, { force: true });
    },
  };
}
