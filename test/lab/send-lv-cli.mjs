// The thinarchive CLI from a given build ($THINARCHIVE_DIST: dist/, or a fresh compile of src/), for
// the lab guests and the host side of the lab tests, started as bin/thinarchive starts it.
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const { loadMain } = await import(pathToFileURL(join(process.env.THINARCHIVE_DIST, 'cli', 'entry.js')).href);
process.exitCode = await (await loadMain())(process.argv);
