import { configDefaults, defineConfig } from 'vitest/config';
import LabFirstSequencer from './test/sequencer.js';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // The LVM fixture capture is a tool run on purpose (see fixtures/lvm/README.md), not a test.
    exclude: process.env.THINARCHIVE_CAPTURE_LVM_FIXTURES === '1'
      ? configDefaults.exclude
      : [...configDefaults.exclude, 'test/lab/lvm-fixtures.test.ts'],
    // Safety nets against a hung test, not speed limits (speed lives in the benchmark): generous, so
    // that a CI machine slower than this one, or three test files sharing two cores, does not fail.
    testTimeout: 240_000,
    hookTimeout: 300_000,
    pool: 'forks',
    // Test files run three at a time even on two cores: the lab tier's user-mode Linux guests and the
    // CLI end-to-end tests spend much of their time waiting (LVM commands, process start-up, fsync).
    maxWorkers: 3,
    // The thin-LVM lab tests first, the longest first (test/sequencer.ts).
    sequence: { sequencer: LabFirstSequencer },
    // One Ceph radosgw per run, started by the first S3 test file that needs it (test/servers/ceph.ts).
    globalSetup: ['./test/servers/ceph-global.ts'],
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
