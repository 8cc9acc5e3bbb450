/**
 * Three `dmsetup` commands answered in this process, through the device-mapper ioctls of the native
 * addon, instead of by starting `dmsetup`: `status NAME`, `message NAME 0 MSG` and
 * `info -c --noheadings -o open NAME`, the forms tools.ts runs (the metadata snapshot discipline
 * runs five of them per send). Same kernel calls, same output text, same exit status and the same
 * "Device does not exist." as dmsetup, so every parser and error path stays the one for dmsetup.
 * A process costs 0.1-0.5 s in user-mode Linux; an ioctl well under a millisecond.
 *
 * Anything else, and any host where /dev/mapper/control cannot be opened or the addon is missing,
 * goes to the real dmsetup. Measured: docs/PERFORMANCE.md "Against LINBIT thin-send-recv".
 */
import { type DmIoctlResult, type DmTargetStatus, type ThinIO, thinio } from '../native.js';
import type { CommandRunner, RunnerResult } from './runner.js';

/** The native call, replaceable in tests (pure logic) */
export type DmIoctl = ThinIO['dmIoctl'];

type Request = { op: 'status' | 'info'; name: string } | { op: 'message'; name: string; message: string };

/** The dmsetup argv forms served in-process; null for anything else. */
export function parseDmsetupArgs(args: readonly string[]): Request | null {
  const [sub, ...rest] = args;
  const plainName = (s: string | undefined): s is string => s !== undefined && s !== '' && !s.startsWith('-');
  if (sub === 'status' && rest.length === 1 && plainName(rest[0])) return { op: 'status', name: rest[0] };
  if (sub === 'message' && rest.length === 3 && plainName(rest[0]) && rest[1] === '0' && rest[2] !== undefined && rest[2] !== '') {
    return { op: 'message', name: rest[0], message: rest[2] };
  }
  if (sub === 'info' && rest.length === 5 && rest.slice(0, 4).join(' ') === '-c --noheadings -o open' && plainName(rest[4])) {
    return { op: 'info', name: rest[4] };
  }
  return null;
}

/** What dmsetup prints for a status: one line per target, "START LENGTH TYPE PARAMS" (the space also before empty PARAMS). */
export function formatDmStatus(targets: readonly DmTargetStatus[]): string {
  return targets.map((t) => `${t.start} ${t.length} ${t.type} ${t.params}\n`).join('');
}

/**
 * errno names that mean "this host's device-mapper is not reachable from here": dmsetup decides. So
 * does EINVAL (an interface version the kernel refuses), except from a message: there it is the target
 * refusing the message (a release with none held), which is dmsetup's answer too.
 */
const UNREACHABLE = new Set(['ENOENT', 'EACCES', 'EPERM', 'ENODEV', 'ENOTTY']);

/**
 * A runner that answers the three dmsetup forms above with `dm` and passes everything else (and any
 * call `dm` cannot reach the kernel for) to `fallback`.
 */
export function nativeDmRunner(fallback: CommandRunner, dm: DmIoctl = defaultDmIoctl): CommandRunner {
  return async (file, args, opts) => {
    const req = file === 'dmsetup' ? parseDmsetupArgs(args) : null;
    if (!req || opts.stdoutFile !== undefined || opts.signal?.aborted) return fallback(file, args, opts);
    let r: DmIoctlResult;
    try {
      r = await (req.op === 'message' ? dm('message', req.name, req.message) : dm(req.op, req.name));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? '';
      if (code === 'ENXIO') return failed('Device does not exist.\nCommand failed.\n');
      if (code === 'ADDON' || UNREACHABLE.has(code) || (code === 'EINVAL' && req.op !== 'message')) return fallback(file, args, opts);
      const why = /: ([^:]+)$/.exec((e as Error).message)?.[1] ?? (e as Error).message;
      return failed(`device-mapper: ${req.op} ioctl on ${req.name}  failed: ${why}\nCommand failed.\n`);
    }
    const stdout = req.op === 'status' ? formatDmStatus(r.targets) : req.op === 'info' ? `${r.openCount}\n` : '';
    return { exitCode: 0, stdout, stderr: '', inProcess: true };
  };
}

function failed(stderr: string): RunnerResult {
  return { exitCode: 1, stdout: '', stderr, inProcess: true };
}

const defaultDmIoctl: DmIoctl = async (op, name, message) => {
  let io: ThinIO;
  try {
    io = thinio();
  } catch (e) {
    throw Object.assign(new Error(`native addon: ${(e as Error).message}`), { code: 'ADDON' });
  }
  return io.dmIoctl(op, name, message);
};
