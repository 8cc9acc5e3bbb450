/**
 * Typed errors. Every error the library raises on purpose is a ThinarchiveError with a stable string
 * `code`; the CLI maps the error's `exitClass` to an exit code (README, "Exit codes"). Anything else
 * that escapes is an internal error.
 */

/** How the CLI should report an error; each class has one documented exit code. */
export type ExitClass = 'usage' | 'runtime' | 'verify' | 'unsafe' | 'interrupted';

export class ThinarchiveError extends Error {
  readonly code: string;
  readonly exitClass: ExitClass;
  constructor(code: string, message: string, exitClass: ExitClass = 'runtime', options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ThinarchiveError';
    this.code = code;
    this.exitClass = exitClass;
  }
}

/** Bad command-line input or bad arguments to a library call. */
export class UsageError extends ThinarchiveError {
  constructor(message: string, code = 'USAGE') {
    super(code, message, 'usage');
    this.name = 'UsageError';
  }
}

/**
 * An archive (or other structured input) is malformed, truncated or fails a checksum. `offset` is the
 * byte offset in the archive where the problem was found, when known; `file` names the archive.
 */
export class FormatError extends ThinarchiveError {
  readonly offset: number | undefined;
  file: string | undefined;
  /** The message without the file and offset prefix. */
  readonly detail: string;
  constructor(code: string, detail: string, offset?: number, file?: string) {
    super(code, detail, 'verify');
    this.name = 'FormatError';
    this.detail = detail;
    this.offset = offset;
    this.setFile(file);
  }
  /** Name the archive the error was found in (the message then says "FILE at offset N: ..."). */
  setFile(file: string | undefined): this {
    this.file = file;
    const where = [file, this.offset !== undefined ? `offset ${this.offset}` : undefined].filter(Boolean).join(' at ');
    this.message = where ? `${where}: ${this.detail}` : this.detail;
    return this;
  }
}

/** An operation was refused because it could damage data (wrong target state, in-use device, ...). */
export class UnsafeError extends ThinarchiveError {
  constructor(code: string, message: string) {
    super(code, message, 'unsafe');
    this.name = 'UnsafeError';
  }
}

/** The operation was cancelled through its AbortSignal (or, in the CLI, by SIGINT/SIGTERM). `cause` is what stopped it. */
export class AbortedError extends ThinarchiveError {
  constructor(message = 'cancelled', cause?: unknown) {
    super('ABORTED', message, 'interrupted', { cause });
    this.name = 'AbortedError';
  }
}

/** An external command failed. Carries argv, exit code and stderr. */
export class CommandError extends ThinarchiveError {
  readonly argv: readonly string[];
  readonly exitCode: number | undefined;
  readonly stderr: string;
  constructor(code: string, message: string, argv: readonly string[], exitCode: number | undefined, stderr: string) {
    super(code, message, 'runtime');
    this.name = 'CommandError';
    this.argv = argv;
    this.exitCode = exitCode;
    this.stderr = stderr;
  }
}

/** Wrap a Node system error (ENOENT, EACCES, ENOSPC, EIO, ...) into a one-line ThinarchiveError. */
export function ioError(err: unknown, what: string): ThinarchiveError {
  if (err instanceof ThinarchiveError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = typeof e?.code === 'string' ? e.code : 'EIO';
  const reason = describeErrno(code, e?.message);
  return new ThinarchiveError(`IO_${code}`, `${what}: ${reason}`, 'runtime', { cause: err });
}

function describeErrno(code: string, fallback: string | undefined): string {
  switch (code) {
    case 'ENOENT': return 'no such file or directory';
    case 'EACCES': case 'EPERM': return 'permission denied';
    case 'ENOSPC': return 'no space left on device';
    case 'EIO': return 'input/output error';
    case 'EROFS': return 'read-only file system';
    case 'EBUSY': return 'device or resource busy (mounted or open elsewhere)';
    case 'EISDIR': return 'is a directory';
    case 'ENOTDIR': return 'not a directory';
    case 'EEXIST': return 'already exists';
    case 'EPIPE': return 'broken pipe';
    default: return fallback ?? code;
  }
}
