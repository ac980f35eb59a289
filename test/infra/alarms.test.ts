import { beforeAll, describe, expect, it } from 'vitest';
import { METRICS_NAMESPACE, STACK_DIMENSION, SYSTEM_FAILURE_METRIC } from '../../lambdas/shared/metrics';
import { logicalId, resourcesOfType, type Synthesized, synth } from './helpers';

let withEmail: Synthesized;
let withoutEmail: Synthesized;
beforeAll(() => {
  withEmail = synth({ alarmEmail: 'ops@example.com' });
  withoutEmail = synth();
});

describe('alarms and outputs', () => {
  it('alarm on system failures, timed-out executions and a non-empty dead-letter queue, never on ExecutionsFailed', () => {
    const alarms = resourcesOfType(withEmail.json, 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);
    // ExecutionsFailed counts every client input error too (each ends in the Failed state): not paged.
    expect(alarms.map((a) => `${a.Namespace}/${a.MetricName}`).sort()).toEqual([
      'AWS/SQS/ApproximateNumberOfMessagesVisible',
      'AWS/States/ExecutionsTimedOut',
      'Avatar/SystemFailures',
    ]);
    const topicRef = { Ref: logicalId(withEmail.stack, withEmail.stack.alarms.topic.topicArn) };
    for (const alarm of alarms) {
      expect(alarm.Threshold).toBe(1);
      expect(alarm.AlarmActions).toEqual([topicRef]);
    }
  });

  it('watch the SystemFailures metric of this stack, the one mark-failed and reconcile emit', () => {
    const [alarm] = resourcesOfType(withEmail.json, 'AWS::CloudWatch::Alarm')
      .map(([, a]) => a.Properties)
      .filter((a) => a.MetricName === 'SystemFailures');
    expect(alarm).toMatchObject({
      Namespace: METRICS_NAMESPACE,
      MetricName: SYSTEM_FAILURE_METRIC,
      Dimensions: [{ Name: STACK_DIMENSION, Value: 'AvatarStack' }],
      Statistic: 'Sum',
      Period: 300,
      ComparisonOperator: 'GreaterThanOrEqualToThreshold',
      TreatMissingData: 'notBreaching',
    });
  });

  it('let CloudWatch alarms of this account, and nobody else, publish to the topic and use its key', () => {
    const topicRef = { Ref: logicalId(withEmail.stack, withEmail.stack.alarms.topic.topicArn) };
    const [[, policy]] = resourcesOfType(withEmail.json, 'AWS::SNS::TopicPolicy') as [[string, any]];
    const allows = (policy.Properties.PolicyDocument.Statement as any[]).filter((st) => st.Effect === 'Allow');
    expect(allows).toEqual([
      expect.objectContaining({
        Principal: { Service: 'cloudwatch.amazonaws.com' },
        Action: 'sns:Publish',
        Resource: topicRef,
        Condition: { StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } } },
      }),
    ]);
    const [[, key]] = resourcesOfType(withEmail.json, 'AWS::KMS::Key') as [[string, any]];
    const cw = (key.Properties.KeyPolicy.Statement as any[]).filter((st) => st.Principal?.Service === 'cloudwatch.amazonaws.com');
    expect(cw).toEqual([expect.objectContaining({ Condition: { StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } } } })]);
  });

  it('encrypt the alarm topic with a rotated customer managed key and refuse plain HTTP', () => {
    const [[, topic]] = resourcesOfType(withEmail.json, 'AWS::SNS::Topic') as [[string, any]];
    const keyId = topic.Properties.KmsMasterKeyId['Fn::GetAtt'][0];
    expect(withEmail.json.Resources[keyId]!.Properties.EnableKeyRotation).toBe(true);
    const [[, policy]] = resourcesOfType(withEmail.json, 'AWS::SNS::TopicPolicy') as [[string, any]];
    expect(policy.Properties.PolicyDocument.Statement).toContainEqual(
      expect.objectContaining({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }),
    );
  });

  it('subscribe the alarm email only when one is configured', () => {
    const subs = resourcesOfType(withEmail.json, 'AWS::SNS::Subscription').map(([, r]) => r.Properties);
    expect(subs).toEqual([expect.objectContaining({ Protocol: 'email', Endpoint: 'ops@example.com' })]);
    expect(resourcesOfType(withoutEmail.json, 'AWS::SNS::Subscription')).toEqual([]);
  });

  it('output the bucket names, state machine, dead-letter queue, job queue and the job API', () => {
    expect(Object.keys(withEmail.json.Outputs ?? {}).sort()).toEqual(
      [
        'ApiUrl',
        'ApiUserPoolId',
        'ArtifactsBucketName',
        'DeadLetterQueueUrl',
        'InboxBucketName',
        'JobQueueArn',
        'SchedulingPolicyArn',
        'StateMachineArn',
        'TeamsTableName',
      ].sort(),
    );
  });
});
