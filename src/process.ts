/** Facts about other processes (bottom layer: used by the store and the LVM layer). */

/** True when a process with this pid exists (EPERM: it exists but is not ours to signal). */
export function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
