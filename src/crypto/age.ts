/**
 * The age v1 file format (C2SP age, https://age-encryption.org/v1), with Node's built-in primitives:
 * X25519, HKDF-SHA-256, HMAC-SHA-256, scrypt and ChaCha20-Poly1305 (OpenSSL). Pure functions and small
 * classes over byte arrays; no I/O. docs/FORMAT.md §3.4 "Encrypted archives" says how thinarchive uses it.
 *
 * Why not the `age-encryption` npm package (typage): its decrypting stream is forward-only and it
 * keeps no public API for decrypting one chunk at a given index, which readers that seek need (the
 * index, a record, a ranged GET from s3://); its encrypting side is a WHATWG stream. The parts age
 * needs are each a few lines over OpenSSL, and the interop tests against Debian's `age` binary
 * (src/crypto/age.test.ts) check them in both directions.
 *
 * Secrets (file keys, identities, passphrases) never appear in an error message: errors name the
 * archive, the stanza type and what failed, nothing else.
 */
import {
  createCipheriv, createDecipheriv, createHmac, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync,
  randomBytes, scryptSync, timingSafeEqual, type KeyObject,
} from 'node:crypto';
import { FormatError, UsageError } from '../errors.js';
import { madeGarbage } from '../gc.js';

export const AGE_INTRO = 'age-encryption.org/v1\n';
/** Plaintext bytes per STREAM chunk. */
export const CHUNK = 64 * 1024;
const TAG = 16;
/** Ciphertext bytes of a full chunk. */
export const CHUNK_CT = CHUNK + TAG;
/** The payload nonce after the header. */
export const NONCE_SIZE = 16;
/** The largest header read (stanzas beyond this are refused). */
export const MAX_HEADER = 64 * 1024;
/** scrypt work factor for new passphrase archives (age's default); the largest accepted when reading. */
export const SCRYPT_LOG_N = 18;
export const SCRYPT_MAX_LOG_N = 20;

// ---------------------------------------------------------------------------------------------------
// bech32 (BIP 173, without its 90-character limit, as age uses it)

const CHARSET = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';
const GEN = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];

function polymod(values: number[]): number {
  let chk = 1;
  for (const v of values) {
    const b = chk >>> 25;
    chk = ((chk & 0x1ffffff) << 5) ^ v;
    for (let i = 0; i < 5; i++) if ((b >>> i) & 1) chk ^= GEN[i];
  }
  return chk >>> 0;
}

function hrpExpand(hrp: string): number[] {
  const out: number[] = [];
  for (const c of hrp) out.push(c.charCodeAt(0) >> 5);
  out.push(0);
  for (const c of hrp) out.push(c.charCodeAt(0) & 31);
  return out;
}

function convertBits(data: Uint8Array | number[], from: number, to: number, pad: boolean): number[] | undefined {
  let acc = 0;
  let bits = 0;
  const out: number[] = [];
  const maxv = (1 << to) - 1;
  for (const v of data) {
    acc = (acc << from) | v;
    bits += from;
    while (bits >= to) {
      bits -= to;
      out.push((acc >> bits) & maxv);
    }
  }
  if (pad) {
    if (bits > 0) out.push((acc << (to - bits)) & maxv);
  } else if (bits >= from || ((acc << (to - bits)) & maxv) !== 0) return undefined;
  return out;
}

export function bech32Encode(hrp: string, data: Uint8Array): string {
  const words = convertBits(data, 8, 5, true)!;
  const values = [...hrpExpand(hrp), ...words];
  const mod = polymod([...values, 0, 0, 0, 0, 0, 0]) ^ 1;
  const checksum = [0, 1, 2, 3, 4, 5].map((i) => (mod >>> (5 * (5 - i))) & 31);
  return `${hrp}1${[...words, ...checksum].map((w) => CHARSET[w]).join('')}`;
}

/** The human-readable part (lower case) and the data of a bech32 string; undefined when invalid. */
export function bech32Decode(s: string): { hrp: string; data: Uint8Array } | undefined {
  if (s !== s.toLowerCase() && s !== s.toUpperCase()) return undefined;
  const str = s.toLowerCase();
  const pos = str.lastIndexOf('1');
  if (pos < 1 || pos + 7 > str.length) return undefined;
  const hrp = str.slice(0, pos);
  for (const c of hrp) if (c.charCodeAt(0) < 33 || c.charCodeAt(0) > 126) return undefined;
  const words: number[] = [];
  for (const c of str.slice(pos + 1)) {
    const v = CHARSET.indexOf(c);
    if (v < 0) return undefined;
    words.push(v);
  }
  if (polymod([...hrpExpand(hrp), ...words]) !== 1) return undefined;
  const bytes = convertBits(words.slice(0, -6), 5, 8, false);
  return bytes ? { hrp, data: Uint8Array.from(bytes) } : undefined;
}

// ---------------------------------------------------------------------------------------------------
// keys

const PKCS8_X25519 = Buffer.from('302e020100300506032b656e04220420', 'hex');
const SPKI_X25519 = Buffer.from('302a300506032b656e032100', 'hex');

function privateKeyOf(raw: Uint8Array): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_X25519, raw]), format: 'der', type: 'pkcs8' });
}

function publicKeyOf(raw: Uint8Array): KeyObject {
  return createPublicKey({ key: Buffer.concat([SPKI_X25519, raw]), format: 'der', type: 'spki' });
}

function rawPublic(k: KeyObject): Buffer {
  return k.export({ format: 'der', type: 'spki' }).subarray(SPKI_X25519.length);
}

/** An X25519 identity (the secret key). Its toJSON and inspection never show the key. */
export class X25519Identity {
  readonly kind = 'x25519';
  readonly #key: KeyObject;
  /** The recipient (`age1…`) of this identity. */
  readonly recipient: string;
  readonly #publicRaw: Buffer;

  private constructor(key: KeyObject) {
    this.#key = key;
    this.#publicRaw = rawPublic(createPublicKey(key));
    this.recipient = bech32Encode('age', this.#publicRaw);
  }

  static fromRaw(raw: Uint8Array): X25519Identity {
    return new X25519Identity(privateKeyOf(raw));
  }

  static generate(): { identity: X25519Identity; encoded: string } {
    const { privateKey } = generateKeyPairSync('x25519');
    const raw = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(PKCS8_X25519.length);
    return { identity: new X25519Identity(privateKey), encoded: bech32Encode('age-secret-key-', raw).toUpperCase() };
  }

  /** The file key of an X25519 stanza addressed to this identity, undefined when it is not. */
  unwrap(s: Stanza): Buffer | undefined {
    if (s.type !== 'X25519') return undefined;
    const share = Buffer.from(s.args[0], 'base64');
    let shared: Buffer;
    try {
      shared = diffieHellman({ privateKey: this.#key, publicKey: publicKeyOf(share) });
    } catch {
      return undefined;
    }
    if (shared.every((b) => b === 0)) return undefined;
    const key = Buffer.from(hkdfSync('sha256', shared, Buffer.concat([share, this.#publicRaw]), 'age-encryption.org/v1/X25519', 32));
    return aeadOpen(key, s.body);
  }

  toJSON(): string {
    return '[identity]';
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `X25519Identity(${this.recipient})`;
  }
}

/** A passphrase (scrypt stanza); never shown. */
export class Passphrase {
  readonly kind = 'scrypt';
  readonly #secret: Buffer;
  constructor(secret: string) {
    this.#secret = Buffer.from(secret, 'utf8');
  }

  /** The scrypt wrapping key for this salt and work factor. */
  key(salt: Buffer, logN: number): Buffer {
    return scryptSync(this.#secret, Buffer.concat([Buffer.from('age-encryption.org/v1/scrypt'), salt]), 32, {
      N: 2 ** logN, r: 8, p: 1, maxmem: 256 * 8 * 2 ** logN,
    });
  }

  unwrap(s: Stanza): Buffer | undefined {
    if (s.type !== 'scrypt') return undefined;
    const logN = Number(s.args[1]);
    return aeadOpen(this.key(Buffer.from(s.args[0], 'base64'), logN), s.body);
  }

  toJSON(): string {
    return '[passphrase]';
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return 'Passphrase([hidden])';
  }
}

export type Identity = X25519Identity | Passphrase;

/** Who a new archive is encrypted to: X25519 public keys, or one passphrase. */
export type Recipient = { kind: 'x25519'; publicKey: Buffer; text: string } | { kind: 'scrypt'; passphrase: Passphrase; logN: number };

/** Who an archive readable by `id` is encrypted to: its X25519 recipient, or the same passphrase. */
export function recipientOf(id: Identity): Recipient {
  return id instanceof Passphrase ? { kind: 'scrypt', passphrase: id, logN: SCRYPT_LOG_N } : parseRecipient(id.recipient);
}

function keyError(message: string): UsageError {
  return new UsageError(message, 'KEY_INVALID');
}

/** A recipient `age1…`; KEY_INVALID when it is not one. */
export function parseRecipient(text: string): Recipient {
  const d = bech32Decode(text.trim());
  if (!d || d.hrp !== 'age' || d.data.length !== 32) {
    throw keyError(`not an age X25519 recipient (age1…): ${JSON.stringify(text.trim().slice(0, 80))}`);
  }
  return { kind: 'x25519', publicKey: Buffer.from(d.data), text: text.trim() };
}

/** The lines of a recipients or identity file that are not blank or `#` comments. */
function keyLines(text: string): string[] {
  return text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
}

/** Every recipient of a recipients file (one `age1…` per line, `#` comments); `what` names it in errors. */
export function parseRecipientsFile(text: string, what: string): Recipient[] {
  const lines = keyLines(text);
  if (lines.length === 0) throw keyError(`${what} holds no recipient`);
  return lines.map((l, i) => {
    try {
      return parseRecipient(l);
    } catch {
      throw keyError(`${what}: recipient ${i + 1} is not an age X25519 recipient (age1…)`);
    }
  });
}

/**
 * Every identity of an identity file in age's format (`AGE-SECRET-KEY-1…` lines, `#` comments, as
 * age-keygen writes it). The error never quotes the file's contents.
 */
export function parseIdentityFile(text: string, what: string): X25519Identity[] {
  const lines = keyLines(text);
  if (lines.length === 0) throw keyError(`${what} holds no identity (AGE-SECRET-KEY-1… lines)`);
  return lines.map((l, i) => {
    const d = l.startsWith('AGE-SECRET-KEY-1') ? bech32Decode(l) : undefined;
    if (!d || d.hrp !== 'age-secret-key-' || d.data.length !== 32) {
      throw keyError(`${what}: line ${i + 1} of its keys is not an age identity (AGE-SECRET-KEY-1…)`);
    }
    return X25519Identity.fromRaw(d.data);
  });
}

/** A passphrase file's passphrase: its contents without one trailing newline; KEY_INVALID when empty. */
export function parsePassphraseFile(text: string, what: string): Passphrase {
  const p = text.replace(/\r?\n$/, '');
  if (p === '') throw keyError(`${what} is empty`);
  return new Passphrase(p);
}

// ---------------------------------------------------------------------------------------------------
// header

export interface Stanza {
  type: string;
  args: string[];
  body: Buffer;
}

const ZERO_NONCE = Buffer.alloc(12);

/** The ciphertext and the tag (kept apart: the caller concatenates once, for many chunks). */
function aeadSealParts(key: Buffer, plain: Uint8Array, nonce: Uint8Array = ZERO_NONCE): [Buffer, Buffer] {
  const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG });
  const ct = c.update(plain);
  c.final(); // (a stream cipher: nothing is held back)
  return [ct, c.getAuthTag()];
}

function aeadSeal(key: Buffer, plain: Uint8Array, nonce: Uint8Array = ZERO_NONCE): Buffer {
  return Buffer.concat(aeadSealParts(key, plain, nonce));
}

function aeadOpen(key: Buffer, sealed: Uint8Array, nonce: Uint8Array = ZERO_NONCE): Buffer | undefined {
  if (sealed.length < TAG) return undefined;
  const d = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG });
  d.setAuthTag(sealed.subarray(sealed.length - TAG));
  try {
    const plain = d.update(sealed.subarray(0, sealed.length - TAG));
    d.final(); // throws when the tag does not match (a stream cipher: it returns no bytes)
    return plain;
  } catch {
    return undefined;
  }
}

/** base64 without padding (age's encoding). */
function b64(b: Uint8Array): string {
  return Buffer.from(b).toString('base64').replace(/=+$/, '');
}

/** Canonical unpadded base64, or undefined. */
function unb64(s: string): Buffer | undefined {
  if (!/^[A-Za-z0-9+/]*$/.test(s) || s.length % 4 === 1) return undefined;
  const b = Buffer.from(s, 'base64');
  return b64(b) === s ? b : undefined;
}

function stanzaText(s: Stanza): string {
  const body = b64(s.body);
  const lines: string[] = [];
  for (let i = 0; i <= body.length; i += 64) lines.push(body.slice(i, i + 64));
  // (the last line is shorter than 64 columns: empty when the encoding fills its lines exactly)
  return `-> ${[s.type, ...s.args].join(' ')}\n${lines.join('\n')}\n`;
}

function hkdf(ikm: Buffer, salt: Buffer, info: string): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, salt, info, 32));
}

function headerMac(fileKey: Buffer, upToDashes: string): Buffer {
  return createHmac('sha256', hkdf(fileKey, Buffer.alloc(0), 'header')).update(upToDashes, 'latin1').digest();
}

/** The payload key of a file key and payload nonce. */
export function payloadKey(fileKey: Buffer, nonce: Buffer): Buffer {
  return hkdf(fileKey, nonce, 'payload');
}

/** A new file's header and payload nonce (header || nonce is what the file starts with) and its payload key. */
export function newHeader(recipients: Recipient[]): { prefix: Buffer; key: Buffer } {
  if (recipients.length === 0) throw new UsageError('no recipient to encrypt to', 'KEY_INVALID');
  if (recipients.some((r) => r.kind === 'scrypt') && recipients.length > 1) {
    throw new UsageError('a passphrase archive has the passphrase as its only recipient (age allows no other stanza beside scrypt)', 'KEY_INVALID');
  }
  const fileKey = randomBytes(16);
  const stanzas: Stanza[] = recipients.map((r) => {
    if (r.kind === 'scrypt') {
      const salt = randomBytes(16);
      return { type: 'scrypt', args: [b64(salt), String(r.logN)], body: aeadSeal(r.passphrase.key(salt, r.logN), fileKey) };
    }
    const { privateKey, publicKey } = generateKeyPairSync('x25519');
    const share = rawPublic(publicKey);
    const shared = diffieHellman({ privateKey, publicKey: publicKeyOf(r.publicKey) });
    const wrap = Buffer.from(hkdfSync('sha256', shared, Buffer.concat([share, r.publicKey]), 'age-encryption.org/v1/X25519', 32));
    return { type: 'X25519', args: [b64(share)], body: aeadSeal(wrap, fileKey) };
  });
  const upTo = `${AGE_INTRO}${stanzas.map(stanzaText).join('')}---`;
  const header = Buffer.from(`${upTo} ${b64(headerMac(fileKey, upTo))}\n`, 'latin1');
  const nonce = randomBytes(NONCE_SIZE);
  return { prefix: Buffer.concat([header, nonce]), key: payloadKey(fileKey, nonce) };
}

export interface ParsedHeader {
  stanzas: Stanza[];
  /** The header's text up to and including `---` (what the MAC covers). */
  macInput: string;
  mac: Buffer;
  /** Bytes of the header, through its final newline (the payload nonce follows). */
  length: number;
}

function headerError(detail: string, file?: string): FormatError {
  return new FormatError('AGE_HEADER', `age header: ${detail}`, undefined, file);
}

/** True when `b` starts like an age v1 file (or with as much of the intro line as it holds). */
export function looksLikeAge(b: Uint8Array): boolean {
  const n = Math.min(b.length, AGE_INTRO.length);
  return n > 0 && Buffer.from(b.subarray(0, n)).toString('latin1') === AGE_INTRO.slice(0, n);
}

/**
 * Parse an age header at the start of `b`. Returns undefined when `b` ends before the header does
 * (read more), else the header; FormatError AGE_HEADER when it is not a valid age v1 header.
 */
export function parseHeader(b: Uint8Array, file?: string): ParsedHeader | undefined {
  const text = Buffer.from(b).toString('latin1');
  if (text.startsWith('-----BEGIN AGE ENCRYPTED FILE-----')) throw headerError('ASCII-armored age files are not read (age -d them first, or encrypt without -a)', file);
  if (!text.startsWith(AGE_INTRO)) {
    if (text.length < AGE_INTRO.length && AGE_INTRO.startsWith(text)) return undefined;
    throw headerError('not an age v1 file', file);
  }
  let at = AGE_INTRO.length;
  const stanzas: Stanza[] = [];
  const line = (): string | undefined => {
    const nl = text.indexOf('\n', at);
    if (nl < 0) return undefined;
    const l = text.slice(at, nl);
    at = nl + 1;
    return l;
  };
  for (;;) {
    const start = at;
    const l = line();
    if (l === undefined) return undefined;
    if (l.startsWith('---')) {
      const m = /^--- ([A-Za-z0-9+/]{43})$/.exec(l);
      const mac = m ? unb64(m[1]) : undefined;
      if (!mac || mac.length !== 32) throw headerError('bad MAC line', file);
      if (stanzas.length === 0) throw headerError('no recipient stanza', file);
      return { stanzas, macInput: text.slice(0, start + 3), mac, length: at };
    }
    if (!l.startsWith('-> ')) throw headerError('bad stanza line', file);
    const parts = l.slice(3).split(' ');
    if (parts.some((p) => p === '' || !/^[\x21-\x7e]+$/.test(p))) throw headerError('bad stanza arguments', file);
    const chunks: Buffer[] = [];
    for (;;) {
      const bl = line();
      if (bl === undefined) return undefined;
      const d = unb64(bl);
      if (!d || bl.length > 64) throw headerError('bad stanza body', file);
      chunks.push(d);
      if (bl.length < 64) break;
    }
    stanzas.push({ type: parts[0], args: parts.slice(1), body: Buffer.concat(chunks) });
    if (at > MAX_HEADER) throw headerError(`larger than ${MAX_HEADER} bytes`, file);
  }
}

/** AGE_HEADER unless the stanzas are as age requires: scrypt alone; X25519 and scrypt stanzas well-formed. */
export function checkStanzas(h: ParsedHeader, file: string): void {
  if (h.stanzas.some((s) => s.type === 'scrypt') && h.stanzas.length > 1) throw headerError('an scrypt stanza must be the only one', file);
  for (const s of h.stanzas) {
    if (s.type === 'X25519' && (s.args.length !== 1 || unb64(s.args[0])?.length !== 32 || s.body.length !== 32)) throw headerError('bad X25519 stanza', file);
    if (s.type === 'scrypt') {
      if (s.args.length !== 2 || unb64(s.args[0])?.length !== 16 || !/^[1-9][0-9]?$/.test(s.args[1]) || s.body.length !== 32) throw headerError('bad scrypt stanza', file);
      if (Number(s.args[1]) > SCRYPT_MAX_LOG_N) throw headerError(`scrypt work factor 2^${s.args[1]} is above the 2^${SCRYPT_MAX_LOG_N} this reader accepts`, file);
    }
  }
}

/**
 * The file key of a parsed header, from the first identity that opens a stanza, with the header MAC
 * checked. One-line errors: AGE_NO_IDENTITY (none given), AGE_WRONG_KEY (none opens it), AGE_AUTH
 * (the MAC does not match: the header was changed), AGE_HEADER (stanzas age forbids).
 */
export function unwrapFileKey(h: ParsedHeader, identities: Identity[], file: string): Buffer {
  checkStanzas(h, file);
  const scrypt = h.stanzas.filter((s) => s.type === 'scrypt');
  const types = [...new Set(h.stanzas.map((s) => s.type))].join(', ');
  if (identities.length === 0) {
    throw new UsageError(`${file} is encrypted (age, stanzas: ${types}); give --identity FILE or --passphrase-file FILE (or THINARCHIVE_IDENTITY)`, 'AGE_NO_IDENTITY');
  }
  let fileKey: Buffer | undefined;
  for (const id of identities) {
    for (const s of h.stanzas) {
      fileKey = id.unwrap(s);
      if (fileKey) break;
    }
    if (fileKey) break;
  }
  if (!fileKey || fileKey.length !== 16) {
    const what = scrypt.length > 0 ? 'the passphrase given does not' : 'none of the identities given';
    throw new UsageError(`${file}: ${what} decrypt${scrypt.length > 0 ? '' : 's'} it (age stanzas: ${types})`, 'AGE_WRONG_KEY');
  }
  const want = headerMac(fileKey, h.macInput);
  if (!timingSafeEqual(want, h.mac)) throw new FormatError('AGE_AUTH', 'age header MAC does not match: the header was altered', undefined, file);
  return fileKey;
}

// ---------------------------------------------------------------------------------------------------
// STREAM payload: 64 KiB chunks, nonce = 11-byte big-endian counter || last-chunk flag

function chunkNonce(index: number, last: boolean): Buffer {
  const n = Buffer.alloc(12);
  n.writeUIntBE(index, 5, 6); // counters stay below 2^48 (16 EiB of plaintext)
  n[11] = last ? 1 : 0;
  return n;
}

/** Chunk `index` sealed: its ciphertext and its tag, to be written one after the other. */
export function sealChunk(key: Buffer, index: number, last: boolean, plain: Uint8Array): [Buffer, Buffer] {
  madeGarbage(plain.length); // (the result, once the caller wrote it out; src/gc.ts)
  return aeadSealParts(key, plain, chunkNonce(index, last));
}

/** The plaintext of chunk `index`, or undefined when it fails authentication. */
export function openChunk(key: Buffer, index: number, last: boolean, sealed: Uint8Array): Buffer | undefined {
  if (sealed.length < TAG || (last && index > 0 && sealed.length === TAG)) return undefined;
  madeGarbage(sealed.length); // (the result, once the caller is done with it; src/gc.ts)
  return aeadOpen(key, Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength), chunkNonce(index, last));
}

/**
 * The chunk layout of a payload of `ctLen` ciphertext bytes (after the header and nonce): the number
 * of chunks and the plaintext size; undefined when no age file has that length (a truncated or
 * extended file whose last chunk would be shorter than its tag, or empty without being the only one).
 */
export function payloadLayout(ctLen: number): { chunks: number; plainSize: number } | undefined {
  if (ctLen < TAG) return undefined;
  const chunks = Math.max(1, Math.ceil(ctLen / CHUNK_CT));
  const lastLen = ctLen - (chunks - 1) * CHUNK_CT;
  if (lastLen < TAG || (chunks > 1 && lastLen === TAG)) return undefined;
  return { chunks, plainSize: ctLen - chunks * TAG };
}
