import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { admit, admitWaiting, release } from '../../lambdas/shared/admission';
import { DEFAULT_PRICES, estimateJobCost } from '../../lambdas/shared/prices';
import type { TeamRegistry } from '../../lambdas/shared/teams';
import { type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';
import { admissionRequest, freshRegistry, team } from './helpers';

const request = admissionRequest;

// Against moto's DynamoDB: transactions with condition expressions are emulated (all-or-nothing,
// cancellation on a failed condition). moto is not atomic under concurrent requests, so its DynamoDB
// requests are serialised (scripts/local/moto_serial.py) as real DynamoDB's conditional writes are;
// real TransactionConflict errors are therefore not produced here (the code retries them like a
// failed condition).
describeWithMoto('admission', () => {
  let moto: Moto;
  beforeAll(async () => {
    moto = await startMoto({ serializeDynamoDb: true });
  });
  afterAll(() => moto?.stop());

  const setup = async (config = team('acme', { maxConcurrentJobs: 2, monthlyBudgetUsd: 100 })): Promise<TeamRegistry> => {
    const registry = await freshRegistry(moto.endpoint);
    await registry.add(config);
    return registry;
  };

  it('admits up to the concurrency limit, then queues with CONCURRENCY_LIMIT and the numbers', async () => {
    const registry = await setup();
    expect((await admit(registry, request('acme', 'j1'))).outcome).toBe('admitted');
    expect((await admit(registry, request('acme', 'j2'))).outcome).toBe('admitted');

    const third = await admit(registry, request('acme', 'j3'));

    expect(third).toMatchObject({ outcome: 'waiting', code: 'CONCURRENCY_LIMIT', limit: 2, used: 2, estimate: 1, unit: 'jobs', duplicate: false });
    const { usage } = (await registry.get('acme'))!;
    expect(usage).toMatchObject({ running: 2, reservedMicroUsd: 3_000_000, committedMicroUsd: 3_000_000, reservedGpuSeconds: 3600 });
    expect((await registry.items('acme', 'WAIT#')).map((w) => w.jobId)).toEqual(['j3']);
  });

  it('a released slot admits the oldest waiting job, and charges the actual cost instead of the estimate', async () => {
    let clock = Date.parse('2026-12-02T10:00:00Z');
    const registry = await freshRegistry(moto.endpoint, () => {
      clock += 1000;
      return new Date(clock);
    });
    await registry.add(team('acme', { maxConcurrentJobs: 1 }));
    await admit(registry, request('acme', 'first'));
    for (const id of ['w1', 'w2', 'w3']) expect((await admit(registry, request('acme', id))).outcome).toBe('waiting');

    const freed = await release(registry, 'acme', 'first', { usd: 0.75, gpuSeconds: 1000 });

    expect(freed.released).toBe(true);
    expect(freed.admitted.map((a) => a.jobId)).toEqual(['w1']);
    expect((await registry.items('acme', 'WAIT#')).map((w) => w.jobId)).toEqual(['w2', 'w3']);
    const { usage } = (await registry.get('acme'))!;
    // first: 1.5 reserved -> 0.75 spent; w1: 1.5 reserved.
    expect(usage).toMatchObject({
      running: 1,
      spentMicroUsd: 750_000,
      reservedMicroUsd: 1_500_000,
      committedMicroUsd: 2_250_000,
      spentGpuSeconds: 1000,
      reservedGpuSeconds: 1800,
    });
    expect((await admit(registry, request('acme', 'w1'))).outcome).toBe('admitted');
  });

  it('a duplicate event neither reserves twice nor changes the decision', async () => {
    const registry = await setup();
    const first = await admit(registry, request('acme', 'dup'));

    const again = await Promise.all([admit(registry, request('acme', 'dup')), admit(registry, request('acme', 'dup'))]);

    expect(again.map((a) => [a.outcome, a.duplicate])).toEqual([
      ['admitted', true],
      ['admitted', true],
    ]);
    expect(first.duplicate).toBe(false);
    expect((await registry.get('acme'))!.usage).toMatchObject({ running: 1, reservedMicroUsd: 1_500_000 });
  });

  it('release is idempotent: a second release of the same job changes nothing', async () => {
    const registry = await setup();
    await admit(registry, request('acme', 'j1'));
    await release(registry, 'acme', 'j1', { usd: 1, gpuSeconds: 900 });

    const again = await release(registry, 'acme', 'j1', { usd: 1, gpuSeconds: 900 });

    expect(again.released).toBe(false);
    expect((await registry.get('acme'))!.usage).toMatchObject({
      running: 0,
      spentMicroUsd: 1_000_000,
      reservedMicroUsd: 0,
      committedMicroUsd: 1_000_000,
      spentGpuSeconds: 900,
    });
  });

  it('cancelling a waiting job takes it off the queue without touching the counters', async () => {
    const registry = await setup(team('acme', { maxConcurrentJobs: 1 }));
    await admit(registry, request('acme', 'run'));
    await admit(registry, request('acme', 'wait'));

    const cancelled = await release(registry, 'acme', 'wait');

    expect(cancelled).toEqual({ released: true, admitted: [], rejected: [] });
    expect(await registry.items('acme', 'WAIT#')).toEqual([]);
    expect((await registry.get('acme'))!.usage).toMatchObject({ running: 1, reservedMicroUsd: 1_500_000 });
    // The freed slot of `run` finds no one waiting.
    expect((await release(registry, 'acme', 'run')).admitted).toEqual([]);
  });

  it('refuses a job whose estimate does not fit the month-to-date budget: BUDGET_EXHAUSTED with limit, used and estimate', async () => {
    const registry = await setup(team('acme', { maxConcurrentJobs: 5, monthlyBudgetUsd: 4 }));
    await admit(registry, request('acme', 'a'));
    await admit(registry, request('acme', 'b'));

    const third = await admit(registry, request('acme', 'c'));

    expect(third).toMatchObject({ outcome: 'rejected', code: 'BUDGET_EXHAUSTED', limit: 4, used: 3, estimate: 1.5, unit: 'USD' });
    expect((await registry.get('acme'))!.usage).toMatchObject({ running: 2, committedMicroUsd: 3_000_000 });
    // A terminal decision is recorded: the duplicate event gets the same answer.
    expect(await admit(registry, request('acme', 'c'))).toMatchObject({ code: 'BUDGET_EXHAUSTED', duplicate: true });
  });

  it('refuses on the GPU-hour budget too', async () => {
    const registry = await setup(team('acme', { monthlyGpuHours: 0.75 }));
    expect((await admit(registry, request('acme', 'a'))).outcome).toBe('admitted');

    const r = await admit(registry, request('acme', 'b'));

    expect(r).toMatchObject({ outcome: 'rejected', code: 'BUDGET_EXHAUSTED', unit: 'GPU hours', limit: 0.75, used: 0.5, estimate: 0.5 });
  });

  it('a waiting job that no longer fits the budget when a slot frees is rejected, and the next one is admitted', async () => {
    const registry = await setup(team('acme', { maxConcurrentJobs: 1, monthlyBudgetUsd: 3 }));
    await admit(registry, request('acme', 'run', { estimate: { usd: 1, gpuSeconds: 60 } }));
    // Both fit the estimate of `run` (1 + 1 and 1 + 0.5 <= 3) and wait for its slot.
    expect((await admit(registry, request('acme', 'big', { estimate: { usd: 1, gpuSeconds: 60 } }))).outcome).toBe('waiting');
    expect((await admit(registry, request('acme', 'small', { estimate: { usd: 0.5, gpuSeconds: 60 } }))).outcome).toBe('waiting');

    // `run` cost more than estimated: 2.5 spent leaves room for 0.5, not 1.
    const freed = await release(registry, 'acme', 'run', { usd: 2.5, gpuSeconds: 60 });

    expect(freed.rejected).toEqual([expect.objectContaining({ jobId: 'big', code: 'BUDGET_EXHAUSTED', limit: 3, used: 2.5, estimate: 1 })]);
    expect(freed.admitted.map((a) => a.jobId)).toEqual(['small']);
    expect(await admit(registry, request('acme', 'big'))).toMatchObject({ outcome: 'rejected', code: 'BUDGET_EXHAUSTED', duplicate: true });
  });

  it('codes TEAM_UNKNOWN (writing nothing), TEAM_SUSPENDED, PHOTO_LIMIT, KIND_NOT_ALLOWED and OPTION_NOT_ALLOWED', async () => {
    const registry = await setup(team('acme', { maxPhotosPerJob: 30, allowedKinds: ['character'], allowedOptimizers: ['AdamW8bit'], maxTargetSteps: 2000 }));
    await registry.add(team('frozen', { suspended: true }));

    expect(await admit(registry, request('nobody', 'j'))).toMatchObject({ outcome: 'rejected', code: 'TEAM_UNKNOWN' });
    expect(await registry.items('nobody', 'JOB#')).toEqual([]);
    expect(await admit(registry, request('frozen', 'j'))).toMatchObject({ outcome: 'rejected', code: 'TEAM_SUSPENDED' });
    expect(await admit(registry, request('acme', 'p', { photos: 31 }))).toMatchObject({ code: 'PHOTO_LIMIT', limit: 30, estimate: 31, unit: 'photos' });
    expect(await admit(registry, request('acme', 'k', { kind: 'style' }))).toMatchObject({ code: 'KIND_NOT_ALLOWED' });
    expect((await admit(registry, request('acme', 'o', { optimizer: 'Prodigy' }))).message).toMatch(/training\.optimizer "Prodigy" is not allowed/);
    expect(await admit(registry, request('acme', 's', { targetSteps: 2500 }))).toMatchObject({ code: 'OPTION_NOT_ALLOWED' });
    expect((await registry.get('acme'))!.usage.running).toBe(0);
  });

  it('20 simultaneous submissions against a limit of 3 admit exactly 3 and queue 17', async () => {
    const registry = await setup(team('acme', { maxConcurrentJobs: 3 }));

    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => admit(registry, request('acme', `j${i}`))));

    expect(results.filter((r) => r.outcome === 'admitted')).toHaveLength(3);
    expect(results.filter((r) => r.code === 'CONCURRENCY_LIMIT')).toHaveLength(17);
    expect((await registry.get('acme'))!.usage).toMatchObject({ running: 3, reservedMicroUsd: 4_500_000 });
    expect(await registry.items('acme', 'WAIT#')).toHaveLength(17);
  });

  it('a resumed team admits its waiting jobs (admitWaiting), a suspended one keeps them waiting', async () => {
    const registry = await setup(team('acme', { maxConcurrentJobs: 1 }));
    await admit(registry, request('acme', 'run'));
    await admit(registry, request('acme', 'next'));
    await registry.update('acme', { suspended: true });
    expect((await release(registry, 'acme', 'run')).admitted).toEqual([]);

    await registry.update('acme', { suspended: false });
    const woken = await admitWaiting(registry, 'acme');

    expect(woken.admitted.map((a) => a.jobId)).toEqual(['next']);
  });

  it('a new month starts from zero spend; reservations of running jobs carry over', async () => {
    let now = new Date('2026-11-30T23:00:00Z');
    const registry = await freshRegistry(moto.endpoint, () => now);
    await registry.add(team('acme', { maxConcurrentJobs: 5, monthlyBudgetUsd: 3 }));
    await admit(registry, request('acme', 'a'));
    await release(registry, 'acme', 'a', { usd: 1.5, gpuSeconds: 1800 });
    await admit(registry, request('acme', 'b'));
    expect((await admit(registry, request('acme', 'c'))).code).toBe('BUDGET_EXHAUSTED');

    now = new Date('2026-12-01T00:30:00Z');
    const c2 = await admit(registry, request('acme', 'c2'));

    expect(c2.outcome).toBe('admitted');
    expect((await registry.get('acme'))!.usage).toMatchObject({
      usageMonth: '2026-12',
      spentMicroUsd: 0,
      reservedMicroUsd: 3_000_000,
      committedMicroUsd: 3_000_000,
      running: 2,
    });
  });
});

describe('estimateJobCost', () => {
  it('prices every GPU second at the dearest allowed instance on demand, plus Lambda and storage', () => {
    const plan = { numImages: 20, totalSteps: 1875, epochs: 10, resolution: 512 as const };

    const estimate = estimateJobCost(plan, ['g5.xlarge', 'g5.2xlarge'], DEFAULT_PRICES);

    // GPU: 3 x 240 + 20 x 2 + 1875 x 0.45 + 10 x 60 = 720 + 40 + 843.75 + 600 = 2203.75 -> 2204 s
    // 2204 / 3600 x 1.212 = 0.742013333; Lambda 20 x 1.5 x 0.0000166667 = 0.000500001;
    // storage (0.2 + 1.5) x 0.023 = 0.0391; total 0.781613334 -> 0.781614 (rounded up)
    expect(estimate).toMatchObject({ gpuSeconds: 2204, pricedInstanceType: 'g5.2xlarge', usd: 0.781614, lambdaUsd: 0.000501, storageUsd: 0.0391 });
  });

  it('names an instance type without a price', () => {
    expect(() => estimateJobCost({ numImages: 1, totalSteps: 100, epochs: 5, resolution: 768 }, ['g6e.xlarge'], DEFAULT_PRICES)).toThrow(
      /no price configured for instance type g6e\.xlarge/,
    );
  });
});
