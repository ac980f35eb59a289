/**
 * Admission in the request path, on the synthesized definition run by aws-local-stepfunctions with
 * the real Lambda handlers against moto (S3, and DynamoDB serialised as real DynamoDB's conditional
 * writes are). The Admit state's `.waitForTaskToken` is answered through the local task-token
 * endpoint by the real SDK client of the handlers. The GPU states get a stand-in (no Batch here);
 * one of them is held open to keep a slot busy, which is the only thing it fakes.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Status } from '../../lambdas/shared/contract';
import { type JobRef, keys } from '../../lambdas/shared/keys';
import { putBytes, putJson } from '../../lambdas/shared/s3';
import { readStatus } from '../../lambdas/shared/status';
import { type StateMachineDefinition, stateMachineDefinition, synthesizeTemplate } from '../../scripts/local/definition';
import { syntheticPhotos } from '../../scripts/local/demo-photos';
import { configureHandlers, type Moto, startMoto } from '../../scripts/local/moto';
import { type LocalTeams, localTeams } from '../../scripts/local/teams';
import { type BatchRunner, type RunResult, runWorkflow } from '../../scripts/local/workflow';
import { describeWithMoto } from '../helpers/suites';

const INBOX = 'adm-inbox';
const ARTIFACTS = 'adm-artifacts';

describeWithMoto('admission in the state machine, executed locally', () => {
  let moto: Moto;
  let teams: LocalTeams;
  let definition: StateMachineDefinition;
  let photos: Array<{ name: string; bytes: Buffer }>;

  beforeAll(async () => {
    moto = await startMoto({ serializeDynamoDb: true });
    await moto.createBucket(INBOX);
    await moto.createBucket(ARTIFACTS);
    configureHandlers(moto.endpoint, { inboxBucket: INBOX, artifactsBucket: ARTIFACTS, urlExpirySeconds: 600 });
    teams = await localTeams(moto.endpoint, [
      { teamId: 'solo', maxConcurrentJobs: 1 },
      { teamId: 'frozen', suspended: true },
      { teamId: 'broke', monthlyBudgetUsd: 0.01 },
    ]);
    definition = stateMachineDefinition(synthesizeTemplate());
    photos = await syntheticPhotos(12);
  });
  afterAll(async () => {
    await teams?.stop();
    await moto?.stop();
  });

  async function submit(job: JobRef): Promise<void> {
    const s3 = moto.s3();
    for (const p of photos) await putBytes(s3, INBOX, `${keys.photosPrefix(job)}${p.name}`, p.bytes, 'image/jpeg');
    await putJson(s3, INBOX, keys.spec(job), { token: 'zwxobj', classWord: 'mug', kind: 'object' });
  }

  const statusOf = (job: JobRef): Promise<Status | undefined> => readStatus(moto.s3(), ARTIFACTS, job);
  const entered = (result: RunResult) => result.events.filter((e) => e.type === 'StateEntered').map((e) => e.state);
  const until = async (what: string, check: () => Promise<boolean>) => {
    for (const deadline = Date.now() + 60_000; Date.now() < deadline; ) {
      if (await check()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`timed out waiting until ${what}`);
  };

  it("a job over its team's concurrency waits in Admit (queued, CONCURRENCY_LIMIT) and starts by itself when the slot frees", async () => {
    const first = { teamId: 'solo', jobId: 'first' };
    const second = { teamId: 'solo', jobId: 'second' };
    await submit(first);
    await submit(second);
    const log: string[] = [];
    let releaseTrain!: () => void;
    const trainHeld = new Promise<void>((r) => (releaseTrain = r));
    const batch: BatchRunner = async (stage, params) => {
      const jobId = params.ContainerOverrides!.Environment!.find((e) => e.Name === 'AVATAR_JOB_ID')!.Value;
      log.push(`${jobId}:${stage}`);
      if (jobId === 'first' && stage === 'train') await trainHeld; // keeps the team's only slot busy
      return { JobId: `${jobId}-${stage}` };
    };

    const firstRun = runWorkflow(definition, first, { batch, taskTokens: teams.taskTokens });
    await until('the first job holds the slot', async () => log.includes('first:train'));
    const secondRun = runWorkflow(definition, second, { batch, taskTokens: teams.taskTokens });
    // (normalize itself leaves a queued status for caption: wait for admission's code)
    await until('the second job is queued by admission', async () => (await statusOf(second))?.error?.code === 'CONCURRENCY_LIMIT');

    const queued = await statusOf(second);
    expect(queued).toMatchObject({ state: 'queued', stage: 'caption', error: { code: 'CONCURRENCY_LIMIT' } });
    expect(queued!.error!.message).toContain('(limit 1 jobs, used 1, this job 1)');
    expect(log.filter((l) => l.startsWith('second'))).toEqual([]);
    expect((await teams.registry.items('solo', 'WAIT#')).map((w) => w.jobId)).toEqual(['second']);

    releaseTrain();
    const [a, b] = await Promise.all([firstRun, secondRun]);

    expect(a.succeeded).toBe(true);
    expect(b.cause).toBeUndefined();
    expect(b.succeeded).toBe(true);
    // The second job's GPU stages ran only after the first job's last one: the slot was handed over.
    expect(log.indexOf('second:train')).toBeGreaterThan(log.indexOf('first:evaluate'));
    expect(entered(b)).toEqual(['CreateJobSecret', 'RegisterJobSecret', 'Validate', 'Normalize', 'Admit', 'Train', 'Evaluate', 'Finalize', 'Succeeded']);
    expect((b.output as { admit: { result: unknown } }).admit.result).toMatchObject({ outcome: 'admitted', jobId: 'second' });
    const done = await statusOf(second);
    expect(done).toMatchObject({ state: 'succeeded', stage: 'finalize' });
    // No Batch locally: the estimate is charged and the cost says so.
    expect(done!.cost).toMatchObject({ estimated: true });
    expect(done!.cost!.usd).toBeGreaterThan(0);
    const { usage } = (await teams.registry.get('solo'))!;
    expect(usage).toMatchObject({ running: 0, reservedMicroUsd: 0 });
    expect(usage.spentMicroUsd).toBe(Math.round(((await statusOf(first))!.cost!.usd + done!.cost!.usd) * 1e6));
  });

  /** Runs a job the Admit state must refuse; Batch answers any submission, which the caller expects none of. */
  const runRejected = async (job: JobRef) => {
    const batchCalls: string[] = [];
    const result = await runWorkflow(definition, job, {
      batch: async (stage) => {
        batchCalls.push(stage);
        return { JobId: stage };
      },
      taskTokens: teams.taskTokens,
    });
    return { result, batchCalls };
  };

  it("fails a suspended team's job with TEAM_SUSPENDED before any GPU state", async () => {
    const job = { teamId: 'frozen', jobId: 'j1' };
    await submit(job);
    const { result, batchCalls } = await runRejected(job);

    expect(result).toMatchObject({ succeeded: false, error: 'JobFailed' });
    expect(batchCalls).toEqual([]);
    expect(entered(result)).toEqual(['CreateJobSecret', 'RegisterJobSecret', 'Validate', 'Normalize', 'Admit', 'MarkFailed', 'Failed']);
    expect(await statusOf(job)).toMatchObject({
      state: 'failed',
      stage: 'caption',
      error: { code: 'TEAM_SUSPENDED', message: 'team "frozen" is suspended: ask the operator to resume it' },
      cost: { usd: 0, gpuSeconds: 0, estimated: false },
    });
  });

  it("fails a job over its team's budget with BUDGET_EXHAUSTED and the numbers, reserving nothing", async () => {
    const job = { teamId: 'broke', jobId: 'j1' };
    await submit(job);
    const { result, batchCalls } = await runRejected(job);

    expect(result.succeeded).toBe(false);
    expect(batchCalls).toEqual([]);
    const status = await statusOf(job);
    expect(status).toMatchObject({ state: 'failed', stage: 'caption', error: { code: 'BUDGET_EXHAUSTED' } });
    expect(status!.error!.message).toMatch(
      /^team "broke" has committed \$0\.00 of its \$0\.01 monthly budget; this job's estimate of \$\d+\.\d\d does not fit \(limit 0\.01 USD, used 0, this job \d+(\.\d+)?\)$/,
    );
    expect((await teams.registry.get('broke'))!.usage).toMatchObject({ running: 0, reservedMicroUsd: 0, committedMicroUsd: 0 });
  });
});
