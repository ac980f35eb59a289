import { createHash } from 'node:crypto';
import validator from 'asl-validator';
import { StateMachine } from 'aws-local-stepfunctions';
import { beforeAll, describe, expect, it } from 'vitest';
import { actionsOf, definitionOf, flatten, logicalId, resourcesOfType, type Synthesized, statementsOf, synth } from './helpers';

let s: Synthesized;
let asl: any;
beforeAll(() => {
  s = synth({ executionTimeoutHours: 6, gpuWaitMinutes: 45 });
  asl = definitionOf(s);
});

const LAMBDA_STAGES = { Validate: 'validate', Normalize: 'normalize', Finalize: 'finalize' } as const;
const BATCH_STAGES = { Train: 'train', Evaluate: 'evaluate' } as const;
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
    // Train is one GPU job: the caption stage, then the train stage.
    expect(order).toEqual(['CreateJobSecret', 'RegisterJobSecret', 'Validate', 'Normalize', 'Admit', 'Train', 'Evaluate', 'Finalize', 'Succeeded']);
    expect(asl.States.Succeeded.Type).toBe('Succeed');
  });

  it('has exactly the contract states', () => {
    expect(Object.keys(asl.States).sort()).toEqual(
      ['CreateJobSecret', 'RegisterJobSecret', 'Admit', 'Evaluate', 'Failed', 'Finalize', 'MarkFailed', 'Normalize', 'Succeeded', 'Train', 'Validate'].sort(),
    );
  });

  it('Admit waits on a task token for its decision, as long as the execution may run, and catches into MarkFailed', () => {
    expect(asl.States.Admit).toMatchObject({
      Type: 'Task',
      Resource: expect.stringMatching(/:states:::lambda:invoke\.waitForTaskToken$/),
      Parameters: {
        FunctionName: `<${logicalId(s.stack, s.stack.functions.admit.functionArn)}>`,
        Payload: {
          'teamId.$': '$.teamId',
          'jobId.$': '$.jobId',
          'jobSecret.$': '$.stageSecrets.admit',
          'taskToken.$': '$$.Task.Token',
        },
      },
      ResultSelector: { 'result.$': '$' },
      ResultPath: '$.admit',
      TimeoutSeconds: 6 * 3600,
      Catch: [{ ErrorEquals: ['States.ALL'], ResultPath: '$.failure.admit', Next: 'MarkFailed' }],
    });
    expect(asl.States.Admit.Retry).toEqual([{ ErrorEquals: LAMBDA_ERRORS, IntervalSeconds: 2, BackoffRate: 2, MaxAttempts: 5, JitterStrategy: 'FULL' }]);
  });

  it.each(Object.entries(LAMBDA_STAGES))('%s invokes its own function with the job reference', (state, stage) => {
    const fn = s.stack.functions[stage];
    expect(asl.States[state]).toMatchObject({
      Type: 'Task',
      Resource: expect.stringMatching(/:states:::lambda:invoke$/),
      Parameters: {
        FunctionName: `<${logicalId(s.stack, fn.functionArn)}>`,
        Payload: { 'teamId.$': '$.teamId', 'jobId.$': '$.jobId', 'jobSecret.$': `$.stageSecrets.${stage}` },
      },
      ResultSelector: { 'result.$': '$.Payload' },
      ResultPath: `$.${stage}`,
    });
  });

  it.each(Object.entries(BATCH_STAGES))('%s submits its job definition to the queue and waits (.sync)', (state, stage) => {
    const st = asl.States[state];
    expect(st.Type).toBe('Task');
    expect(st.Resource).toMatch(/:states:::batch:submitJob\.sync$/);
    expect(st.Parameters).toEqual({
      'JobName.$': `States.Format('{}-{}-${stage}', $.jobId, States.Hash(States.Format('{}/{}', $.teamId, $.jobId), 'MD5'))`,
      JobDefinition: `<${logicalId(s.stack, s.stack.gpu[stage].jobDefinitionArn)}>`,
      JobQueue: `<${logicalId(s.stack, s.stack.gpu.jobQueue.jobQueueArn)}>`,
      ContainerOverrides: {
        Environment: [
          { Name: 'AVATAR_TEAM_ID', 'Value.$': '$.teamId' },
          { Name: 'AVATAR_JOB_ID', 'Value.$': '$.jobId' },
          { Name: 'AVATAR_JOB_SECRET', 'Value.$': `$.stageSecrets.${stage}` },
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
    expect(asl.States[state].Retry).toEqual([{ ErrorEquals: LAMBDA_ERRORS, IntervalSeconds: 2, BackoffRate: 2, MaxAttempts: 5, JitterStrategy: 'FULL' }]);
  });

  it.each(Object.keys(BATCH_STAGES))('%s retries only Batch API errors', (state) => {
    expect(asl.States[state].Retry).toEqual([{ ErrorEquals: BATCH_ERRORS, IntervalSeconds: 10, BackoffRate: 2, MaxAttempts: 4 }]);
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
      Payload: {
        'teamId.$': '$.teamId',
        'jobId.$': '$.jobId',
        'jobSecret.$': '$.stageSecrets.markFailed',
        'failure.$': '$.failure',
      },
    });
    expect(markFailed.Next).toBe('Failed');
    expect(markFailed.Catch).toEqual([{ ErrorEquals: ['States.ALL'], ResultPath: '$.failure.markFailed', Next: 'Failed' }]);
    expect(asl.States.Failed).toMatchObject({ Type: 'Fail', Error: 'JobFailed', Cause: expect.any(String) });
  });

  it('times out a whole execution after the configured hours', () => {
    expect(asl.TimeoutSeconds).toBe(6 * 3600);
  });

  it.each([
    ['Validate', 600],
    ['Normalize', 900],
    ['Finalize', 300],
    ['MarkFailed', 60],
  ])('%s times out 30 s after its function (%i s), raising the catchable States.Timeout', (state, fnSeconds) => {
    expect(asl.States[state].TimeoutSeconds).toBe(fnSeconds + 30);
  });

  it.each([
    // attempts x (GPU wait 45 min + start-up 15 min + attempt timeout); gpuWaitMinutes is 45 in this synth
    ['Train', 3 * (45 * 60 + 15 * 60 + 5 * 3600)],
    ['Evaluate', 3 * (45 * 60 + 15 * 60 + 2 * 3600)],
  ])('%s times out after every Batch attempt may have waited, started and run (%i s), leaving the job definition timeout alone', (state, seconds) => {
    expect(asl.States[state].TimeoutSeconds).toBe(seconds);
    expect(asl.States[state].Parameters.Timeout).toBeUndefined();
  });

  it('gives every task state its own timeout', () => {
    const tasks = Object.entries<any>(asl.States).filter(([, st]) => st.Type === 'Task');
    expect(tasks.map(([name]) => name).sort()).toEqual(['Admit', 'Evaluate', 'Finalize', 'MarkFailed', 'Normalize', 'RegisterJobSecret', 'Train', 'Validate']);
    for (const [, st] of tasks) expect(st.TimeoutSeconds).toBeGreaterThan(0);
  });
});

describe('Batch job names', () => {
  /** Evaluates a state's JobName expression with aws-local-stepfunctions' intrinsic functions. */
  async function jobNameOf(state: string, input: { teamId: string; jobId: string }): Promise<string> {
    const probe = { StartAt: 'Name', States: { Name: { Type: 'Pass', Parameters: { 'name.$': asl.States[state].Parameters['JobName.$'] }, End: true } } };
    const out = (await new StateMachine(probe as never).run(input as never).result) as { name: string };
    return out.name;
  }

  it.each(Object.keys(BATCH_STAGES))('%s names the job <jobId>-<md5(teamId/jobId)>-<stage>', async (state) => {
    const job = { teamId: 'team-a', jobId: 'job-1' };
    const digest = createHash('md5').update('team-a/job-1').digest('hex');
    expect(await jobNameOf(state, job)).toBe(`job-1-${digest}-${state.toLowerCase()}`);
  });

  // aws-local-stepfunctions 3.0.0 hashes inputs of 56 bytes or more wrongly (its padding; checked
  // against node:crypto), so for long ids only the shape, length and uniqueness are asserted here.
  it.each(Object.keys(BATCH_STAGES))("%s stays within Batch's 128 characters for two 63-character ids, and differs per team", async (state) => {
    const long = { teamId: `t${'a'.repeat(62)}`, jobId: `j${'b'.repeat(62)}` };
    const name = await jobNameOf(state, long);
    expect(name).toMatch(new RegExp(`^${long.jobId}-[0-9a-f]{32}-${state.toLowerCase()}$`));
    expect(name.length).toBeLessThanOrEqual(128);
    expect(await jobNameOf(state, long)).toBe(name);
    expect(await jobNameOf(state, { ...long, teamId: `u${'a'.repeat(62)}` })).not.toBe(name);
  });
});

describe('state machine role', () => {
  it('may describe and terminate Batch jobs, so stopping an execution stops its GPU job', () => {
    const statements = statementsOf(s, s.stack.workflow.stateMachine.role);
    const terminate = statements.filter((st) => actionsOf(st).includes('batch:TerminateJob'));
    expect(terminate).toHaveLength(1);
    expect(actionsOf(terminate[0]!)).toEqual(['batch:TerminateJob']);
    expect(flatten(terminate[0]!.Resource)).toBe('arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job/*');
    const describe = statements.filter((st) => actionsOf(st).includes('batch:DescribeJobs'));
    expect(describe).toHaveLength(1);
    // DescribeJobs supports no resource-level permission; the nag acknowledgement says so.
    expect(describe[0]!.Resource).toBe('*');
    expect(actionsOf(describe[0]!)).toEqual(['batch:DescribeJobs']);
  });

  it('still submits only to our queue', () => {
    const submit = statementsOf(s, s.stack.workflow.stateMachine.role).filter((st) => actionsOf(st).includes('batch:SubmitJob'));
    expect(submit).toHaveLength(1);
    const resources = ([] as unknown[]).concat(submit[0]!.Resource).map(flatten);
    expect(resources).toContain(`<${logicalId(s.stack, s.stack.gpu.jobQueue.jobQueueArn)}>`);
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
