// Runs the thinarchive CLI (as bin/thinarchive does) in this process and then appends this process's
// /proc/self/io (read_bytes: what it made the block layer read, all threads included) as one JSON
// line to $TA_IO_FILE. For the lab benchmark: bytes read by a send vs the volume's mapped bytes.
import { appendFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT } from './lab.mjs';

const { loadMain } = await import(pathToFileURL(join(ROOT, 'dist', 'cli', 'entry.js')).href);
const code = await (await loadMain())(process.argv);
if (process.env.TA_IO_FILE) {
  const io = Object.fromEntries(readFileSync('/proc/self/io', 'utf8').trim().split('\n').map((l) => l.split(': ')).map(([k, v]) => [k, Number(v)]));
  appendFileSync(process.env.TA_IO_FILE, `${JSON.stringify({ label: process.env.TA_IO_LABEL ?? '', ...io })}\n`);
}
process.exitCode = code;
