/**
 * The S3 section of the benchmark (`npm run bench -- --s3 [--size 1G] [--runs N]`): starts a one-node
 * Ceph radosgw on 127.0.0.1 (test/servers/ceph.ts, memstore: the objects live in the OSD's RAM), then
 * measures on one generated image, with GNU time:
 *   - send --to DIR (local disk, the baseline)        wall time, peak RSS
 *   - that archive file uploaded as is (plain multipart, same part size): the server's speed here
 *   - send --to s3://bench/…  (multipart upload)      wall time, peak RSS
 *   - apply s3://… --to a new image                   wall time, peak RSS, sha256 equal to the source
 *   - peak RSS of send --to s3:// at a quarter of the size (memory must not grow with the archive)
 * Needs Debian's radosgw ceph-mon ceph-osd, GNU time, and `npm run build`. Results are printed and
 * written to bench-out/s3.json. Everything it starts is stopped by PID; the temp dirs are removed.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { loadTsModule } from './lib/lab.mjs';
import { sha256File as sha256 } from './lib/sha256.mjs';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const fmt = (n) => (n >= GiB ? `${(n / GiB).toFixed(2)} GiB` : `${(n / MiB).toFixed(1)} MiB`);


function timed(cmd, args, env) {
  const td = fs.mkdtempSync('/tmp/ta-bench-time-');
  const tf = join(td, 't');
  try {
    const t = performance.now();
    const r = spawnSync('/usr/bin/time', ['-f', '%M %U %S', '-o', tf, cmd, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 1 << 26 });
    const seconds = (performance.now() - t) / 1000;
    if (r.status !== 0) throw new Error(`${args.join(' ')} failed (${r.status}): ${r.stderr}`);
    const [rssKiB, user, sys] = fs.readFileSync(tf, 'utf8').trim().split('\n').pop().split(' ').map(Number);
    return { seconds, rss: rssKiB * 1024, cpu: user + sys, stdout: r.stdout, stderr: r.stderr };
  } finally {
    fs.rmSync(td, { recursive: true, force: true });
  }
}

/** Baseline: upload a local file with a plain multipart upload (8 MiB parts, 2 in flight); seconds. */
async function uploadFile(endpoint, ceph, path, key) {
  const s3 = await import('@aws-sdk/client-s3');
  const c = new s3.S3Client({
    endpoint, region: ceph.CEPH_REGION, forcePathStyle: true, requestChecksumCalculation: 'WHEN_REQUIRED',
    credentials: { accessKeyId: ceph.CEPH_ACCESS_KEY, secretAccessKey: ceph.CEPH_SECRET_KEY },
  });
  const t = performance.now();
  const Bucket = 'bench';
  const { UploadId } = await c.send(new s3.CreateMultipartUploadCommand({ Bucket, Key: key }));
  const fd = fs.openSync(path, 'r');
  const parts = [];
  const inflight = new Set();
  try {
    for (let n = 1; ; n++) {
      const buf = Buffer.allocUnsafe(8 * MiB);
      const len = fs.readSync(fd, buf, 0, buf.length, null);
      if (len === 0) break;
      const p = c.send(new s3.UploadPartCommand({ Bucket, Key: key, UploadId, PartNumber: n, Body: buf.subarray(0, len) }))
        .then((r) => { parts[n - 1] = { PartNumber: n, ETag: r.ETag }; })
        .finally(() => inflight.delete(p));
      inflight.add(p);
      while (inflight.size >= 2) await Promise.race(inflight);
    }
    await Promise.all(inflight);
    await c.send(new s3.CompleteMultipartUploadCommand({ Bucket, Key: key, UploadId, MultipartUpload: { Parts: parts } }));
  } finally {
    fs.closeSync(fd);
    c.destroy();
  }
  return (performance.now() - t) / 1000;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];

/**
 * opts: { root, size, runs, seed, tmpdir, generateImage(path, size, seed) -> { summary }, log(msg) }.
 */
export async function benchS3(opts) {
  const { root, size, seed, log } = opts;
  const runs = Math.max(1, opts.runs);
  const ceph = await loadTsModule('test/servers/ceph.ts');
  const dir = fs.mkdtempSync(join(opts.tmpdir, 'thinarchive-bench-s3-'));
  const cephDir = fs.mkdtempSync(join(opts.tmpdir, 'ta-ceph-own-'));
  fs.writeFileSync(join(cephDir, 'owner'), String(process.pid));
  let cluster;
  const stop = async () => {
    if (cluster) await ceph.stopCeph(cluster, true);
    fs.rmSync(cephDir, { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  };
  process.on('SIGINT', () => stop().finally(() => process.exit(130)));
  try {
    let t = performance.now();
    cluster = await ceph.startAndWarm(cephDir);
    log(`ceph started and warmed up in ${((performance.now() - t) / 1000).toFixed(1)} s (gateway ${cluster.endpoint})`);
    const env = {
      AWS_ACCESS_KEY_ID: ceph.CEPH_ACCESS_KEY, AWS_SECRET_ACCESS_KEY: ceph.CEPH_SECRET_KEY, AWS_REGION: ceph.CEPH_REGION,
      AWS_ENDPOINT_URL_S3: cluster.endpoint, AWS_EC2_METADATA_DISABLED: 'true',
    };
    const s3 = await import('@aws-sdk/client-s3');
    const client = new s3.S3Client({
      endpoint: cluster.endpoint, region: ceph.CEPH_REGION, forcePathStyle: true,
      credentials: { accessKeyId: ceph.CEPH_ACCESS_KEY, secretAccessKey: ceph.CEPH_SECRET_KEY },
    });
    await client.send(new s3.CreateBucketCommand({ Bucket: 'bench' }));
    client.destroy();

    const node = process.execPath;
    const TA = join(root, 'bin/thinarchive');
    const img = join(dir, 'image.img');
    t = performance.now();
    const { summary } = opts.generateImage(img, size, seed);
    const hash = sha256(img);
    log(`image ${fmt(size)} generated in ${((performance.now() - t) / 1000).toFixed(1)} s: random ${fmt(summary.random)}, text ${fmt(summary.text)}, zero ${fmt(summary.zero)}, holes ${fmt(summary.hole)}`);

    const result = { date: new Date().toISOString(), size, seed, runs, image: summary, node: process.version, ceph: spawnSync('ceph', ['--version'], { encoding: 'utf8' }).stdout.trim() };
    const sendDir = [];
    const sendS3 = [];
    let archiveBytes = 0;
    let url = '';
    const rawUpload = [];
    for (let i = 0; i < runs; i++) {
      const d = join(dir, `store-${i}`);
      const a = timed(node, [TA, 'send', '--image', img, '--to', d, '--json'], env);
      const sent = JSON.parse(a.stdout);
      archiveBytes = sent.archiveBytes;
      sendDir.push(a);
      const up = await uploadFile(cluster.endpoint, ceph, sent.path, `raw-${i}`);
      rawUpload.push(up);
      log(`baseline: the archive file uploaded as is (8 MiB parts, 2 in flight) ${up.toFixed(2)} s  ${(archiveBytes / up / 1e6).toFixed(0)} MB/s`);
      fs.rmSync(d, { recursive: true, force: true });
      log(`send --to DIR   ${a.seconds.toFixed(2)} s  ${(size / a.seconds / 1e6).toFixed(0)} MB/s of image  peak RSS ${fmt(a.rss)}  cpu ${a.cpu.toFixed(1)} s`);
      url = `s3://bench/run-${i}`;
      const b = timed(node, [TA, 'send', '--image', img, '--to', url, '--json'], env);
      sendS3.push(b);
      log(`send --to s3:// ${b.seconds.toFixed(2)} s  ${(size / b.seconds / 1e6).toFixed(0)} MB/s of image, ${(archiveBytes / b.seconds / 1e6).toFixed(0)} MB/s uploaded  peak RSS ${fmt(b.rss)}  cpu ${b.cpu.toFixed(1)} s`);
    }
    const out = join(dir, 'restored.img');
    const ap = timed(node, [TA, 'apply', url, '--to', out, '--create'], env);
    const same = sha256(out) === hash;
    fs.rmSync(out, { force: true });
    log(`apply s3:// -> image ${ap.seconds.toFixed(2)} s  ${(size / ap.seconds / 1e6).toFixed(0)} MB/s of image, ${(archiveBytes / ap.seconds / 1e6).toFixed(0)} MB/s downloaded  peak RSS ${fmt(ap.rss)}  cpu ${ap.cpu.toFixed(1)} s  sha256 ${same ? 'equal' : 'DIFFERENT'}`);
    if (!same) throw new Error('the image applied from S3 differs from the source');
    const small = join(dir, 'small.img');
    opts.generateImage(small, Math.max(64 * MiB, Math.round(size / 4 / (64 * 1024)) * 64 * 1024), seed + 1);
    const sm = timed(node, [TA, 'send', '--image', small, '--to', 's3://bench/small', '--json'], env);
    const smallArchive = JSON.parse(sm.stdout).archiveBytes;
    log(`send --to s3:// of a ${fmt(fs.statSync(small).size)} image (${fmt(smallArchive)} archive): peak RSS ${fmt(sm.rss)}`);

    Object.assign(result, {
      archiveBytes,
      sendDir: { seconds: median(sendDir.map((x) => x.seconds)), cpuSeconds: median(sendDir.map((x) => x.cpu)), peakRss: Math.max(...sendDir.map((x) => x.rss)) },
      sendS3: { seconds: median(sendS3.map((x) => x.seconds)), cpuSeconds: median(sendS3.map((x) => x.cpu)), peakRss: Math.max(...sendS3.map((x) => x.rss)) },
      rawUploadSeconds: median(rawUpload),
      applyS3: { seconds: ap.seconds, cpuSeconds: ap.cpu, peakRss: ap.rss, sha256Equal: same },
      sendS3Small: { imageBytes: fs.statSync(small).size, archiveBytes: smallArchive, peakRss: sm.rss },
    });
    const o = join(root, 'bench-out', 's3.json');
    fs.mkdirSync(join(root, 'bench-out'), { recursive: true });
    fs.writeFileSync(o, JSON.stringify(result, null, 2));
    log(`results in ${o}`);
    return result;
  } finally {
    await stop();
  }
}
