/** Pure parts of the ssh:// store: URL parsing and shell quoting (checked by a real sh). */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { isStoreUrl, openStore, storeKind } from './open.js';
import { parseSshUrl, shq } from './ssh.js';

describe('ssh URLs', () => {
  it('parses user, host, port and path; /~/ is relative to home; IPv6 in brackets', () => {
    expect(parseSshUrl('ssh://nas/srv/backups/')).toMatchObject({ user: undefined, host: 'nas', port: undefined, path: '/srv/backups' });
    expect(parseSshUrl('ssh://backup@nas:2222/srv/b b')).toMatchObject({ user: 'backup', host: 'nas', port: 2222, path: '/srv/b b' });
    expect(parseSshUrl('ssh://h/~/backups')).toMatchObject({ path: 'backups' });
    expect(parseSshUrl('ssh://h/~')).toMatchObject({ path: '.' });
    expect(parseSshUrl('ssh://u@[::1]:22/x')).toMatchObject({ user: 'u', host: '::1', port: 22, path: '/x' });
    expect(parseSshUrl('ssh://h/')).toMatchObject({ path: '/' });
  });
  it('rejects URLs without a path, with a bad port, or a host that ssh would read as an option', () => {
    for (const u of ['ssh://host', 'ssh://', 'ssh://h:0/x', 'ssh://h:99999/x', 'ssh://-oProxyCommand=x/y', 'ssh://-u@h/x']) {
      expect(() => parseSshUrl(u), u).toThrow(expect.objectContaining({ exitClass: 'usage' }));
    }
  });
  it('store kinds: paths, ssh:// and s3://; other schemes are refused', async () => {
    expect([storeKind('/a'), storeKind('rel/dir'), storeKind('ssh://h/x'), storeKind('S3://b/p')]).toEqual(['dir', 'dir', 'ssh', 's3']);
    expect(isStoreUrl('/srv/x')).toBe(false);
    expect(isStoreUrl('ssh://h/x')).toBe(true);
    await expect(openStore('ftp://h/x')).rejects.toMatchObject({ exitClass: 'usage' });
    await expect(openStore('-')).rejects.toMatchObject({ exitClass: 'usage' });
  });
});

describe('shell quoting', () => {
  it('round-trips any string through sh', () => {
    for (const s of ['plain', 'with space', "it's", '"$HOME" `id` $(id) \\ ; & | < > * ? [a] ~', "''", '-n', 'tab\there', 'new\nline', 'ünïcode']) {
      expect(execFileSync('sh', ['-c', `printf '%s' ${shq(s)}`]).toString()).toBe(s);
      // Nested once more, as `ssh host "sh -c '…'"` does.
      expect(execFileSync('sh', ['-c', `sh -c ${shq(`printf '%s' ${shq(s)}`)}`]).toString()).toBe(s);
    }
  });
});
