/**
 * Structured logging. The library takes a Logger (pino's interface, a subset) and never prints; the
 * CLI passes a pino logger writing JSON lines to standard error when THINARCHIVE_LOG names a level.
 */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

const noop = (): void => {};
export const silentLogger: Logger = { debug: noop, info: noop, warn: noop };
