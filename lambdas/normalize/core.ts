/**
 * The normalize stage: copy every dataset PNG that validate wrote for an accepted photo
 * (`validate/crops/<token>-NN.png`) into kohya's layout, `normalize/<repeats>_<token>/<token>-NN.png`
 * (plus the user's caption as `<token>-NN.txt`), then write `normalize/plan.json` last, so a plan on
 * S3 always describes a complete dataset. No photo is read or decoded again: the crops are the
 * pixels validate checked. Re-running rewrites the same keys.
 */
import { CopyObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import pMap from 'p-map';
import { type DatasetPlan, DatasetPlanSchema, JobSpecSchema, type Plan } from '../shared/contract';
import { InvalidInputError } from '../shared/errors';
import type { StageContext } from '../shared/handler';
import { keys } from '../shared/keys';
import { getBytes, getValidJson, putBytes, putJson } from '../shared/s3';
import { writeStatus } from '../shared/status';
import { cropKey, ReportSchema } from '../validate/report';
import { cleanCaption } from './caption';

/** What the state machine passes on to the caption stage. */
export interface NormalizeResult {
  readonly folder: string;
  readonly images: number;
  readonly plan: Plan;
}

const MAX_CAPTION_BYTES = 4096;
/** Copies are server-side and small: many can run at once. */
const COPIES_IN_FLIGHT = 8;

export async function normalize(ctx: StageContext): Promise<NormalizeResult> {
  const { s3, job } = ctx;
  await writeStatus(
    s3,
    ctx.artifactsBucket,
    job,
    { state: 'running', stage: 'normalize', progress: { fraction: 0, message: 'assembling the dataset' } },
    ctx.now(),
  );
  const spec = await getValidJson(s3, ctx.inboxBucket, keys.spec(job), JobSpecSchema);
  const report = await getValidJson(s3, ctx.artifactsBucket, keys.validateReport(job), ReportSchema);
  if (!report.plan) {
    throw new InvalidInputError(
      'NOT_VALIDATED',
      `${keys.validateReport(job)} has no training plan (too few usable photos): fix the photos and run the job again`,
      keys.validateReport(job),
    );
  }
  const plan = report.plan;
  const accepted = report.photos.filter((p) => p.status === 'accepted');
  const prefix = keys.photosPrefix(job);

  const written = await pMap(
    accepted,
    async (photo) => {
      await copyObject(s3, ctx.artifactsBucket, cropKey(job, photo.output!), keys.datasetFile(job, plan.folder, photo.output!));
      if (!photo.caption) return { image: photo.output!, captioned: false };
      const text = cleanCaption(await getBytes(s3, ctx.inboxBucket, `${prefix}${photo.caption}`, MAX_CAPTION_BYTES));
      if (!text) return { image: photo.output!, captioned: false };
      await putBytes(
        s3,
        ctx.artifactsBucket,
        keys.datasetFile(job, plan.folder, photo.output!.replace(/\.png$/, '.txt')),
        `${text}\n`,
        'text/plain; charset=utf-8',
      );
      return { image: photo.output!, captioned: true };
    },
    { concurrency: COPIES_IN_FLIGHT, stopOnError: true },
  );

  const datasetPlan: DatasetPlan = DatasetPlanSchema.parse({
    teamId: job.teamId,
    jobId: job.jobId,
    spec,
    plan,
    outputName: spec.outputName ?? spec.token,
    images: written.map((w) => w.image),
    userCaptions: written.filter((w) => w.captioned).map((w) => w.image),
  });
  await putJson(s3, ctx.artifactsBucket, keys.plan(job), datasetPlan);
  await writeStatus(s3, ctx.artifactsBucket, job, { state: 'queued', stage: 'caption', progress: { fraction: 0, message: 'waiting for a GPU' } }, ctx.now());
  return { folder: plan.folder, images: written.length, plan };
}

/** A server-side copy within the bucket; a missing source means validate did not finish writing its crops. */
async function copyObject(s3: S3Client, bucket: string, from: string, to: string): Promise<void> {
  try {
    await s3.send(
      new CopyObjectCommand({
        Bucket: bucket,
        Key: to,
        CopySource: `${bucket}/${from.split('/').map(encodeURIComponent).join('/')}`,
        ContentType: 'image/png',
        MetadataDirective: 'REPLACE',
      }),
    );
  } catch (error) {
    if ((error as Error).name === 'NoSuchKey' || (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) {
      throw new InvalidInputError(
        'NOT_VALIDATED',
        `${from} is missing although the validate report accepts the photo: run the job again so validate rewrites its crops`,
        from,
      );
    }
    throw error;
  }
}
