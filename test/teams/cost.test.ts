import type { BatchClient, DescribeComputeEnvironmentsCommandOutput, DescribeJobsCommandOutput } from '@aws-sdk/client-batch';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { admit, release } from '../../lambdas/shared/admission';
import {
  batchJobCost,
  clusterOfContainerInstance,
  computeEnvironmentResolver,
  type InstanceResolver,
  jobCost,
  lambdaCost,
  monthToDate,
  storageCost,
  writeLedgerRow,
} from '../../lambdas/shared/cost';
import { DEFAULT_PRICES, loadPrices, type Prices } from '../../lambdas/shared/prices';
import { type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';
import { admissionRequest, freshRegistry, team } from './helpers';

const SPOT_CLUSTER = 'AWSBatch-Spot-0a1b2c3d-4e5f-6789-abcd-ef0123456789';
const OD_CLUSTER = 'AWSBatch-OnDemand-11112222-3333-4444-5555-666677778888';
const instanceArn = (cluster: string, id: string) => `arn:aws:ecs:us-east-1:123456789012:container-instance/${cluster}/${id}`;

/**
 * A train job as DescribeJobs returns it (fields per the Batch API reference and the SDK's JobDetail
 * type): a Spot attempt reclaimed after 30 min, a retry that never reached RUNNING (image pull
 * failed after placement), and an on-demand attempt that succeeded after 40 min.
 */
const describeJobs: DescribeJobsCommandOutput = {
  $metadata: { httpStatusCode: 200 },
  jobs: [
    {
      jobArn: 'arn:aws:batch:us-east-1:123456789012:job/5f0c7e1a-0000-4000-8000-000000000001',
      jobName: 'acme-job-42-train',
      jobId: '5f0c7e1a-0000-4000-8000-000000000001',
      jobQueue: 'arn:aws:batch:us-east-1:123456789012:job-queue/JobQueue',
      jobDefinition: 'arn:aws:batch:us-east-1:123456789012:job-definition/TrainJob:3',
      status: 'SUCCEEDED',
      createdAt: 1_764_669_000_000,
      startedAt: 1_764_675_000_000,
      stoppedAt: 1_764_677_400_000,
      attempts: [
        {
          container: {
            containerInstanceArn: instanceArn(SPOT_CLUSTER, 'aaaa1111'),
            taskArn: 'arn:aws:ecs:us-east-1:123456789012:task/x/1',
            logStreamName: 'train/default/1',
          },
          startedAt: 1_764_669_600_000,
          stoppedAt: 1_764_671_400_000, // 1800 s
          statusReason: 'Host EC2 (instance i-0123456789abcdef0) terminated.',
        },
        {
          container: {
            containerInstanceArn: instanceArn(OD_CLUSTER, 'bbbb2222'),
            taskArn: 'arn:aws:ecs:us-east-1:123456789012:task/y/2',
            reason: 'CannotPullContainerError: context deadline exceeded',
          },
          stoppedAt: 1_764_672_000_000,
          statusReason: 'Task failed to start',
        },
        {
          container: {
            containerInstanceArn: instanceArn(OD_CLUSTER, 'cccc3333'),
            taskArn: 'arn:aws:ecs:us-east-1:123456789012:task/y/3',
            exitCode: 0,
            logStreamName: 'train/default/3',
          },
          startedAt: 1_764_675_000_000,
          stoppedAt: 1_764_677_400_000, // 2400 s
          statusReason: 'Essential container in task exited',
        },
      ],
    },
  ],
};

const prices: Prices = {
  ...DEFAULT_PRICES,
  instances: { 'g5.xlarge': { onDemandHourlyUsd: 1.0, spotHourlyUsd: 0.4 }, 'g5.2xlarge': { onDemandHourlyUsd: 1.2, spotHourlyUsd: 0.5 } },
  gpuStartupSeconds: 180,
};

const byCluster: InstanceResolver = async (arn) => ({ instanceType: 'g5.xlarge', spot: clusterOfContainerInstance(arn) === SPOT_CLUSTER });

describe('batchJobCost', () => {
  it('prices each attempt on its capacity: Spot reclaim, a failed start, the on-demand success', async () => {
    const cost = await batchJobCost(describeJobs.jobs![0]!, byCluster, prices);

    // Spot:      (1800 + 180) s / 3600 x $0.40 = $0.22
    // Pull fail: (   0 + 180) s / 3600 x $1.00 = $0.05
    // On demand: (2400 + 180) s / 3600 x $1.00 = $0.716667 (0.71666...)
    // Total $0.986667; 4740 GPU seconds.
    expect(cost.usd).toBe(0.986667);
    expect(cost.gpuSeconds).toBe(4740);
    expect(cost.attempts.map((a) => [a.spot, a.runningSeconds, a.hourlyUsd])).toEqual([
      [true, 1800, 0.4],
      [false, 0, 1],
      [false, 2400, 1],
    ]);
    expect(cost.attempts[0]!.statusReason).toMatch(/^Host EC2/);
  });

  it('bills nothing for an attempt never placed on an instance', async () => {
    const cost = await batchJobCost({ attempts: [{ statusReason: 'Job cancelled' }] }, byCluster, prices);
    expect(cost).toMatchObject({ usd: 0, gpuSeconds: 0 });
  });

  it("derives Spot from the compute environment owning the ARN's cluster, and marks an assumed type", async () => {
    // A stub Batch client answering DescribeComputeEnvironments with the real response shape:
    // moto's Batch needs a full VPC/IAM setup to create managed environments, out of scope here.
    const envs: DescribeComputeEnvironmentsCommandOutput = {
      $metadata: {},
      computeEnvironments: [
        {
          computeEnvironmentName: 'Spot',
          computeEnvironmentArn: 'arn:aws:batch:us-east-1:123456789012:compute-environment/Spot',
          ecsClusterArn: `arn:aws:ecs:us-east-1:123456789012:cluster/${SPOT_CLUSTER}`,
          computeResources: { type: 'SPOT', maxvCpus: 16, subnets: [], instanceTypes: ['g5.xlarge', 'g5.2xlarge'] },
        },
        {
          computeEnvironmentName: 'OnDemand',
          computeEnvironmentArn: 'arn:aws:batch:us-east-1:123456789012:compute-environment/OnDemand',
          ecsClusterArn: `arn:aws:ecs:us-east-1:123456789012:cluster/${OD_CLUSTER}`,
          computeResources: { type: 'EC2', maxvCpus: 16, subnets: [], instanceTypes: ['g5.xlarge'] },
        },
      ],
    };
    let calls = 0;
    const batch = {
      send: async () => {
        calls++;
        return envs;
      },
    } as unknown as BatchClient;
    const resolve = computeEnvironmentResolver(batch, prices);

    expect(await resolve(instanceArn(SPOT_CLUSTER, 'a'))).toEqual({ instanceType: 'g5.2xlarge', spot: true, instanceTypeAssumed: true });
    expect(await resolve(instanceArn(OD_CLUSTER, 'b'))).toEqual({ instanceType: 'g5.xlarge', spot: false });
    expect(calls).toBe(1);
    await expect(resolve(instanceArn('other-cluster', 'c'))).rejects.toThrow(/no compute environment owns cluster "other-cluster"/);
    expect(() => clusterOfContainerInstance('arn:aws:ecs:us-east-1:123456789012:task/x/1')).toThrow(/not an ECS container instance ARN/);
  });

  it('Lambda and storage estimates', () => {
    // 3 invocations: 1.5 + 2 + 0.5 s at 2048 MB = 8 GB-s x 0.0000166667 = 0.000133334 -> 0.000133
    expect(
      lambdaCost(
        [
          { billedMs: 1500, memoryMb: 2048 },
          { billedMs: 2000, memoryMb: 2048 },
          { billedMs: 500, memoryMb: 2048 },
        ],
        prices,
      ),
    ).toBe(0.000133);
    // 3 GiB kept 60 days at $0.023 per GB-month = 3 x 2 x 0.023 = 0.138
    expect(storageCost(3 * 1024 ** 3, 60, prices)).toBe(0.138);
  });

  it('prices are overridable through AVATAR_PRICES, per instance type, with clear errors', () => {
    const p = loadPrices('{"instances":{"g6e.xlarge":{"onDemandHourlyUsd":1.861,"spotHourlyUsd":0.9}},"gpuStartupSeconds":60}');
    expect(p.instances['g6e.xlarge']!.onDemandHourlyUsd).toBe(1.861);
    expect(p.instances['g5.xlarge']).toEqual(DEFAULT_PRICES.instances['g5.xlarge']);
    expect(p.gpuStartupSeconds).toBe(60);
    expect(() => loadPrices('{"gpuStartupSeconds":-1}')).toThrow(/AVATAR_PRICES is invalid: gpuStartupSeconds/);
    expect(() => loadPrices('{oops')).toThrow(/AVATAR_PRICES is not valid JSON/);
  });
});

describeWithMoto('cost ledger', () => {
  let moto: Moto;
  beforeAll(async () => {
    moto = await startMoto({ serializeDynamoDb: true });
  });
  afterAll(() => moto?.stop());

  it('keeps one row per job and stage, sums them per job, and charges the total to the month', async () => {
    const registry = await freshRegistry(moto.endpoint);
    await registry.add(team('acme', { monthlyBudgetUsd: 10 }));
    await admit(registry, admissionRequest('acme', 'job-42', { estimate: { usd: 2, gpuSeconds: 6000 } }));
    const train = await batchJobCost(describeJobs.jobs![0]!, byCluster, prices);
    const trainRow = {
      teamId: 'acme',
      jobId: 'job-42',
      stage: 'train' as const,
      usd: train.usd,
      gpuSeconds: train.gpuSeconds,
      lambdaUsd: 0,
      storageUsd: 0,
      gpu: train,
    };

    await writeLedgerRow(registry, trainRow);
    await writeLedgerRow(registry, { teamId: 'acme', jobId: 'job-42', stage: 'normalize', usd: 0.000133, gpuSeconds: 0, lambdaUsd: 0.000133, storageUsd: 0 });
    // Recomputing a stage rewrites its row: no double count.
    await writeLedgerRow(registry, trainRow);
    const total = await jobCost(registry, 'acme', 'job-42');
    await release(registry, 'acme', 'job-42', { usd: total.usd, gpuSeconds: total.gpuSeconds });

    expect(total).toEqual({ usd: 0.9868, gpuSeconds: 4740, stages: { train: 0.986667, normalize: 0.000133 } });
    expect(await monthToDate(registry, 'acme')).toEqual({
      month: '2026-12',
      spentUsd: 0.9868,
      reservedUsd: 0,
      budgetUsd: 10,
      spentGpuHours: 4740 / 3600,
      gpuHoursBudget: 50,
    });
  });
});
