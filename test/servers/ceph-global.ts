/**
 * vitest globalSetup: one Ceph cluster per `vitest run`, shared by every S3 test file. It only makes
 * the shared directory; the first test file that needs S3 starts the cluster there (test/servers/ceph.ts,
 * `useCeph`), so a run without S3 tests costs nothing. Teardown stops the daemons by PID and removes
 * the directory.
 */
import type { TestProject } from 'vitest/node';
import { makeSharedDir, stopShared } from './ceph.js';

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = await makeSharedDir();
  project.provide('cephShared', dir);
  return () => stopShared(dir);
}
