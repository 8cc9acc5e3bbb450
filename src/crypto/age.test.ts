// The age layer against Debian's `age` binary, both ways, and its own random access and tamper checks.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AgeByteSource, AgeEncryptor, decryptStream } from '../archive/encrypted.js';
import { WorkerPool } from '../archive/pool.js';
import { FileByteSource, type ByteSource } from '../archive/reader.js';
import { ThinarchiveError } from '../errors.js';
import {
  bech32Decode, bech32Encode, CHUNK, Passphrase, parseIdentityFile, parsePassphraseFile, parseRecipient, parseRecipientsFile, X25519Identity,
  type Identity, type Recipient,
} from './age.js';

const dir = mkdtempSync(join(tmpdir(), 'age-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function memSource(b: Buffer, label = 'mem'): ByteSource & { reads: [number, number][] } {
  const reads: [number, number][] = [];
  return {
    label, size: b.length, reads,
    async read(offset, len) {
      reads.push([offset, len]);
      return b.subarray(offset, Math.min(b.length, offset + len));
    },
    async *stream(start = 0) {
      for (let at = start; at < b.length; at += 100_000) yield b.subarray(at, Math.min(b.length, at + 100_000));
    },
    async close() {},
  };
}

/** memSource with positional reads, as a local file has (the pooled paths need them). */
function fileLike(b: Buffer): ByteSource {
  return {
    ...memSource(b),
    async readInto(buf, offset, length, position) {
      const n = Math.max(0, Math.min(length, b.length - position));
      buf.set(b.subarray(position, position + n), offset);
      return n;
    },
  };
}

async function encrypt(plain: Buffer, recipients: Recipient[], piece = 10_000, pool?: WorkerPool): Promise<Buffer> {
  const parts: Buffer[] = [];
  const e = new AgeEncryptor(recipients, async (b) => {
    parts.push(Buffer.from(b));
  });
  if (pool) await e.usePool(pool);
  for (let at = 0; at < plain.length; at += piece) await e.write(plain.subarray(at, at + piece));
  await e.finish();
  return Buffer.concat(parts);
}

async function decryptAll(cipher: Buffer, ids: Identity[]): Promise<Buffer> {
  const s = await AgeByteSource.open(memSource(cipher), ids);
  const out: Buffer[] = [];
  for await (const c of s.stream(0)) out.push(Buffer.from(c));
  return Buffer.concat(out);
}

function keygen(): { file: string; recipient: string } {
  const file = join(dir, `key-${randomBytes(4).toString('hex')}.txt`);
  execFileSync('age-keygen', ['-o', file], { stdio: 'pipe' });
  const recipient = execFileSync('age-keygen', ['-y', file]).toString().trim();
  return { file, recipient };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ThinarchiveError) return e.code;
    throw e;
  }
  return 'ok';
}

describe('bech32 and keys', () => {
  it('round-trips and rejects a changed character', () => {
    const data = randomBytes(32);
    const s = bech32Encode('age', data);
    expect(Buffer.from(bech32Decode(s)!.data)).toEqual(data);
    const bad = s.slice(0, 10) + (s[10] === 'q' ? 'p' : 'q') + s.slice(11);
    expect(bech32Decode(bad)).toBeUndefined();
  });

  it('a generated identity is read by age-keygen -y, which gives the same recipient', () => {
    const { identity, encoded } = X25519Identity.generate();
    const f = join(dir, 'gen.txt');
    writeFileSync(f, `# test\n${encoded}\n`);
    expect(execFileSync('age-keygen', ['-y', f]).toString().trim()).toBe(identity.recipient);
    expect(parseIdentityFile(readFileSync(f, 'utf8'), 'f')[0].recipient).toBe(identity.recipient);
  });

  it('bad keys are one-line KEY_INVALID errors that never quote a secret', () => {
    const { encoded } = X25519Identity.generate();
    const broken = `${encoded.slice(0, -1)}${encoded.endsWith('Q') ? 'P' : 'Q'}`;
    let msg = '';
    try {
      parseIdentityFile(`${broken}\n`, 'id.txt');
    } catch (e) {
      expect((e as ThinarchiveError).code).toBe('KEY_INVALID');
      msg = (e as Error).message;
    }
    expect(msg).toMatch(/^id\.txt: line 1/);
    expect(msg).not.toContain(broken.slice(20, 40));
    expect(() => parseRecipient('age1nope')).toThrow(/not an age X25519 recipient/);
    expect(() => parseRecipientsFile('# only a comment\n', 'r.txt')).toThrow(/holds no recipient/);
    expect(() => parsePassphraseFile('\n', 'p.txt')).toThrow(/is empty/);
    expect(JSON.stringify({ id: parseIdentityFile(encoded, 'x')[0], p: new Passphrase('hunter2') })).not.toMatch(/AGE-SECRET|hunter2/);
  });
});

describe('interop with the age binary', () => {
  const sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17];

  it('age -d -i decrypts what we encrypt, byte for byte, for every chunk boundary case (on this thread and sealed on the worker pool)', async () => {
    const k = keygen();
    const pool = new WorkerPool(2);
    try {
      for (const n of [...sizes, 16 * CHUNK - 1, 16 * CHUNK, 16 * CHUNK + 1, 50 * CHUNK + 7]) {
        const plain = randomBytes(n);
        for (const p of [undefined, pool]) {
          const f = join(dir, `ours-${n}.age`);
          writeFileSync(f, await encrypt(plain, [parseRecipient(k.recipient)], p ? 300_000 : 10_000, p));
          expect(execFileSync('age', ['-d', '-i', k.file, f], { maxBuffer: 1 << 26 }).equals(plain), `size ${n}${p ? ' (pool)' : ''}`).toBe(true);
        }
      }
      // Giving the pool up part-way (as a send does before its pool closes): the rest is sealed here.
      const plain = randomBytes(20 * CHUNK + 5);
      const parts: Buffer[] = [];
      const e = new AgeEncryptor([parseRecipient(k.recipient)], async (b) => { parts.push(Buffer.from(b)); });
      await e.usePool(pool);
      await e.write(plain.subarray(0, 17 * CHUNK + 3));
      await e.usePool(undefined);
      await e.write(plain.subarray(17 * CHUNK + 3));
      await e.finish();
      const f = join(dir, 'ours-switch.age');
      writeFileSync(f, Buffer.concat(parts));
      expect(execFileSync('age', ['-d', '-i', k.file, f], { maxBuffer: 1 << 26 }).equals(plain)).toBe(true);
    } finally {
      await pool.close();
    }
  });

  it('we decrypt what age -e -r encrypts, streamed, at random and from a stream of unknown length', async () => {
    const k = keygen();
    const ids = parseIdentityFile(readFileSync(k.file, 'utf8'), k.file);
    for (const n of sizes) {
      const plain = randomBytes(n);
      const cipher = execFileSync('age', ['-e', '-r', k.recipient], { input: plain, maxBuffer: 1 << 26 });
      expect((await decryptAll(cipher, ids)).equals(plain), `size ${n}`).toBe(true);
      const s = await AgeByteSource.open(memSource(cipher), ids);
      expect(s.size).toBe(n);
      if (n > 10) {
        const at = Math.floor(n / 2) - 5;
        expect(Buffer.from(await s.read(at, 10)).equals(plain.subarray(at, at + 10))).toBe(true);
      }
      const streamed: Buffer[] = [];
      for await (const c of decryptStream(memSource(cipher).stream(0), ids, 'stdin')) streamed.push(Buffer.from(c));
      expect(Buffer.concat(streamed).equals(plain)).toBe(true);
    }
  });

  it('two recipients: either identity decrypts, with age and with us; another identity is AGE_WRONG_KEY; none is AGE_NO_IDENTITY', async () => {
    const a = keygen();
    const b = keygen();
    const plain = randomBytes(200_000);
    const cipher = await encrypt(plain, [parseRecipient(a.recipient), parseRecipient(b.recipient)]);
    const f = join(dir, 'two.age');
    writeFileSync(f, cipher);
    for (const k of [a, b]) {
      expect(execFileSync('age', ['-d', '-i', k.file, f], { maxBuffer: 1 << 26 }).equals(plain)).toBe(true);
      expect((await decryptAll(cipher, parseIdentityFile(readFileSync(k.file, 'utf8'), 'k'))).equals(plain)).toBe(true);
    }
    expect(await codeOf(decryptAll(cipher, [X25519Identity.generate().identity]))).toBe('AGE_WRONG_KEY');
    expect(await codeOf(decryptAll(cipher, []))).toBe('AGE_NO_IDENTITY');
  });

  it('a passphrase archive: age -d decrypts ours (passphrase fed through a pseudo-terminal); we decrypt age -p', async () => {
    const plain = randomBytes(100_000);
    const pass = 'correct horse battery staple';
    const f = join(dir, 'pass.age');
    writeFileSync(f, await encrypt(plain, [{ kind: 'scrypt', passphrase: new Passphrase(pass), logN: 14 }]));
    const out = join(dir, 'pass.out');
    // age reads a passphrase from the terminal only; script(1) gives it one and passes our input to it.
    const r = spawnSync('script', ['-qec', `age -d -o ${out} ${f}`, '/dev/null'], { input: `${pass}\n`, timeout: 60_000 });
    expect(r.status, r.stdout.toString() + r.stderr.toString()).toBe(0);
    expect(readFileSync(out).equals(plain)).toBe(true);
    expect(await codeOf(decryptAll(readFileSync(f), [new Passphrase('wrong')]))).toBe('AGE_WRONG_KEY');
    // age -p the other way round (its work factor is 2^18).
    const f2 = join(dir, 'pass2.age');
    const r2 = spawnSync('script', ['-qec', `age -p -o ${f2} ${out}`, '/dev/null'], { input: `${pass}\n${pass}\n`, timeout: 60_000 });
    expect(r2.status, r2.stdout.toString() + r2.stderr.toString()).toBe(0);
    expect((await decryptAll(readFileSync(f2), [new Passphrase(pass)])).equals(plain)).toBe(true);
  });
});

describe('random access and tampering', () => {
  const id = X25519Identity.generate().identity;
  const rcpt = [parseRecipient(id.recipient)];
  const pool = new WorkerPool(2);
  afterAll(() => pool.close());

  it('a read decrypts only the chunks that hold its bytes, with one ranged read', async () => {
    const plain = randomBytes(10 * CHUNK + 100);
    const cipher = await encrypt(plain, rcpt);
    const src = memSource(cipher);
    const s = await AgeByteSource.open(src, [id]);
    src.reads.length = 0;
    const got = await s.read(4 * CHUNK + 10, CHUNK);
    expect(Buffer.from(got).equals(plain.subarray(4 * CHUNK + 10, 5 * CHUNK + 10))).toBe(true);
    expect(src.reads).toHaveLength(1);
    expect(src.reads[0][1]).toBe(2 * (CHUNK + 16));
 
    // A long read goes in ranged reads of at most 16 chunks, around the chunks still cached.
    src.reads.length = 0;
    const long = await s.read(0, plain.length);
    expect(Buffer.from(long).equals(plain)).toBe(true);
    expect(src.reads.map((r) => r[1] / (CHUNK + 16))).toEqual([4, 4]); // chunks 0-3 and 6-9 (4, 5 and 10 are cached)
    const big = randomBytes(40 * CHUNK);
    const bigSrc = memSource(await encrypt(big, rcpt));
    const b = await AgeByteSource.open(bigSrc, [id]);
    bigSrc.reads.length = 0;
    expect(Buffer.from(await b.read(0, big.length)).equals(big)).toBe(true);
    expect(bigSrc.reads.map((r) => r[1] / (CHUNK + 16))).toEqual([16, 16, 7]); // chunk 39 (the last) is cached
    const into = Buffer.alloc(CHUNK * 3);
    expect(await s.readInto(into, 7, CHUNK * 2, CHUNK + 1)).toBe(CHUNK * 2);
    expect(into.subarray(7, 7 + CHUNK * 2).equals(plain.subarray(CHUNK + 1, 3 * CHUNK + 1))).toBe(true);
  });

  it('concurrent reads (which evict each other from the chunk cache) all return the right bytes', async () => {
    const plain = randomBytes(20 * CHUNK + 3);
    const cipher = await encrypt(plain, rcpt);
    const mem = memSource(cipher);
    const slow: ByteSource = { ...mem, read: async (o, l) => {
      await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 5)));
      return mem.read(o, l);
    } };
    const s = await AgeByteSource.open(slow, [id]);
    let seed = 1;
    const rnd = (n: number): number => (seed = (seed * 48271) % 2147483647) % n;
    await Promise.all(Array.from({ length: 200 }, async () => {
      const at = rnd(plain.length);
      const len = 1 + rnd(3 * CHUNK);
      const got = Buffer.from(await s.read(at, len));
      expect(got.equals(plain.subarray(at, Math.min(plain.length, at + len)))).toBe(true);
    }));
  });

  it('pooled random reads reuse evicted chunk copies without handing out bytes a read in flight still holds', async () => {
    const plain = randomBytes(40 * CHUNK + 7);
    const cipher = await encrypt(plain, rcpt);
    const file = fileLike(cipher);
    const delay = (): Promise<void> => new Promise((r) => setTimeout(r, Math.floor(Math.random() * 4)));
    const slow: ByteSource = {
      ...file,
      read: async (o, l) => { await delay(); return file.read(o, l); },
      readInto: async (b, o, l, p) => { await delay(); return file.readInto!(b, o, l, p); },
    };
    const s = await AgeByteSource.open(slow, [id]);
    let seed = 7;
    const rnd = (n: number): number => (seed = (seed * 48271) % 2147483647) % n;
    const check = async (): Promise<void> => {
      const at = rnd(plain.length);
      const len = 1 + rnd(3 * CHUNK);
      const got = Buffer.from(await s.read(at, len));
      expect(got.equals(plain.subarray(at, Math.min(plain.length, at + len)))).toBe(true);
    };
    // pooled random reads fill the cache with copies; reads on this thread (the pool detached, in
    // turns) take cached copies and hold them across their awaits while pooled reads still in flight
    // evict copies: a copy may be reused only when no such read runs
    const reads: Promise<void>[] = [];
    for (let round = 0; round < 120; round++) {
      s.usePool(round % 2 === 0 ? pool : undefined, true);
      for (let k = 0; k < 5; k++) reads.push(check());
      await new Promise((r) => setTimeout(r, 1));
    }
    s.usePool(undefined);
    await Promise.all(reads);
  });

  it('every flipped byte, truncation, extension, swapped and spliced chunk fails authentication', async () => {
    const plain = randomBytes(2 * CHUNK + 500);
    const cipher = await encrypt(plain, rcpt);
    const full = async (b: Buffer): Promise<string> => codeOf((async () => {
      const s = await AgeByteSource.open(memSource(b), [id]);
      await s.authenticate();
    })());
    // The same on the worker pool (apply's pre-flight): it must agree on every variant.
    const pooled = async (b: Buffer): Promise<string> => codeOf((async () => {
      const s = await AgeByteSource.open(fileLike(b), [id]);
      await s.authenticate(pool);
    })());
    const streamed = async (b: Buffer): Promise<string> => codeOf((async () => {
      for await (const _ of decryptStream(memSource(b).stream(0), [id], 'stdin')) { /* read it all */ }
    })());
    expect(await full(cipher)).toBe('ok');
    expect(await pooled(cipher)).toBe('ok');
    // Every byte of the header and of each chunk's first and last 64 bytes, and a stride through the rest.
    const headerEnd = cipher.indexOf('\n---') + 50;
    const positions = new Set<number>();
    for (let i = 0; i < cipher.length; i++) {
      const inChunk = (i - headerEnd) % (CHUNK + 16);
      if (i < headerEnd + 16 || inChunk < 64 || inChunk > CHUNK + 16 - 64 || i % 97 === 0 || i > cipher.length - 600) positions.add(i);
    }
    for (const i of positions) {
      const b = Buffer.from(cipher);
      b[i] ^= 0x01;
      const c = await full(b);
      expect(['AGE_AUTH', 'AGE_HEADER', 'AGE_WRONG_KEY'], `byte ${i}`).toContain(c);
      expect(await pooled(b), `byte ${i} (pool)`).toBe(c);
    }
    const payload = cipher.length - (2 * (CHUNK + 16) + 516);
    const chunkAt = (i: number): Buffer => cipher.subarray(payload + i * (CHUNK + 16), payload + (i + 1) * (CHUNK + 16));
    const variants: Record<string, Buffer> = {
      'truncated by one byte': cipher.subarray(0, cipher.length - 1),
      'truncated at a chunk boundary': cipher.subarray(0, payload + 2 * (CHUNK + 16)),
      'truncated to the header': cipher.subarray(0, payload),
      'extended by one byte': Buffer.concat([cipher, Buffer.from([0])]),
      'extended by a chunk': Buffer.concat([cipher, chunkAt(0)]),
      'first two chunks swapped': Buffer.concat([cipher.subarray(0, payload), chunkAt(1), chunkAt(0), cipher.subarray(payload + 2 * (CHUNK + 16))]),
    };
    // A chunk spliced in from another archive encrypted to the same recipient.
    const other = await encrypt(randomBytes(2 * CHUNK + 500), rcpt);
    variants['chunk 1 from another archive'] = Buffer.concat([cipher.subarray(0, payload + CHUNK + 16), other.subarray(payload + CHUNK + 16, payload + 2 * (CHUNK + 16)), cipher.subarray(payload + 2 * (CHUNK + 16))]);
    for (const [what, b] of Object.entries(variants)) {
      expect(await full(b), what).toBe('AGE_AUTH');
      expect(await pooled(b), `${what} (pool)`).toBe('AGE_AUTH');
      expect(await streamed(b), `${what} (stream)`).toBe('AGE_AUTH');
    }
  });

  it('on the worker pool: positional reads decrypt batches ahead, in order or not, and a damaged batch fails the read that needs it', async () => {
    const plain = randomBytes(53 * CHUNK + 123); // four batches of 16 chunks, the last short
    const cipher = await encrypt(plain, rcpt);
    const file = join(dir, 'pooled.age');
    writeFileSync(file, cipher);
    const s = await AgeByteSource.open(await FileByteSource.open(file), [id]);
    s.usePool(pool);
    expect(s.streamPreferred).toBe(false);
    const got = Buffer.alloc(plain.length);
    let seed = 7;
    const rnd = (n: number): number => (seed = (seed * 48271) % 2147483647) % n;
    for (let at = 0; at < plain.length;) {
      const n = Math.min(plain.length - at, 1 + rnd(300_000));
      expect(await s.readInto(got, at, n, at)).toBe(n);
      at += n;
    }
    expect(got.equals(plain)).toBe(true);
    // Backwards and across batches (released batches are opened again).
    for (const [at, n] of [[5, 100], [15 * CHUNK, 3 * CHUNK], [plain.length - 10, 10], [0, plain.length]]) {
      expect(Buffer.from(await s.read(at, n)).equals(plain.subarray(at, at + n)), `${at}+${n}`).toBe(true);
    }
    // Random mode (restore, merge): concurrent reads anywhere, each opening just its chunks on the pool.
    s.usePool(pool, true);
    expect(s.streamPreferred).toBe(true);
    await Promise.all(Array.from({ length: 100 }, async () => {
      const at = rnd(plain.length);
      const n = 1 + rnd(20 * CHUNK);
      const into = Buffer.alloc(n + 3);
      const got = await s.readInto(into, 3, n, at);
      expect(into.subarray(3, 3 + got).equals(plain.subarray(at, at + n)), `${at}+${n}`).toBe(true);
    }));
    s.usePool(undefined);
    expect(s.streamPreferred).toBe(true);
    await s.close();
    // A byte of chunk 40 (batch 2) flipped: batches 0 and 1 read, the read reaching batch 2 is AGE_AUTH.
    const bad = Buffer.from(cipher);
    const payload = cipher.length - (53 * (CHUNK + 16) + 123 + 16);
    bad[payload + 40 * (CHUNK + 16) + 9] ^= 0x80;
    writeFileSync(file, bad);
    const t = await AgeByteSource.open(await FileByteSource.open(file), [id]);
    t.usePool(pool);
    expect(Buffer.from(await t.read(0, 32 * CHUNK)).equals(plain.subarray(0, 32 * CHUNK))).toBe(true);
    expect(await codeOf(t.read(32 * CHUNK, 10 * CHUNK))).toBe('AGE_AUTH');
    t.usePool(pool, true);
    expect(Buffer.from(await t.read(41 * CHUNK, 5 * CHUNK)).equals(plain.subarray(41 * CHUNK, 46 * CHUNK))).toBe(true);
    expect(await codeOf(t.read(39 * CHUNK + 5, 2 * CHUNK))).toBe('AGE_AUTH');
    await t.close();
  });
});
