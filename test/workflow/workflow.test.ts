/**
 * The synthesized state machine definition executed locally (aws-local-stepfunctions) with the real
 * Lambda handlers against moto's S3. The Batch states get a stand-in that does, at the S3 boundary,
 * what each GPU container does (the containers' own tests run their code); it is also how faults
 * that cannot be caused here for real (a Batch API throttle, a failed GPU job) are injected.
 */
import { createHash } from 'node:crypto';
import { CreateStateMachineCommand, ListExecutionsCommand, SFNClient } from '@aws-sdk/client-sfn';
import { GetCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { secretKey } from '../../lambdas/mint/handler';
import { type DatasetPlan, DatasetPlanSchema, ManifestSchema, type Status } from '../../lambdas/shared/contract';
import { lambdaMint } from '../../lambdas/shared/credentials';
import { type JobRef, keys } from '../../lambdas/shared/keys';
import { getJson, getValidJson, listAll, putBytes, putJson } from '../../lambdas/shared/s3';
import { readStatus } from '../../lambdas/shared/status';
import { teamsDocumentClient } from '../../lambdas/shared/teams';
import { start } from '../../lambdas/start/handler';
import { type StateMachineDefinition, stateMachineDefinition, synthesizeTemplate } from '../../scripts/local/definition';
import { syntheticPhotos } from '../../scripts/local/demo-photos';
import { noGpuRunner } from '../../scripts/local/gpu';
import { startLocalMint } from '../../scripts/local/mint';
import { configureHandlers, LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../../scripts/local/moto';
import { type LocalTeams, localTeams } from '../../scripts/local/teams';
import { BatchJobFailed, type BatchRunner, inProcessLambda, type LambdaRunner, type RunResult, runWorkflow } from '../../scripts/local/workflow';
import { describeWithMoto } from '../helpers/suites';

const INBOX = 'wf-inbox';
const ARTIFACTS = 'wf-artifacts';

describeWithMoto('state machine, executed locally', () => {
  let moto: Moto;
  let teams: LocalTeams;
  let definition: StateMachineDefinition;
  let photos: Array<{ name: string; bytes: Buffer }>;

  beforeAll(async () => {
    moto = await startMoto();
    await moto.createBucket(INBOX);
    await moto.createBucket(ARTIFACTS);
    configureHandlers(moto.endpoint, { inboxBucket: INBOX, artifactsBucket: ARTIFACTS, urlExpirySeconds: 600 });
    teams = await localTeams(moto.endpoint, ['team-a', 'team-b']);
    definition = stateMachineDefinition(synthesizeTemplate());
    photos = await syntheticPhotos(12);
  });
  afterAll(async () => {
    await teams?.stop();
    await moto?.stop();
  });

  async function submit(job: JobRef, spec: unknown = { token: 'zwxobj', classWord: 'mug', kind: 'object' }): Promise<void> {
    const s3 = moto.s3();
    for (const p of photos) await putBytes(s3, INBOX, `${keys.photosPrefix(job)}${p.name}`, p.bytes, 'image/jpeg');
    await putJson(s3, INBOX, keys.spec(job), spec);
  }

  /** The AVATAR_JOB_SECRET each GPU job was submitted with, by `<team>/<job>/<stage>`. */
  const gpuSecrets = new Map<string, string | undefined>();

  /** What the GPU containers write, at the S3 boundary, for a job whose plan.json exists. */
  const gpuStandIn: BatchRunner = async (stage, params) => {
    const env = Object.fromEntries((params.ContainerOverrides?.Environment ?? []).map((e) => [e.Name, e.Value]));
    const job = { teamId: env.AVATAR_TEAM_ID, jobId: env.AVATAR_JOB_ID };
    gpuSecrets.set(`${job.teamId}/${job.jobId}/${stage}`, env.AVATAR_JOB_SECRET);
    const s3 = moto.s3();
    const plan: DatasetPlan = await getValidJson(s3, ARTIFACTS, keys.plan(job), DatasetPlanSchema);
    const dir = keys.stage(job, stage as 'train');
    if (stage === 'train') {
      // One GPU job: the caption stage, then the train stage.
      const captions = keys.stage(job, 'caption');
      for (const image of plan.images)
        await putBytes(s3, ARTIFACTS, `${captions}${plan.plan.folder}/${image.replace(/\.png$/, '.txt')}`, `photo of ${plan.spec.token}, a mug`, 'text/plain');
      await putJson(s3, ARTIFACTS, `${captions}captions.json`, {});
      for (let epoch = 1; epoch < plan.plan.epochs; epoch++)
        await putBytes(s3, ARTIFACTS, `${dir}${plan.outputName}-${String(epoch).padStart(6, '0')}.safetensors`, `epoch ${epoch}`, 'application/octet-stream');
      await putBytes(s3, ARTIFACTS, `${dir}${plan.outputName}.safetensors`, 'final', 'application/octet-stream');
    } else {
      await putBytes(s3, ARTIFACTS, `${dir}grid.png`, 'grid', 'image/png');
    }
    return { JobId: `${stage}-job` };
  };

  const statusOf = async (job: JobRef): Promise<Status | undefined> => readStatus(moto.s3(), ARTIFACTS, job);
  const entered = (result: RunResult) => result.events.filter((e) => e.type === 'StateEntered').map((e) => e.state);
  const retried = (result: RunResult) => result.events.filter((e) => e.type === 'StateRetried').map((e) => e.state);

  it('runs validate -> normalize -> caption+train (one GPU job) -> evaluate -> finalize and marks the job succeeded', async () => {
    const job = { teamId: 'team-a', jobId: 'happy' };
    await submit(job);

    const result = await runWorkflow(definition, job, { taskTokens: teams.taskTokens, batch: gpuStandIn });

    expect(result.cause).toBeUndefined();
    expect(result.succeeded).toBe(true);
    expect(entered(result)).toEqual(expect.arrayContaining(['Validate', 'Normalize', 'Admit', 'Train', 'Evaluate', 'Finalize']));
    expect(entered(result)).not.toContain('Caption');
    expect(entered(result)).not.toContain('MarkFailed');
    expect(await statusOf(job)).toMatchObject({ state: 'succeeded', stage: 'finalize' });
    const manifest = ManifestSchema.parse(await getJson(moto.s3(), ARTIFACTS, keys.manifest(job)));
    const names = manifest.artifacts.map((a) => a.name);
    expect(names).toEqual(expect.arrayContaining(['validate/report.json', 'normalize/plan.json', 'train/zwxobj.safetensors', 'evaluate/grid.png']));
    expect(names.filter((n) => /^normalize\/\d+_zwxobj\/.*\.png$/.test(n))).toHaveLength(12);
    // Each GPU job got its own stage secret, and the state machine registered the SHA-256 of each (mint checks it).
    const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
    const train = gpuSecrets.get('team-a/happy/train')!;
    const evaluate = gpuSecrets.get('team-a/happy/evaluate')!;
    expect(train).toMatch(/^[0-9a-f-]{36}$/);
    expect(evaluate).toMatch(/^[0-9a-f-]{36}$/);
    expect(evaluate).not.toBe(train);
    const registry = teamsDocumentClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    const { Item } = await registry.send(new GetCommand({ TableName: process.env.TEAMS_TABLE, Key: secretKey('team-a', 'happy') }));
    expect(Item?.stageSecrets).toMatchObject({ train: sha256(train), evaluate: sha256(evaluate) });
    expect(Object.keys(Item?.stageSecrets ?? {}).sort()).toEqual(['admit', 'evaluate', 'finalize', 'mark-failed', 'normalize', 'train', 'validate']);
    // Stage secrets are not the team's to see: status.json and the manifest never carry them.
    expect(JSON.stringify(await statusOf(job))).not.toContain(train);
    expect(JSON.stringify(manifest)).not.toContain(evaluate);
  });

  it('with mint configured, each stage gets its S3 credentials from mint for its own stage secret only', async () => {
    const job = { teamId: 'team-b', jobId: 'minted' };
    await submit(job);
    const local = await startLocalMint({ endpoint: moto.endpoint, tableName: process.env.TEAMS_TABLE!, buckets: { inbox: INBOX, artifacts: ARTIFACTS } });
    Object.assign(process.env, local.env);
    try {
      const result = await runWorkflow(definition, job, { taskTokens: teams.taskTokens, batch: gpuStandIn });

      expect(result.cause).toBeUndefined();
      expect(result.succeeded).toBe(true);
      // The Lambda stages minted with the secrets the state machine registered, each its own.
      expect(local.invocations.map((i) => [i.stage, i.teamId, i.jobId])).toEqual(
        ['validate', 'normalize', 'admit', 'finalize'].map((stage) => [stage, 'team-b', 'minted']),
      );
      expect(new Set(local.invocations.map((i) => i.secret)).size).toBe(4);
      // What the train GPU job was given mints train's credentials, and no other stage's.
      const mint = lambdaMint(local.env.MINT_FUNCTION);
      const secret = gpuSecrets.get('team-b/minted/train')!;
      expect((await mint({ stage: 'train', ...job, secret })).sessionToken).toBeTruthy();
      await expect(mint({ stage: 'evaluate', ...job, secret })).rejects.toMatchObject({ name: 'MintRefused' });
      await expect(mint({ stage: 'train', teamId: 'team-a', jobId: 'minted', secret })).rejects.toMatchObject({ name: 'MintRefused' });
    } finally {
      delete process.env.MINT_FUNCTION;
      await local.stop();
    }
  });

  it('retries a transient Batch failure and then succeeds', async () => {
    const job = { teamId: 'team-a', jobId: 'batch-throttled' };
    await submit(job);
    let calls = 0;
    const flaky: BatchRunner = async (stage, params) => {
      if (stage === 'train' && calls++ === 0) {
        throw Object.assign(new Error('Rate exceeded'), { name: 'Batch.AWSBatchException' });
      }
      return gpuStandIn(stage, params);
    };

    const result = await runWorkflow(definition, job, { taskTokens: teams.taskTokens, batch: flaky });

    expect(result.succeeded).toBe(true);
    expect(retried(result)).toEqual(['Train']);
    expect(await statusOf(job)).toMatchObject({ state: 'succeeded' });
  });

  it('retries a throttled Lambda invocation', async () => {
    const job = { teamId: 'team-a', jobId: 'lambda-throttled' };
    await submit(job);
    let thrown = false;
    const throttled: LambdaRunner = async (stage, payload) => {
      if (stage === 'normalize' && !thrown) {
        thrown = true;
        throw Object.assign(new Error('{"errorMessage":"Rate exceeded"}'), { name: 'Lambda.TooManyRequestsException' });
      }
      return inProcessLambda(stage, payload);
    };

    const result = await runWorkflow(definition, job, { taskTokens: teams.taskTokens, batch: gpuStandIn, lambda: throttled });

    expect(result.succeeded).toBe(true);
    expect(retried(result)).toEqual(['Normalize']);
  });

  it('ends a permanent GPU job failure in MarkFailed with status.json failed, without retrying it', async () => {
    const job = { teamId: 'team-a', jobId: 'train-oom' };
    await submit(job);
    const failing: BatchRunner = async (stage, params) => {
      if (stage === 'train') {
        throw new BatchJobFailed({ JobName: params.JobName, StatusReason: 'Essential container in task exited', Attempts: [{ Container: { ExitCode: 1 } }] });
      }
      return gpuStandIn(stage, params);
    };

    const result = await runWorkflow(definition, job, { taskTokens: teams.taskTokens, batch: failing });

    expect(result.succeeded).toBe(false);
    expect(result.error).toBe('JobFailed');
    expect(retried(result)).toEqual([]);
    expect(entered(result)).toEqual(['CreateJobSecret', 'RegisterJobSecret', 'Validate', 'Normalize', 'Admit', 'Train', 'MarkFailed', 'Failed']);
    const status = await statusOf(job);
    expect(status).toMatchObject({ state: 'failed', stage: 'train', error: { code: 'BATCH_JOB_FAILED' } });
    expect(status?.error?.message).toContain('exit code 1');
    expect(status?.finishedAt).toBeDefined();
  });

  it('fails a job with an invalid job.json at Validate, naming the field, with no GPU stage run', async () => {
    const job = { teamId: 'team-a', jobId: 'bad-spec' };
    await submit(job, { token: 'zwxobj', classWord: 'mug', kind: 'object', learningRate: 0.1 });
    const batchCalls: string[] = [];

    const result = await runWorkflow(definition, job, {
      taskTokens: teams.taskTokens,
      batch: async (stage, params) => {
        batchCalls.push(stage);
        return gpuStandIn(stage, params);
      },
    });

    expect(result.succeeded).toBe(false);
    expect(batchCalls).toEqual([]);
    const status = await statusOf(job);
    expect(status).toMatchObject({ state: 'failed', stage: 'validate', error: { code: 'INVALID_JOB_SPEC', input: 'teams/team-a/jobs/bad-spec/job.json' } });
    expect(status?.error?.message).toContain('"learningRate"');
    expect(retried(result)).toEqual([]);
  });

  it('stops before captioning on a machine without a GPU, saying so in status.json', async () => {
    const job = { teamId: 'team-a', jobId: 'no-gpu' };
    await submit(job);

    const result = await runWorkflow(definition, job, {
      taskTokens: teams.taskTokens,
      batch: noGpuRunner({ ok: false, reason: 'no Docker engine is running on this machine' }),
    });

    expect(result.succeeded).toBe(false);
    const status = await statusOf(job);
    expect(status).toMatchObject({ state: 'failed', stage: 'train', error: { code: 'GPU_UNAVAILABLE' } });
    expect(status?.error?.message).toContain('no Docker engine');
    expect(status?.error?.message).toContain('npx cdk deploy');
    const written = (await listAll(moto.s3(), ARTIFACTS, keys.stage(job, 'normalize'))).map((o) => o.key);
    expect(written).toContain(keys.plan(job));
  });

  it('starts one execution for a duplicated trigger event', async () => {
    const job = { teamId: 'team-b', jobId: 'dup' };
    await submit(job);
    const sfn = new SFNClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    const machine = await sfn.send(
      new CreateStateMachineCommand({ name: 'avatar-dup', roleArn: 'arn:aws:iam::123456789012:role/x', definition: JSON.stringify(definition) }),
    );
    const deps = { s3: moto.s3(), sfn, inboxBucket: INBOX, artifactsBucket: ARTIFACTS, stateMachineArn: machine.stateMachineArn!, now: () => new Date() };
    const event = { 'detail-type': 'Object Created', source: 'aws.s3', detail: { bucket: { name: INBOX }, object: { key: keys.spec(job) } } };

    const first = await start(event, deps);
    const second = await start(event, deps);

    expect(first.duplicate).toBe(false);
    expect(second.duplicate).toBe(true);
    const executions = await sfn.send(new ListExecutionsCommand({ stateMachineArn: machine.stateMachineArn }));
    expect(executions.executions?.map((e) => e.name)).toEqual(['team-b_dup']);
  });
});
