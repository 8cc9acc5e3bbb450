/** Typed findings of verify and verify --against: what is wrong, where, and (for targets) what was expected. */

export type FindingCode =
  | 'CHECKSUM_MISMATCH' | 'PAYLOAD_CORRUPT' | 'TRUNCATED' | 'STRUCTURE' | 'MISSING_ARCHIVE' | 'BROKEN_LINK' | 'UNREADABLE';

export interface Finding {
  code: FindingCode;
  /** The detailed error code (e.g. FRAME_CHECKSUM, DIGEST_MISMATCH). */
  detail: string;
  archive: string;
  message: string;
  offset?: number;
  block?: number;
}

export type TargetFindingCode = FindingCode | 'TARGET_MISMATCH' | 'TARGET_STATE' | 'TARGET_SIZE';

/** A finding of verify --against; the fields of Finding, plus what was expected and found. */
export interface TargetFinding {
  code: TargetFindingCode;
  detail: string;
  /** The target (for TARGET_*), or the archive. Kept for compatibility: read `target` for target findings. */
  archive: string;
  /** TARGET_* findings: the target compared (image path, block device or VG/LV). */
  target?: string;
  message: string;
  /** byte offset in the target */
  offset?: number;
  block?: number;
  /** xxh64 (hex) of the block as the chain has it, or "zero" */
  expected?: string;
  /** xxh64 (hex) of the block as read, or "zero" */
  actual?: string;
  /** the archive that holds the expected version */
  archiveId?: string;
}

