/**
 * `npm run bench:intake [-- --photos 50 --kind character|object|style]`: photos per second through the
 * whole intake on 12 MP JPEGs, against a bare sharp decode-resize-encode of the same files, measured
 * in one run; and the peak RSS of the job. The intake side runs the real validate and normalize
 * stage cores end to end (spec, listing, photo reads, checks, crops, contact sheet, report, copies,
 * captions, plan, status) against an in-memory S3 stand-in: photos are read from disk on each GET,
 * like the bare side reads them; what the stages write stays in memory (it counts in the RSS).
 * Targets: intake keeps at least half the bare throughput; a 50-photo job fits a 2048 MB Lambda.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { CopyObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import pMap from 'p-map';
import sharp from 'sharp';
import { normalize } from '../lambdas/normalize/core';
import { KindSchema } from '../lambdas/shared/contract';
import type { StageContext } from '../lambdas/shared/handler';
import { keys } from '../lambdas/shared/keys';
import { DEFAULT_CONFIG } from '../lambdas/validate/config';
import { validate } from '../lambdas/validate/core';
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
  await pMap(
    Array.from({ length: count }, (_, i) => i),
    async (i) => {
      const { data, info } = await (await subject(src, i + 1, 1000, 750)).resize(4000, 3000).raw().toBuffer({ resolveWithObject: true });
      for (let p = 0, x = i + 1; p < data.length; p++) {
        x = (x * 1664525 + 1013904223) % 4294967296;
        data[p] = Math.max(0, Math.min(255, data[p]! + ((x >>> 28) - 8)));
      }
      const jpeg = await sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels } })
        .jpeg({ quality: 90 })
        .toBuffer();
      writeFileSync(join(work, `phone-${String(i + 1).padStart(2, '0')}.jpg`), jpeg);
    },
    { concurrency: 2, stopOnError: true },
  );
  writeFileSync(join(work, '.complete'), '');
  rmSync(dir, { recursive: true, force: true });
  renameSync(work, dir);
  return dir;
}

/** Samples RSS every 20 ms while `fn` runs; also the process CPU time it took (both cores together). */
async function withPeakRss<T>(fn: () => Promise<T>): Promise<{ result: T; seconds: number; cpuSeconds: number; peakMb: number }> {
  let peak = process.memoryUsage.rss();
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage.rss());
  }, 20);
  const started = performance.now();
  const cpu = process.cpuUsage();
  try {
    const result = await fn();
    peak = Math.max(peak, process.memoryUsage.rss());
    const used = process.cpuUsage(cpu);
    return { result, seconds: (performance.now() - started) / 1000, cpuSeconds: (used.user + used.system) / 1e6, peakMb: peak / 1024 / 1024 };
  } finally {
    clearInterval(timer);
  }
}

/**
 * Just enough of S3 for the stage cores: objects by bucket/key, each either bytes in memory or a
 * file read on every GET (the inbox photos, so they are not held in memory).
 */
function memoryS3(): { s3: S3Client; put(bucket: string, key: string, body: Buffer | { file: string }): void } {
  const objects = new Map<string, Buffer | { file: string }>();
  const bytesOf = (o: Buffer | { file: string }) => (Buffer.isBuffer(o) ? o : readFileSync(o.file));
  const noSuchKey = (key: string) => Object.assign(new Error(`NoSuchKey: ${key}`), { name: 'NoSuchKey' });
  const send = async (command: unknown): Promise<unknown> => {
    if (command instanceof GetObjectCommand) {
      const found = objects.get(`${command.input.Bucket}/${command.input.Key}`);
      if (!found) throw noSuchKey(command.input.Key!);
      const body = bytesOf(found);
      return { ContentLength: body.length, Body: { transformToByteArray: async () => body, transformToWebStream: () => new Blob([body]).stream() } };
    }
    if (command instanceof PutObjectCommand) {
      const body = command.input.Body as Uint8Array | string;
      objects.set(
        `${command.input.Bucket}/${command.input.Key}`,
        typeof body === 'string' ? Buffer.from(body) : Buffer.from(body.buffer, body.byteOffset, body.byteLength),
      );
      return {};
    }
    if (command instanceof CopyObjectCommand) {
      const from = objects.get(decodeURIComponent(command.input.CopySource!));
      if (!from) throw noSuchKey(command.input.CopySource!);
      objects.set(`${command.input.Bucket}/${command.input.Key}`, from);
      return {};
    }
    if (command instanceof ListObjectsV2Command) {
      const prefix = `${command.input.Bucket}/${command.input.Prefix ?? ''}`;
      const Contents = [...objects.keys()]
        .filter((k) => k.startsWith(prefix))
        .sort()
        .map((k) => ({ Key: k.slice(command.input.Bucket!.length + 1), Size: bytesOf(objects.get(k)!).length }));
      return { Contents, IsTruncated: false };
    }
    throw new Error(`memoryS3: ${(command as object).constructor.name} is not emulated`);
  };
  // A real client (the SDK's paginators check for one) whose requests never leave the process.
  const s3 = new S3Client({ region: 'us-east-1' });
  s3.send = send as S3Client['send'];
  return { s3, put: (bucket, key, body) => objects.set(`${bucket}/${key}`, body) };
}

async function main(): Promise<void> {
  // Before any of this run's own work, which adds up to 2 by the end of a run.
  const startLoad = loadavg()[0]!;
  const { values } = parseArgs({ options: { photos: { type: 'string', default: '50' }, kind: { type: 'string', default: 'character' } } });
  const count = Number(values.photos);
  const kind = KindSchema.parse(values.kind);
  const dir = await phonePhotos(count);
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.jpg'))
    .sort();
  const config = {
    ...DEFAULT_CONFIG,
    countRules: { ...DEFAULT_CONFIG.countRules, [kind]: { ...DEFAULT_CONFIG.countRules[kind], min: Math.min(10, files.length) } },
  };
  const spec = { token: 'ohwx', classWord: kind === 'character' ? 'woman' : kind === 'object' ? 'mug' : 'painting', kind };
  console.log(
    `${files.length} photos, 4000x3000 JPEG, ${(statSync(join(dir, files[0]!)).size / 1e6).toFixed(1)} MB each; ${kind} job; ${config.concurrency} in flight; sharp.concurrency()=${sharp.concurrency()}`,
  );

  const { s3, put } = memoryS3();
  const intakeJob = async (jobId: string, names: readonly string[]) => {
    const ctx: StageContext = { s3, inboxBucket: 'inbox', artifactsBucket: 'artifacts', job: { teamId: 'bench', jobId }, now: () => new Date() };
    put('inbox', keys.spec(ctx.job), Buffer.from(JSON.stringify(spec)));
    for (const f of names) put('inbox', `${keys.photosPrefix(ctx.job)}${f}`, { file: join(dir, f) });
    const started = performance.now();
    const validated = await validate(ctx, config);
    const validateSeconds = (performance.now() - started) / 1000;
    const normalized = await normalize(ctx);
    return { validated, normalized, validateSeconds };
  };

  // Warm both paths (model load, WASM compile, libvips caches) outside the timings.
  await sharp(readFileSync(join(dir, files[0]!)))
    .rotate()
    .resize(512, 512, { fit: 'cover' })
    .png()
    .toBuffer();
  await intakeJob('warm-up', files.slice(0, 10));

  // Two bare baselines over the same files: the plain reference (512 px cover crop, default PNG),
  // and the same output the intake hands to training here (the plan's resolution, PNG level 1).
  const bareTo = (size: number, png: sharp.PngOptions) =>
    withPeakRss(() =>
      pMap(
        files,
        async (f) =>
          sharp(readFileSync(join(dir, f)))
            .rotate()
            .resize(size, size, { fit: 'cover' })
            .png(png)
            .toBuffer(),
        { concurrency: config.concurrency, stopOnError: true },
      ),
    );
  const bare = await bareTo(512, {});
  const intake = await withPeakRss(() => intakeJob('bench', files));
  const resolution = intake.result.validated.resolution;
  const bareSame = await bareTo(resolution, { compressionLevel: 1 });
  const bareRate = files.length / bare.seconds;
  const bareSameRate = files.length / bareSame.seconds;
  const intakeRate = files.length / intake.seconds;
  const { validated, normalized, validateSeconds } = intake.result;
  const cpuMs = (r: { cpuSeconds: number }) => ((r.cpuSeconds * 1000) / files.length).toFixed(0);
  console.log(`bare sharp decode-resize-encode to 512 px PNG: ${bareRate.toFixed(2)} photos/s (${bare.seconds.toFixed(1)} s; ${cpuMs(bare)} ms CPU a photo)`);
  console.log(
    `bare sharp decode-resize-encode to the intake's output (${resolution} px PNG, level 1): ${bareSameRate.toFixed(2)} photos/s (${bareSame.seconds.toFixed(1)} s; ${cpuMs(bareSame)} ms CPU a photo)`,
  );
  console.log(
    `whole intake (validate + normalize, in-memory S3): ${intakeRate.toFixed(2)} photos/s (${intake.seconds.toFixed(1)} s, validate ${validateSeconds.toFixed(1)} s; ${cpuMs(intake)} ms CPU a photo; ` +
      `${validated.accepted} accepted, ${validated.rejected} rejected; ${normalized.images} dataset images at ${validated.resolution} px)`,
  );
  console.log(
    `ratio intake/bare: ${(intakeRate / bareRate).toFixed(2)} against the 512 px reference, ${(intakeRate / bareSameRate).toFixed(2)} against the same output (target >= 0.5)`,
  );
  // Both sides compete with whatever else runs: from a start load above ~1.5 on this 2-core machine the figures are noise.
  console.log(`load average (1 min) at start ${startLoad.toFixed(2)}, at end ${loadavg()[0]!.toFixed(2)}`);
  console.log(`peak RSS: ${intake.peakMb.toFixed(0)} MB for the ${files.length}-photo intake (bare: ${bare.peakMb.toFixed(0)} MB; target < 2048 MB)`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
