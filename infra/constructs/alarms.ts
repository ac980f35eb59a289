import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { METRICS_NAMESPACE, STACK_DIMENSION, SYSTEM_FAILURE_METRIC } from '../../lambdas/shared/metrics';

/** Props of {@link Alarms}. */
export interface AlarmsProps {
  /** The job workflow. */
  readonly stateMachine: sfn.IStateMachine;
  /** The trigger's dead-letter queue. */
  readonly deadLetterQueue: sqs.IQueue;
  /**
   * Email address subscribed to the alarm topic.
   * @default - no subscription; subscribe to the topic yourself
   */
  readonly alarmEmail?: string;
}

/**
 * Operator alarms, for system failures only: a customer's bad input (an invalid job.json, too few
 * usable photos) fails their job with a clear status but pages nobody. So there is no alarm on the
 * state machine's ExecutionsFailed (every validation failure ends there); instead:
 * - `SystemFailures`: the `Avatar/SystemFailures` metric that mark-failed and reconcile emit for every
 *   job that failed for a reason other than the client's input (GPU job failure, TIMEOUT,
 *   GPU_CAPACITY_UNAVAILABLE, INTERNAL_ERROR); see `lambdas/shared/metrics.ts`;
 * - `ExecutionsTimedOut`: the workflow timeout, straight from Step Functions, which needs none of our
 *   code to work;
 * - `DeadLetters`: anything in the dead-letter queue (a job.json that never started a run, or an
 *   execution end reconcile could not record).
 * All alarms notify one encrypted SNS topic whose policy lets CloudWatch alarms of this account publish.
 */
export class Alarms extends Construct {
  /** Where every alarm publishes. */
  public readonly topic: sns.Topic;
  /** The alarms, by purpose. */
  public readonly systemFailures: cloudwatch.Alarm;
  public readonly executionsTimedOut: cloudwatch.Alarm;
  public readonly deadLetters: cloudwatch.Alarm;

  constructor(scope: Construct, id: string, props: AlarmsProps) {
    super(scope, id);

    // A customer managed key: CloudWatch cannot publish to a topic under the AWS managed SNS key.
    const key = new kms.Key(this, 'TopicKey', {
      description: 'Encrypts the avatar alarm topic',
      enableKeyRotation: true,
      // Encrypts only alarm messages in flight; scheduled for deletion with the stack.
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const account = Stack.of(this).account;
    const fromOurAlarms = { StringEquals: { 'aws:SourceAccount': account } };
    key.addToResourcePolicy(
      new iam.PolicyStatement({
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        resources: ['*'],
        conditions: fromOurAlarms,
      }),
    );
    this.topic = new sns.Topic(this, 'Topic', {
      displayName: 'Avatar alarms',
      masterKey: key,
      enforceSSL: true,
    });
    // A topic policy replaces the default one, so CloudWatch may publish only if allowed here.
    this.topic.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'AllowCloudWatchAlarmsOfThisAccount',
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['sns:Publish'],
        resources: [this.topic.topicArn],
        conditions: fromOurAlarms,
      }),
    );
    if (props.alarmEmail) {
      this.topic.addSubscription(new subscriptions.EmailSubscription(props.alarmEmail));
    }

    const action = new actions.SnsAction(this.topic);
    const fiveMinutes = { period: Duration.minutes(5), statistic: cloudwatch.Stats.SUM };

    this.systemFailures = new cloudwatch.Alarm(this, 'SystemFailures', {
      alarmDescription:
        'An avatar job failed for a reason the customer cannot fix (GPU job failure, timeout, no GPU capacity, internal error); client input errors do not count. See the mark-failed and reconcile logs ("system failure").',
      metric: new cloudwatch.Metric({
        namespace: METRICS_NAMESPACE,
        metricName: SYSTEM_FAILURE_METRIC,
        dimensionsMap: { [STACK_DIMENSION]: Stack.of(this).stackName },
        ...fiveMinutes,
      }),
      threshold: 1,
      evaluationPeriods: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    this.executionsTimedOut = new cloudwatch.Alarm(this, 'ExecutionsTimedOut', {
      alarmDescription: 'An avatar job execution hit the workflow timeout',
      metric: props.stateMachine.metricTimedOut(fiveMinutes),
      threshold: 1,
      evaluationPeriods: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    this.deadLetters = new cloudwatch.Alarm(this, 'DeadLetters', {
      alarmDescription:
        'An event was not handled: a job.json upload that did not start a workflow, or an execution end reconcile could not record; inspect the dead-letter queue',
      metric: props.deadLetterQueue.metricApproximateNumberOfMessagesVisible({
        period: Duration.minutes(5),
        statistic: cloudwatch.Stats.MAXIMUM,
      }),
      threshold: 1,
      evaluationPeriods: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    for (const alarm of [this.systemFailures, this.executionsTimedOut, this.deadLetters]) {
      alarm.addAlarmAction(action);
    }
  }
}
