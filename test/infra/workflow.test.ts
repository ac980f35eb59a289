import validator from 'asl-validator';
import { beforeAll, describe, expect, it } from 'vitest';
import { definitionOf, logicalId, resourcesOfType, synth, type Synthesized } from './helpers';

let s: Synthesized;
let asl: any;
beforeAll(() => {
  s = synth({ executionTimeoutHours: 6 });
  asl = definitionOf(s);
});

const LAMBDA_STAGES = { Validate: 'validate', Normalize: 'normalize', Finalize: 'finalize' } as const;
const BATCH_STAGES = { Caption: 'caption', Train: 'train', Evaluate: 'evaluate' } as const;
const LAMBDA_ERRORS = [
  'Lambda.ServiceException',
  'Lambda.AWSLambdaException',
  'Lambda.SdkClientException',
  'Lambda.TooManyRequestsException',
  'Lambda.ClientExecutionTimeoutException',
  'TransientError',
];
const BATCH_ERRORS = ['Batch.AWSBatchException', 'Batch.ServerException', 'Batch.TooManyRequestsException'];

describe('workflow definition', () => {
  it('is valid ASL according to asl-validator', () => {
    const result = validator(asl, { checkArn: false, checkPaths: true });
    expect(result.errorsText('\n')).toBe('');
    expect(result.isValid).toBe(true);
  });

  it('stays in JSONPath mode: no JSONata, no Assign', () => {
    expect(asl.QueryLanguage ?? 'JSONPath').toBe('JSONPath');
    for (const state of Object.values<any>(asl.States)) {
      expect(state.QueryLanguage ?? 'JSONPath').toBe('JSONPath');
      expect(state.Assign).toBeUndefined();
    }
  });

  it('runs the stages in order and ends in Succeeded', () => {
    const order: string[] = [];
    for (let name: string | undefined = asl.StartAt; name; name = asl.States[name].Next) order.push(name);
    expect(order).toEqual(['Validate', 'Normalize', 'Caption', 'Train', 'Evaluate', 'Finalize', 'Succeeded']);
    expect(asl.States.Succeeded.Type).toBe('Succeed');
  });

  it('has exactly the contract states', () => {
    expect(Object.keys(asl.States).sort()).toEqual(
      ['Caption', 'Evaluate', 'Failed', 'Finalize', 'MarkFailed', 'Normalize', 'Succeeded', 'Train', 'Validate'].sort(),
    );
  });

  it.each(Object.entries(LAMBDA_STAGES))('%s invokes its own function with the job reference', (state, stage) => {
    const fn = s.stack.functions[stage];
    expect(asl.States[state]).toMatchObject({
      Type: 'Task',
      Resource: expect.stringMatching(/:states:::lambda:invoke$/),
      Parameters: { FunctionName: `<${logicalId(s.stack, fn.functionArn)}>`, Payload: { 'teamId.$': '$.teamId', 'jobId.$': '$.jobId' } },
      ResultSelector: { 'result.$': '$.Payload' },
      ResultPath: `$.${stage}`,
    });
  });

  it.each(Object.entries(BATCH_STAGES))('%s submits its job definition to the queue and waits (.sync)', (state, stage) => {
    const st = asl.States[state];
    expect(st.Type).toBe('Task');
    expect(st.Resource).toMatch(/:states:::batch:submitJob\.sync$/);
    expect(st.Parameters).toEqual({
      'JobName.$': `States.Format('{}-{}-${stage}', $.teamId, $.jobId)`,
      JobDefinition: `<${logicalId(s.stack, s.stack.gpu[stage].jobDefinitionArn)}>`,
      JobQueue: `<${logicalId(s.stack, s.stack.gpu.jobQueue.jobQueueArn)}>`,
      ContainerOverrides: {
        Environment: [
          { Name: 'AVATAR_TEAM_ID', 'Value.$': '$.teamId' },
          { Name: 'AVATAR_JOB_ID', 'Value.$': '$.jobId' },
        ],
      },
      // Fair share and cost tags (test/infra/teams.test.ts).
      'ShareIdentifier.$': '$.teamId',
      SchedulingPriorityOverride: expect.any(Number),
      PropagateTags: true,
      Tags: { 'team.$': '$.teamId', 'job.$': '$.jobId', stage },
    });
    expect(st.ResultSelector).toEqual({ 'jobId.$': '$.JobId' });
    expect(st.ResultPath).toBe(`$.${stage}`);
  });

  it.each([...Object.keys(LAMBDA_STAGES), 'MarkFailed'])('%s retries transient Lambda errors with full jitter', (state) => {
    expect(asl.States[state].Retry).toEqual([
      { ErrorEquals: LAMBDA_ERRORS, IntervalSeconds: 2, BackoffRate: 2, MaxAttempts: 5, JitterStrategy: 'FULL' },
    ]);
  });

  it.each(Object.keys(BATCH_STAGES))('%s retries only Batch API errors', (state) => {
    expect(asl.States[state].Retry).toEqual([
      { ErrorEquals: BATCH_ERRORS, IntervalSeconds: 10, BackoffRate: 2, MaxAttempts: 4 },
    ]);
  });

  it('never retries States.ALL or Local.GpuUnavailable', () => {
    for (const state of Object.values<any>(asl.States)) {
      for (const retry of state.Retry ?? []) {
        expect(retry.ErrorEquals).not.toContain('States.ALL');
        expect(retry.ErrorEquals).not.toContain('Local.GpuUnavailable');
      }
    }
  });

  it.each(Object.entries({ ...LAMBDA_STAGES, ...BATCH_STAGES }))('%s catches everything into MarkFailed at $.failure.%s', (state, stage) => {
    expect(asl.States[state].Catch).toEqual([{ ErrorEquals: ['States.ALL'], ResultPath: `$.failure.${stage}`, Next: 'MarkFailed' }]);
  });

  it('MarkFailed passes the failure to mark-failed, then fails the execution with JobFailed', () => {
    const markFailed = asl.States.MarkFailed;
    expect(markFailed.Parameters).toEqual({
      FunctionName: `<${logicalId(s.stack, s.stack.functions.markFailed.functionArn)}>`,
      Payload: { 'teamId.$': '$.teamId', 'jobId.$': '$.jobId', 'failure.$': '$.failure' },
    });
    expect(markFailed.Next).toBe('Failed');
    expect(markFailed.Catch).toEqual([{ ErrorEquals: ['States.ALL'], ResultPath: '$.failure.markFailed', Next: 'Failed' }]);
    expect(asl.States.Failed).toMatchObject({ Type: 'Fail', Error: 'JobFailed', Cause: expect.any(String) });
  });

  it('times out a whole execution after the configured hours', () => {
    expect(asl.TimeoutSeconds).toBe(6 * 3600);
  });
});

describe('state machine resource', () => {
  it('is STANDARD, traced, and logs everything including execution data', () => {
    const [[, sm]] = resourcesOfType(s.json, 'AWS::StepFunctions::StateMachine') as [[string, any]];
    expect(sm.Properties.StateMachineType).toBe('STANDARD');
    expect(sm.Properties.TracingConfiguration).toEqual({ Enabled: true });
    expect(sm.Properties.LoggingConfiguration).toMatchObject({ Level: 'ALL', IncludeExecutionData: true });
    const logGroupId = sm.Properties.LoggingConfiguration.Destinations[0].CloudWatchLogsLogGroup.LogGroupArn['Fn::GetAtt'][0];
    expect(s.json.Resources[logGroupId]!.Properties.LogGroupName).toMatch(/^\/aws\/vendedlogs\/states\//);
  });
});
