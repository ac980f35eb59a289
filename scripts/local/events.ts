/**
 * The job state change path on this machine, wired as the stack wires it but in moto:
 *
 *   artifacts bucket (EventBridge notifications on) --"Object Created" status.json--> rule --> queue
 *     --> announce (lambdas/announce) --PutEvents "Avatar Job State Change"--> rule --> queue
 *     --> notify (lambdas/notify) --> the job's webhook
 *
 * moto sends the bucket's events to its EventBridge and routes them by rule; here each rule's target
 * is an SQS queue (moto cannot invoke a local function), read by a loop that calls the real handler
 * in-process. A handler that throws leaves its message in the queue, which delivers it again after the
 * visibility timeout, as EventBridge retries a failed Lambda target. Every state change event is also
 * kept in `published` (what a rule on the bus would see).
 */
import { EventBridgeClient, PutRuleCommand, PutTargetsCommand } from '@aws-sdk/client-eventbridge';
import { PutBucketNotificationConfigurationCommand, type S3Client } from '@aws-sdk/client-s3';
import { CreateQueueCommand, DeleteMessageCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { announce } from '../../lambdas/announce/handler';
import { notify } from '../../lambdas/notify/handler';
import { EVENT_SOURCE, JOB_STATE_CHANGE, type JobStateChange } from '../../lambdas/shared/events';
import { LAYOUT } from '../../lambdas/shared/layout';
import type { WebhookOptions } from '../../lambdas/shared/webhook';
import { LOCAL_CREDENTIALS, LOCAL_REGION } from './moto';

export interface LocalEventsOptions {
  readonly endpoint: string;
  readonly s3: S3Client;
  readonly artifactsBucket: string;
  /** notify's sender settings other than the secret (an extra CA; the loopback switch for local receivers). */
  readonly webhook?: Omit<WebhookOptions, 'secret' | 'record'>;
  readonly log?: (line: string) => void;
}

export interface LocalEvents {
  /** Every "Avatar Job State Change" detail announce published, in order. */
  readonly published: JobStateChange[];
  stop(): Promise<void>;
}

/** Seconds before a message a handler failed on is delivered again. */
const RETRY_AFTER_SECONDS = 2;

export async function startLocalEvents(options: LocalEventsOptions): Promise<LocalEvents> {
  const log = options.log ?? (() => undefined);
  const client = { endpoint: options.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS };
  const bus = new EventBridgeClient(client);
  const sqs = new SQSClient(client);
  await options.s3.send(
    new PutBucketNotificationConfigurationCommand({ Bucket: options.artifactsBucket, NotificationConfiguration: { EventBridgeConfiguration: {} } }),
  );

  /** A rule on the default bus whose target is a new queue; returns the queue's URL. */
  const route = async (name: string, pattern: unknown): Promise<string> => {
    const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: `local-${name}`, Attributes: { VisibilityTimeout: String(RETRY_AFTER_SECONDS) } })))
      .QueueUrl!;
    const arn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
    await bus.send(new PutRuleCommand({ Name: `local-${name}`, EventPattern: JSON.stringify(pattern) }));
    await bus.send(new PutTargetsCommand({ Rule: `local-${name}`, Targets: [{ Id: name, Arn: arn }] }));
    return queueUrl;
  };
  // The stack's announce rule matches the key with a wildcard, which moto's patterns lack; a suffix
  // selects the same status writes (announce ignores any other key, as in AWS).
  const statusQueue = await route('announce', {
    source: ['aws.s3'],
    'detail-type': ['Object Created'],
    detail: { bucket: { name: [options.artifactsBucket] }, object: { key: [{ suffix: `/${LAYOUT.status}` }] } },
  });
  const changeQueue = await route('notify', { source: [EVENT_SOURCE], 'detail-type': [JOB_STATE_CHANGE] });

  const published: JobStateChange[] = [];
  const stopping = new AbortController();
  const consume = async (queueUrl: string, handle: (event: unknown) => Promise<void>) => {
    while (!stopping.signal.aborted) {
      const page = await sqs
        .send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }), { abortSignal: stopping.signal })
        .catch((error) => {
          if (stopping.signal.aborted) return undefined;
          throw error;
        });
      for (const message of page?.Messages ?? []) {
        try {
          await handle(JSON.parse(message.Body!));
          await sqs.send(new DeleteMessageCommand({ QueueUrl: queueUrl, ReceiptHandle: message.ReceiptHandle! }));
        } catch (error) {
          log(`event handler failed (delivered again in ${RETRY_AFTER_SECONDS} s): ${(error as Error).message}`);
        }
      }
    }
  };
  const loops = [
    consume(statusQueue, async (event) => {
      const result = await announce(event, { s3: options.s3, events: bus, artifactsBucket: options.artifactsBucket, now: () => new Date() });
      if (result.action === 'published') {
        published.push(result.change);
        log(`job ${result.change.teamId}/${result.change.jobId}: ${result.change.state}/${result.change.stage} announced`);
      }
    }),
    consume(changeQueue, async (event) => {
      const result = await notify(event, { s3: options.s3, artifactsBucket: options.artifactsBucket, webhook: options.webhook });
      if (result) log(`webhook ${result.delivered ? 'delivered' : 'not delivered'} after ${result.attempts.length} attempt(s)`);
    }),
  ].map((loop) => loop.catch((error) => log(`local event loop stopped: ${(error as Error).message}`)));

  return {
    published,
    async stop() {
      stopping.abort();
      await Promise.all(loops);
    },
  };
}
