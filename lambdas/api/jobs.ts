/**
 * What the job API does, over S3 and Step Functions; the HTTP layer (app.ts) only maps it to routes.
 *
 * Where things live (artifacts bucket unless said):
 * - `teams/<t>/jobs/<j>/request.json`: the API's record of a created job (spec, declared photos).
 * - `teams/<t>/idempotency/<sha256(key)>.json`: Idempotency-Key -> job id, written once (IfNoneMatch).
 * - `teams/<t>/tombstones/<j>.json`: what erasure removed and when; ids only, no customer data.
 * - inbox `teams/<t>/jobs/<j>/photos/<name>` and `job.json`: exactly what the inbox path expects, so
 *   start (and admission) treat API jobs and inbox uploads alike.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { DeleteObjectsCommand, GetObjectCommand, ListObjectsV2Command, ListObjectVersionsCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { type SFNClient, StopExecutionCommand } from '@aws-sdk/client-sfn';
import { TransactWriteCommand } from '@aws-sdk/lib-dynamodb';
import { createPresignedPost } from '@aws-sdk/s3-presigned-post';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { z } from 'zod';
import { describeIssues, type ErrorInfo, JobSpecSchema, ManifestSchema, STAGES, type Status, StatusSchema } from '../shared/contract';
import { tombstoneKey } from '../shared/erasure';
import { AppError } from '../shared/errors';
import { type JobRef, jobPrefix, keys } from '../shared/keys';
import { fillKey, LAYOUT } from '../shared/layout';
import { getJson, listAll } from '../shared/s3';
import { readStatus } from '../shared/status';
import type { TeamRegistry } from '../shared/teams';
import { executionName } from '../start/handler';
import { type RequestRecord, RequestRecordSchema, requestKey } from './records';
import type { CreateJobRequest, Job, Results } from './schemas';
import { linkLifetime } from './signing';

export interface ApiDeps {
  readonly s3: S3Client;
  readonly sfn: SFNClient;
  readonly inboxBucket: string;
  readonly artifactsBucket: string;
  readonly stateMachineArn: string;
  /** Lifetime asked for result links (capped by the signing credentials). */
  readonly urlExpirySeconds: number;
  /**
   * Signs result links: in Lambda a client with the results signing role's session, whose expiry is
   * known (signing.ts). Default: `s3`.
   */
  readonly resultsS3?: S3Client;
  /** Lifetime asked for upload targets (capped by the signing credentials). */
  readonly uploadExpirySeconds: number;
  /** The largest photo S3 accepts through an upload target, and start accepts. */
  readonly maxPhotoBytes: number;
  readonly now: () => Date;
  /**
   * After job.json is written. In AWS the inbox's EventBridge rule runs `start`, so nothing is
   * needed; the local server starts the local state machine here.
   */
  readonly onSpecWritten?: (job: JobRef) => Promise<void>;
  /** The team registry, whose cost ledger rows erasure anonymises. */
  readonly registry?: TeamRegistry;
}

/** An API error: HTTP status plus the stable code and message clients see. */
export class ApiError extends AppError {
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 409 | 413 | 429 | 500,
    code: string,
    message: string,
    input?: string,
  ) {
    super(code, message, input);
  }
}

/** One body for "missing" and "another team's": a caller never learns that someone else's job exists. */
export const notFound = (jobId: string) => new ApiError(404, 'JOB_NOT_FOUND', `no job "${jobId}" for your team: check the job id`, jobId);

const idempotencyKey = (teamId: string, key: string) => fillKey(LAYOUT.idempotencyKey, { teamId, hash: sha256(key) });

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function httpStatus(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

/** PutObject that succeeds only when the key does not exist yet; false when it did. */
async function putOnce(s3: S3Client, bucket: string, key: string, value: unknown): Promise<boolean> {
  try {
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: JSON.stringify(value), ContentType: 'application/json', IfNoneMatch: '*' }));
    return true;
  } catch (error) {
    if (httpStatus(error) === 412 || httpStatus(error) === 409) return false;
    throw error;
  }
}

async function readRecord(deps: ApiDeps, job: JobRef): Promise<RequestRecord | undefined> {
  const parsed = RequestRecordSchema.safeParse(await getJson(deps.s3, deps.artifactsBucket, requestKey(job)));
  return parsed.success ? parsed.data : undefined;
}

/** The caller's job, or 404: a missing job and another team's job answer alike. */
async function ownJob(deps: ApiDeps, teamId: string, jobId: string): Promise<{ job: JobRef; record: RequestRecord }> {
  const job = { teamId, jobId };
  const record = await readRecord(deps, job);
  if (!record || record.teamId !== teamId) throw notFound(jobId);
  return { job, record };
}

async function uploadTargets(deps: ApiDeps, job: JobRef, photos: CreateJobRequest['photos']) {
  const lifetime = await linkLifetime(deps.s3, deps.uploadExpirySeconds, deps.now());
  const uploads = await Promise.all(
    photos.map(async (p) => {
      const key = `${keys.photosPrefix(job)}${p.name}`;
      // The policy S3 evaluates on upload: this key only, this content type only, 1..maxPhotoBytes.
      const post = await createPresignedPost(deps.s3, {
        Bucket: deps.inboxBucket,
        Key: key,
        Conditions: [
          ['content-length-range', 1, deps.maxPhotoBytes],
          ['eq', '$Content-Type', p.contentType],
        ],
        Fields: { 'Content-Type': p.contentType },
        Expires: lifetime.seconds,
      });
      return { name: p.name, url: post.url, fields: post.fields, contentType: p.contentType, maxBytes: deps.maxPhotoBytes };
    }),
  );
  return { uploads, uploadsExpireAt: lifetime.expiresAt.toISOString() };
}

export async function createJob(deps: ApiDeps, teamId: string, body: CreateJobRequest, idemKey: string | undefined) {
  const spec = JobSpecSchema.safeParse(body.spec);
  if (!spec.success) throw new ApiError(400, 'INVALID_JOB_SPEC', describeIssues(spec.error, 'spec'), 'spec');
  const requestHash = sha256(JSON.stringify(body));
  let jobId: string = randomUUID();
  let replayed = false;
  if (idemKey !== undefined) {
    if (!/^[\x21-\x7e]{1,255}$/.test(idemKey))
      throw new ApiError(400, 'BAD_IDEMPOTENCY_KEY', 'Idempotency-Key must be 1-255 printable ASCII characters', 'Idempotency-Key');
    const claimKey = idempotencyKey(teamId, idemKey);
    if (!(await putOnce(deps.s3, deps.artifactsBucket, claimKey, { jobId, requestHash }))) {
      const claim = z.object({ jobId: z.string(), requestHash: z.string() }).parse(await getJson(deps.s3, deps.artifactsBucket, claimKey));
      if (claim.requestHash !== requestHash) {
        throw new ApiError(
          409,
          'IDEMPOTENCY_KEY_REUSED',
          'this Idempotency-Key was used for a different request: use a new key for a new job',
          'Idempotency-Key',
        );
      }
      jobId = claim.jobId;
      replayed = true;
    }
  }
  const job = { teamId, jobId };
  const record: RequestRecord = {
    teamId,
    jobId,
    createdAt: deps.now().toISOString(),
    requestHash,
    ...(idemKey !== undefined ? { idempotencyKey: idemKey } : {}),
    spec: body.spec,
    photos: body.photos,
    ...(body.webhook ? { webhook: { url: body.webhook.url, secret: randomBytes(32).toString('hex') } } : {}),
  };
  // A replay whose first attempt died between the two writes still ends with the record written.
  await putOnce(deps.s3, deps.artifactsBucket, requestKey(job), record);
  const stored = await readRecord(deps, job);
  if (!stored) throw notFound(jobId); // erased since: the key's job is gone
  return {
    jobId,
    replayed,
    ...(stored.webhook ? { webhook: stored.webhook } : {}),
    ...(await uploadTargets(deps, job, stored.photos as CreateJobRequest['photos'])),
  };
}

async function view(deps: ApiDeps, job: JobRef, record: RequestRecord): Promise<Job> {
  const status = await readStatus(deps.s3, deps.artifactsBucket, job);
  return {
    jobId: job.jobId,
    teamId: job.teamId,
    state: status?.state ?? 'created',
    ...(status ? { stage: status.stage, status } : {}),
    createdAt: record.createdAt,
    photos: record.photos.length,
  };
}

export async function getJob(deps: ApiDeps, teamId: string, jobId: string): Promise<Job> {
  const { job, record } = await ownJob(deps, teamId, jobId);
  return view(deps, job, record);
}

/**
 * A page of the team's jobs in id order. The cursor is S3's continuation token (opaque). A state
 * filter applies within the page, so a filtered page can hold fewer than `limit` jobs: keep
 * following nextCursor.
 */
export async function listJobs(deps: ApiDeps, teamId: string, query: { state?: Job['state']; limit: number; cursor?: string }) {
  const page = await deps.s3
    .send(
      new ListObjectsV2Command({
        Bucket: deps.artifactsBucket,
        Prefix: fillKey(LAYOUT.teamJobs, { teamId }),
        Delimiter: '/',
        MaxKeys: query.limit,
        ContinuationToken: query.cursor,
      }),
    )
    .catch((error) => {
      if (query.cursor && httpStatus(error) === 400) throw new ApiError(400, 'BAD_CURSOR', 'the cursor is not valid: start again without it', 'cursor');
      throw error;
    });
  const ids = (page.CommonPrefixes ?? []).map((p) => p.Prefix!.split('/')[3]).filter(Boolean);
  const jobs = (
    await Promise.all(
      ids.map(async (jobId) => {
        const record = await readRecord(deps, { teamId, jobId });
        return record ? view(deps, { teamId, jobId }, record) : undefined; // an inbox-path job has no API record
      }),
    )
  ).filter((j): j is Job => !!j && (!query.state || j.state === query.state));
  return { jobs, ...(page.IsTruncated && page.NextContinuationToken ? { nextCursor: page.NextContinuationToken } : {}) };
}

/** Checks the uploads against the declaration, then writes job.json where the inbox path expects it. */
export async function startJob(deps: ApiDeps, teamId: string, jobId: string): Promise<Job> {
  const { job, record } = await ownJob(deps, teamId, jobId);
  const uploaded = new Map(
    (await listAll(deps.s3, deps.inboxBucket, keys.photosPrefix(job), 1000)).map((o) => [o.key.slice(keys.photosPrefix(job).length), o.size]),
  );
  const missing = record.photos.filter((p) => !uploaded.has(p.name)).map((p) => p.name);
  if (missing.length) {
    throw new ApiError(
      409,
      'UPLOADS_INCOMPLETE',
      `${missing.length} declared photo(s) not uploaded yet (${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}): upload them through their targets, then start again`,
      missing[0],
    );
  }
  // S3 enforces the size in the upload policy; checked again here because an emulator (or a
  // policy changed later) may not have.
  for (const [name, size] of uploaded) {
    if (size > deps.maxPhotoBytes) {
      throw new ApiError(
        413,
        'PHOTO_TOO_LARGE',
        `photo "${name}" is ${size} bytes, over the ${deps.maxPhotoBytes}-byte limit: delete the job and upload a smaller file`,
        name,
      );
    }
  }
  const status = await readStatus(deps.s3, deps.artifactsBucket, job);
  if (status?.state === 'cancelled') throw new ApiError(409, 'JOB_CANCELLED', 'the job was cancelled: create a new job');
  const written = await putOnce(deps.s3, deps.inboxBucket, keys.spec(job), record.spec);
  if (written) await deps.onSpecWritten?.(job);
  return view(deps, job, record);
}

function executionArn(stateMachineArn: string, job: JobRef): string {
  const [prefix, name] = stateMachineArn.split(':stateMachine:');
  if (!name) throw new Error(`not a state machine ARN: ${stateMachineArn}`);
  return `${prefix}:execution:${name}:${executionName(job)}`;
}

const TERMINAL = new Set<Status['state']>(['succeeded', 'failed', 'cancelled']);

/** Stops the execution (its Batch job ends through the .sync integration) and records `cancelled`. */
export async function cancelJob(deps: ApiDeps, teamId: string, jobId: string): Promise<Job> {
  const { job, record } = await ownJob(deps, teamId, jobId);
  for (let attempt = 0; attempt < 5; attempt++) {
    const head = await deps.s3.send(new GetObjectCommand({ Bucket: deps.artifactsBucket, Key: keys.status(job) })).catch((error) => {
      if (httpStatus(error) === 404) return undefined;
      throw error;
    });
    const current = head ? StatusSchema.safeParse(JSON.parse(await head.Body!.transformToString())) : undefined;
    const status = current?.success ? current.data : undefined;
    if (status && TERMINAL.has(status.state)) {
      throw new ApiError(409, 'JOB_FINISHED', `the job already ended (${status.state}): nothing to cancel`);
    }
    if (status) {
      await deps.sfn
        .send(new StopExecutionCommand({ executionArn: executionArn(deps.stateMachineArn, job), error: 'Cancelled', cause: 'cancelled through the job API' }))
        .catch((error) => {
          if ((error as Error).name !== 'ExecutionDoesNotExist') throw error;
        });
    }
    const at = deps.now().toISOString();
    const cancelled = StatusSchema.parse({
      teamId,
      jobId,
      state: 'cancelled',
      stage: status?.stage ?? 'validate',
      createdAt: status?.createdAt ?? record.createdAt,
      updatedAt: at,
      finishedAt: at,
      error: { code: 'CANCELLED', message: 'cancelled on request' } satisfies ErrorInfo,
    });
    try {
      // Conditional on the status we read: a stage that wrote meanwhile makes us re-read.
      await deps.s3.send(
        new PutObjectCommand({
          Bucket: deps.artifactsBucket,
          Key: keys.status(job),
          Body: `${JSON.stringify(cancelled, null, 2)}\n`,
          ContentType: 'application/json',
          ...(head?.ETag ? { IfMatch: head.ETag } : { IfNoneMatch: '*' }),
        }),
      );
      return view(deps, job, record);
    } catch (error) {
      if (httpStatus(error) !== 412 && httpStatus(error) !== 409) throw error;
    }
  }
  throw new ApiError(409, 'CANCEL_CONFLICT', 'the job kept changing while being cancelled: try again');
}

/** Links signed now, over what the job has produced so far (or the manifest's list once it succeeded). */
export async function results(deps: ApiDeps, teamId: string, jobId: string): Promise<Results> {
  const { job, record } = await ownJob(deps, teamId, jobId);
  const current = await view(deps, job, record);
  const manifest = ManifestSchema.safeParse(await getJson(deps.s3, deps.artifactsBucket, keys.manifest(job)));
  const prefix = jobPrefix(job);
  const stages = new Set<string>(STAGES);
  const listed = manifest.success
    ? manifest.data.artifacts.map((a) => ({ key: a.key, name: a.name, stage: a.stage, size: a.size, sha256: a.sha256 }))
    : (await listAll(deps.s3, deps.artifactsBucket, prefix))
        .map((o) => ({ key: o.key, name: o.key.slice(prefix.length), size: o.size }))
        .filter((o) => stages.has(o.name.split('/')[0]) && !o.name.startsWith(LAYOUT.trainState))
        .map((o) => ({ ...o, stage: o.name.split('/')[0] }));
  const signer = deps.resultsS3 ?? deps.s3;
  const lifetime = await linkLifetime(signer, deps.urlExpirySeconds, deps.now());
  const artifacts = await Promise.all(
    listed.map(async (a) => ({
      ...a,
      url: await getSignedUrl(signer, new GetObjectCommand({ Bucket: deps.artifactsBucket, Key: a.key }), { expiresIn: lifetime.seconds }),
    })),
  );
  const recommendation = manifest.success ? manifest.data.recommendation : undefined;
  return { teamId, jobId, state: current.state, urlExpiresAt: lifetime.expiresAt.toISOString(), artifacts, ...(recommendation ? { recommendation } : {}) };
}

/** Removes every version and delete marker under a prefix; returns how many. */
async function eraseVersions(s3: S3Client, bucket: string, prefix: string): Promise<number> {
  let removed = 0;
  for (;;) {
    // Always from the start: deleting as we go keeps the listing short and the loop simple.
    const page = await s3.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: prefix, MaxKeys: 1000 }));
    const objects = [...(page.Versions ?? []), ...(page.DeleteMarkers ?? [])].map((v) => ({ Key: v.Key!, VersionId: v.VersionId }));
    if (objects.length === 0) return removed;
    const out = await s3.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: objects, Quiet: true } }));
    if (out.Errors?.length)
      throw new Error(`erasure of s3://${bucket}/${prefix} failed for ${out.Errors.length} object(s): ${out.Errors[0].Code} ${out.Errors[0].Message}`);
    removed += objects.length;
  }
}

/**
 * Erasure: stops the job if it runs, removes every object version and delete marker of the job in
 * both buckets (and its idempotency claim), and leaves a tombstone with ids and counts only.
 */
export async function deleteJob(deps: ApiDeps, teamId: string, jobId: string) {
  const { job, record } = await ownJob(deps, teamId, jobId);
  const status = await readStatus(deps.s3, deps.artifactsBucket, job);
  if (status && !TERMINAL.has(status.state)) await cancelJob(deps, teamId, jobId).catch(() => undefined);
  const prefix = jobPrefix(job);
  const deletedAt = deps.now().toISOString();
  // The tombstone goes first: a late writer (announce, notify) that writes after the sweep below
  // finds it and takes its write back (lambdas/shared/erasure.ts).
  const tombstone = (fields: object) =>
    deps.s3.send(
      new PutObjectCommand({
        Bucket: deps.artifactsBucket,
        Key: tombstoneKey(job),
        Body: JSON.stringify({ teamId, jobId, deletedAt, ...fields }),
        ContentType: 'application/json',
      }),
    );
  await tombstone({});
  const removed: Record<string, number> = {};
  for (const bucket of [deps.inboxBucket, deps.artifactsBucket]) removed[bucket] = await eraseVersions(deps.s3, bucket, prefix);
  if (record.idempotencyKey !== undefined) {
    removed[deps.artifactsBucket] += await eraseVersions(deps.s3, deps.artifactsBucket, idempotencyKey(teamId, record.idempotencyKey));
  }
  const ledgerRows = deps.registry ? await anonymiseLedger(deps.registry, job) : 0;
  await tombstone({ removed, ledgerRows });
  return { jobId, deletedAt, removed };
}

/** The id a job's ledger rows carry once it is erased: the team's totals stay right, the job id goes. */
export function erasedJobId(job: JobRef): string {
  return `erased-${sha256(`${job.teamId}/${job.jobId}`).slice(0, 24)}`;
}

/**
 * Moves each cost ledger row `COST#<job>#<stage>` to `COST#<erased id>#<stage>` with the job id
 * replaced, in one transaction per row (the copy and the delete land together).
 */
async function anonymiseLedger(registry: TeamRegistry, job: JobRef): Promise<number> {
  const rows = await registry.items(job.teamId, `COST#${job.jobId}#`);
  const anonymous = erasedJobId(job);
  for (const row of rows) {
    const sk = String(row.sk);
    const stage = sk.slice(`COST#${job.jobId}#`.length);
    await registry.doc.send(
      new TransactWriteCommand({
        TransactItems: [
          { Put: { TableName: registry.tableName, Item: { ...row, sk: `COST#${anonymous}#${stage}`, jobId: anonymous } } },
          { Delete: { TableName: registry.tableName, Key: { pk: row.pk, sk } } },
        ],
      }),
    );
  }
  return rows.length;
}
