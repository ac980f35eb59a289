/**
 * S3 access shared by the handlers. The endpoint comes from the environment
 * (`AWS_ENDPOINT_URL_S3` points the SDK at the local endpoint in tests and local runs).
 */
import {
  GetObjectCommand,
  type GetObjectCommandOutput,
  NoSuchKey,
  PutObjectCommand,
  type PutObjectCommandOutput,
  paginateListObjectsV2,
  S3Client,
} from '@aws-sdk/client-s3';
import type { z } from 'zod';
import { describeIssues } from './contract';
import { InvalidInputError } from './errors';

let shared: S3Client | undefined;
/** One client per process: Lambda reuses it across invocations. */
export function s3Client(): S3Client {
  shared ??= new S3Client({});
  return shared;
}

/**
 * True when a read failed because the object is not there. Without `s3:ListBucket` on the bucket S3
 * answers a missing key with 403 AccessDenied instead of 404 (it will not reveal what exists), and the
 * stage roles are deliberately not given ListBucket, so a 403 on a read counts as missing too.
 */
export function isMissingObject(error: unknown): boolean {
  const e = error as { name?: string; $metadata?: { httpStatusCode?: number } };
  if (error instanceof NoSuchKey || e.name === 'NoSuchKey' || e.name === 'NotFound') return true;
  return e.$metadata?.httpStatusCode === 403 && e.name === 'AccessDenied';
}

/**
 * Reads an object's bytes. A missing object (404, or 403 without ListBucket) is an InvalidInputError
 * `MISSING_INPUT` naming the key: a file deleted or never uploaded, not an internal error.
 */
export async function getBytes(s3: S3Client, bucket: string, key: string, maxBytes = Infinity): Promise<Uint8Array> {
  let out: GetObjectCommandOutput;
  try {
    out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  } catch (error) {
    if (isMissingObject(error)) {
      throw new InvalidInputError(
        'MISSING_INPUT',
        `${key} does not exist or can no longer be read: upload it again (or do not delete files while the job runs), then submit a new job`,
        key,
      );
    }
    throw error;
  }
  if ((out.ContentLength ?? 0) > maxBytes) {
    out.Body?.transformToWebStream().cancel();
    throw new InvalidInputError('FILE_TOO_LARGE', `${key} is ${out.ContentLength} bytes, over the ${maxBytes}-byte limit: upload a smaller file`, key);
  }
  return out.Body!.transformToByteArray();
}

/** Reads a JSON object, or undefined when the key does not exist. */
export async function getJson(s3: S3Client, bucket: string, key: string, maxBytes = 1_000_000): Promise<unknown | undefined> {
  try {
    const text = new TextDecoder().decode(await getBytes(s3, bucket, key, maxBytes));
    try {
      return JSON.parse(text);
    } catch (error) {
      throw new InvalidInputError('BAD_JSON', `${key} is not valid JSON (${(error as Error).message}): fix the file and upload it again`, key);
    }
  } catch (error) {
    if (error instanceof InvalidInputError && error.code === 'MISSING_INPUT') return undefined;
    throw error;
  }
}

/**
 * Reads and validates a JSON document; a missing or invalid file is an InvalidInputError naming it,
 * with `codes` naming the document (e.g. MISSING_JOB_SPEC / INVALID_JOB_SPEC for job.json).
 */
export async function getValidJson<T extends z.ZodType>(
  s3: S3Client,
  bucket: string,
  key: string,
  schema: T,
  codes: { missing: string; invalid: string } = { missing: 'MISSING_FILE', invalid: 'INVALID_JSON_DOCUMENT' },
): Promise<z.output<T>> {
  const raw = await getJson(s3, bucket, key);
  if (raw === undefined) throw new InvalidInputError(codes.missing, `${key} does not exist: upload it, or check the team and job ids`, key);
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw new InvalidInputError(codes.invalid, describeIssues(parsed.error, key), key);
  return parsed.data;
}

/** Writes an object; S3's answer names the version written (a versioned bucket). */
export function putBytes(s3: S3Client, bucket: string, key: string, body: Uint8Array | string, contentType: string): Promise<PutObjectCommandOutput> {
  return s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: contentType }));
}

export function putJson(s3: S3Client, bucket: string, key: string, value: unknown): Promise<PutObjectCommandOutput> {
  return putBytes(s3, bucket, key, `${JSON.stringify(value, null, 2)}\n`, 'application/json');
}

export interface ListedObject {
  readonly key: string;
  readonly size: number;
}

/** Every object under a prefix, page by page; stops at `limit` to bound hostile input. */
export async function listAll(s3: S3Client, bucket: string, prefix: string, limit = 10_000): Promise<ListedObject[]> {
  const found: ListedObject[] = [];
  for await (const page of paginateListObjectsV2({ client: s3 }, { Bucket: bucket, Prefix: prefix })) {
    for (const item of page.Contents ?? []) found.push({ key: item.Key!, size: item.Size ?? 0 });
    if (found.length >= limit) break;
  }
  return found;
}
