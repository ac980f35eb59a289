/**
 * notify: the job's webhook for each "Avatar Job State Change" event (an EventBridge rule invokes
 * it). Every delivery attempt is recorded next to the job, `notify/webhook-<eventId>.json`, so it is
 * erased with the job; a record written after the erasure swept the job is taken back
 * (lambdas/shared/erasure.ts) and delivery stops.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { z } from 'zod';
import { RequestRecordSchema, requestKey } from '../api/records';
import { describeIssues } from '../shared/contract';
import { requireEnv } from '../shared/env';
import { JobErased, undoIfErased } from '../shared/erasure';
import { InvalidInputError, toLambdaError } from '../shared/errors';
import { JobStateChangeSchema } from '../shared/events';
import { jobKey } from '../shared/keys';
import { getJson, putJson, s3Client } from '../shared/s3';
import { type DeliveryAttempt, type DeliveryResult, deliverWebhook, type WebhookOptions } from '../shared/webhook';

const EventSchema = z.object({ detail: JobStateChangeSchema });

export interface NotifyDeps {
  readonly s3: S3Client;
  readonly artifactsBucket: string;
  /** Sender settings other than the secret (tests pass their receiver's CA and switch). */
  readonly webhook?: Omit<WebhookOptions, 'secret' | 'record'>;
}

export const deliveryKey = (teamId: string, jobId: string, eventId: string) => jobKey({ teamId, jobId }, 'webhookDelivery', { eventId });

export async function notify(event: unknown, deps: NotifyDeps): Promise<DeliveryResult | undefined> {
  const parsed = EventSchema.safeParse(event);
  if (!parsed.success) throw new InvalidInputError('BAD_EVENT', describeIssues(parsed.error, 'EventBridge event'));
  const change = parsed.data.detail;
  const record = RequestRecordSchema.safeParse(await getJson(deps.s3, deps.artifactsBucket, requestKey(change)));
  if (!record.success || !record.data.webhook) return undefined; // an inbox job, or no webhook asked for
  const { url, secret } = record.data.webhook;
  const job = { teamId: change.teamId, jobId: change.jobId };
  const key = deliveryKey(change.teamId, change.jobId, change.eventId);
  const recordAttempts = async (attempts: DeliveryAttempt[]) => {
    const out = await putJson(deps.s3, deps.artifactsBucket, key, { url, eventId: change.eventId, attempts });
    await undoIfErased(deps.s3, deps.artifactsBucket, job, key, out.VersionId);
  };
  try {
    return await deliverWebhook(url, change, { ...deps.webhook, secret, record: recordAttempts });
  } catch (error) {
    if (!(error instanceof JobErased)) throw error;
    console.log(JSON.stringify({ level: 'info', message: 'webhook delivery stopped: the job was erased', ...job, eventId: change.eventId }));
    return undefined;
  }
}

export async function handler(event: unknown): Promise<DeliveryResult | undefined> {
  try {
    return await notify(event, { s3: s3Client(), artifactsBucket: requireEnv('ARTIFACTS_BUCKET') });
  } catch (error) {
    throw toLambdaError(error);
  }
}
