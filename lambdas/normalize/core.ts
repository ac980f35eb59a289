/**
 * The normalize stage: turn every photo the validate report accepted into kohya's dataset layout,
 * `normalize/<repeats>_<token>/<token>-NN.png` (plus the user's caption as `<token>-NN.txt`), then
 * write `normalize/plan.json` last, so a plan on S3 always describes a complete dataset. Re-running
 * rewrites the same keys.
 */
import { createHash } from 'node:crypto';
import { type DatasetPlan, DatasetPlanSchema, JobSpecSchema, type Plan } from '../shared/contract';
import { InvalidInputError } from '../shared/errors';
import type { StageContext } from '../shared/handler';
import { keys } from '../shared/keys';
import { getBytes, getValidJson, putBytes, putJson } from '../shared/s3';
import { writeStatus } from '../shared/status';
import { configFromEnv, type IntakeConfig } from '../intake/config';
import { mapLimit } from '../intake/pool';
import { cleanCaption, renderDatasetImage } from '../intake/render';
import { ReportSchema } from '../intake/report';

/** What the state machine passes on to the caption stage. */
export interface NormalizeResult {
  readonly folder: string;
  readonly images: number;
  readonly plan: Plan;
}

const MAX_CAPTION_BYTES = 4096;

export async function normalize(ctx: StageContext, config: IntakeConfig = configFromEnv()): Promise<NormalizeResult> {
  const { s3, job } = ctx;
  await writeStatus(s3, ctx.artifactsBucket, job, { state: 'running', stage: 'normalize', progress: { fraction: 0, message: 'cropping photos' } }, ctx.now());
  const spec = await getValidJson(s3, ctx.inboxBucket, keys.spec(job), JobSpecSchema);
  const report = await getValidJson(s3, ctx.artifactsBucket, keys.validateReport(job), ReportSchema);
  if (!report.plan) {
    throw new InvalidInputError('NOT_VALIDATED', `${keys.validateReport(job)} has no training plan (too few usable photos): fix the photos and run the job again`, keys.validateReport(job));
  }
  const plan = report.plan;
  const accepted = report.photos.filter((p) => p.status === 'accepted');
  const prefix = keys.photosPrefix(job);

  const written = await mapLimit(accepted, config.concurrency, async (photo) => {
    const key = `${prefix}${photo.file}`;
    const bytes = Buffer.from(await getBytes(s3, ctx.inboxBucket, key, config.maxFileBytes));
    // The crop was computed for the bytes validate saw; a replaced photo would be cut blindly.
    if (createHash('sha256').update(bytes).digest('hex') !== photo.sha256) {
      throw new InvalidInputError('PHOTO_CHANGED', `${key} changed after validation: do not modify photos while a job runs; submit the job again`, key);
    }
    const png = await renderDatasetImage(bytes, photo.crop!, plan.resolution, config);
    await putBytes(s3, ctx.artifactsBucket, keys.datasetFile(job, plan.folder, photo.output!), png, 'image/png');
    if (!photo.caption) return { image: photo.output!, captioned: false };
    const text = cleanCaption(await getBytes(s3, ctx.inboxBucket, `${prefix}${photo.caption}`, MAX_CAPTION_BYTES));
    if (!text) return { image: photo.output!, captioned: false };
    await putBytes(s3, ctx.artifactsBucket, keys.datasetFile(job, plan.folder, photo.output!.replace(/\.png$/, '.txt')), `${text}\n`, 'text/plain; charset=utf-8');
    return { image: photo.output!, captioned: true };
  });

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
