/**
 * Erasure versus late writers. The job API's DELETE writes the job's tombstone first, then removes
 * every version under the job's prefix. A function that writes under a job in answer to an event
 * (announce's last-state record, notify's delivery records) may have read the job before the erasure
 * and write after its sweep; so after each such write it looks for the tombstone and, when there is
 * one, deletes the version it just wrote.
 *
 * Why this order suffices (S3 is strongly consistent): if the write finished before the sweep listed
 * the prefix, the sweep removes it; otherwise it finished after the tombstone was written, so the
 * writer's look (which starts after its write) sees the tombstone and removes its own version.
 * A re-sweep after a delay would only narrow the window; this closes it.
 */
import { DeleteObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import type { JobRef } from './keys';
import { fillKey, LAYOUT } from './layout';

export const tombstoneKey = (job: JobRef) => fillKey(LAYOUT.tombstone, { teamId: job.teamId, jobId: job.jobId });

/** Thrown by {@link undoIfErased}: the job was erased, and the write was taken back. */
export class JobErased extends Error {
  constructor(job: JobRef) {
    super(`job ${job.teamId}/${job.jobId} was erased`);
    this.name = 'JobErased';
  }
}

/**
 * True when the job's tombstone exists. A listing, not a HEAD: without `s3:ListBucket` S3 answers a
 * HEAD of a missing key with 403, and the writers' listing grant is what makes a miss certain.
 */
export async function isErased(s3: S3Client, bucket: string, job: JobRef): Promise<boolean> {
  const key = tombstoneKey(job);
  const out = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: key, MaxKeys: 1 }));
  return (out.Contents ?? []).some((o) => o.Key === key);
}

/**
 * After writing `key` (its new version `versionId`) under `job`: when the job has been erased, deletes
 * that version and throws {@link JobErased}. Without a version id (an unversioned bucket) the key is deleted.
 */
export async function undoIfErased(s3: S3Client, bucket: string, job: JobRef, key: string, versionId: string | undefined): Promise<void> {
  if (!(await isErased(s3, bucket, job))) return;
  await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: key, ...(versionId ? { VersionId: versionId } : {}) }));
  throw new JobErased(job);
}
