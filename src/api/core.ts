/**
 * The cheap part of the library API (re-exported by index.ts): errors and their codes, the version,
 * units and defaults. Loads none of the operations, so the CLI can register its commands, print
 * --help and --version, and check options from this alone (docs/PERFORMANCE.md, "Start-up").
 */
export { AbortedError, CommandError, FormatError, ThinarchiveError, UnsafeError, UsageError, type ErrorCode, type ExitClass } from '../errors.js';
export { ERRORS, EXIT_CODE } from '../error-codes.js';
export type { Logger } from '../log.js';
export { TOOL_VERSION } from '../version.js';
export { formatBytes, formatDuration, parseDuration } from '../units.js';
export { DEFAULT_MAX_DATA_PERCENT, DEFAULT_MAX_METADATA_PERCENT } from '../lvm/pool-status.js';
export { DEFAULT_CHAIN } from '../source/chain-name.js';
export { DEFAULT_TRACKER_SIZE, parseTrackerSize, type TrackerSize } from '../source/tracker-size.js';
