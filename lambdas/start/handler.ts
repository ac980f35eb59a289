/**
 * start: turns the inbox's "Object Created" event for `teams/<t>/jobs/<j>/job.json` into exactly one
 * state machine execution. The execution name is derived from the job, so a duplicate or replayed
 * event cannot start a second run (Step Functions refuses a reused name for 90 days).
 */
import { createHash } from 'node:crypto';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ExecutionAlreadyExists, SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { z } from 'zod';
import { describeIssues, IdSchema, type Status, StatusSchema } from '../shared/contract';
import { requireEnv } from '../shared/env';
import { InvalidInputError, toLambdaError } from '../shared/errors';
import { type JobRef, keys, parseSpecKey } from '../shared/keys';
import { keyHint, keyRegExp, LAYOUT } from '../shared/layout';
import { s3Client } from '../shared/s3';

const ObjectCreatedEvent = z.object({
  'detail-type': z.literal('Object Created'),
  detail: z.object({ bucket: z.object({ name: z.string() }), object: z.object({ key: z.string() }) }),
});

export interface StartDeps {
  readonly s3: S3Client;
  readonly sfn: SFNClient;
  readonly inboxBucket: string;
  readonly artifactsBucket: string;
  readonly stateMachineArn: string;
  readonly now: () => Date;
}

export interface StartResult {
  readonly job: JobRef;
  readonly executionName: string;
  /**
   * True when the job had already been received (its status.json existed, or the execution name was
   * taken): Step Functions answers a reused name with the running execution, so nothing new starts.
   */
  readonly duplicate: boolean;
}

/** `<teamId>_<jobId>` (ids never contain "_"), hashed down to Step Functions' 80-character limit. */
export function executionName({ teamId, jobId }: JobRef): string {
  const plain = `${teamId}_${jobId}`;
  if (plain.length <= 80) return plain;
  const digest = createHash('sha256').update(plain).digest('hex').slice(0, 16);
  return `${teamId.slice(0, 31)}_${jobId.slice(0, 31)}_${digest}`;
}

export async function start(event: unknown, deps: StartDeps): Promise<StartResult> {
  const parsed = ObjectCreatedEvent.safeParse(event);
  if (!parsed.success) throw new InvalidInputError('BAD_EVENT', describeIssues(parsed.error, 'EventBridge event'));
  const { bucket, object } = parsed.data.detail;
  if (bucket.name !== deps.inboxBucket) {
    throw new InvalidInputError('BAD_EVENT', `event for bucket ${bucket.name}, expected the inbox ${deps.inboxBucket}`, bucket.name);
  }
  const job = parseSpecKey(object.key);
  const name = executionName(job);

  // The first event creates status.json (conditional write); a duplicate finds it and leaves it alone,
  // so a replay never rewinds the status of a job that is already running.
  const at = deps.now().toISOString();
  const queued: Status = StatusSchema.parse({
    ...job,
    state: 'queued',
    stage: 'validate',
    progress: { fraction: 0, message: 'job received' },
    createdAt: at,
    updatedAt: at,
  });
  let duplicate = false;
  try {
    await deps.s3.send(
      new PutObjectCommand({
        Bucket: deps.artifactsBucket,
        Key: keys.status(job),
        Body: `${JSON.stringify(queued, null, 2)}\n`,
        ContentType: 'application/json',
        IfNoneMatch: '*',
      }),
    );
  } catch (error) {
    const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    if (status !== 412 && status !== 409) throw error;
    duplicate = true;
  }

  try {
    await deps.sfn.send(new StartExecutionCommand({ stateMachineArn: deps.stateMachineArn, name, input: JSON.stringify(job) }));
  } catch (error) {
    if (error instanceof ExecutionAlreadyExists || (error as Error).name === 'ExecutionAlreadyExists') {
      console.log(JSON.stringify({ level: 'info', message: 'duplicate trigger ignored', executionName: name, ...job }));
      return { job, executionName: name, duplicate: true };
    }
    throw error;
  }
  console.log(
    JSON.stringify({ level: 'info', message: duplicate ? 'duplicate trigger: execution already running' : 'execution started', executionName: name, ...job }),
  );
  return { job, executionName: name, duplicate };
}

/** A `job.json` one folder or more below a job (`teams/<t>/jobs/<j>/photos/job.json`). */
const IN_JOB = keyRegExp(LAYOUT.jobPrefix, { rest: true });

/**
 * Why an event the trigger rule matched is not a job to start, or undefined when it may be one.
 * EventBridge wildcards match "/" and a field's matchers can only be ORed, so the rule's
 * `teams/*\/jobs/*\/job.json` also matches a job.json uploaded inside a job's folders (a photo folder
 * copied with its job file). That is not a new job: it is logged and ignored instead of failing into
 * the dead-letter queue, where it would page the operator for a customer's upload.
 */
export function ignoredReason(event: unknown): string | undefined {
  const key = ObjectCreatedEvent.safeParse(event).data?.detail.object.key;
  const inJob = key === undefined ? undefined : IN_JOB.exec(key)?.groups;
  const nested = inJob?.rest?.endsWith(`/${LAYOUT.spec}`) ? inJob : undefined;
  if (!nested || !IdSchema.safeParse(nested.teamId).success || !IdSchema.safeParse(nested.jobId).success) return undefined;
  return `${key} is inside a job's folders, not a job spec key (${keyHint(LAYOUT.jobPrefix + LAYOUT.spec)})`;
}

/** An event that matched the trigger rule but starts nothing. */
export interface IgnoredEvent {
  readonly ignored: string;
}

let sfn: SFNClient | undefined;
export async function handler(event: unknown): Promise<StartResult | IgnoredEvent> {
  const ignored = ignoredReason(event);
  if (ignored) {
    console.log(JSON.stringify({ level: 'warn', message: 'trigger event ignored', reason: ignored }));
    return { ignored };
  }
  sfn ??= new SFNClient({});
  try {
    return await start(event, {
      s3: s3Client(),
      sfn,
      inboxBucket: requireEnv('INBOX_BUCKET'),
      artifactsBucket: requireEnv('ARTIFACTS_BUCKET'),
      stateMachineArn: requireEnv('STATE_MACHINE_ARN'),
      now: () => new Date(),
    });
  } catch (error) {
    throw toLambdaError(error);
  }
}
