/**
 * Issue 11, "Messages and exit codes that mislead" and "Output that a user misreads": the CLI's
 * words and exit codes for bad input, --json failures, and the text a user reads.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, expectFailure, run, runOk, show, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, POOL_BLOCK, prng, textBytes, thinDeltaXml, VolumeModel } from '../helpers/volume-model.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

/** Run the CLI with stdout (and stderr) on a pseudo-terminal (util-linux script); returns what the terminal got and the exit code. */
function onTerminal(args: string[], cwd: string): { code: number; text: string } {
  const q = (a: string): string => `'${a.replace(/'/g, "'\\''")}'`;
  const cmd = [process.execPath, BIN, ...args].map(q).join(' ');
  try {
    const text = execFileSync('script', ['-qec', cmd, '/dev/null'], { cwd, encoding: 'latin1', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000, maxBuffer: 256 * MiB });
    return { code: 0, text };
  } catch (e) {
    const x = e as { status: number; stdout: string };
    return { code: x.status, text: x.stdout };
  }
}

/**
 * Run the CLI on a pseudo-terminal and send it SIGINT once the terminal shows `waitFor` (so that on a
 * slow machine the signal never comes before the text it is about). Returns the terminal text and the
 * exit code; code 0 when it finished before the text was seen.
 */
function interruptOnTerminal(args: string[], cwd: string, waitFor: string): Promise<{ code: number; text: string }> {
  const q = (a: string): string => `'${a.replace(/'/g, "'\\''")}'`;
  const pidFile = join(cwd, 'cli.pid');
  // exec keeps the shell's pid: the pid file names the CLI process itself
  const cmd = `echo $$ > ${q(pidFile)}; exec ${[process.execPath, BIN, ...args].map(q).join(' ')}`;
  const child = spawn('script', ['-qfec', `sh -c ${q(cmd)}`, '/dev/null'], { cwd, stdio: ['ignore', 'pipe', 'ignore'] });
  let text = '';
  let sent = false;
  child.stdout.on('data', (b: Buffer) => {
    text += b.toString('latin1');
    if (!sent && text.includes(waitFor)) {
      sent = true;
      process.kill(Number(readFileSync(pidFile, 'utf8').trim()), 'SIGINT');
    }
  });
  return new Promise((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, text })));
}

describe.concurrent('messages and exit codes (issue 11)', () => {
  let dir: TempDir;
  let store: string;
  let src: string;
  let full: { path: string; chainId: string };
  let delta: string;

  beforeAll(async () => {
    dir = await tempDir('messages');
    store = dir.join('store');
    src = dir.join('vol.img');
    const rand = prng(11);
    const m = new VolumeModel(src, SIZE);
    m.write(0, textBytes(rand, 2 * MiB));
    m.write(3 * MiB, noiseBytes(MiB));
    m.snapshotDelta();
    full = JSON.parse((await runOk(['send', '--image', src, '--to', store, '--json'])).stdout);
    for (let b = 70; b < 80; b++) m.write(b * POOL_BLOCK, noiseBytes(POOL_BLOCK));
    delta = dir.join('delta.xml');
    writeFileSync(delta, m.snapshotDelta());
    m.close();
  });

  afterAll(async () => {
    await dir?.remove();
  });

  it('malformed thin_delta XML for --changes is bad input: exit 2, a usage-class code', async () => {
    const bad = dir.join('bad-delta.xml');
    writeFileSync(bad, '<superblock uuid="" time="3" transaction="7" data_block_size="128" nr_data_blocks="256">\n  <diff left="1" right="2">\n    <different begin="3" length="1"\n');
    const r = await run(['send', '--image', src, '--changes', bad, '--parent', full.path, '--to', dir.join('never-xml'), '--json']);
    expect(expectFailure(r, 2)).toContain(bad);
    expect(JSON.parse(r.stdout).error).toMatchObject({ code: 'CHANGES_INVALID', exitClass: 'usage', exit: 2 });
  });

  it('a missing input file is exit 1 for info and verify alike', async () => {
    expect(expectFailure(await run(['info', dir.join('nosuch.tna')]), 1)).toContain('no such file or directory');
    expect(expectFailure(await run(['verify', dir.join('nosuch.tna')]), 1)).toContain('no such file or directory');
  });

  it('THINARCHIVE_LOG naming no level is a usage error (2) in one line, for commands and the daemon alike', async () => {
    const env = { ...process.env, THINARCHIVE_LOG: 'loud' };
    for (const args of [['info', dir.join('nosuch.tna')], ['daemon', '--config', dir.join('nosuch.yml')]]) {
      expect(expectFailure(await run(args, { env }), 2)).toBe('thinarchive: THINARCHIVE_LOG=loud is not a log level (fatal, error, warn, info, debug, trace, silent)');
    }
  });

  it('send FILE --to STORE suggests --image for an existing file', async () => {
    const line = expectFailure(await run(['send', src, '--to', dir.join('never-lv')]), 2);
    expect(line).toContain(`--image ${src}`);
  });

  it('verify --changed-only without --against, and a sampled verify of standard input, are refused (2)', async () => {
    expect(expectFailure(await run(['verify', store, '--changed-only']), 2)).toContain('--against');
    expect(expectFailure(await run(['verify', '-', '--sample', '5'], { input: '' }), 2)).toContain('not standard input');
    expect(expectFailure(await run(['verify', store, '--sample', '0']), 2)).toContain('percentage');
  });

  it('--volume-uuid nope is a usage error (2)', async () => {
    expect(expectFailure(await run(['send', '--image', src, '--to', dir.join('never-uuid'), '--volume-uuid', 'nope']), 2)).toContain('--volume-uuid');
    expect(existsSync(dir.join('never-uuid'))).toBe(false);
  });

  it('send --to - refuses a terminal as standard output unless --force', () => {
    const refused = onTerminal(['send', '--image', src, '--to', '-'], dir.path);
    expect(refused.code, refused.text).toBe(2);
    expect(refused.text).toContain('terminal');
    expect(refused.text.length).toBeLessThan(1000);
    const forced = onTerminal(['send', '--image', src, '--to', '-', '--force'], dir.path);
    expect(forced.code, forced.text.slice(0, 200)).toBe(0);
    expect(forced.text.length).toBeGreaterThan(100_000);
  });

  it('--json failures print a JSON error object on stdout, one line on stderr', async () => {
    const r = await run(['info', dir.join('nosuch.tna'), '--json']);
    const line = expectFailure(r, 1);
    const j = JSON.parse(r.stdout);
    expect(j).toEqual({ error: { code: 'IO_ENOENT', exitClass: 'runtime', exit: 1, message: line.replace(/^thinarchive: /, '') } });
    const u = await run(['list', '.', '--frob', '--json']);
    expectFailure(u, 2);
    expect(JSON.parse(u.stdout).error).toMatchObject({ code: 'USAGE', exitClass: 'usage', exit: 2 });
  });

  it("commander's errors are one line in the project's style, exit 2", async () => {
    for (const args of [['frobnicate'], ['list', '.', '--frob'], ['apply', 'store'], ['verify']]) {
      const r = await run(args, { cwd: dir.path });
      expect(expectFailure(r, 2)).not.toMatch(/^thinarchive: error:/);
    }
  });

  it('send --help wraps at 80 columns', async () => {
    const r = await runOk(['send', '--help']);
    const long = r.stdout.split('\n').filter((l) => l.length > 80);
    expect(long, long.join('\n')).toEqual([]);
  });

  it('send --dry-run prints the extents (capped), as the README says', async () => {
    const r = await runOk(['send', '--image', src, '--changes', delta, '--parent', full.path, '--to', dir.join('dry'), '--dry-run']);
    expect(r.stderr).toMatch(/^ {4}data +blocks 70\.\.79 /m);
    const j = JSON.parse((await runOk(['send', '--image', src, '--changes', delta, '--parent', full.path, '--to', dir.join('dry'), '--dry-run', '--json'])).stdout);
    expect(j.extents).toBeGreaterThan(0);
    expect(j.extentList.length).toBe(j.extents);
    // A fragmented delta: at most 50 lines and "... N more".
    const frag = dir.join('frag.xml');
    const kinds = new Map<number, string>();
    for (let b = 0; b < 120; b += 2) kinds.set(b, 'different');
    writeFileSync(frag, thinDeltaXml(kinds, SIZE / POOL_BLOCK));
    const f = await runOk(['send', '--image', src, '--changes', frag, '--parent', full.path, '--to', dir.join('dry'), '--dry-run']);
    const lines = f.stderr.split('\n').filter((l) => /^ {4}(data|zero|unmap) /.test(l));
    expect(lines.length).toBe(50);
    expect(f.stderr).toMatch(/\.\.\. \d+ more extents/);
  });

  it('prune says which points are no longer restorable, not "dropped 0"', async () => {
    const s = dir.join('prune-store');
    const a = JSON.parse((await runOk(['send', '--image', src, '--to', s, '--json'])).stdout);
    await runOk(['send', '--image', src, '--changes', delta, '--parent', a.path, '--to', s]);
    const r = await runOk(['prune', s, '--keep', '1', '--dry-run']);
    expect(r.stdout).not.toContain('dropped 0');
    expect(r.stdout).toContain('points no longer restorable: 0');
  });

  it('verify --against: mismatching blocks coalesced into ranges, one location each; JSON keeps every block and names the target', async () => {
    const img = dir.join('against.img');
    await runOk(['apply', store, '--to', img, '--create']);
    const buf = readFileSync(img);
    for (let i = 10 * 65536; i < 14 * 65536; i += 4096) buf[i] ^= 0xff;
    writeFileSync(img, buf);
    const r = await run(['verify', store, '--against', img]);
    expect(r.code, show(r)).toBe(3);
    const mism = r.stdout.split('\n').filter((l) => l.includes('TARGET_MISMATCH'));
    expect(mism.length, r.stdout).toBe(1);
    expect(mism[0]).toContain('blocks 10..13');
    expect(mism[0]).not.toMatch(/block 10 .*block 10/);
    const j = JSON.parse((await run(['verify', store, '--against', img, '--json'])).stdout);
    const tm = j.findings.filter((f: { code: string }) => f.code === 'TARGET_MISMATCH');
    expect(tm.length).toBe(4);
    for (const f of tm) expect(f.target).toBe(img);
  });

  it('zeroing is described in one wording with units', async () => {
    const img = dir.join('zero.img');
    const r = await runOk(['restore', store, '--to', img, '--create']);
    expect(r.stderr).not.toContain('(none)');
    expect(r.stderr).not.toMatch(/\d B punched/);
    const a = await runOk(['apply', store, '--to', img, '--force']);
    expect(a.stderr).not.toMatch(/\d{4,} B/);
    expect(readdirSync(dir.path)).toContain('zero.img');
  });
});

describe('apply progress', () => {
  it('never reports more done than its total (zero/unmap extents of the map count in both)', async () => {
    const d = await tempDir('progress');
    try {
      const { apply, send } = await import('../../src/api/index.js');
      const img = d.join('src.img');
      const m = new VolumeModel(img, SIZE);
      m.write(0, textBytes(prng(3), MiB));
      m.writeZeroes(2 * MiB, MiB);
      m.close();
      const sent = await send({ image: img, to: d.join('s') });
      const seen: { done: number; total: number | undefined }[] = [];
      await apply({ inputs: [sent.path!], to: d.join('t.img'), create: true, onProgress: (p) => seen.push({ done: p.bytesDone, total: p.bytesTotal }) });
      expect(seen.length).toBeGreaterThan(0);
      for (const s of seen) expect(s.done, JSON.stringify(s)).toBeLessThanOrEqual(s.total!);
      expect(seen[seen.length - 1].done).toBe(seen[seen.length - 1].total);
    } finally {
      await d.remove();
    }
  });
});

void join;

describe('interrupted with a progress line on the terminal', () => {
  it('"thinarchive: interrupted" starts a clean line, not the progress line', async () => {
    const d = await tempDir('progress-int');
    try {
      const img = d.join('big.img');
      const m = new VolumeModel(img, 768 * MiB);
      const rand = prng(5);
      const chunk = textBytes(rand, 4 * MiB);
      for (let off = 0; off < 768 * MiB; off += 4 * MiB) m.write(off, chunk);
      m.close();
      const sent = JSON.parse((await runOk(['send', '--image', img, '--to', d.join('s'), '--json', '--level', '1'])).stdout);
      // SIGINT once the progress line has been drawn (updates every 250 ms), well before the end.
      const t = await interruptOnTerminal(['apply', sent.path, '--to', d.join('t.img'), '--create', '--no-undo'], d.path, 'apply: ');
      if (t.code === 0) return; // finished before the signal: nothing to see on this machine
      expect(t.code, JSON.stringify(t.text.slice(-300))).toBe(130);
      const at = t.text.indexOf('thinarchive: interrupted');
      expect(at, JSON.stringify(t.text.slice(-300))).toBeGreaterThan(0);
      expect(t.text.slice(0, at)).toContain('apply: ');
      const before = t.text.slice(0, at);
      expect(before.endsWith('\r\x1b[K') || before.endsWith('\n'), JSON.stringify(before.slice(-80))).toBe(true);
    } finally {
      await d.remove();
    }
  }, 180_000);
});
