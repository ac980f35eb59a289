import { afterAll, beforeAll, expect, it } from 'vitest';
import { type AdmitDeps, admitJob } from '../../lambdas/admit/handler';
import { release } from '../../lambdas/shared/admission';
import { type DatasetPlan, JobSpecSchema, StatusSchema } from '../../lambdas/shared/contract';
import { keys } from '../../lambdas/shared/keys';
import { planTraining } from '../../lambdas/shared/plan';
import { DEFAULT_PRICES, estimateJobCost } from '../../lambdas/shared/prices';
import { getJson, putJson } from '../../lambdas/shared/s3';
import { toMicroUsd } from '../../lambdas/shared/teams';
import { type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';
import { freshRegistry, team } from '../teams/helpers';

// moto serves both S3 (plan.json, status.json) and DynamoDB (the registry), DynamoDB serialised.
describeWithMoto('admit stage', () => {
  let moto: Moto;
  let deps: AdmitDeps;
  const BUCKET = 'artifacts-bucket';

  const putPlan = async (teamId: string, jobId: string, numImages: number) => {
    const spec = JobSpecSchema.parse({ token: 'ohwx', classWord: 'man' });
    const plan: DatasetPlan = {
      teamId,
      jobId,
      spec,
      plan: planTraining(spec, numImages, 512),
      outputName: 'ohwx',
      images: Array.from({ length: numImages }, (_, i) => `${i}.png`),
      userCaptions: [],
    };
    await putJson(deps.s3, BUCKET, keys.plan({ teamId, jobId }), plan);
    return plan;
  };

  beforeAll(async () => {
    moto = await startMoto({ serializeDynamoDb: true });
    await moto.createBucket(BUCKET);
    const registry = await freshRegistry(moto.endpoint);
    await registry.add(team('acme', { maxConcurrentJobs: 1, maxPhotosPerJob: 30 }));
    deps = { s3: moto.s3(), artifactsBucket: BUCKET, registry, prices: DEFAULT_PRICES };
  });
  afterAll(() => moto?.stop());

  it('admits a job and reserves the estimate computed from its plan', async () => {
    const dataset = await putPlan('acme', 'first', 20);

    const result = await admitJob({ teamId: 'acme', jobId: 'first' }, deps);

    expect(result.outcome).toBe('admitted');
    const expected = estimateJobCost(dataset.plan, team('acme').allowedInstanceTypes, DEFAULT_PRICES);
    expect((await deps.registry.get('acme'))!.usage).toMatchObject({
      running: 1,
      reservedMicroUsd: toMicroUsd(expected.usd),
      reservedGpuSeconds: expected.gpuSeconds,
    });
  });

  it('queues a job over the concurrency limit with a queued status.json carrying the code and numbers', async () => {
    await putPlan('acme', 'second', 20);

    const result = await admitJob({ teamId: 'acme', jobId: 'second' }, deps);

    expect(result).toMatchObject({ outcome: 'waiting', code: 'CONCURRENCY_LIMIT' });
    const status = StatusSchema.parse(await getJson(deps.s3, BUCKET, keys.status({ teamId: 'acme', jobId: 'second' })));
    expect(status).toMatchObject({ state: 'queued', stage: 'caption', error: { code: 'CONCURRENCY_LIMIT' } });
    expect(status.error!.message).toContain('(limit 1 jobs, used 1, this job 1)');
  });

  it('a retried invocation returns the recorded decision and reserves nothing more', async () => {
    const again = await admitJob({ teamId: 'acme', jobId: 'first' }, deps);
    expect(again).toMatchObject({ outcome: 'admitted', duplicate: true });
    expect((await deps.registry.get('acme'))!.usage.running).toBe(1);
  });

  it('rejects over the photo limit with a named error the workflow catches', async () => {
    await putPlan('acme', 'big', 31);
    await expect(admitJob({ teamId: 'acme', jobId: 'big' }, deps)).rejects.toMatchObject({
      name: 'InvalidInputError',
      code: 'PHOTO_LIMIT',
      message: expect.stringContaining('(limit 30 photos, used 0, this job 31)'),
    });
  });

  it('rejects an unregistered team and a missing plan, naming them', async () => {
    await putPlan('ghost', 'j', 20);
    await expect(admitJob({ teamId: 'ghost', jobId: 'j' }, deps)).rejects.toMatchObject({ code: 'TEAM_UNKNOWN' });
    await expect(admitJob({ teamId: 'acme', jobId: 'none' }, deps)).rejects.toMatchObject({
      code: 'MISSING_PLAN',
      input: 'teams/acme/jobs/none/normalize/plan.json',
    });
  });

  it('refuses to admit again a job that already ran and ended (JOB_ALREADY_ENDED), so it never runs unreserved', async () => {
    const registry = await freshRegistry(moto.endpoint);
    await registry.add(team('acme'));
    const local = { ...deps, registry };
    await putPlan('acme', 'done', 20);
    expect((await admitJob({ teamId: 'acme', jobId: 'done' }, local)).outcome).toBe('admitted');
    await release(registry, 'acme', 'done', { usd: 0.5, gpuSeconds: 600 });

    await expect(admitJob({ teamId: 'acme', jobId: 'done' }, local)).rejects.toMatchObject({
      code: 'JOB_ALREADY_ENDED',
      message: expect.stringContaining('under a new jobId'),
    });
    expect((await registry.get('acme'))!.usage.running).toBe(0);
  });
});
