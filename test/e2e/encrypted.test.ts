/**
 * Encrypted archives (age v1, `.tna.age`; README "Encrypted archives", FORMAT.md §3.4) through the CLI:
 * a write-only sending host (recipients only, its own state directory) makes a full archive and three
 * incrementals; a second host with either identity restores every point byte for byte and applies
 * the chain; stock `age` decrypts every archive to a plain archive and encrypts a plain one that
 * thinarchive applies; without the identity `list` still lists the chain; wrong or missing keys are
 * one-line errors; a chain is never mixed; tampered archives are refused before any write. Then the
 * same chain through an ssh:// store and an s3:// store (ranged reads).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { info, ThinarchiveError } from '../../src/api/index.js';
import { parseIdentityFile } from '../../src/crypto/age.js';
import { expectFailure, run, runOk, sha256, show, tempDir, type TempDir } from '../helpers/cli.js';
import { noiseBytes, POOL_BLOCK, prng, textBytes, VolumeModel } from '../helpers/volume-model.js';
import { cephOrSkip } from '../servers/ceph.js';
import { sshdAvailable, startSshd, type Sshd } from '../servers/sshd.js';
import { ciSet } from '../helpers/host.js';
import { startServe, tool } from '../helpers/nbd.js';
import { newBucket } from '../store/s3-helpers.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

let tmp: TempDir;
let keyA: string;
let keyB: string;
let rcptA: string;
let rcptB: string;

beforeAll(async () => {
  tmp = await tempDir('encrypted');
  keyA = tmp.join('a.key');
  keyB = tmp.join('b.key');
  rcptA = (await runOk(['key', 'generate', '--out', keyA])).stdout.trim();
  rcptB = (await runOk(['key', 'generate', '--out', keyB])).stdout.trim();
});
afterAll(async () => {
  await tmp?.remove();
});

/**
 * A chain of four points sent to `url` by a host with only the recipients (its own state dir, no
 * identity anywhere); returns the sha256 of each point.
 */
async function writeOnlyChain(url: string, extra: string[] = [], env: Record<string, string> = {}): Promise<string[]> {
  const img = tmp.join(`vol-${Math.random().toString(36).slice(2)}.img`);
  const state = tmp.join(`send-state-${Math.random().toString(36).slice(2)}`);
  const sendEnv = { ...env, THINARCHIVE_IDENTITY: undefined } as unknown as Record<string, string>;
  const m = new VolumeModel(img, SIZE);
  const rand = prng(7);
  m.write(0, textBytes(rand, MiB));
  m.write(3 * MiB, noiseBytes(MiB / 2));
  m.snapshotDelta();
  const enc = ['--encrypt-to', rcptA, '--encrypt-to', rcptB, '--state-dir', state];
  await runOk(['send', '--image', img, '--to', url, ...enc, ...extra], { env: sendEnv });
  const hashes = [await sha256(img)];
  for (let i = 1; i < 4; i++) {
    for (let k = 0; k < 5; k++) m.write(Math.floor(rand() * (SIZE / POOL_BLOCK)) * POOL_BLOCK, textBytes(rand, POOL_BLOCK));
    m.punch(3 * MiB + i * POOL_BLOCK, POOL_BLOCK);
    const delta = tmp.join(`d${i}-${Math.random().toString(36).slice(2)}.xml`);
    writeFileSync(delta, m.snapshotDelta());
    await runOk(['send', '--image', img, '--changes', delta, '--parent', url, '--to', url, ...enc, ...extra], { env: sendEnv });
    hashes.push(await sha256(img));
  }
  m.close();
  return hashes;
}

/** Restore every point of `url` on a second "host" (its own state dir) with `identity`; compare. */
async function restoreEach(url: string, hashes: string[], identity: string, extra: string[] = [], env: Record<string, string> = {}): Promise<void> {
  for (let i = 0; i < hashes.length; i++) {
    const t = tmp.join(`r-${Math.random().toString(36).slice(2)}.img`);
    const r = await run(['restore', url, '--at', String(i), '--to', t, '--create', '--identity', identity, ...extra], { env });
    expect(r.code, show(r)).toBe(0);
    expect(await sha256(t), `point ${i}`).toBe(hashes[i]);
  }
}

describe('encrypted archives in a directory store', () => {
  let store: string;
  let hashes: string[];
  let files: string[];

  beforeAll(async () => {
    store = tmp.join('store');
    hashes = await writeOnlyChain(store);
    const chain = readdirSync(store).find((n) => /^[0-9a-f-]{36}$/.test(n))!;
    files = readdirSync(join(store, chain)).filter((n) => !n.startsWith('.')).sort().map((n) => join(store, chain, n));
  }, 240_000);

  it('the write-only host wrote .tna.age files; age -d of each is a plain archive that verifies and says what thinarchive reads', async () => {
    expect(files.map((f) => f.replace(/.*\//, ''))).toEqual(expect.arrayContaining([expect.stringMatching(/^0000000000-.*\.tna\.age$/)]));
    expect(files).toHaveLength(4);
    for (const [i, f] of files.entries()) {
      expect(f.endsWith('.tna.age')).toBe(true);
      const plain = tmp.join(`plain-${i}.tna`);
      writeFileSync(plain, execFileSync('age', ['-d', '-i', i % 2 ? keyB : keyA, f], { maxBuffer: 1 << 28 }));
      await runOk(['verify', plain]);
      const mine = JSON.parse((await runOk(['info', f, '--identity', keyA, '--json'])).stdout) as { header: unknown; trailer: unknown };
      const theirs = JSON.parse((await runOk(['info', plain, '--json'])).stdout) as { header: unknown; trailer: unknown };
      expect(mine.header).toEqual(theirs.header);
      expect(mine.trailer).toEqual(theirs.trailer);
    }
  });

  it('a second host restores every point with either identity, applies the chain, and verifies it', async () => {
    await restoreEach(store, hashes, keyA, ['--state-dir', tmp.join('host2')]);
    const t = tmp.join('applied.img');
    await runOk(['apply', store, '--to', t, '--create'], { env: { THINARCHIVE_IDENTITY: keyB } });
    expect(await sha256(t)).toBe(hashes[3]);
    const v = JSON.parse((await runOk(['verify', store, '--json', '--identity', keyB])).stdout) as { ok: boolean; archives: unknown[] };
    expect(v.ok).toBe(true);
    expect(v.archives).toHaveLength(4);
    const va = JSON.parse((await runOk(['verify', store, '--against', t, '--json', '--identity', keyA])).stdout) as { ok: boolean };
    expect(va.ok).toBe(true);
  });

  it('without the identity: list shows the chain from names and sizes; readers fail in one line, exit 2; a wrong key too, and no key material is printed', async () => {
    const l = JSON.parse((await runOk(['list', store, '--json'])).stdout) as { archives: { sequence: number; bytes: number; status: string }[] }[];
    expect(l[0].archives.map((a) => a.sequence)).toEqual([0, 1, 2, 3]);
    for (const a of l[0].archives) {
      expect(a.status).toBe('encrypted (no identity given)');
      expect(a.bytes).toBeGreaterThan(0);
    }
    const none = await run(['apply', store, '--to', tmp.join('no.img'), '--create', '--json']);
    expect(expectFailure(none, 2)).toMatch(/is encrypted \(age, stanzas: X25519\); give --identity/);
    expect(JSON.parse(none.stdout).error.code).toBe('AGE_NO_IDENTITY');
    const other = tmp.join('other.key');
    await runOk(['key', 'generate', '--out', other]);
    const wrong = await run(['restore', store, '--to', tmp.join('no.img'), '--create', '--identity', other, '--json']);
    expect(expectFailure(wrong, 2)).toMatch(/none of the identities given decrypts it/);
    expect(JSON.parse(wrong.stdout).error.code).toBe('AGE_WRONG_KEY');
    const secret = readFileSync(other, 'utf8').match(/AGE-SECRET-KEY-1\S+/)![0];
    const bad = tmp.join('bad.key');
    writeFileSync(bad, `${secret.slice(0, -2)}QQ\n`);
    const invalid = await run(['list', store, '--identity', bad, '--json']);
    expect(expectFailure(invalid, 2)).toMatch(/bad\.key: line 1 of its keys is not an age identity/);
    for (const r of [none, wrong, invalid]) {
      expect(r.stdout + r.stderr).not.toContain(secret.slice(16, 40));
      expect(r.stdout + r.stderr).not.toContain(secret.slice(-30, -2));
    }
    expect(existsIn(tmp.join('no.img'))).toBe(false);
  });

  it('verify --structure-only without the identity checks the age structure; a cut that breaks it fails (exit 3)', async () => {
    const r = JSON.parse((await runOk(['verify', store, '--structure-only', '--json'])).stdout) as { ok: boolean; mode: string; archives: { ok: boolean }[] };
    expect(r).toMatchObject({ ok: true, mode: 'structure' });
    expect(r.archives).toHaveLength(4);
    const withKey = JSON.parse((await runOk(['verify', store, '--structure-only', '--json', '--identity', keyA])).stdout) as { archives: { sequence: number }[] };
    expect(withKey.archives.map((a) => a.sequence)).toEqual([0, 1, 2, 3]);
    const copy = tmp.join('structure-copy');
    execFileSync('cp', ['-r', store, copy]);
    const chain = readdirSync(copy).find((n) => /^[0-9a-f-]{36}$/.test(n))!;
    const last = join(copy, chain, files[3].replace(/.*\//, ''));
    const body = readFileSync(last);
    // Without the key only lengths can be judged: a last chunk shorter than its 16-byte tag, or a cut
    // inside the header. (Other cuts, and changed bytes, take the identity: verify or apply.)
    const payload = body.indexOf('\n---') + 1 + 48 + 16;
    const cuts = [['cut 5 bytes past a chunk boundary', payload + 5, 'AGE_AUTH'], ['cut inside the header', 40, 'AGE_HEADER']] as const;
    for (const [what, n, code] of cuts) {
      writeFileSync(last, body.subarray(0, n));
      const bad = await run(['verify', copy, '--structure-only', '--json']);
      expect(bad.code, `${what}: ${show(bad)}`).toBe(3);
      const f = (JSON.parse(bad.stdout) as { findings: { detail: string; archive: string }[] }).findings;
      expect(f, what).toEqual([expect.objectContaining({ detail: code, archive: last })]);
    }
  });

  it('serve --identity exports every point over NBD (nbdcopy equals the source); without the identity serve fails in one line, exit 2', async () => {
    const served = await startServe([store, '--identity', keyB], tmp.join('enc-nbd.sock'));
    try {
      for (let i = 0; i < hashes.length; i++) {
        const out = tmp.join(`served-${i}.img`);
        await tool('nbdcopy', [served.uri(String(i)), out]);
        expect(await sha256(out), `point ${i}`).toBe(hashes[i]);
      }
    } finally {
      expect((await served.stop()).code).toBe(0);
    }
    const none = await run(['serve', store, '--socket', tmp.join('enc-none.sock'), '--json'], { env: { THINARCHIVE_IDENTITY: undefined } });
    expect(expectFailure(none, 2)).toMatch(/is encrypted \(age, stanzas: X25519\); give --identity/);
    expect(JSON.parse(none.stdout).error.code).toBe('AGE_NO_IDENTITY');
  });

  it('a chain is all encrypted or all plain: a plain incremental onto it is refused, exit 4', async () => {
    const img = tmp.join('mix.img');
    const m = new VolumeModel(img, SIZE);
    m.snapshotDelta();
    m.write(0, textBytes(prng(1), POOL_BLOCK));
    const delta = tmp.join('mix.xml');
    writeFileSync(delta, m.snapshotDelta());
    m.close();
    // The host that sent the chain (its state dir) without recipients this time.
    const r = await run(['send', '--image', img, '--changes', delta, '--parent', store, '--to', store, '--identity', keyA]);
    expect(expectFailure(r, 4)).toMatch(/holds encrypted archives .*a chain is all encrypted or all plain/);
  });

  it('age -e -r of a plain archive is applied and verified by thinarchive; a passphrase chain round-trips', async () => {
    const img = tmp.join('plain-src.img');
    const m = new VolumeModel(img, 2 * MiB);
    m.write(0, textBytes(prng(3), 300_000));
    m.close();
    const plainStore = tmp.join('plain-store');
    await runOk(['send', '--image', img, '--to', plainStore]);
    const chain = readdirSync(plainStore).find((n) => /^[0-9a-f-]{36}$/.test(n))!;
    const name = readdirSync(join(plainStore, chain)).find((n) => n.endsWith('.tna'))!;
    const theirs = tmp.join(`${name}.age`);
    execFileSync('age', ['-e', '-r', rcptB, '-o', theirs, join(plainStore, chain, name)]);
    const t = tmp.join('from-age.img');
    await runOk(['apply', theirs, '--to', t, '--create', '--identity', keyB]);
    expect(await sha256(t)).toBe(await sha256(img));
    await runOk(['verify', theirs, '--identity', keyB]);
    // standard input too
    const s = tmp.join('from-stdin.img');
    await runOk(['apply', '-', '--to', s, '--create', '--identity', keyB], { input: readFileSync(theirs) });
    expect(await sha256(s)).toBe(await sha256(img));

    // send --to - (a pipe) encrypted: age -d gives an archive that applies to the same image
    const piped = await runOk(['send', '--image', img, '--to', '-', '--encrypt-to', rcptA, '--state-dir', tmp.join('pipe-state')]);
    const fromPipe = tmp.join('from-pipe.tna');
    writeFileSync(fromPipe, execFileSync('age', ['-d', '-i', keyA], { input: piped.stdoutBytes, maxBuffer: 1 << 28 }));
    const q = tmp.join('from-pipe.img');
    await runOk(['apply', fromPipe, '--to', q, '--create']);
    expect(await sha256(q)).toBe(await sha256(img));

    const pass = tmp.join('pass.txt');
    writeFileSync(pass, 'a long enough passphrase\n');
    const passStore = tmp.join('pass-store');
    await runOk(['send', '--image', img, '--to', passStore, '--passphrase-file', pass]);
    const p = tmp.join('from-pass.img');
    await runOk(['restore', passStore, '--to', p, '--create', '--passphrase-file', pass]);
    expect(await sha256(p)).toBe(await sha256(img));
  });

  it('tampering is refused before any write: every byte of a small archive, truncation, extension, swapped and spliced chunks; the target is unchanged', async () => {
    // Every byte of a small (one-chunk) encrypted archive, through the library's pre-flight (info reads as apply does).
    const img = tmp.join('tiny.img');
    const m = new VolumeModel(img, 1 * MiB);
    m.write(0, textBytes(prng(9), 20_000));
    m.close();
    const tinyStore = tmp.join('tiny-store');
    await runOk(['send', '--image', img, '--to', tinyStore, '--encrypt-to', rcptA, '--state-dir', tmp.join('tiny-state')]);
    const tc = readdirSync(tinyStore).find((n) => /^[0-9a-f-]{36}$/.test(n))!;
    const tiny = join(tinyStore, tc, readdirSync(join(tinyStore, tc)).find((n) => n.endsWith('.tna.age'))!);
    const good = readFileSync(tiny);
    expect(good.length).toBeLessThan(64 * 1024);
    const ids = parseIdentityFile(readFileSync(keyA, 'utf8'), keyA);
    const flipped = tmp.join('flipped.tna.age');
    const codes = new Set<string>();
    for (let i = 0; i < good.length; i++) {
      const b = Buffer.from(good);
      b[i] ^= 0x20;
      writeFileSync(flipped, b);
      try {
        await info({ archive: flipped, storeOptions: { identities: ids } });
        throw new Error(`byte ${i} flipped was accepted`);
      } catch (e) {
        if (!(e instanceof ThinarchiveError)) throw e;
        codes.add(e.code);
      }
    }
    expect([...codes].sort()).toEqual(expect.arrayContaining(['AGE_AUTH']));
    // (a flip in the first line makes it no age file: then it is no archive either)
    for (const c of codes) expect(['AGE_AUTH', 'AGE_HEADER', 'AGE_WRONG_KEY', 'NOT_AN_ARCHIVE']).toContain(c);

    // Multi-chunk full archives of two images, applied by the CLI (--force) onto a target holding the first.
    const fulls: { file: string; hash: string }[] = [];
    for (const seed of [21, 22]) {
      const src = tmp.join(`multi-${seed}.img`);
      const mm = new VolumeModel(src, 2 * MiB);
      mm.write(0, noiseBytes(300_000 + seed));
      mm.close();
      const st = tmp.join(`multi-store-${seed}`);
      await runOk(['send', '--image', src, '--to', st, '--encrypt-to', rcptA, '--state-dir', tmp.join('multi-state')]);
      const c = readdirSync(st).find((n) => /^[0-9a-f-]{36}$/.test(n))!;
      fulls.push({ file: join(st, c, readdirSync(join(st, c)).find((n) => n.endsWith('.tna.age'))!), hash: await sha256(src) });
    }
    const target = tmp.join('tamper-target.img');
    await runOk(['apply', fulls[0].file, '--to', target, '--create', '--identity', keyA]);
    const before = await sha256(target);
    expect(before).toBe(fulls[0].hash);
    const second = readFileSync(fulls[1].file);
    const other = readFileSync(fulls[0].file);
    const CT = 64 * 1024 + 16;
    // The payload starts after the MAC line ("--- " + 43 base64 characters + newline) and the 16-byte nonce.
    const payloadOf = (b: Buffer): number => b.indexOf('\n---') + 1 + 48 + 16;
    const payload = payloadOf(second);
    expect(Math.ceil((second.length - payload) / CT)).toBeGreaterThanOrEqual(3);
    const at = (buf: Buffer, i: number): Buffer => buf.subarray(payload + i * CT, payload + (i + 1) * CT);
    const otherPayload = payloadOf(other);
    const flip = (i: number): Buffer => {
      const b = Buffer.from(second);
      b[i] ^= 1;
      return b;
    };
    const variants: Record<string, Buffer> = {
      // (another base64 letter: a valid header whose MAC no longer matches)
      'a byte of the header MAC': (() => {
        const b = Buffer.from(second);
        const i = second.indexOf('\n---') + 20;
        b[i] = b[i] === 0x41 ? 0x42 : 0x41;
        return b;
      })(),
      'a byte of the first chunk': flip(payload + 100),
      'a byte of a middle chunk': flip(payload + CT + 5000),
      'a byte of the last chunk': flip(second.length - 3),
      truncated: second.subarray(0, second.length - 1000),
      'truncated at a chunk boundary': second.subarray(0, payload + 2 * CT),
      extended: Buffer.concat([second, Buffer.from('x')]),
      'chunks 0 and 1 swapped': Buffer.concat([second.subarray(0, payload), at(second, 1), at(second, 0), second.subarray(payload + 2 * CT)]),
      'chunk 1 from another archive': Buffer.concat([second.subarray(0, payload + CT), other.subarray(otherPayload + CT, otherPayload + 2 * CT), second.subarray(payload + 2 * CT)]),
    };
    const bad = tmp.join(`${fulls[1].file.replace(/.*\//, '')}`);
    for (const [what, b] of Object.entries(variants)) {
      writeFileSync(bad, b);
      const r = await run(['apply', bad, '--to', target, '--force', '--identity', keyA, '--json']);
      expect(r.code, `${what}: ${show(r)}`).toBe(3);
      expect(JSON.parse(r.stdout).error.code, what).toBe('AGE_AUTH');
      expect(await sha256(target), what).toBe(before);
    }
    // The good archive still applies: nothing was begun on the target (no recovery needed).
    copyFileSync(fulls[1].file, bad);
    const ok = JSON.parse((await runOk(['apply', bad, '--to', target, '--force', '--identity', keyA, '--json'])).stdout) as { recovered?: unknown };
    expect(ok.recovered).toBeUndefined();
    expect(await sha256(target)).toBe(fulls[1].hash);
  });
});

describe('merging an encrypted chain', () => {
  it('the merged archive is encrypted (to the recipients file given, else to the identity), every point still restores', async () => {
    const store = tmp.join('merge-store');
    const hashes = await writeOnlyChain(store);
    const rf = tmp.join('recipients.txt');
    writeFileSync(rf, `# both keys\n${rcptA}\n${rcptB}\n`);
    const m = JSON.parse((await runOk(['merge', store, '--from', '1', '--to', '2', '--identity', keyA, '--recipients-file', rf, '--json'])).stdout) as { path: string; deleted: string[] };
    expect(m.path).toMatch(/\.tna\.age$/);
    expect(m.deleted).toHaveLength(2);
    for (const k of [keyA, keyB]) execFileSync('age', ['-d', '-i', k, '-o', tmp.join('merged.tna'), m.path]);
    await runOk(['verify', tmp.join('merged.tna')]);
    // points 0, 2 (the merged archive) and 3 restore with either key
    for (const [at, k] of [[0, keyB], [2, keyA], [3, keyB]] as const) {
      const t = tmp.join(`merged-r${at}.img`);
      await runOk(['restore', store, '--at', String(at), '--to', t, '--create', '--identity', k]);
      expect(await sha256(t), `point ${at}`).toBe(hashes[at]);
    }
    // Without recipients: to the identity's own recipient (only keyA reads it then).
    const m2 = JSON.parse((await runOk(['merge', store, '--from', '1', '--to', '3', '--identity', keyA, '--json'])).stdout) as { path: string };
    execFileSync('age', ['-d', '-i', keyA, '-o', tmp.join('merged2.tna'), m2.path]);
    expect(spawnSync('age', ['-d', '-i', keyB, '-o', tmp.join('merged3.tna'), m2.path]).status).not.toBe(0);
  }, 240_000);
});

function existsIn(path: string): boolean {
  try {
    readFileSync(path);
    return true;
  } catch {
    return false;
  }
}

const sshAvail = sshdAvailable();
if (!sshAvail.ok && ciSet()) throw new Error(`sshd is not available under CI: ${sshAvail.reason}`);

describe.skipIf(!sshAvail.ok)('encrypted archives in an ssh:// store', () => {
  let sshd: Sshd;
  beforeAll(async () => {
    sshd = await startSshd();
  }, 60_000);
  afterAll(async () => {
    await sshd?.stop();
  });

  it('a write-only chain is restored at every point and listed without the identity', async () => {
    const url = sshd.url(join(sshd.dir, 'store'));
    const o = [`IdentityFile=${sshd.key}`, 'IdentitiesOnly=yes', 'BatchMode=yes', `UserKnownHostsFile=${join(sshd.dir, 'known_hosts')}`,
      'StrictHostKeyChecking=yes', 'GSSAPIAuthentication=no', 'LogLevel=ERROR'].flatMap((x) => ['-o', x]);
    const hashes = await writeOnlyChain(url, o);
    const l = JSON.parse((await runOk(['list', url, '--json', ...o])).stdout) as { archives: { sequence: number; status: string }[] }[];
    expect(l[0].archives.map((a) => [a.sequence, a.status])).toEqual([0, 1, 2, 3].map((s) => [s, 'encrypted (no identity given)']));
    await restoreEach(url, hashes, keyB, o);
  }, 240_000);
});

const ceph = await cephOrSkip();

describe.skipIf(!ceph)('encrypted archives in an s3:// store (ranged reads)', () => {
  it('a write-only chain is restored at every point, applied and verified against', async () => {
    const { rawClient } = await import('../store/s3-helpers.js');
    const raw = rawClient(ceph!);
    try {
      const env = ceph!.env();
      const url = `s3://${await newBucket(raw, 'enc')}/vm`;
      const hashes = await writeOnlyChain(url, [], env);
      await restoreEach(url, hashes, keyA, [], env);
      const t = tmp.join('s3-applied.img');
      await runOk(['apply', url, '--to', t, '--create', '--identity', keyB], { env });
      expect(await sha256(t)).toBe(hashes[3]);
      const v = JSON.parse((await runOk(['verify', url, '--against', t, '--json', '--identity', keyA], { env })).stdout) as { ok: boolean };
      expect(v.ok).toBe(true);
    } finally {
      raw.destroy();
    }
  }, 300_000);
});
