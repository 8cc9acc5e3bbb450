/**
 * Typed errors. Every error the library raises on purpose is a ThinarchiveError with a stable string
 * `code` declared in the registry (src/error-codes.ts), which also gives its `exitClass`; the CLI maps
 * the exit class to an exit code (README, "Exit codes" and "Error codes"). Anything else that escapes
 * is an internal error.
 */
import { exitClassOf, type CodeOfClass, type DeclaredCode, type ErrorCode, type ExitClass, type ExitClassOf, type IoCode, type S3Code } from './error-codes.js';

export type { ErrorCode, ExitClass } from './error-codes.js';
/** The codes a FormatError may carry (exit class 'verify'). */
export type FormatCode = CodeOfClass<'verify'>;

/**
 * The arguments of `new ThinarchiveError`: a declared code, the message, optionally the exit class
 * (which must be the one the registry declares for that code: it is checked here, at compile time, and
 * the registry's is used) and the cause.
 */
export type ThinarchiveErrorArgs =
  | { [C in DeclaredCode]: [code: C, message: string, exitClass?: ExitClassOf<C>, options?: { cause?: unknown }] }[DeclaredCode]
  | [code: IoCode | S3Code, message: string, exitClass?: 'runtime', options?: { cause?: unknown }];

export class ThinarchiveError extends Error {
  readonly code: ErrorCode;
  readonly exitClass: ExitClass;
  constructor(...[code, message, , options]: ThinarchiveErrorArgs) {
    super(message, options);
    this.name = 'ThinarchiveError';
    this.code = code;
    this.exitClass = exitClassOf(code);
  }

  /** The same error (code, exit class) with the message prefixed; the original is the cause. */
  static prefixed(e: ThinarchiveError, prefix: string): ThinarchiveError {
    return new ThinarchiveError(...([e.code, `${prefix}${e.message}`, undefined, { cause: e }] as ThinarchiveErrorArgs));
  }
}

/** Bad command-line input or bad arguments to a library call. */
export class UsageError extends ThinarchiveError {
  constructor(message: string, code: CodeOfClass<'usage'> = 'USAGE') {
    super(...([code, message] as ThinarchiveErrorArgs));
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
  constructor(code: CodeOfClass<'verify'>, detail: string, offset?: number, file?: string) {
    super(...([code, detail] as ThinarchiveErrorArgs));
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
  constructor(code: CodeOfClass<'unsafe'>, message: string) {
    super(...([code, message] as ThinarchiveErrorArgs));
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
  constructor(code: CodeOfClass<'runtime'>, message: string, argv: readonly string[], exitCode: number | undefined, stderr: string) {
    super(...([code, message] as ThinarchiveErrorArgs));
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
