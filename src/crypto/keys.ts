/**
 * Loading keys for encrypted archives from the files the user names (README "Encrypted archives"):
 * identity files (age's format, `AGE-SECRET-KEY-1…`), recipients (`age1…`, on the command line or in
 * recipients files), a passphrase file; and making a new identity file. Errors name the file, never
 * its contents.
 */
import { open, readFile } from 'node:fs/promises';
import { ioError, UsageError } from '../errors.js';
import {
  parseIdentityFile, parsePassphraseFile, parseRecipient, parseRecipientsFile, SCRYPT_LOG_N, X25519Identity, type Identity, type Recipient,
} from './age.js';

export interface KeyFiles {
  /** Identity files (`--identity`, THINARCHIVE_IDENTITY). */
  identityFiles?: string[];
  /** A passphrase file: decrypts passphrase archives, and encrypts new ones when no recipient is given. */
  passphraseFile?: string;
  /** Recipients `age1…` (`--encrypt-to`). */
  recipients?: string[];
  /** Recipients files (`--recipients-file`). */
  recipientsFiles?: string[];
}

async function readKeyFile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    throw ioError(e, `cannot read key file ${path}`);
  }
}

/** The identities and recipients the files and arguments name (both empty when none is given). */
export async function loadKeys(k: KeyFiles): Promise<{ identities: Identity[]; recipients: Recipient[] }> {
  const identities: Identity[] = [];
  const recipients: Recipient[] = [];
  for (const f of k.identityFiles ?? []) identities.push(...parseIdentityFile(await readKeyFile(f), f));
  for (const r of k.recipients ?? []) recipients.push(parseRecipient(r));
  for (const f of k.recipientsFiles ?? []) recipients.push(...parseRecipientsFile(await readKeyFile(f), f));
  if (k.passphraseFile !== undefined) {
    const p = parsePassphraseFile(await readKeyFile(k.passphraseFile), k.passphraseFile);
    identities.push(p);
    if (recipients.length > 0) throw new UsageError('--passphrase-file and recipients (--encrypt-to, --recipients-file) do not go together: an age file has a passphrase or recipients', 'KEY_INVALID');
    recipients.push({ kind: 'scrypt', passphrase: p, logN: SCRYPT_LOG_N });
  }
  return { identities, recipients };
}

/**
 * A new X25519 identity: written to `out` (created, never replaced, mode 0600) in age-keygen's
 * format, or returned as `identity` text when `out` is undefined. `recipient` is its `age1…`.
 */
export async function generateIdentity(out?: string): Promise<{ recipient: string; identity?: string; path?: string }> {
  const { identity, encoded } = X25519Identity.generate();
  const text = `# created: ${new Date().toISOString()}\n# public key: ${identity.recipient}\n${encoded}\n`;
  if (out === undefined) return { recipient: identity.recipient, identity: text };
  try {
    const fh = await open(out, 'wx', 0o600);
    try {
      await fh.writeFile(text);
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (e) {
    throw ioError(e, `cannot create identity file ${out} (an existing file is never replaced)`);
  }
  return { recipient: identity.recipient, path: out };
}
