import { beforeAll, describe, expect, it } from 'vitest';
import { STAGE_PRIORITY } from '../../infra/constructs/team-batch-job';
import { actionsOf, definitionOf, flatten, logicalId, resourcesOfType, type Synthesized, statementsOf, synth } from './helpers';

let s: Synthesized;
let asl: any;
beforeAll(() => {
  s = synth();
  asl = definitionOf(s);
});

describe('Teams construct', () => {
  it('keeps the registry in one encrypted, point-in-time-recoverable, retained table', () => {
    const tables = resourcesOfType(s.json, 'AWS::DynamoDB::Table');
    expect(tables).toHaveLength(1);
    const [, table] = tables[0]!;
    expect(table.Properties).toMatchObject({
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      BillingMode: 'PAY_PER_REQUEST',
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
      DeletionProtectionEnabled: true,
    });
    expect((table as unknown as { DeletionPolicy: string }).DeletionPolicy).toBe('Retain');
    expect((table as unknown as { UpdateReplacePolicy: string }).UpdateReplacePolicy).toBe('Retain');
    expect(s.json.Outputs).toHaveProperty('TeamsTableName');
  });

  it('puts the GPU job queue under a fair-share scheduling policy', () => {
    const [[policyId, policy]] = resourcesOfType(s.json, 'AWS::Batch::SchedulingPolicy') as [[string, any]];
    expect(policy.Properties.FairsharePolicy).toMatchObject({ ShareDecaySeconds: 3600, ComputeReservation: 25 });
    const queues = resourcesOfType(s.json, 'AWS::Batch::JobQueue');
    expect(queues).toHaveLength(1);
    expect(queues[0]![1].Properties.SchedulingPolicyArn).toEqual({ 'Fn::GetAtt': [policyId, 'Arn'] });
  });

  it('makes every GPU job definition propagate its tags to the ECS task', () => {
    const definitions = resourcesOfType(s.json, 'AWS::Batch::JobDefinition');
    expect(definitions).toHaveLength(2); // Train (caption then train) and Evaluate;
    for (const [, d] of definitions) expect(d.Properties.PropagateTags).toBe(true);
  });

  it('submits every GPU job with the team as share identifier, a stage priority and team/job/stage tags', () => {
    const batchStates = Object.entries<any>(asl.States).filter(([, st]) => String(st.Resource).includes(':batch:submitJob'));
    expect(batchStates.map(([name]) => name).sort()).toEqual(['Evaluate', 'Train']);
    for (const [name, state] of batchStates) {
      const stage = name.toLowerCase() as keyof typeof STAGE_PRIORITY;
      expect(state.Parameters).toMatchObject({
        'ShareIdentifier.$': '$.teamId',
        SchedulingPriorityOverride: STAGE_PRIORITY[stage],
        PropagateTags: true,
        Tags: { 'team.$': '$.teamId', 'job.$': '$.jobId', stage },
      });
    }
    // Finishing jobs go first.
    expect(STAGE_PRIORITY.evaluate).toBeGreaterThan(STAGE_PRIORITY.train);
    expect(STAGE_PRIORITY.train).toBeGreaterThan(STAGE_PRIORITY.caption);
  });

  it('lets the state machine tag the jobs it submits, and nothing else', () => {
    const role = s.stack.workflow.stateMachine.role;
    const tagging = statementsOf(s, role).filter((st) => actionsOf(st).includes('batch:TagResource'));
    // The three tasks' identical statements are merged into one.
    expect(tagging).toHaveLength(1);
    for (const st of tagging) {
      expect(actionsOf(st)).toEqual(['batch:TagResource']);
      expect(flatten(st.Resource)).toBe('arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job/*');
    }
    expect(logicalId(s.stack, s.stack.teams.table.tableName)).toMatch(/^TeamsTable/);
  });
});

describe('admission and release grants', () => {
  const fns = () => s.stack.functions;
  const tableArn = () => `<${logicalId(s.stack, s.stack.teams.table.tableArn)}>`;

  it('lets exactly admit, finalize, mark-failed and reconcile answer task tokens, of this state machine only', () => {
    const smArn = `<${logicalId(s.stack, s.stack.workflow.stateMachine.stateMachineArn)}>`;
    const responders = resourcesOfType(s.json, 'AWS::IAM::Policy').filter(([, p]) =>
      (p.Properties.PolicyDocument.Statement as { Action: string | string[] }[]).some((st) =>
        ([] as string[]).concat(st.Action).some((a) => a.startsWith('states:SendTask')),
      ),
    );
    expect(responders).toHaveLength(1);
    const [, policy] = responders[0]!;
    expect(policy.Properties.PolicyDocument.Statement).toEqual([
      { Effect: 'Allow', Action: ['states:SendTaskSuccess', 'states:SendTaskFailure'], Resource: expect.anything() },
    ]);
    expect(flatten(policy.Properties.PolicyDocument.Statement[0].Resource)).toBe(smArn);
    const roles = (policy.Properties.Roles as { Ref: string }[]).map((r) => r.Ref).sort();
    const expected = [fns().admit, fns().finalize, fns().markFailed, fns().reconcile].map((f) => logicalId(s.stack, f.executionRole.roleName)).sort();
    expect(roles).toEqual(expected);
  });

  it("gives the registry's item actions, and no scan or table admin, to admit and the job ends only", () => {
    const registryActions = [
      'dynamodb:GetItem',
      'dynamodb:PutItem',
      'dynamodb:UpdateItem',
      'dynamodb:DeleteItem',
      'dynamodb:Query',
      'dynamodb:ConditionCheckItem',
    ];
    const holders = (['validate', 'normalize', 'admit', 'finalize', 'markFailed', 'reconcile'] as const).filter((name) =>
      statementsOf(s, fns()[name].executionRole).some((st) => actionsOf(st).some((a) => a.startsWith('dynamodb:'))),
    );
    expect(holders).toEqual(['admit', 'finalize', 'markFailed', 'reconcile']);
    for (const name of holders) {
      const dynamo = statementsOf(s, fns()[name].executionRole).filter((st) => actionsOf(st).some((a) => a.startsWith('dynamodb:')));
      expect(dynamo).toHaveLength(1);
      expect(actionsOf(dynamo[0]!).sort()).toEqual([...registryActions].sort());
      expect(flatten(dynamo[0]!.Resource)).toBe(tableArn());
    }
  });

  it('lets the job ends read Batch job records to price them; admit reads only the plan and status of a job', () => {
    for (const name of ['finalize', 'markFailed', 'reconcile'] as const) {
      const batchReads = statementsOf(s, fns()[name].executionRole).filter((st) => actionsOf(st).some((a) => a.startsWith('batch:')));
      expect(batchReads.flatMap(actionsOf).sort()).toEqual(['batch:DescribeComputeEnvironments', 'batch:DescribeJobs', 'batch:ListJobs']);
    }
    const admitS3 = statementsOf(s, fns().admit.executionRole).filter((st) => actionsOf(st).some((a) => a.startsWith('s3:')));
    const resources = admitS3.flatMap((st) => ([] as unknown[]).concat(st.Resource).map(flatten)).sort();
    expect(resources.every((r) => r.endsWith('/teams/*/jobs/*/normalize/plan.json') || r.endsWith('/teams/*/jobs/*/status.json'))).toBe(true);
    expect(admitS3.flatMap(actionsOf)).not.toContain('s3:DeleteObject');
  });
});
