/**
 * The validate stage: read the job's spec and photos from the inbox, run the photo checks, and write
 * each accepted photo's dataset PNG under `validate/crops/` (so normalize copies instead of decoding
 * again), `validate/contact-sheet.png` and, last, `validate/report.json`. A job with too few usable photos fails
 * here, after the report is written so the client can read why each photo was dropped.
 */

import pMap from 'p-map';
import type { Plan } from '../shared/contract';
import { JobSpecSchema } from '../shared/contract';
import { InvalidInputError } from '../shared/errors';
import type { StageContext } from '../shared/handler';
import { keys, photoName } from '../shared/keys';
import { getBytes, getValidJson, listAll, putBytes, putJson } from '../shared/s3';
import { writeStatus } from '../shared/status';
import { checkPhotos, type PhotoSource, tooFewMessage } from './analyze';
import { configFromEnv, type ValidateConfig } from './config';
import { cropKey, type PhotoEntry, PhotoRejection } from './report';

/** Small PNG uploads overlap well; S3 takes many parallel PUTs. */
const UPLOADS_IN_FLIGHT = 8;

/** What the state machine passes on to normalize. */
export interface ValidateResult {
  readonly accepted: number;
  readonly rejected: number;
  readonly resolution: 512 | 768;
  readonly plan: Plan;
}

export async function validate(ctx: StageContext, config: ValidateConfig = configFromEnv()): Promise<ValidateResult> {
  const { s3, job } = ctx;
  await writeStatus(s3, ctx.artifactsBucket, job, { state: 'running', stage: 'validate', progress: { fraction: 0, message: 'checking photos' } }, ctx.now());
  const spec = await getValidJson(s3, ctx.inboxBucket, keys.spec(job), JobSpecSchema, { missing: 'MISSING_JOB_SPEC', invalid: 'INVALID_JOB_SPEC' });

  const prefix = keys.photosPrefix(job);
  // Captions and photos share the prefix; allow a caption per photo before calling the job too big.
  const listed = await listAll(s3, ctx.inboxBucket, prefix, config.maxFiles * 2 + 1);
  const captions = new Map<string, string>();
  const photos: typeof listed = [];
  for (const object of listed) {
    if (object.key.toLowerCase().endsWith('.txt') && !object.key.slice(prefix.length).includes('/'))
      captions.set(stem(object.key.slice(prefix.length)), object.key.slice(prefix.length));
    else photos.push(object);
  }
  if (photos.length > config.maxFiles || listed.length > config.maxFiles * 2) {
    throw new InvalidInputError(
      'TOO_MANY_PHOTOS',
      `${prefix} holds more than ${config.maxFiles} files: upload at most ${config.maxFiles} photos (${spec.kind} jobs use ${config.countRules[spec.kind].idealMin}-${config.countRules[spec.kind].idealMax})`,
      prefix,
    );
  }

  const badNames: PhotoEntry[] = [];
  const sources: PhotoSource[] = [];
  for (const object of photos.sort((a, b) => a.key.localeCompare(b.key))) {
    let file: string;
    try {
      file = photoName(job, object.key);
    } catch (error) {
      if (!(error instanceof InvalidInputError)) throw error;
      badNames.push({ file: object.key.slice(prefix.length), bytes: object.size, status: 'rejected', code: 'BAD_PHOTO_NAME', message: error.message });
      continue;
    }
    const caption = captions.get(stem(file));
    sources.push({
      file,
      bytes: object.size,
      ...(caption ? { caption } : {}),
      load: async () => {
        try {
          const bytes = await getBytes(s3, ctx.inboxBucket, object.key, config.maxFileBytes);
          return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength); // a view, not a copy
        } catch (error) {
          // The object grew between listing and reading: the same limit, the same rejection.
          if (error instanceof InvalidInputError) throw new PhotoRejection('FILE_TOO_LARGE', error.message);
          throw error;
        }
      },
    });
  }

  const { report, contactSheet, images } = await checkPhotos(sources, { ...job, spec, now: ctx.now() }, config);
  if (badNames.length) {
    report.photos.push(...badNames);
    report.summary.files += badNames.length;
    report.summary.rejected += badNames.length;
    report.summary.reasons.BAD_PHOTO_NAME = badNames.length;
  }
  // Before the report: a report that accepts a photo always has its crop on S3.
  await pMap([...images], ([output, png]) => putBytes(s3, ctx.artifactsBucket, cropKey(job, output), png, 'image/png'), {
    concurrency: UPLOADS_IN_FLIGHT,
    stopOnError: true,
  });
  await putBytes(s3, ctx.artifactsBucket, keys.contactSheet(job), contactSheet, 'image/png');
  await putJson(s3, ctx.artifactsBucket, keys.validateReport(job), report);
  if (!report.plan) throw new InvalidInputError('TOO_FEW_PHOTOS', tooFewMessage(report), keys.validateReport(job));
  return { accepted: report.summary.accepted, rejected: report.summary.rejected, resolution: report.resolution, plan: report.plan };
}

function stem(name: string): string {
  const dot = name.lastIndexOf('.');
  return dot > 0 ? name.slice(0, dot) : name;
}
