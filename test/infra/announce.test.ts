import { beforeAll, describe, expect, it } from 'vitest';
import { actionsOf, flatten, logicalId, resourcesOfType, type Synthesized, s3Grants, statementsOf, synth } from './helpers';

let s: Synthesized;
beforeAll(() => {
  s = synth();
});

const rule = () => s.json.Resources[logicalId(s.stack, s.stack.announce.rule.ruleArn)] as any;
const fnId = () => logicalId(s.stack, s.stack.announce.function.functionArn);
const dlqArn = () => ({ 'Fn::GetAtt': [logicalId(s.stack, s.stack.trigger.deadLetterQueue.queueArn), 'Arn'] });

describe('announce: job state change events from status.json writes', () => {
  it('matches Object Created events of status.json keys in the artifacts bucket only', () => {
    expect(rule().Properties.EventPattern).toEqual({
      source: ['aws.s3'],
      'detail-type': ['Object Created'],
      detail: {
        bucket: { name: [{ Ref: logicalId(s.stack, s.stack.storage.artifacts.bucketName) }] },
        object: { key: [{ wildcard: 'teams/*/jobs/*/status.json' }] },
      },
    });
  });

  it('targets the announce function with bounded retries and the dead-letter queue', () => {
    expect(rule().Properties.Targets).toEqual([
      expect.objectContaining({
        Arn: { 'Fn::GetAtt': [fnId(), 'Arn'] },
        RetryPolicy: { MaximumRetryAttempts: 8, MaximumEventAgeInSeconds: 7200 },
        DeadLetterConfig: { Arn: dlqArn() },
      }),
    ]);
    const [[, config]] = resourcesOfType(s.json, 'AWS::Lambda::EventInvokeConfig').filter(([, c]) => c.Properties.FunctionName.Ref === fnId()) as [
      [string, any],
    ];
    expect(config.Properties).toMatchObject({ MaximumRetryAttempts: 2, DestinationConfig: { OnFailure: { Destination: dlqArn() } } });
  });

  it('runs lambdas/announce with the artifacts bucket, within the claim lease', () => {
    const fn = s.json.Resources[fnId()]!.Properties;
    expect(fn.Environment.Variables).toMatchObject({ ARTIFACTS_BUCKET: { Ref: logicalId(s.stack, s.stack.storage.artifacts.bucketName) } });
    expect(fn.Timeout).toBe(30);
  });

  it('reads status.json (any version), reads and writes notify/last-state.json, lists for tombstones, takes back only its own record', () => {
    const artifacts = logicalId(s.stack, s.stack.storage.artifacts.bucketName);
    expect(s3Grants(s, s.stack.announce.function.executionRole)).toEqual({
      's3:GetObject': [`<${artifacts}>/teams/*/jobs/*/notify/last-state.json`, `<${artifacts}>/teams/*/jobs/*/status.json`],
      's3:GetObjectVersion': [`<${artifacts}>/teams/*/jobs/*/status.json`],
      's3:PutObject': [`<${artifacts}>/teams/*/jobs/*/notify/last-state.json`],
      // A record written after the job's erasure is deleted (lambdas/shared/erasure.ts).
      's3:DeleteObjectVersion': [`<${artifacts}>/teams/*/jobs/*/notify/last-state.json`],
      's3:ListBucket': [`<${artifacts}>`],
    });
    const list = statementsOf(s, s.stack.announce.function.executionRole).find((st) => actionsOf(st).includes('s3:ListBucket'))!;
    expect(list.Condition).toEqual({ StringLike: { 's3:prefix': ['teams/*'] } });
  });

  it('may put events on the default bus only', () => {
    const statements = statementsOf(s, s.stack.announce.function.executionRole).filter((st) => actionsOf(st).some((a) => a.startsWith('events:')));
    expect(statements).toHaveLength(1);
    expect(actionsOf(statements[0]!)).toEqual(['events:PutEvents']);
    expect(flatten(statements[0]!.Resource)).toBe('arn:<AWS::Partition>:events:<AWS::Region>:<AWS::AccountId>:event-bus/default');
  });
});
