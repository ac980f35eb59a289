import { BatchClient, CreateSchedulingPolicyCommand, DescribeSchedulingPoliciesCommand } from '@aws-sdk/client-batch';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { syncFairShareWeights } from '../../lambdas/shared/fair-share';
import { LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';

// moto's Batch stores scheduling policies (create, describe, update); it schedules nothing.
describeWithMoto('fair-share weights from the registry', () => {
  let moto: Moto;
  let batch: BatchClient;
  beforeAll(async () => {
    moto = await startMoto();
    batch = new BatchClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
  });
  afterAll(() => moto?.stop());

  it('replaces the share distribution and keeps the deployed decay and reservation', async () => {
    const { arn } = await batch.send(
      new CreateSchedulingPolicyCommand({
        name: 'fair',
        fairsharePolicy: { shareDecaySeconds: 3600, computeReservation: 25, shareDistribution: [{ shareIdentifier: 'gone', weightFactor: 3 }] },
      }),
    );

    await syncFairShareWeights(batch, arn!, [
      { teamId: 'zeta', fairShareWeight: 1 },
      { teamId: 'acme', fairShareWeight: 0.5 },
    ]);

    const [policy] = (await batch.send(new DescribeSchedulingPoliciesCommand({ arns: [arn!] }))).schedulingPolicies!;
    expect(policy!.fairsharePolicy).toEqual({
      shareDecaySeconds: 3600,
      computeReservation: 25,
      shareDistribution: [
        { shareIdentifier: 'acme', weightFactor: 0.5 },
        { shareIdentifier: 'zeta', weightFactor: 1 },
      ],
    });
  });

  it('names a missing policy', async () => {
    await expect(syncFairShareWeights(batch, 'arn:aws:batch:us-east-1:123456789012:scheduling-policy/none', [])).rejects.toThrow(
      /not found: pass the stack output SchedulingPolicyArn/,
    );
  });
});
