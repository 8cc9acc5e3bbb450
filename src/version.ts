import { createRequire } from 'node:module';
import { packagePath } from './paths.js';

const require = createRequire(import.meta.url);
/** The tool's version, from package.json; recorded in every archive header. */
export const TOOL_VERSION: string = (require(packagePath('package.json')) as { version: string }).version;
