import { beforeAll, describe, expect, it } from 'vitest';
import { actionsOf, flatten, logicalId, resourcesOfType, type Synthesized, s3Grants, statementsOf, synth } from './helpers';

let s: Synthesized;
beforeAll(() => {
  s = synth();
});

const triggerRule = () => s.json.Resources[logicalId(s.stack, s.stack.trigger.rule.ruleArn)] as any;

describe('trigger', () => {
  it('matches only job.json objects created under teams/ in the inbox', () => {
    const rule = triggerRule();
    expect(rule.Properties.EventPattern).toEqual({
      source: ['aws.s3'],
      'detail-type': ['Object Created'],
      detail: {
        bucket: { name: [{ Ref: logicalId(s.stack, s.stack.storage.inbox.bucketName) }] },
        object: { key: [{ wildcard: 'teams/*/jobs/*/job.json' }] },
      },
    });
  });

  it('targets the start function with bounded retries and a dead-letter queue', () => {
    const rule = triggerRule();
    const dlqId = logicalId(s.stack, s.stack.trigger.deadLetterQueue.queueArn);
    expect(rule.Properties.Targets).toHaveLength(1);
    expect(rule.Properties.Targets[0]).toMatchObject({
      Arn: { 'Fn::GetAtt': [logicalId(s.stack, s.stack.trigger.startFunction.functionArn), 'Arn'] },
      RetryPolicy: { MaximumRetryAttempts: 8, MaximumEventAgeInSeconds: 7200 },
      DeadLetterConfig: { Arn: { 'Fn::GetAtt': [dlqId, 'Arn'] } },
    });
  });

  it('sends failed asynchronous start invocations to the same dead-letter queue', () => {
    const startId = logicalId(s.stack, s.stack.trigger.startFunction.functionArn);
    const [[, config]] = resourcesOfType(s.json, 'AWS::Lambda::EventInvokeConfig').filter(([, c]) => c.Properties.FunctionName.Ref === startId) as [
      [string, any],
    ];
    expect(config.Properties.MaximumRetryAttempts).toBe(2);
    expect(config.Properties.DestinationConfig.OnFailure.Destination).toEqual({
      'Fn::GetAtt': [logicalId(s.stack, s.stack.trigger.deadLetterQueue.queueArn), 'Arn'],
    });
  });

  it('encrypts the dead-letter queue and refuses plain HTTP', () => {
    const dlqId = logicalId(s.stack, s.stack.trigger.deadLetterQueue.queueArn);
    expect(s.json.Resources[dlqId]!.Properties).toMatchObject({ SqsManagedSseEnabled: true, MessageRetentionPeriod: 1_209_600 });
    const policies = resourcesOfType(s.json, 'AWS::SQS::QueuePolicy').filter(([, p]) =>
      (p.Properties.Queues as any[]).some((q) => JSON.stringify(q).includes(dlqId)),
    );
    const statements = policies.flatMap(([, p]) => p.Properties.PolicyDocument.Statement as any[]);
    expect(statements).toContainEqual(expect.objectContaining({ Effect: 'Deny', Action: 'sqs:*', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }));
  });

  it('gives the start function the state machine, bucket names and its handler', () => {
    const fnId = logicalId(s.stack, s.stack.trigger.startFunction.functionArn);
    const fn = s.json.Resources[fnId]!.Properties;
    expect(fn.Environment.Variables).toMatchObject({
      STATE_MACHINE_ARN: { Ref: logicalId(s.stack, s.stack.workflow.stateMachine.stateMachineArn) },
      ARTIFACTS_BUCKET: { Ref: logicalId(s.stack, s.stack.storage.artifacts.bucketName) },
      INBOX_BUCKET: { Ref: logicalId(s.stack, s.stack.storage.inbox.bucketName) },
      SERVICE_NAME: 'avatar',
    });
    expect(fn.Handler).toBe('index.handler');
  });

  it('lets start only start this state machine and write status.json', () => {
    const role = s.stack.trigger.startFunction.executionRole;
    const smId = logicalId(s.stack, s.stack.workflow.stateMachine.stateMachineArn);
    const start = statementsOf(s, role).filter((st) => actionsOf(st).some((a) => a.startsWith('states:')));
    expect(start).toHaveLength(1);
    expect(actionsOf(start[0]!)).toEqual(['states:StartExecution']);
    expect(flatten(start[0]!.Resource)).toBe(`<${smId}>`);
    const artifacts = logicalId(s.stack, s.stack.storage.artifacts.bucketName);
    expect(s3Grants(s, role)).toEqual({ 's3:PutObject': [`<${artifacts}>/teams/*/jobs/*/status.json`] });
  });
});

describe('reconcile rule', () => {
  const reconcileRule = () => s.json.Resources[logicalId(s.stack, s.stack.reconcile.rule.ruleArn)] as any;

  it("matches this state machine's executions that timed out, were stopped or failed", () => {
    expect(reconcileRule().Properties.EventPattern).toEqual({
      source: ['aws.states'],
      'detail-type': ['Step Functions Execution Status Change'],
      detail: {
        status: ['TIMED_OUT', 'ABORTED', 'FAILED'],
        stateMachineArn: [{ Ref: logicalId(s.stack, s.stack.workflow.stateMachine.stateMachineArn) }],
      },
    });
  });

  it('targets the reconcile function with bounded retries and the dead-letter queue', () => {
    const dlqArn = { 'Fn::GetAtt': [logicalId(s.stack, s.stack.trigger.deadLetterQueue.queueArn), 'Arn'] };
    const fnId = logicalId(s.stack, s.stack.functions.reconcile.functionArn);
    expect(reconcileRule().Properties.Targets).toEqual([
      expect.objectContaining({
        Arn: { 'Fn::GetAtt': [fnId, 'Arn'] },
        RetryPolicy: { MaximumRetryAttempts: 8, MaximumEventAgeInSeconds: 7200 },
        DeadLetterConfig: { Arn: dlqArn },
      }),
    ]);
    const [[, config]] = resourcesOfType(s.json, 'AWS::Lambda::EventInvokeConfig').filter(([, c]) => c.Properties.FunctionName.Ref === fnId) as [[string, any]];
    expect(config.Properties).toMatchObject({ MaximumRetryAttempts: 2, DestinationConfig: { OnFailure: { Destination: dlqArn } } });
  });

  it('lets reconcile read and write status.json only', () => {
    const artifacts = logicalId(s.stack, s.stack.storage.artifacts.bucketName);
    expect(s3Grants(s, s.stack.functions.reconcile.executionRole)).toEqual({
      's3:GetObject': [`<${artifacts}>/teams/*/jobs/*/status.json`],
      's3:PutObject': [`<${artifacts}>/teams/*/jobs/*/status.json`],
    });
  });
});
