import { Duration } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as destinations from 'aws-cdk-lib/aws-lambda-destinations';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { jobKey } from '../../lambdas/shared/access';
import { keyPattern } from '../../lambdas/shared/layout';
import { grantStageAccess } from './bucket-access';
import { LambdaFunction } from './lambda-function';

/** The artifacts key every status writer rewrites: `teams/<team>/jobs/<job>/status.json`. */
export const STATUS_KEY_PATTERN = keyPattern(jobKey('status'));

/** Props of {@link Announce}. */
export interface AnnounceProps {
  /** The bucket status.json lives in; must have EventBridge notifications enabled. */
  readonly artifacts: s3.IBucket;
  /** Where events that could not be delivered or handled go (alarmed). */
  readonly deadLetterQueue: sqs.IQueue;
}

/**
 * Publishes the "Avatar Job State Change" event (lambdas/shared/events.ts) on the default bus for every
 * state or stage change of a job, whoever wrote its status.json (Lambda stages, GPU containers,
 * reconcile, the job API): an EventBridge rule on the artifacts bucket's "Object Created" events for
 * status.json invokes the `announce` function (lambdas/announce/handler.ts). Undeliverable events, and
 * invocations that still fail after Lambda's asynchronous retries, go to the dead-letter queue.
 */
export class Announce extends Construct {
  /** The `announce` function. */
  public readonly function: LambdaFunction;
  /** The EventBridge rule matching `teams/*\/jobs/*\/status.json` in the artifacts bucket. */
  public readonly rule: events.Rule;

  constructor(scope: Construct, id: string, props: AnnounceProps) {
    super(scope, id);
    this.function = new LambdaFunction(this, 'Announce', {
      stage: 'announce',
      memorySize: 256,
      // Below the handler's claim lease (CLAIM_LEASE_MS, 2 minutes): only a failed invocation's claim is taken over.
      timeout: Duration.seconds(30),
      description: 'Avatar job state change events from status.json writes',
      environment: { ARTIFACTS_BUCKET: props.artifacts.bucketName },
      onFailure: new destinations.SqsDestination(props.deadLetterQueue),
      retryAttempts: 2,
    });
    const role = this.function.executionRole;
    grantStageAccess(role, { artifacts: props.artifacts }, 'announce');
    events.EventBus.fromEventBusName(this, 'DefaultBus', 'default').grantPutEventsTo(role);

    this.rule = new events.Rule(this, 'StatusWritten', {
      description: 'Announces avatar job state changes when a status.json is written',
      eventPattern: {
        source: ['aws.s3'],
        detailType: ['Object Created'],
        detail: {
          bucket: { name: [props.artifacts.bucketName] },
          // `*` also matches "/": a nested .../x/status.json matches too and the function ignores it with a log line.
          object: { key: events.Match.wildcard(STATUS_KEY_PATTERN) },
        },
      },
    });
    this.rule.addTarget(
      new targets.LambdaFunction(this.function, {
        deadLetterQueue: props.deadLetterQueue,
        maxEventAge: Duration.hours(2),
        retryAttempts: 8,
      }),
    );
  }
}
