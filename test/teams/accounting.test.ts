/**
 * The end of a job for its team (lambdas/shared/accounting.ts) against moto's DynamoDB and the local
 * task-token endpoint. Batch is a stand-in answering ListJobs/DescribeJobs with records of the real
 * shape: moto's Batch runs jobs in Docker and cannot produce Spot attempts on container instances.
 */
import { type DescribeJobsCommand, ListJobsCommand } from '@aws-sdk/client-batch';
import { SFNClient } from '@aws-sdk/client-sfn';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type Accounting, batchJobNameOf, batchJobSource, endJob } from '../../lambdas/shared/accounting';
import { admit } from '../../lambdas/shared/admission';
import type { BatchJobRecord, InstanceResolver } from '../../lambdas/shared/cost';
import { DEFAULT_PRICES, type Prices } from '../../lambdas/shared/prices';
import type { TeamRegistry } from '../../lambdas/shared/teams';
import { startTaskTokens, type TaskTokens } from '../../scripts/local/task-tokens';
import { LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';
import { admissionRequest, freshRegistry, team } from './helpers';

const SPOT = 'AWSBatch-Spot-0a1b2c3d';
const OD = 'AWSBatch-OnDemand-11112222';
const arn = (cluster: string, id: string) => `arn:aws:ecs:us-east-1:123456789012:container-instance/${cluster}/${id}`;
const prices: Prices = { ...DEFAULT_PRICES, instances: { 'g5.xlarge': { onDemandHourlyUsd: 1.0, spotHourlyUsd: 0.4 } }, gpuStartupSeconds: 180 };
const resolver: InstanceResolver = async (a) => ({ instanceType: 'g5.xlarge', spot: a.includes(SPOT) });

/** train: a Spot attempt reclaimed after 1800 s, then 2400 s on demand; caption and evaluate 600 s on demand each. */
const RECORDS: Record<string, BatchJobRecord[]> = {
  caption: [{ jobId: 'c1', status: 'SUCCEEDED', attempts: [{ startedAt: 0, stoppedAt: 600_000, container: { containerInstanceArn: arn(OD, 'a') } }] }],
  train: [
    {
      jobId: 't1',
      status: 'SUCCEEDED',
      attempts: [
        {
          startedAt: 1_000_000,
          stoppedAt: 2_800_000,
          statusReason: 'Host EC2 (instance i-0123) terminated.',
          container: { containerInstanceArn: arn(SPOT, 'b') },
        },
        { startedAt: 3_000_000, stoppedAt: 5_400_000, container: { containerInstanceArn: arn(OD, 'c'), exitCode: 0 } },
      ],
    },
  ],
  evaluate: [
    { jobId: 'e1', status: 'SUCCEEDED', attempts: [{ startedAt: 6_000_000, stoppedAt: 6_600_000, container: { containerInstanceArn: arn(OD, 'd') } }] },
  ],
};
// Hand-computed: caption (600+180) s x $1/h = 0.216667; train (1800+180) x $0.4/h = 0.22 plus (2400+180) x $1/h = 0.716667;
// evaluate 0.216667. Total $1.37 over 780 + 1980 + 2580 + 780 = 6120 GPU s.
const EXPECTED = { usd: 1.37, gpuSeconds: 6120, breakdown: { caption: 0.216667, train: 0.936667, evaluate: 0.216667 }, estimated: false };

const request = (jobId: string) => admissionRequest('acme', jobId, { estimate: { usd: 2, gpuSeconds: 7200 } });

describeWithMoto('end of a job: charge, release, resume', () => {
  let moto: Moto;
  let tokens: TaskTokens;
  const calls: string[] = [];
  // Answers as Batch does: ListJobs by JOB_NAME on the queue, DescribeJobs by id.
  const batch = {
    send: async (command: ListJobsCommand | DescribeJobsCommand) => {
      if (command instanceof ListJobsCommand) {
        const name = command.input.filters![0]!.values![0]!;
        calls.push(`list ${command.input.jobQueue} ${name}`);
        const stage = name.split('-').at(-1)!;
        return {
          jobSummaryList:
            name === batchJobNameOf({ teamId: 'acme', jobId: 'ran' }, stage) ? RECORDS[stage]!.map((r) => ({ jobId: r.jobId, jobName: name })) : [],
        };
      }
      return {
        jobs: Object.values(RECORDS)
          .flat()
          .filter((r) => command.input.jobs!.includes(r.jobId!)),
      };
    },
  };

  beforeAll(async () => {
    moto = await startMoto({ serializeDynamoDb: true });
    tokens = await startTaskTokens();
  });
  afterAll(async () => {
    await tokens?.stop();
    await moto?.stop();
  });

  const setup = async (maxConcurrentJobs = 1): Promise<{ registry: TeamRegistry; acc: Accounting }> => {
    const registry = await freshRegistry(moto.endpoint);
    await registry.add(team('acme', { maxConcurrentJobs, monthlyBudgetUsd: 100 }));
    const sfn = new SFNClient({ endpoint: tokens.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    return { registry, acc: { registry, sfn, gpuJobs: batchJobSource(batch as never, 'queue-arn'), resolveInstance: resolver, prices } };
  };

  it('charges the Batch-priced cost instead of the estimate, once, and reports it again on a retried end', async () => {
    const { registry, acc } = await setup();
    await admit(registry, request('ran'));

    const first = await endJob(acc, { teamId: 'acme', jobId: 'ran' });
    const again = await endJob(acc, { teamId: 'acme', jobId: 'ran' });

    expect(first).toMatchObject({ released: true, cost: EXPECTED });
    expect(again).toMatchObject({ released: false, cost: EXPECTED });
    expect(calls).toContain(`list queue-arn ${batchJobNameOf({ teamId: 'acme', jobId: 'ran' }, 'train')}`);
    expect((await registry.get('acme'))!.usage).toMatchObject({
      running: 0,
      reservedMicroUsd: 0,
      spentMicroUsd: 1_370_000,
      committedMicroUsd: 1_370_000,
      spentGpuSeconds: 6120,
    });
    expect((await registry.items('acme', 'COST#ran#')).map((r) => [r.stage, r.usd])).toEqual([
      ['caption', 0.216667],
      ['evaluate', 0.216667],
      ['train', 0.936667],
    ]);
  });

  it('adds the intake Lambdas and storage at their admission estimate to the Batch-priced GPU cost, each in its own ledger row', async () => {
    const { registry, acc } = await setup();
    // The estimate's non-GPU parts as admit passes them (prices.ts estimateJobCost).
    await admit(registry, admissionRequest('acme', 'ran', { estimate: { usd: 2, gpuSeconds: 7200, lambdaUsd: 0.0012, storageUsd: 0.0345 } }));

    const end = await endJob(acc, { teamId: 'acme', jobId: 'ran' });
    const again = await endJob(acc, { teamId: 'acme', jobId: 'ran' });

    // Hand-computed: the GPU's $1.37 (above) + $0.0012 + $0.0345 = $1.4057; GPU seconds unchanged.
    const expected = { usd: 1.4057, gpuSeconds: 6120, breakdown: { ...EXPECTED.breakdown, lambda: 0.0012, storage: 0.0345 }, estimated: false };
    expect(end.cost).toEqual(expected);
    expect(again.cost).toEqual(expected);
    expect((await registry.get('acme'))!.usage).toMatchObject({ spentMicroUsd: 1_405_700, spentGpuSeconds: 6120 });
    const rows = await registry.items('acme', 'COST#ran#');
    expect(rows.map((r) => [r.stage, r.usd, r.lambdaUsd, r.storageUsd])).toEqual([
      ['caption', 0.216667, 0, 0],
      ['evaluate', 0.216667, 0, 0],
      ['lambda', 0.0012, 0.0012, 0],
      ['storage', 0.0345, 0, 0.0345],
      ['train', 0.936667, 0, 0],
    ]);
  });

  it('resumes the oldest waiting execution with SendTaskSuccess when a slot frees', async () => {
    const { registry, acc } = await setup();
    await admit(registry, request('ran'));
    const token = tokens.open();
    expect((await admit(registry, request('next'), { taskToken: token })).outcome).toBe('waiting');

    const end = await endJob(acc, { teamId: 'acme', jobId: 'ran' });

    expect(end.resumed).toEqual(['next']);
    expect(await tokens.wait(token)).toEqual({
      teamId: 'acme',
      jobId: 'next',
      outcome: 'admitted',
      message: expect.stringContaining('admitted after waiting'),
      duplicate: false,
    });
    expect((await registry.get('acme'))!.usage.running).toBe(1);
  });

  it('fails the waiting execution of a job that no longer fits the budget, with the code in the Lambda error shape', async () => {
    const { registry, acc } = await setup();
    await registry.update('acme', { monthlyBudgetUsd: 5 });
    await admit(registry, request('ran'));
    const token = tokens.open();
    expect((await admit(registry, request('big'), { taskToken: token })).outcome).toBe('waiting');
    await registry.update('acme', { monthlyBudgetUsd: 3.3 }); // 1.37 spent + 2 estimate > 3.3

    const end = await endJob(acc, { teamId: 'acme', jobId: 'ran' });

    expect(end.refused).toEqual(['big']);
    const failure = await tokens.wait(token).catch((e: Error) => e);
    expect(failure).toMatchObject({ name: 'InvalidInputError' });
    const info = JSON.parse(JSON.parse((failure as Error).message).errorMessage);
    expect(info).toMatchObject({ code: 'BUDGET_EXHAUSTED', message: expect.stringContaining('(limit 3.3 USD, used 1.37, this job 2)') });
  });

  it('a job cancelled while waiting leaves the queue and costs nothing; a stopped waiting execution is skipped', async () => {
    const { registry, acc } = await setup();
    await admit(registry, request('ran'));
    const gone = tokens.open();
    await admit(registry, request('stopped'), { taskToken: gone });
    const live = tokens.open();
    await admit(registry, request('queued'), { taskToken: live });

    const cancelled = await endJob(acc, { teamId: 'acme', jobId: 'queued' });
    expect(cancelled).toMatchObject({ released: true, cost: { usd: 0, gpuSeconds: 0, estimated: false } });
    expect((await registry.items('acme', 'WAIT#')).map((w) => w.jobId)).toEqual(['stopped']);

    // The execution of "stopped" already ended: its token is closed (TaskTimedOut), release goes on.
    await new SFNClient({ endpoint: tokens.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS }).send(
      new (await import('@aws-sdk/client-sfn')).SendTaskFailureCommand({ taskToken: gone, error: 'States.Aborted' }),
    );
    await tokens.wait(gone).catch(() => undefined);
    const end = await endJob(acc, { teamId: 'acme', jobId: 'ran' });
    expect(end).toMatchObject({ released: true, resumed: [] });
  });

  it('charges the admission estimate, marked estimated, when Batch cannot be read', async () => {
    const { registry, acc } = await setup();
    await admit(registry, request('ran'));
    const broken: Accounting = { ...acc, gpuJobs: async () => Promise.reject(Object.assign(new Error('Rate exceeded'), { name: 'TooManyRequestsException' })) };

    const end = await endJob(broken, { teamId: 'acme', jobId: 'ran' });

    expect(end.cost).toEqual({ usd: 2, gpuSeconds: 7200, breakdown: {}, estimated: true });
    expect((await endJob(broken, { teamId: 'acme', jobId: 'ran' })).cost).toEqual(end.cost);
    expect((await registry.get('acme'))!.usage).toMatchObject({ running: 0, spentMicroUsd: 2_000_000 });
  });
});
