/**
 * Change tracking for image sources (jobs' `{image: PATH}`): an image has no thin metadata, so the
 * daemon keeps a hash of each block from the last successful run (in the state directory) and
 * describes the blocks whose hash changed as a thin_delta document, which `send --changes` takes.
 * The whole image is read each run; only changed blocks are archived. The image should not be written
 * during a run (there is no snapshot): a block written meanwhile is caught by the next run.
 *
 * The hash file (docs/DAEMON.md) is `blocks x 16-byte MD5 | u64 LE block size | 36-byte archive id`:
 * the archive id names the archive that holds exactly the hashed contents, so a restarted daemon
 * continues the chain from it whatever its state file says (a kill between the archive's commit and
 * the state write loses nothing). Files without the id (older daemons) are not used: a full is sent.
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
  /** make the new hashes, held by archive `archiveId`, the base of the next run (call after the archive is committed) */
  commit(archiveId: string): Promise<void>;
  /** remove temporary files */
  discard(): Promise<void>;
}

/** Hash every `blockSize` block of `image`; compare with `hashFile` from the last run. */
export async function imageDelta(image: string, blockSize: number, hashFile: string, tmpDir: string, signal?: AbortSignal): Promise<ImageDelta> {
  const old = await readFile(hashFile).catch(() => undefined);
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
  const usable = old && old.length === hashes.length + ID_BYTES && old.readBigUInt64LE(hashes.length - 8) === BigInt(blockSize);
  const baseArchiveId = usable ? old.subarray(hashes.length).toString('latin1') : undefined;
  const newHashes = `${hashFile}.new`;
  const commit = async (archiveId: string): Promise<void> => {
    await writeFileAtomic(newHashes, Buffer.concat([hashes, Buffer.from(archiveId.padEnd(ID_BYTES).slice(0, ID_BYTES), 'latin1')]));
    await rename(newHashes, hashFile);
  };
  if (!usable) return { changedBlocks: blocks, blocks, commit, discard: async () => { await rm(newHashes, { force: true }); } };
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
    changes, changedBlocks: changed, blocks, commit, ...(baseArchiveId ? { baseArchiveId } : {}),
    discard: async () => {
      await rm(changes, { force: true });
      await rm(newHashes, { force: true });
    },
  };
}
