import { Duration, Validations } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as destinations from 'aws-cdk-lib/aws-lambda-destinations';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { jobKey } from '../../lambdas/shared/access';
import { keyPattern } from '../../lambdas/shared/layout';
import { grantStageAccess } from './bucket-access';
import { LambdaFunction } from './lambda-function';

/** The inbox key that starts a job: `teams/<team>/jobs/<job>/job.json`. */
export const JOB_SPEC_KEY_PATTERN = keyPattern(jobKey('spec'));

/** Props of {@link Trigger}. */
export interface TriggerProps {
  /** The bucket customers upload to; must have EventBridge notifications enabled. */
  readonly inbox: s3.IBucket;
  /** Where the start function records the initial `status.json`. */
  readonly artifacts: s3.IBucket;
  /** The workflow started once per job. */
  readonly stateMachine: sfn.IStateMachine;
  /**
   * How long EventBridge keeps retrying delivery of an event to the start function.
   * @default Duration.hours(2)
   */
  readonly maxEventAge?: Duration;
  /**
   * EventBridge delivery retries before the event goes to the dead-letter queue.
   * @default 8
   */
  readonly retryAttempts?: number;
}

/**
 * Starts one workflow execution per uploaded `job.json`: an EventBridge rule on the inbox's
 * "Object Created" events invokes the `start` Lambda (`lambdas/start/handler.ts`).
 *
 * Events that cannot be delivered, and invocations that still fail after Lambda's asynchronous
 * retries, land in one encrypted dead-letter queue, so no job is lost silently.
 */
export class Trigger extends Construct {
  /** Undeliverable events and failed start invocations. */
  public readonly deadLetterQueue: sqs.Queue;
  /** The `start` function. */
  public readonly startFunction: LambdaFunction;
  /** The EventBridge rule matching `teams/*\/jobs/*\/job.json`. */
  public readonly rule: events.Rule;

  constructor(scope: Construct, id: string, props: TriggerProps) {
    super(scope, id);

    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetterQueue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
    });
    Validations.of(this.deadLetterQueue).acknowledge({
      id: 'AwsSolutions-SQS3',
      reason:
        'This queue is the dead-letter queue of the job trigger (EventBridge target and Lambda on-failure destination); a DLQ of a DLQ would only move the problem.',
    });

    this.startFunction = new LambdaFunction(this, 'Start', {
      stage: 'start',
      memorySize: 256,
      timeout: Duration.seconds(30),
      environment: {
        STATE_MACHINE_ARN: props.stateMachine.stateMachineArn,
        ARTIFACTS_BUCKET: props.artifacts.bucketName,
        INBOX_BUCKET: props.inbox.bucketName,
      },
      onFailure: new destinations.SqsDestination(this.deadLetterQueue),
      retryAttempts: 2,
    });
    props.stateMachine.grantStartExecution(this.startFunction.executionRole);
    grantStageAccess(this.startFunction.executionRole, props, 'start');

    this.rule = new events.Rule(this, 'JobCreated', {
      description: 'Starts the avatar workflow when a job.json lands in the inbox',
      eventPattern: {
        source: ['aws.s3'],
        detailType: ['Object Created'],
        detail: {
          bucket: { name: [props.inbox.bucketName] },
          // Prefix and suffix in one matcher. EventBridge wildcards also match "/", and the matchers of
          // one field can only be ORed, so a nested `.../photos/job.json` cannot be excluded here:
          // the start function ignores it with a log line (`ignoredReason`).
          object: { key: events.Match.wildcard(JOB_SPEC_KEY_PATTERN) },
        },
      },
    });
    this.rule.addTarget(
      new targets.LambdaFunction(this.startFunction, {
        deadLetterQueue: this.deadLetterQueue,
        maxEventAge: props.maxEventAge ?? Duration.hours(2),
        retryAttempts: props.retryAttempts ?? 8,
      }),
    );
  }
}
