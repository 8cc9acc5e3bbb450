/** How a remote apply's exit status and stderr become the sender's error. */
import { describe, expect, it } from 'vitest';
import { remoteApplyError } from './remote-apply.js';

describe('remote apply exit codes', () => {
  it('keeps usage, verify and unsafe; everything else is a runtime failure, with the remote line', () => {
    const e4 = remoteApplyError('root@h', 4, 'progress\nthinarchive: target state does not match\n', 'thinarchive');
    expect(e4).toMatchObject({ exitClass: 'unsafe', remoteStatus: 4 });
    expect(e4.message).toBe('remote apply on root@h failed (remote exit 4): target state does not match');
    expect(remoteApplyError('h', 2, 'thinarchive: bad option', 'x').exitClass).toBe('usage');
    expect(remoteApplyError('h', 3, 'thinarchive: digest mismatch', 'x').exitClass).toBe('verify');
    expect(remoteApplyError('h', 1, 'thinarchive: disk full', 'x').exitClass).toBe('runtime');
    expect(remoteApplyError('h', 70, 'thinarchive: internal error', 'x').exitClass).toBe('runtime');
    expect(remoteApplyError('h', 255, 'Permission denied (publickey).', 'x').message).toBe('remote apply on h: ssh failed: Permission denied (publickey).');
    expect(remoteApplyError('h', 127, 'sh: 1: tt: not found', 'tt').message).toMatch(/command not found: tt \(set --remote-command\)/);
    expect(remoteApplyError('h', null, '', 'x').exitClass).toBe('runtime');
  });
});
