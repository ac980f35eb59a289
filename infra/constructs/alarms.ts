import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';

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
 * Operator alarms: failed or timed-out executions, and anything in the trigger's dead-letter queue
 * (a job.json that never started a run). All alarms notify one encrypted SNS topic.
 */
export class Alarms extends Construct {
  /** Where every alarm publishes. */
  public readonly topic: sns.Topic;
  /** The alarms, by purpose. */
  public readonly executionsFailed: cloudwatch.Alarm;
  public readonly executionsTimedOut: cloudwatch.Alarm;
  public readonly deadLetters: cloudwatch.Alarm;

  constructor(scope: Construct, id: string, props: AlarmsProps) {
    super(scope, id);

    // A customer managed key: CloudWatch cannot publish to a topic under the AWS managed SNS key.
    const key = new kms.Key(this, 'TopicKey', {
      description: 'Encrypts the avatar alarm topic',
      enableKeyRotation: true,
    });
    key.addToResourcePolicy(
      new iam.PolicyStatement({
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        resources: ['*'],
      }),
    );
    this.topic = new sns.Topic(this, 'Topic', {
      displayName: 'Avatar alarms',
      masterKey: key,
      enforceSSL: true,
    });
    if (props.alarmEmail) {
      this.topic.addSubscription(new subscriptions.EmailSubscription(props.alarmEmail));
    }

    const action = new actions.SnsAction(this.topic);
    const fiveMinutes = { period: Duration.minutes(5), statistic: cloudwatch.Stats.SUM };

    this.executionsFailed = new cloudwatch.Alarm(this, 'ExecutionsFailed', {
      alarmDescription: 'An avatar job execution failed (ended in the Failed state or errored)',
      metric: props.stateMachine.metricFailed(fiveMinutes),
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
      alarmDescription: 'A job.json upload did not start a workflow; inspect the trigger dead-letter queue',
      metric: props.deadLetterQueue.metricApproximateNumberOfMessagesVisible({
        period: Duration.minutes(5),
        statistic: cloudwatch.Stats.MAXIMUM,
      }),
      threshold: 1,
      evaluationPeriods: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    for (const alarm of [this.executionsFailed, this.executionsTimedOut, this.deadLetters]) {
      alarm.addAlarmAction(action);
    }
  }
}
