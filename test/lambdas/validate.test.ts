/**
 * validate and normalize against a real local S3 (moto server) over the corpus built from real
 * photos. moto emulates S3 objects and listing; IAM is not enforced (asserted on the template instead).
 */
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { normalize } from '../../lambdas/normalize/core';
import { DatasetPlanSchema, StatusSchema } from '../../lambdas/shared/contract';
import { InvalidInputError } from '../../lambdas/shared/errors';
import { keys } from '../../lambdas/shared/keys';
import { getBytes, getJson, listAll, putJson } from '../../lambdas/shared/s3';
import { validate } from '../../lambdas/validate/core';
import { cropKey, ReportSchema } from '../../lambdas/validate/report';
import { type Moto, startMoto } from '../../scripts/local/moto';
import { buildCorpus, corpusUnavailable } from '../fixtures/photos/build';
import { describeNeeding, motoMissing } from '../helpers/suites';
import { ARTIFACTS, context, INBOX, TEST_CONFIG, uploadJob } from './validate-fixtures';

const skip = corpusUnavailable() ?? motoMissing();
if (skip) console.warn(`validate tests skipped: ${skip}`);

const GOOD = [
  'subject-01.jpg',
  'subject-02.jpg',
  'subject-03.jpg',
  'subject-04.jpg',
  'subject-05.jpg',
  'subject-06.jpg',
  'subject-07.webp',
  'subject-08.tiff',
  'subject-09.avif',
  'png-renamed.jpg',
  'exif-rotated.jpg',
  'cmyk.jpg',
];

describeNeeding('validate and normalize on S3', skip, () => {
  let moto: Moto;
  let corpus: string;

  beforeAll(async () => {
    [moto, corpus] = await Promise.all([startMoto(), buildCorpus()]);
    await moto.createBucket(INBOX);
    await moto.createBucket(ARTIFACTS);
  });
  afterAll(async () => moto?.stop());

  describe('a job with enough good photos', () => {
    const ctx = () => context(moto.s3(), 'job-good');
    let result: Awaited<ReturnType<typeof validate>>;

    beforeAll(async () => {
      await uploadJob(
        ctx(),
        corpus,
        [...GOOD, 'blurred.jpg', ['copy-of-subject-01.jpg', 'subject-01b.jpg'], 'drawing.svg'],
        { token: 'ohwx', classWord: 'man' },
        {
          'subject-01.txt': 'photo of ohwx, a man in a white space suit\u0000 smiling',
        },
      );
      result = await validate(ctx(), TEST_CONFIG);
    });

    it('accepts the good photos and rejects the rest with their codes', async () => {
      expect(result.accepted).toBe(GOOD.length);
      expect(result.rejected).toBe(3);
      const report = ReportSchema.parse(await getJson(moto.s3(), ARTIFACTS, keys.validateReport(ctx().job)));
      const codes = Object.fromEntries(report.photos.map((p) => [p.file, p.code]));
      expect(codes['blurred.jpg']).toBe('BLURRY');
      expect(codes['subject-01b.jpg']).toBe('DUPLICATE');
      expect(report.photos.find((p) => p.file === 'subject-01b.jpg')?.message).toContain('an exact copy of subject-01.jpg');
      expect(codes['drawing.svg']).toBe('UNSUPPORTED_FORMAT');
    });

    it('plans training with the recorded arithmetic at the resolution the photos support', () => {
      expect(result.resolution).toBe(512);
      expect(result.plan.numImages).toBe(GOOD.length);
      expect(result.plan.folder).toBe(`${result.plan.repeats}_ohwx`);
      expect(result.plan.repeats).toBeGreaterThan(result.plan.epochs);
      expect(result.plan.arithmetic).toContain(`${GOOD.length} images x ${result.plan.repeats} repeats x ${result.plan.epochs} epochs`);
    });

    it('writes a contact sheet PNG', async () => {
      const sheet = await getBytes(moto.s3(), ARTIFACTS, keys.contactSheet(ctx().job));
      const meta = await sharp(sheet).metadata();
      expect(meta.format).toBe('png');
      expect(meta.width).toBeGreaterThan(1000);
    });

    it('normalizes into the kohya folder with unique PNG names, a caption and plan.json last', async () => {
      const out = await normalize(ctx());
      expect(out.images).toBe(GOOD.length);
      const plan = DatasetPlanSchema.parse(await getJson(moto.s3(), ARTIFACTS, keys.plan(ctx().job)));
      expect(plan.images).toEqual(GOOD.map((_, i) => `ohwx-${String(i + 1).padStart(2, '0')}.png`));
      expect(plan.outputName).toBe('ohwx');
      const report = ReportSchema.parse(await getJson(moto.s3(), ARTIFACTS, keys.validateReport(ctx().job)));
      const captioned = report.photos.find((p) => p.file === 'subject-01.jpg')!.output!;
      expect(plan.userCaptions).toEqual([captioned]);
      const listed = (await listAll(moto.s3(), ARTIFACTS, keys.stage(ctx().job, 'normalize'))).map((o) => o.key.split('/').slice(-2).join('/'));
      expect(listed).toContain(`${plan.plan.folder}/ohwx-12.png`);
      const captionName = captioned.replace('.png', '.txt');
      expect(listed).toContain(`${plan.plan.folder}/${captionName}`);
      const caption = new TextDecoder().decode(await getBytes(moto.s3(), ARTIFACTS, keys.datasetFile(ctx().job, plan.plan.folder, captionName)));
      expect(caption).toBe('photo of ohwx, a man in a white space suit smiling\n');
      const image = await getBytes(moto.s3(), ARTIFACTS, keys.datasetFile(ctx().job, plan.plan.folder, 'ohwx-05.png'));
      const meta = await sharp(image).metadata();
      expect([meta.format, meta.width, meta.height, meta.channels, meta.depth, meta.exif]).toEqual(['png', 512, 512, 3, 'uchar', undefined]);
    });

    it('normalize copies the crops validate wrote, byte for byte, and reads no photo from the inbox', async () => {
      const reads: string[] = [];
      const s3 = moto.s3();
      const spy = {
        send: (command: Parameters<S3Client['send']>[0]) => {
          if (command instanceof GetObjectCommand) reads.push(`${command.input.Bucket}/${command.input.Key}`);
          return s3.send(command);
        },
      } as unknown as S3Client;
      const out = await normalize({ ...ctx(), s3: spy });
      const photos = `${INBOX}/${keys.photosPrefix(ctx().job)}`;
      expect(reads.filter((k) => k.startsWith(photos) && !k.endsWith('.txt'))).toEqual([]);
      const report = ReportSchema.parse(await getJson(s3, ARTIFACTS, keys.validateReport(ctx().job)));
      const accepted = report.photos.filter((p) => p.status === 'accepted');
      expect(accepted).toHaveLength(GOOD.length);
      for (const photo of accepted) {
        const crop = Buffer.from(await getBytes(s3, ARTIFACTS, cropKey(ctx().job, photo.output!)));
        const copied = Buffer.from(await getBytes(s3, ARTIFACTS, keys.datasetFile(ctx().job, out.folder, photo.output!)));
        expect(copied.equals(crop), photo.output).toBe(true);
      }
    });

    it('leaves the job queued for captioning', async () => {
      const status = StatusSchema.parse(await getJson(moto.s3(), ARTIFACTS, keys.status(ctx().job)));
      expect(status).toMatchObject({ state: 'queued', stage: 'caption', progress: { fraction: 0, message: 'waiting for a GPU' } });
    });

    it('rewrites the same keys when normalize runs again', async () => {
      const before = await listAll(moto.s3(), ARTIFACTS, keys.stage(ctx().job, 'normalize'));
      await normalize(ctx());
      const after = await listAll(moto.s3(), ARTIFACTS, keys.stage(ctx().job, 'normalize'));
      expect(after.map((o) => o.key)).toEqual(before.map((o) => o.key));
    });
  });

  it('fails normalize clearly when a crop the report accepts is missing', async () => {
    const good = context(moto.s3(), 'job-good');
    const ctx = context(moto.s3(), 'job-no-crops');
    const report = ReportSchema.parse(await getJson(moto.s3(), ARTIFACTS, keys.validateReport(good.job)));
    await putJson(moto.s3(), INBOX, keys.spec(ctx.job), { token: 'ohwx', classWord: 'man' });
    await putJson(moto.s3(), ARTIFACTS, keys.validateReport(ctx.job), { ...report, jobId: 'job-no-crops' });
    const error = await normalize(ctx).catch((e: unknown) => e);
    expect((error as InvalidInputError).code).toBe('NOT_VALIDATED');
    expect((error as Error).message).toMatch(/^teams\/team-a\/jobs\/job-no-crops\/validate\/crops\/ohwx-\d+\.png is missing/);
    expect(await getJson(moto.s3(), ARTIFACTS, keys.plan(ctx.job))).toBeUndefined();
  });

  it('fails a job with too few usable photos after writing the report, naming each dropped file', async () => {
    const ctx = context(moto.s3(), 'job-few');
    await uploadJob(ctx, corpus, ['subject-01.jpg', 'subject-02.jpg', 'blurred.jpg', 'no-face.png', 'zero-bytes.jpg']);
    const error = await validate(ctx, TEST_CONFIG).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidInputError);
    expect((error as InvalidInputError).code).toBe('TOO_FEW_PHOTOS');
    const message = (error as Error).message;
    expect(message).toContain('only 2 of 5 photos are usable; a character job needs at least 10');
    expect(message).toContain('blurred.jpg: BLURRY');
    expect(message).toContain('no-face.png: NO_FACE');
    expect(message).toContain('zero-bytes.jpg: EMPTY_FILE');
    const report = ReportSchema.parse(await getJson(moto.s3(), ARTIFACTS, keys.validateReport(ctx.job)));
    expect(report.plan).toBeUndefined();
    expect(report.summary.accepted).toBe(2);
  });

  it('refuses an invalid job.json, naming the field', async () => {
    const ctx = context(moto.s3(), 'job-bad-spec');
    await uploadJob(ctx, corpus, ['subject-01.jpg'], { token: 'man', classWord: 'man' });
    await expect(validate(ctx, TEST_CONFIG)).rejects.toThrow(/token: the token is a common word/);
  });

  it('rejects a photo in a sub-folder without reading it', async () => {
    const ctx = context(moto.s3(), 'job-subfolder');
    await uploadJob(ctx, corpus, [...GOOD.slice(0, 10), ['subject-01.jpg', 'nested/x.jpg']]);
    await validate(ctx, TEST_CONFIG);
    const report = ReportSchema.parse(await getJson(moto.s3(), ARTIFACTS, keys.validateReport(ctx.job)));
    expect(report.photos.find((p) => p.file === 'nested/x.jpg')?.code).toBe('BAD_PHOTO_NAME');
  });

  it('never writes to the inbox', async () => {
    const inbox = await listAll(moto.s3(), INBOX, 'teams/');
    expect(inbox.every((o) => /\/(job\.json|photos\/.+)$/.test(o.key))).toBe(true);
  });
});
