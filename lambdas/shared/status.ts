/** status.json: one writer at a time per job (the stage that runs), rewritten at every transition. */
import type { S3Client } from '@aws-sdk/client-s3';
import { type Status, StatusSchema } from './contract';
import { type JobRef, keys } from './keys';
import { getJson, putJson } from './s3';

export type StatusUpdate = Pick<Status, 'state' | 'stage'> & Partial<Pick<Status, 'progress' | 'error' | 'finishedAt'>>;

export async function readStatus(s3: S3Client, bucket: string, job: JobRef): Promise<Status | undefined> {
  const raw = await getJson(s3, bucket, keys.status(job));
  const parsed = StatusSchema.safeParse(raw);
  return parsed.success ? parsed.data : undefined;
}

/** Replaces the job's status, keeping createdAt; progress and error belong to one state and are not carried over. */
export async function writeStatus(s3: S3Client, bucket: string, job: JobRef, update: StatusUpdate, now = new Date()): Promise<Status> {
  const previous = await readStatus(s3, bucket, job);
  const at = now.toISOString();
  const status = StatusSchema.parse({
    teamId: job.teamId,
    jobId: job.jobId,
    createdAt: previous?.createdAt ?? at,
    updatedAt: at,
    ...update,
  });
  await putJson(s3, bucket, keys.status(job), status);
  return status;
}
