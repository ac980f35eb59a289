/**
 * `npm run bench:intake [-- --photos 50]`: photos per second through the whole intake (validate's
 * checks + normalize's crop/resize/encode) on 12 MP JPEGs, against a bare sharp
 * decode-resize-encode of the same files, measured in one run; and the peak RSS of the job.
 * Targets: intake keeps at least half the bare throughput; a 50-photo job fits a 2048 MB Lambda.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { JobSpecSchema } from '../lambdas/shared/contract';
import { runIntake, type PhotoSource } from '../lambdas/intake/analyze';
import { DEFAULT_CONFIG } from '../lambdas/intake/config';
import { mapLimit } from '../lambdas/intake/pool';
import { renderDatasetImage } from '../lambdas/intake/render';
import { corpusUnavailable, sampleDir, subject } from '../test/fixtures/photos/build';

const BENCH_VERSION = 1;

/** 12 MP phone-like JPEGs: the real-photo composites upscaled to 4000x3000 with sensor-like noise. */
async function phonePhotos(count: number): Promise<string> {
  const dir = join(tmpdir(), `avatar-intake-bench-v${BENCH_VERSION}-${count}`);
  if (existsSync(join(dir, '.complete'))) return dir;
  const src = sampleDir();
  if (!src) throw new Error(corpusUnavailable());
  const work = `${dir}.tmp-${process.pid}`;
  mkdirSync(work, { recursive: true });
  await mapLimit(Array.from({ length: count }, (_, i) => i), 2, async (i) => {
    const { data, info } = await (await subject(src, i + 1, 1000, 750)).resize(4000, 3000).raw().toBuffer({ resolveWithObject: true });
    for (let p = 0, x = i + 1; p < data.length; p++) {
      x = (x * 1664525 + 1013904223) % 4294967296;
      data[p] = Math.max(0, Math.min(255, data[p]! + ((x >>> 28) - 8)));
    }
    const jpeg = await sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels } }).jpeg({ quality: 90 }).toBuffer();
    writeFileSync(join(work, `phone-${String(i + 1).padStart(2, '0')}.jpg`), jpeg);
  });
  writeFileSync(join(work, '.complete'), '');
  rmSync(dir, { recursive: true, force: true });
  renameSync(work, dir);
  return dir;
}

/** Samples RSS every 20 ms while `fn` runs. */
async function withPeakRss<T>(fn: () => Promise<T>): Promise<{ result: T; seconds: number; peakMb: number }> {
  let peak = process.memoryUsage.rss();
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage.rss());
  }, 20);
  const started = performance.now();
  try {
    const result = await fn();
    peak = Math.max(peak, process.memoryUsage.rss());
    return { result, seconds: (performance.now() - started) / 1000, peakMb: peak / 1024 / 1024 };
  } finally {
    clearInterval(timer);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { photos: { type: 'string', default: '50' } } });
  const count = Number(values.photos);
  const dir = await phonePhotos(count);
  const files = readdirSync(dir).filter((f) => f.endsWith('.jpg')).sort();
  const config = DEFAULT_CONFIG;
  const spec = JobSpecSchema.parse({ token: 'ohwx', classWord: 'woman' });
  console.log(`${files.length} photos, 4000x3000 JPEG, ${(statSync(join(dir, files[0]!)).size / 1e6).toFixed(1)} MB each; ${config.concurrency} in flight; sharp.concurrency()=${sharp.concurrency()}`);

  // Warm both paths (model load, WASM compile, libvips caches) outside the timings.
  await renderDatasetImage(readFileSync(join(dir, files[0]!)), { left: 0, top: 0, width: 3000, height: 3000 }, 512, config);
  await runIntake([source(dir, files[0]!)], { teamId: 'b', jobId: 'w', spec, now: new Date() }, config);

  const bare = await withPeakRss(() =>
    mapLimit(files, config.concurrency, async (f) =>
      sharp(readFileSync(join(dir, f))).rotate().resize(512, 512, { fit: 'cover' }).png().toBuffer(),
    ),
  );
  const intake = await withPeakRss(async () => {
    const { report } = await runIntake(files.map((f) => source(dir, f)), { teamId: 'b', jobId: 'j', spec, now: new Date() }, config);
    const resolution = report.resolution;
    await mapLimit(report.photos.filter((p) => p.status === 'accepted'), config.concurrency, (p) =>
      renderDatasetImage(readFileSync(join(dir, p.file)), p.crop!, resolution, config),
    );
    return report;
  });
  const bareRate = files.length / bare.seconds;
  const intakeRate = files.length / intake.seconds;
  const s = intake.result.summary;
  console.log(`bare sharp decode-resize-encode: ${bareRate.toFixed(2)} photos/s (${bare.seconds.toFixed(1)} s)`);
  console.log(`whole intake (validate + normalize): ${intakeRate.toFixed(2)} photos/s (${intake.seconds.toFixed(1)} s; ${s.accepted} accepted, ${s.rejected} rejected ${JSON.stringify(s.reasons)})`);
  console.log(`ratio intake/bare: ${(intakeRate / bareRate).toFixed(2)} (target >= 0.5)`);
  console.log(`peak RSS: ${intake.peakMb.toFixed(0)} MB for the ${files.length}-photo intake (bare: ${bare.peakMb.toFixed(0)} MB; target < 2048 MB)`);
}

function source(dir: string, file: string): PhotoSource {
  return { file, bytes: statSync(join(dir, file)).size, load: async () => readFileSync(join(dir, file)) };
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
