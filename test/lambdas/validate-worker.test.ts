/**
 * Face detection runs in a worker thread: the validate core, run against S3 (moto) on the whole
 * corpus, gets exactly the report it gets with detection on the main thread; and the idle worker
 * never keeps a process from exiting.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import { keys } from '../../lambdas/shared/keys';
import { getJson } from '../../lambdas/shared/s3';
import { validate } from '../../lambdas/validate/core';
import { faceWorkerThreadId } from '../../lambdas/validate/faces';
import type { RawRgb } from '../../lambdas/validate/quality';
import { type Report, ReportSchema } from '../../lambdas/validate/report';
import { type Moto, startMoto } from '../../scripts/local/moto';
import { buildCorpus, corpusUnavailable, EXPECTED } from '../fixtures/photos/build';
import { describeNeeding, motoMissing } from '../helpers/suites';
import { ARTIFACTS, context, TEST_CONFIG, uploadJob } from './validate-fixtures';

// Listed by key, an exact copy would sort before its original and be the one kept: leave it out.
const FILES = Object.keys(EXPECTED).filter((f) => f !== 'copy-of-subject-01.jpg');
const CODES = Object.fromEntries(FILES.map((f) => [f, EXPECTED[f]]));

const skip = corpusUnavailable() ?? motoMissing();
if (skip) console.warn(`face worker tests skipped: ${skip}`);

describeNeeding('face detection in a worker thread', skip, () => {
  let moto: Moto;
  let corpus: string;

  beforeAll(async () => {
    [moto, corpus] = await Promise.all([startMoto(), buildCorpus()]);
    await moto.createBucket('inbox');
    await moto.createBucket(ARTIFACTS);
  });
  afterAll(async () => moto?.stop());

  async function validatedReport(run: typeof validate, jobId: string): Promise<Report> {
    const ctx = context(moto.s3(), jobId);
    await uploadJob(ctx, corpus, FILES);
    await run(ctx, TEST_CONFIG);
    return ReportSchema.parse(await getJson(moto.s3(), ARTIFACTS, keys.validateReport(ctx.job)));
  }

  it('gives the validate core the same faces, crops and codes as detection on the main thread', async () => {
    expect(faceWorkerThreadId()).toBeUndefined(); // started lazily, by the first detection
    const viaWorker = await validatedReport(validate, 'job-worker');
    expect(faceWorkerThreadId()).toBeGreaterThan(0);

    // The same core, with detectFaces swapped for the in-thread detector the worker itself runs.
    vi.resetModules();
    vi.doMock('../../lambdas/validate/faces', async (original) => {
      const faces = await original<typeof import('../../lambdas/validate/faces')>();
      return { ...faces, detectFaces: faces.detectFacesHere, detectFacesTiled: (img: RawRgb) => faces.detectFacesTiled(img, faces.detectFacesHere) };
    });
    // (.js: tsc's rule for dynamic imports; vite resolves it to the .ts file)
    const inThread = await import('../../lambdas/validate/core.js');
    const onMainThread = await validatedReport(inThread.validate, 'job-main-thread');
    expect((await import('../../lambdas/validate/faces.js')).faceWorkerThreadId()).toBeUndefined();
    vi.doUnmock('../../lambdas/validate/faces');

    expect(Object.fromEntries(viaWorker.photos.map((p) => [p.file, p.code]))).toEqual(CODES);
    const withFaces = viaWorker.photos.filter((p) => p.scores?.face);
    expect(withFaces.length).toBeGreaterThanOrEqual(Object.values(CODES).filter((c) => c === 'ACCEPTED').length);
    // Every score, face box, face count, crop and message, photo by photo; except the libvips detail
    // in a CORRUPT message, which can read "Unknown error" when concurrent decodes race on libvips'
    // process-wide error buffer (a decode race, not a face-detection one).
    const comparable = (r: Report) => r.photos.map((p) => (p.code === 'CORRUPT' ? { ...p, message: undefined } : p));
    expect(comparable(viaWorker)).toEqual(comparable(onMainThread));
  });

  it('lets a process exit once detection is done, without terminating the worker', () => {
    const dir = mkdtempSync(join(tmpdir(), 'avatar-face-worker-'));
    const script = join(dir, 'detect-once.ts');
    writeFileSync(
      script,
      `import { detectFaces } from ${JSON.stringify(join(__dirname, '../../lambdas/validate/faces'))};\n` +
        `const data = Buffer.alloc(64 * 48 * 3, 128);\n` +
        `detectFaces({ data, width: 64, height: 48 }).then((faces) => console.log('faces', faces.length));\n`,
    );
    const run = spawnSync(process.execPath, [require.resolve('tsx/cli'), script], { encoding: 'utf8', timeout: 60_000 });
    expect(run.stderr).toBe('');
    expect([run.status, run.stdout.trim()]).toEqual([0, 'faces 0']);
  });
});
