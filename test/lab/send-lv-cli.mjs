// The thinarchive CLI from a given build ($THINARCHIVE_DIST: dist/, or a fresh compile of src/), for
// the lab guest and the host side of test/lab/send-lv.test.ts.
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const { main } = await import(pathToFileURL(join(process.env.THINARCHIVE_DIST, 'cli', 'main.js')).href);
process.exitCode = await main(process.argv);
