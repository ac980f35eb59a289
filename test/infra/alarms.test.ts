import { beforeAll, describe, expect, it } from 'vitest';
import { logicalId, resourcesOfType, synth, type Synthesized } from './helpers';

let withEmail: Synthesized;
let withoutEmail: Synthesized;
beforeAll(() => {
  withEmail = synth({ alarmEmail: 'ops@example.com' });
  withoutEmail = synth();
});

describe('alarms and outputs', () => {
  it('alarm on failed and timed-out executions and on a non-empty dead-letter queue', () => {
    const alarms = resourcesOfType(withEmail.json, 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);
    expect(alarms.map((a) => `${a.Namespace}/${a.MetricName}`).sort()).toEqual([
      'AWS/SQS/ApproximateNumberOfMessagesVisible',
      'AWS/States/ExecutionsFailed',
      'AWS/States/ExecutionsTimedOut',
    ]);
    const topicRef = { Ref: logicalId(withEmail.stack, withEmail.stack.alarms.topic.topicArn) };
    for (const alarm of alarms) {
      expect(alarm.Threshold).toBe(1);
      expect(alarm.AlarmActions).toEqual([topicRef]);
    }
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

  it('output the bucket names, state machine, dead-letter queue and job queue', () => {
    expect(Object.keys(withEmail.json.Outputs ?? {}).sort()).toEqual(
      ['ArtifactsBucketName', 'DeadLetterQueueUrl', 'InboxBucketName', 'JobQueueArn', 'SchedulingPolicyArn', 'StateMachineArn', 'TeamsTableName'].sort(),
    );
  });
});
