import { beforeAll, describe, expect, it } from 'vitest';
import { STAGE_PRIORITY } from '../../infra/constructs/team-batch-job';
import { actionsOf, definitionOf, flatten, logicalId, resourcesOfType, statementsOf, synth, type Synthesized } from './helpers';

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
    expect(definitions).toHaveLength(3);
    for (const [, d] of definitions) expect(d.Properties.PropagateTags).toBe(true);
  });

  it('submits every GPU job with the team as share identifier, a stage priority and team/job/stage tags', () => {
    const batchStates = Object.entries<any>(asl.States).filter(([, st]) => String(st.Resource).includes(':batch:submitJob'));
    expect(batchStates.map(([name]) => name).sort()).toEqual(['Caption', 'Evaluate', 'Train']);
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
