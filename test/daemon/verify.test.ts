// Scheduled verification in the real daemon process, on image sources: a job with a local replica
// verified in full every 2 s, and a job verified by a 50% sample every second. Status, /metrics and
// the state file show each verification; a damaged replica block and then a damaged payload in the
// store are found by the next scheduled verification (and counted as VERIFY_FAILED), while the
// runs go on. The daemon alerts on them through a real webhook receiver: verify_mismatch for the
// replica, run_recovered once the block is put back, chain_broken for the damaged archive, each with
// the job and volume as subject.
import { randomBytes } from 'node:crypto';
import { open, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ArchiveFile } from '../../src/archive/reader.js';
import { FrameType } from '../../src/format/constants.js';
import type { AlertEvent } from '../../src/daemon/alert-event.js';
import { collect, run, runOk, show, spawnCli, tempDir, waitFor, type TempDir } from '../helpers/cli.js';
import { startHttpReceiver, type HttpReceiver } from '../servers/alert-receivers.js';
import type { StatusReport as Status, UnitStatus as Unit } from '../../src/daemon/daemon.js';


async function status(cfg: string): Promise<Status> {
  return JSON.parse((await runOk(['status', '--config', cfg, '--json'])).stdout) as Status;
}

/** Flip a byte in the payload of the `n`th data record of `archive`. */
async function damagePayload(archive: string, n: number): Promise<void> {
  const af = await ArchiveFile.open(archive);
  const offsets: number[] = [];
  for (const ix of await af.loadIndexes()) for (const e of await af.indexEntriesAt(ix.offset)) if (e.type === FrameType.DATA) offsets.push(e.offset);
  const f = await af.frameAt(offsets[n]);
  await af.close();
  const at = offsets[n] + f.head.length + f.body.length + f.check.length + 10;
  const fh = await open(archive, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] ^= 0xff;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
}

describe('thinarchive daemon: scheduled verification (image sources)', () => {
  let t: TempDir;
  let daemon: ReturnType<typeof spawnCli> | undefined;
  let http: HttpReceiver | undefined;
  afterAll(async () => {
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
    await http?.stop();
    await t?.remove();
  });

  it('verifies the store (full or sampled) and a local replica on schedule, records it, and finds damage at either end', async () => {
    t = await tempDir('daemon-verify');
    const a = t.join('a.img');
    const b = t.join('b.img');
    const replica = t.join('a.img.replica'); // apply_to.target {name}.replica
    await writeFile(a, Buffer.concat([randomBytes(2 << 20), Buffer.alloc(2 << 20)]));
    // b: data and zero 64 KiB blocks in turn: 32 one-block data records to sample from.
    const bData = randomBytes(4 << 20);
    for (let i = 65536; i < bData.length; i += 131072) bData.fill(0, i, i + 65536);
    await writeFile(b, bData);
    const port = 20000 + Math.floor(Math.random() * 20000);
    http = await startHttpReceiver();
    const alerts = (event: string): AlertEvent[] => http!.json<AlertEvent>('/hook').filter((e) => e.event === event);
    const cfg = t.join('thinarchive.yml');
    await writeFile(cfg, `state_dir: ${t.join('state')}
metrics: {listen: 127.0.0.1:${port}}
alerts: {webhook: {url: "${http.url('/hook')}"}}
jobs:
  - name: full
    volumes: [{image: ${a}}]
    every: 1s
    to: ${t.join('store')}
    apply_to: {target: "${t.join('{name}.replica')}", args: [--create-if-missing]}
    verify: {every: 2s}
    lag_warning: 1h
    lag_critical: 2h
  - name: sampled
    volumes: [{image: ${b}}]
    every: 1s
    to: ${t.join('store2')}
    verify: {every: 1s, sample: 50%}
    lag_warning: 1h
    lag_critical: 2h
`);
    expect((await run(['config', 'check', '--config', cfg])).code).toBe(0);
    daemon = spawnCli(['daemon', '--config', cfg]);
    const done = collect(daemon, 300_000);
    const unit = (s: Status, job: string): Unit => s.units.find((u) => u.job === job)!;

    // Both verified on schedule, more than once.
    const seen = new Map<string, Set<string>>([['full', new Set()], ['sampled', new Set()]]);
    const s1 = await waitFor(async () => {
      const s = await status(cfg).catch(() => undefined);
      if (s?.source !== 'daemon') return undefined;
      for (const j of ['full', 'sampled']) { const v = unit(s, j).scheduledVerify; if (v) seen.get(j)!.add(v.at); }
      return seen.get('full')!.size >= 2 && seen.get('sampled')!.size >= 2 ? s : undefined;
    }, 90_000, 200);
    const full = unit(s1, 'full').scheduledVerify!;
    expect(full, JSON.stringify(full)).toMatchObject({ ok: true, mode: 'full', samplePercent: null, error: null, store: { ok: true, findings: 0 }, replica: { ok: true, target: replica, mismatchedBlocks: 0 } });
    expect(full.replica!.blocksChecked).toBe((4 << 20) / 65536); // full: every block
    expect(full.store!.archives).toBeGreaterThanOrEqual(1);
    const sampled = unit(s1, 'sampled').scheduledVerify!;
    expect(sampled, JSON.stringify(sampled)).toMatchObject({ ok: true, mode: 'sample', samplePercent: 50, replica: null, store: { ok: true } });
    expect(sampled.store!.recordsChecked).toBeGreaterThan(0);
    expect(sampled.store!.dataRecords).toBe(32); // the full archive's; the incrementals (b is quiet) have none
    expect(sampled.store!.recordsChecked).toBe(16); // half of them
    expect(unit(s1, 'full').nextVerify).not.toBeNull();
    let metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics).toMatch(/thinarchive_scheduled_verify_last_success_timestamp_seconds\{job="full",volume="[^"]+"\} \d+/);
    expect(metrics).toMatch(/thinarchive_scheduled_verify_last_success_timestamp_seconds\{job="sampled",volume="[^"]+"\} \d+/);
    expect(metrics).toMatch(/thinarchive_verify_last_success_timestamp_seconds\{job="full"/);

    // A damaged block of the replica (not one the next archives touch: the image is quiet): the
    // next full verification finds it; the store is still sound; runs go on.
    // (lag thresholds of an hour: a loaded machine's slow runs raise no lag alerts here)
    expect(http.json<AlertEvent>('/hook').map((e) => e.event)).toEqual(['daemon_started']);
    const fh = await open(replica, 'r+');
    const original = Buffer.alloc(4096);
    await fh.read(original, 0, 4096, 3 << 20);
    await fh.write(randomBytes(4096), 0, 4096, 3 << 20);
    await fh.close();
    const mark = Date.now();
    const s2 = await waitFor(async () => {
      const v = unit(await status(cfg), 'full').scheduledVerify!;
      return Date.parse(v.at) > mark && !v.ok ? v : undefined;
    }, 30_000, 200);
    expect(s2, JSON.stringify(s2)).toMatchObject({ ok: false, mode: 'full', error: null, store: { ok: true }, replica: { ok: false, mismatchedBlocks: 1 } });
    const mismatch = await waitFor(() => alerts('verify_mismatch')[0], 10_000, 100);
    expect(mismatch).toMatchObject({
      severity: 'critical', status: 'firing', job: 'full', volume: a, pool: null,
      values: { mode: 'full', replica, mismatchedBlocks: 1, findings: 0 },
    });
    expect(mismatch.message).toBe(`full ${a}: scheduled verification (full): replica ${replica} differs from the chain (1 block)`);
    // The block put back: the next verification passes, and the condition is resolved.
    const back = await open(replica, 'r+');
    await back.write(original, 0, 4096, 3 << 20);
    await back.close();
    const recovered = await waitFor(() => alerts('run_recovered')[0], 30_000, 100);
    expect(recovered).toMatchObject({ severity: 'ok', status: 'resolved', job: 'full', volume: a, since: mismatch.since, values: { mismatchedBlocks: 0 } });
    expect(alerts('verify_mismatch')).toHaveLength(1);

    // A damaged payload in the store (the full archive of the chain): found by the store check.
    const chainDir = join(t.join('store'), unit(s1, 'full').chainId!);
    const first = join(chainDir, (await readdir(chainDir)).filter((n) => n.endsWith('.tna')).sort()[0]);
    await damagePayload(first, 0);
    const mark2 = Date.now();
    const s3 = await waitFor(async () => {
      const s = await status(cfg);
      const v = unit(s, 'full').scheduledVerify!;
      return Date.parse(v.at) > mark2 && v.store && !v.store.ok ? s : undefined;
    }, 30_000, 200);
    const v3 = unit(s3, 'full').scheduledVerify!;
    expect(v3.store!.findings).toBeGreaterThanOrEqual(1);
    expect(v3.store!.firstFinding).toMatch(/^(CHECKSUM_MISMATCH|PAYLOAD_CORRUPT): /);
    const broken = await waitFor(() => alerts('chain_broken')[0], 10_000, 100);
    expect(broken).toMatchObject({ severity: 'critical', status: 'firing', reminder: false, job: 'full', volume: a, pool: null, values: { mode: 'full', firstFinding: v3.store!.firstFinding } });
    expect(broken.message).toMatch(new RegExp(`^full ${a.replace(/[.]/g, '\\.')}: scheduled verification \\(full\\) found \\d+ problems? in the chain in the store: (CHECKSUM_MISMATCH|PAYLOAD_CORRUPT): `));
    // The runs themselves still succeed (an image incremental does not read its parent's payloads).
    const runs = unit(s3, 'full').runs!;
    await waitFor(async () => (unit(await status(cfg), 'full').runs ?? 0) >= runs + 2, 30_000, 200);
    metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics).toMatch(/thinarchive_failures_total\{job="full",volume="[^"]+",code="VERIFY_FAILED"\} [1-9]/);
    expect(metrics).not.toMatch(/thinarchive_failures_total\{job="sampled"/);
    // Once per condition: the later failing verifications alert nothing more; the sampled job nothing at all.
    expect(alerts('chain_broken')).toHaveLength(1);
    expect(http.json<AlertEvent>('/hook').filter((e) => e.job === 'sampled')).toEqual([]);

    // The human table shows it.
    const table = await runOk(['status', '--config', cfg]);
    expect(table.stdout).toMatch(/VERIFIED/);
    expect(table.stdout).toMatch(/full .*FAILED full/);

    daemon.kill('SIGTERM');
    const r = await done;
    expect(r.code, show(r)).toBe(0);
    // Recorded in the state file.
    const sf = await status(cfg);
    expect(sf.source).toBe('state-file');
    expect(unit(sf, 'full').scheduledVerify!.ok).toBe(false);
    expect(unit(sf, 'sampled').scheduledVerify).toMatchObject({ ok: true, mode: 'sample' });
  });
});
