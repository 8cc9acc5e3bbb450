/**
 * A network link of a given speed for the ssh benchmark, used as ssh's ProxyCommand:
 *   ssh -o ProxyCommand='node throttle.mjs BYTES_PER_SECOND %h %p' ...
 * It connects to HOST:PORT and copies stdin to the socket at no more than BYTES_PER_SECOND (a leaky
 * bucket: each chunk is sent when the link would have finished the previous ones), and the socket to
 * stdout unthrottled (the return direction carries only acknowledgements and small replies).
 */
import { connect } from 'node:net';

const [rateArg, host, portArg] = process.argv.slice(2);
const rate = Number(rateArg);
if (!(rate > 0) || !host || !(Number(portArg) > 0)) {
  process.stderr.write('usage: throttle.mjs BYTES_PER_SECOND HOST PORT\n');
  process.exit(2);
}
const sock = connect(Number(portArg), host);
sock.setNoDelay(true);
sock.on('error', (e) => {
  process.stderr.write(`throttle: ${e.message}\n`);
  process.exit(1);
});
sock.pipe(process.stdout);
sock.on('end', () => process.exit(0));

let next = 0; // when the link is free again (ms, performance.now() clock)
process.stdin.on('data', (chunk) => {
  const now = performance.now();
  next = Math.max(next, now) + (chunk.length / rate) * 1000;
  const ok = sock.write(chunk);
  const wait = next - now;
  if (wait > 1 || !ok) {
    process.stdin.pause();
    const resume = () => setTimeout(() => process.stdin.resume(), Math.max(0, next - performance.now()));
    if (ok) resume();
    else sock.once('drain', resume);
  }
});
process.stdin.on('end', () => sock.end());
