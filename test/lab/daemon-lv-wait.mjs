// Waits on a running `thinarchive daemon` through its status socket, for test/lab/daemon-lv-guest.sh
// (one node start per wait: starting node in the lab guest costs about a second).
//   node daemon-lv-wait.mjs STATE_DIR ready SINCE_MS "JOB VG/LV"...   every unit succeeded since SINCE_MS
//   node daemon-lv-wait.mjs STATE_DIR idle                            no unit is running
// Exit 0 when it holds, 1 after 15 minutes.
import { createConnection } from 'node:net';
import { join } from 'node:path';

const [stateDir, mode, ...rest] = process.argv.slice(2);
const ask = () => new Promise((resolve) => {
  const sock = createConnection(join(stateDir, 'daemon.sock'));
  const chunks = [];
  sock.on('data', (b) => chunks.push(b));
  sock.on('error', () => resolve(undefined));
  sock.on('end', () => {
    try { resolve(JSON.parse(Buffer.concat(chunks).toString('utf8'))); } catch { resolve(undefined); }
  });
});
const holds = (st) => {
  if (!st) return false;
  if (mode === 'idle') return st.units.every((u) => u.state !== 'running');
  const [since, ...want] = rest;
  return want.every((k) => st.units.some((u) => `${u.job} ${u.volume}` === k && u.lastSuccess && Date.parse(u.lastSuccess) > Number(since)));
};
const deadline = Date.now() + 15 * 60_000;
let last;
while (Date.now() < deadline) {
  last = await ask();
  if (holds(last)) process.exit(0);
  await new Promise((r) => setTimeout(r, 500));
}
// What the test's failure message needs: each unit the wait was for, as the daemon saw it last.
const wanted = mode === 'idle' ? undefined : new Set(rest.slice(1));
const units = (last?.units ?? []).filter((u) => !wanted || wanted.has(`${u.job} ${u.volume}`));
console.error(`daemon-lv-wait ${mode}${mode === 'idle' ? '' : ` since ${new Date(Number(rest[0])).toISOString()}`}: not reached in 15 minutes; ${last ? 'the units' : 'no answer from the daemon'}:`);
for (const u of units) {
  console.error(`  ${u.job} ${u.volume}: ${u.state}, runs ${u.runs}, failures ${u.consecutiveFailures}, last attempt ${u.lastAttempt}, last success ${u.lastSuccess}, next ${u.nextRun}${u.lastError ? `, last error ${u.lastError.code} at ${u.lastError.at}: ${u.lastError.message}` : ''}`);
}
process.exit(1);
