import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
/** The tool's version, from package.json; recorded in every archive header. */
export const TOOL_VERSION: string = (require('../package.json') as { version: string }).version;
