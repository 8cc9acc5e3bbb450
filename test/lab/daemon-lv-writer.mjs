// The writers of test/lab/daemon-lv-guest.sh, in one process (a process start costs the lab guest far
// more than the writes): every second, for each FILE, appends 4 KiB to FILE.log and rewrites a random
// 64 KiB block of the first 4 MiB of FILE, both synced; for each DEVICE (after --raw), rewrites a random
// 64 KiB block of its first 16 MiB, synced. A frozen filesystem blocks it until it is thawed. Ends
// when STOP_FILE exists for the files, when STOP_FILE.raw exists for the devices.
//   node daemon-lv-writer.mjs STOP_FILE FILE... [--raw DEVICE...]
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, fsyncSync, openSync, writeSync, closeSync } from 'node:fs';

const [stop, ...rest] = process.argv.slice(2);
const raw = rest.indexOf('--raw');
const files = raw < 0 ? rest : rest.slice(0, raw);
const devices = raw < 0 ? [] : rest.slice(raw + 1);
const write = (path, flags, buf, at) => {
  const fd = openSync(path, flags);
  try {
    writeSync(fd, buf, 0, buf.length, at);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
};
for (;;) {
  const filesOn = !existsSync(stop);
  const rawOn = !existsSync(`${stop}.raw`);
  if (!filesOn && !rawOn) break;
  if (filesOn) {
    for (const f of files) {
      write(`${f}.log`, 'a', randomBytes(4096), null);
      write(f, 'r+', randomBytes(65536), randomInt(64) * 65536);
    }
  }
  if (rawOn) for (const d of devices) write(d, 'r+', randomBytes(65536), randomInt(256) * 65536);
  await new Promise((r) => setTimeout(r, 1000));
}
