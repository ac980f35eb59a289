/** status.json: one writer at a time per job (the stage that runs), rewritten at every transition. */
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { type Status, StatusSchema } from './contract';
import { type JobRef, keys } from './keys';
import { getJson, isMissingObject, putJson } from './s3';

export type StatusUpdate = Pick<Status, 'state' | 'stage'> & Partial<Pick<Status, 'progress' | 'error' | 'finishedAt' | 'cost'>>;

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

/** A job's status.json with the ETag it was read at (`etag` undefined: no status.json yet). */
export interface VersionedStatus {
  readonly status?: Status;
  readonly etag?: string;
}

export async function readStatusVersioned(s3: S3Client, bucket: string, job: JobRef): Promise<VersionedStatus> {
  try {
    const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: keys.status(job) }));
    const text = await out.Body!.transformToString();
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      raw = undefined;
    }
    const parsed = StatusSchema.safeParse(raw);
    return { status: parsed.success ? parsed.data : undefined, etag: out.ETag };
  } catch (error) {
    if (isMissingObject(error)) return {};
    throw error;
  }
}

/**
 * Writes `status` only if status.json is still what was read (`IfMatch` on its ETag, or `IfNoneMatch`
 * when there was none). Returns false when another writer got there first: re-read and decide again.
 */
export async function replaceStatusIfUnchanged(s3: S3Client, bucket: string, job: JobRef, status: Status, etag: string | undefined): Promise<boolean> {
  try {
    await s3.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: keys.status(job),
        Body: `${JSON.stringify(StatusSchema.parse(status), null, 2)}\n`,
        ContentType: 'application/json',
        ...(etag ? { IfMatch: etag } : { IfNoneMatch: '*' }),
      }),
    );
    return true;
  } catch (error) {
    const code = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    if (code === 412 || code === 409) return false;
    throw error;
  }
}
