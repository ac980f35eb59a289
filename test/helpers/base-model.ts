import { createHash } from 'node:crypto';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { DEFAULT_BASE_MODEL_KEY } from '../../infra/config';

/**
 * A stand-in base model uploaded as the operator uploads the real one (README, Deploy): with its
 * sha256 in the object's metadata, which the trainer checks its cached copy against. The kohya
 * stand-in never reads its bytes.
 */
export async function uploadBaseModel(s3: S3Client, bucket: string): Promise<void> {
  const body = Buffer.alloc(4096, 7);
  await s3.send(
    new PutObjectCommand({ Bucket: bucket, Key: DEFAULT_BASE_MODEL_KEY, Body: body, Metadata: { sha256: createHash('sha256').update(body).digest('hex') } }),
  );
}
