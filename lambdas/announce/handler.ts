/**
 * announce: turns status.json writes into "Avatar Job State Change" events (lambdas/shared/events.ts).
 *
 * Every writer of status.json (the Lambda stages, the GPU containers, reconcile, mark-failed, the job
 * API's cancel) writes the same object, so instead of each writer calling PutEvents, the artifacts
 * bucket's "Object Created" events for `teams/<t>/jobs/<j>/status.json` land here (an EventBridge rule,
 * infra/constructs/announce.ts). Each event names one write (its version id and ETag); this function
 * reads exactly that write and publishes an event only when the job's state or stage moved.
 *
 * S3 events can arrive twice, late, out of order and concurrently, so the newest write seen per job is
 * kept in `notify/last-state.json` next to the job (erased with it), replaced only by a conditional
 * write on the ETag it was read at:
 * - a write whose ETag is the recorded one is a duplicate: nothing is published again;
 * - a write whose `updatedAt` is not after the recorded one arrived late: it is ignored, so a stale
 *   state never follows a newer one;
 * - of two concurrent invocations only one wins the conditional write; the other re-reads and decides again.
 * The record is written (claimed) before PutEvents and marked published after it. An unpublished claim
 * is never overwritten: a newer write waits (a retried error) while its owner publishes it, and once the
 * claim's lease has passed (its owner failed) whoever finds it publishes that same event first.
 * A record written after the job's erasure swept its prefix is taken back (lambdas/shared/erasure.ts).
 */

import { EventBridgeClient, PutEventsCommand } from '@aws-sdk/client-eventbridge';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { z } from 'zod';
import { describeIssues, IdSchema, JOB_STATES, StageSchema, type Status, StatusSchema } from '../shared/contract';
import { requireEnv } from '../shared/env';
import { JobErased, undoIfErased } from '../shared/erasure';
import { InvalidInputError, TransientError, toLambdaError } from '../shared/errors';
import { type JobStateChange, JobStateChangeSchema, jobStateChangeEntry, stateChange } from '../shared/events';
import { type JobRef, jobKey } from '../shared/keys';
import { keyHint, keyRegExp, LAYOUT } from '../shared/layout';
import { isMissingObject, s3Client } from '../shared/s3';

const ObjectCreatedEvent = z.object({
  'detail-type': z.literal('Object Created'),
  detail: z.object({
    bucket: z.object({ name: z.string() }),
    object: z.object({ key: z.string(), etag: z.string().optional(), 'version-id': z.string().optional() }),
  }),
});

/** The newest status.json write seen for a job, and the announcement it made if it was a change. */
export const LastStateSchema = z
  .object({
    state: z.enum(JOB_STATES),
    stage: StageSchema,
    /** status.json's updatedAt of that write. */
    updatedAt: z.string(),
    /** status.json's ETag (unquoted) of that write: a second event for it is a duplicate. */
    etag: z.string(),
    versionId: z.string().optional(),
    /**
     * Present when that write changed the state or stage: the event itself, so whoever finds it
     * unpublished past its lease publishes the very same event.
     */
    announcement: z
      .object({
        change: JobStateChangeSchema,
        /** When the invocation that publishes it claimed it. */
        claimedAt: z.string(),
        /** Absent until PutEvents accepted the event. */
        publishedAt: z.string().optional(),
      })
      .strict()
      .optional(),
  })
  .strict();
export type LastState = z.infer<typeof LastStateSchema>;

export const lastStateKey = (job: JobRef) => jobKey(job, 'lastState');

/**
 * How long a claimed, unpublished announcement belongs to the invocation that claimed it; longer than
 * the function's timeout (infra/constructs/announce.ts), so only a failed invocation's claim is taken over.
 */
export const CLAIM_LEASE_MS = 2 * 60_000;
const MAX_ROUNDS = 5;

/** A status.json key of exactly `teams/<teamId>/jobs/<jobId>/status.json`. */
const STATUS_KEY = keyRegExp(LAYOUT.jobPrefix + LAYOUT.status);

/**
 * The job a status key belongs to, or why it is not one. The rule's `teams/*\/jobs/*\/status.json`
 * also matches keys such as `teams/t/jobs/j/train/status.json` (EventBridge's `*` matches "/").
 */
export function parseStatusKey(key: string): JobRef | { ignored: string } {
  const match = STATUS_KEY.exec(key)?.groups;
  const teamId = match && IdSchema.safeParse(match.teamId);
  const jobId = match && IdSchema.safeParse(match.jobId);
  if (!match || !teamId?.success || !jobId?.success) {
    return { ignored: `${key} is not a job status key (${keyHint(LAYOUT.jobPrefix + LAYOUT.status)} with ids of lowercase letters, digits and "-")` };
  }
  return { teamId: teamId.data, jobId: jobId.data };
}

export interface AnnounceDeps {
  readonly s3: S3Client;
  readonly events: Pick<EventBridgeClient, 'send'>;
  readonly artifactsBucket: string;
  /** @default 'default' */
  readonly eventBusName?: string;
  readonly now: () => Date;
}

export type AnnounceResult =
  | { readonly action: 'ignored'; readonly reason: string }
  | { readonly action: 'duplicate' | 'stale' | 'unchanged'; readonly job: JobRef }
  | { readonly action: 'published'; readonly job: JobRef; readonly change: JobStateChange };

const unquote = (etag: string) => etag.replace(/^"|"$/g, '');
const httpStatus = (error: unknown) => (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
const time = (iso: string) => {
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? undefined : ms;
};
/** True when `a` is strictly after `b` (ISO times; both writers use toISOString's format). */
function isAfter(a: string, b: string): boolean {
  const [ta, tb] = [time(a), time(b)];
  return ta !== undefined && tb !== undefined ? ta > tb : a > b;
}

function log(level: 'info' | 'warn', message: string, fields: Record<string, unknown>): void {
  console.log(JSON.stringify({ level, message, ...fields }));
}

/** The status.json write the event names: by version id, else by ETag (a newer write makes it moot). */
async function readWrite(s3: S3Client, bucket: string, key: string, etag: string | undefined, versionId: string | undefined) {
  try {
    const out = await s3.send(
      new GetObjectCommand({ Bucket: bucket, Key: key, ...(versionId ? { VersionId: versionId } : etag ? { IfMatch: `"${unquote(etag)}"` } : {}) }),
    );
    const text = await out.Body!.transformToString();
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (error) {
      throw new InvalidInputError('BAD_STATUS', `${key} is not valid JSON (${(error as Error).message}): a status writer is broken`, key);
    }
    const parsed = StatusSchema.safeParse(raw);
    if (!parsed.success) throw new InvalidInputError('BAD_STATUS', describeIssues(parsed.error, key), key);
    return { status: parsed.data, etag: unquote(out.ETag ?? etag ?? ''), versionId: out.VersionId ?? versionId };
  } catch (error) {
    // Erased (job deleted) or, read by ETag, already replaced by a newer write with its own event.
    if (isMissingObject(error) || httpStatus(error) === 404 || httpStatus(error) === 412) return undefined;
    throw error;
  }
}

async function readLastState(s3: S3Client, bucket: string, key: string): Promise<{ last?: LastState; etag?: string }> {
  try {
    const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const parsed = LastStateSchema.safeParse(JSON.parse(await out.Body!.transformToString()));
    // An unreadable record is replaced (conditionally) rather than trusted.
    return { last: parsed.success ? parsed.data : undefined, etag: out.ETag };
  } catch (error) {
    if (isMissingObject(error)) return {};
    throw error;
  }
}

/**
 * Conditional replace; false when another invocation replaced it first. Throws JobErased (the write
 * taken back) when the job was erased meanwhile.
 */
async function writeLastState(s3: S3Client, bucket: string, key: string, value: LastState, etag: string | undefined, job: JobRef): Promise<string | false> {
  let out: { ETag?: string; VersionId?: string };
  try {
    out = await s3.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: key,
        Body: `${JSON.stringify(LastStateSchema.parse(value), null, 2)}\n`,
        ContentType: 'application/json',
        ...(etag ? { IfMatch: etag } : { IfNoneMatch: '*' }),
      }),
    );
  } catch (error) {
    const code = httpStatus(error);
    if (code === 412 || code === 409) return false;
    throw error;
  }
  await undoIfErased(s3, bucket, job, key, out.VersionId);
  return out.ETag ?? '';
}

export async function announce(event: unknown, deps: AnnounceDeps): Promise<AnnounceResult> {
  try {
    return await announceWrite(event, deps);
  } catch (error) {
    if (!(error instanceof JobErased)) throw error;
    // Erased while this ran: the record it wrote is taken back, and the job has nothing to announce.
    log('info', 'status event ignored', { reason: error.message });
    return { action: 'ignored', reason: error.message };
  }
}

async function announceWrite(event: unknown, deps: AnnounceDeps): Promise<AnnounceResult> {
  const parsed = ObjectCreatedEvent.safeParse(event);
  if (!parsed.success) throw new InvalidInputError('BAD_EVENT', describeIssues(parsed.error, 'EventBridge event'));
  const { bucket, object } = parsed.data.detail;
  if (bucket.name !== deps.artifactsBucket) {
    throw new InvalidInputError('BAD_EVENT', `event for bucket ${bucket.name}, expected the artifacts bucket ${deps.artifactsBucket}`, bucket.name);
  }
  const job = parseStatusKey(object.key);
  if ('ignored' in job) {
    log('warn', 'status event ignored', { reason: job.ignored });
    return { action: 'ignored', reason: job.ignored };
  }

  const write = await readWrite(deps.s3, deps.artifactsBucket, object.key, object.etag, object['version-id']);
  if (!write) {
    const reason = `${object.key} (version ${object['version-id'] ?? object.etag ?? 'current'}) is gone or superseded`;
    log('info', 'status event ignored', { reason, ...job });
    return { action: 'ignored', reason };
  }
  const { status } = write;
  if (status.teamId !== job.teamId || status.jobId !== job.jobId) {
    throw new InvalidInputError('BAD_STATUS', `${object.key} names job ${status.teamId}/${status.jobId}: a status writer is broken`, object.key);
  }

  const recordKey = lastStateKey(job);
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const { last, etag: recordEtag } = await readLastState(deps.s3, deps.artifactsBucket, recordKey);
    const now = deps.now();
    const pending = last?.announcement && !last.announcement.publishedAt ? last.announcement : undefined;
    const own = last?.etag === write.etag;

    // An unpublished change is never overwritten: its owner publishes it, or, once its lease has
    // passed (the owner failed), whoever finds it does, before anything newer is recorded.
    if (last && pending) {
      if (now.getTime() - Date.parse(pending.claimedAt) < CLAIM_LEASE_MS) {
        if (!own && !isAfter(status.updatedAt, last.updatedAt)) return stale(job, status, last);
        // Retried by Lambda: by then it is published (or its lease has passed).
        throw new TransientError(
          'ANNOUNCE_IN_PROGRESS',
          `the state change ${pending.change.eventId} of job ${job.teamId}/${job.jobId} is being published by another invocation`,
        );
      }
      const claimed = await writeLastState(
        deps.s3,
        deps.artifactsBucket,
        recordKey,
        { ...last, announcement: { ...pending, claimedAt: now.toISOString() } },
        recordEtag,
        job,
      );
      if (claimed === false) continue;
      await publishAndMark(deps, recordKey, { ...last, announcement: pending }, claimed, job);
      if (own) return { action: 'published', job, change: pending.change };
      continue; // now decide this event's own write against the record
    }
    if (last && own) return duplicate(job, write.etag);
    if (last && !isAfter(status.updatedAt, last.updatedAt)) return stale(job, status, last);

    const change = stateChange(status, last && ({ ...status, state: last.state, stage: last.stage } satisfies Status));
    const next: LastState = {
      state: status.state,
      stage: status.stage,
      updatedAt: status.updatedAt,
      etag: write.etag,
      ...(write.versionId ? { versionId: write.versionId } : {}),
      ...(change ? { announcement: { change, claimedAt: now.toISOString() } } : {}),
    };
    const claimed = await writeLastState(deps.s3, deps.artifactsBucket, recordKey, next, recordEtag, job);
    if (claimed === false) continue; // another invocation moved the record: decide again against it
    if (!change) return { action: 'unchanged', job };
    await publishAndMark(deps, recordKey, next, claimed, job);
    return { action: 'published', job, change };
  }
  throw new TransientError('ANNOUNCE_CONTENDED', `${recordKey} kept changing under ${MAX_ROUNDS} attempts: retried`);
}

/** Publishes a claimed record's announcement, then marks it published (conditional on the claim). */
async function publishAndMark(deps: AnnounceDeps, key: string, claimed: LastState, claimEtag: string, job: JobRef): Promise<void> {
  const { change } = claimed.announcement!;
  await publish(deps, change);
  const marked = { ...claimed, announcement: { ...claimed.announcement!, publishedAt: deps.now().toISOString() } };
  // Fails only if the claim outlived its lease and was taken over: the taker publishes the same eventId.
  if ((await writeLastState(deps.s3, deps.artifactsBucket, key, marked, claimEtag, job)) === false) {
    log('warn', 'published change was taken over before it was marked', { ...job, eventId: change.eventId });
  }
  log('info', 'job state change published', { ...job, eventId: change.eventId, state: change.state, stage: change.stage });
}

function stale(job: JobRef, status: Status, last: LastState): AnnounceResult {
  log('info', 'older status write ignored', { ...job, updatedAt: status.updatedAt, newestSeen: last.updatedAt });
  return { action: 'stale', job };
}

function duplicate(job: JobRef, etag: string): AnnounceResult {
  log('info', 'duplicate status event ignored', { ...job, etag });
  return { action: 'duplicate', job };
}

async function publish(deps: AnnounceDeps, change: JobStateChange): Promise<void> {
  const out = await deps.events.send(new PutEventsCommand({ Entries: [jobStateChangeEntry(change, deps.eventBusName)] }));
  if ((out.FailedEntryCount ?? 0) > 0) {
    const entry = out.Entries?.[0];
    throw new TransientError(
      'PUT_EVENTS_FAILED',
      `EventBridge refused the event ${change.eventId}: ${entry?.ErrorCode ?? 'unknown'} ${entry?.ErrorMessage ?? ''}`.trim(),
    );
  }
}

let events: EventBridgeClient | undefined;
export async function handler(event: unknown): Promise<AnnounceResult> {
  events ??= new EventBridgeClient({});
  try {
    return await announce(event, { s3: s3Client(), events, artifactsBucket: requireEnv('ARTIFACTS_BUCKET'), now: () => new Date() });
  } catch (error) {
    throw toLambdaError(error);
  }
}
