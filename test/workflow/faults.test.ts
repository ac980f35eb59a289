/**
 * Fault injection through the local harness (issue 8, item 7): the synthesized state machine runs
 * locally, the Lambda stages run their handlers against moto's S3, and the GPU stages go through the
 * Batch emulator (scripts/local/batch.ts), which applies the job definitions' own retry strategies
 * and the queue's job-state time limits from the template. Every test ends with the terminal
 * status.json the issue asks for, no Batch job or container process left running, and no orphaned
 * object (see {@link orphans}).
 *
 * What is simulated, because it cannot be caused on this machine: a Spot reclaim (the emulator
 * stops the container the way ECS does, with or without Spot draining as the launch template's
 * user data says), an image pull failure and a GPU capacity shortage (the emulator writes the job
 * record Batch writes for them). Everything else is real: the GPU job's entrypoint
 * (`python -m avatar_job caption train`: the captioner with the tiny BLIP of its tests, then the
 * trainer with the kohya stand-in of its tests), signals, S3, the handlers, and admission (the
 * Admit state's task token answered through the local task-token endpoint, the team registry in
 * moto's DynamoDB).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListMultipartUploadsCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type Status, StatusSchema } from '../../lambdas/shared/contract';
import { type JobRef, keys } from '../../lambdas/shared/keys';
import { getJson, listAll, putBytes, putJson } from '../../lambdas/shared/s3';
import { writeStatus } from '../../lambdas/shared/status';
import { start } from '../../lambdas/start/handler';
import {
  type AttemptFault,
  BATCH_REASONS,
  BatchEmulator,
  type Container,
  type ContainerLauncher,
  functionContainer,
  processContainer,
} from '../../scripts/local/batch';
import { type StateMachineDefinition, stateMachineDefinition, synthesizeTemplate } from '../../scripts/local/definition';
import { syntheticPhotos } from '../../scripts/local/demo-photos';
import { configureHandlers, type Moto, startMoto } from '../../scripts/local/moto';
import { LocalStepFunctions } from '../../scripts/local/sfn';
import { gpuStandIn } from '../../scripts/local/standins';
import { type LocalTeams, localTeams } from '../../scripts/local/teams';
import { inProcessLambda, type LambdaRunner, type RunResult, runWorkflow } from '../../scripts/local/workflow';
import { uploadBaseModel } from '../helpers/base-model';
import { availability, describeWithMoto } from '../helpers/suites';

const ROOT = join(__dirname, '..', '..');
const PYTHON = join(ROOT, '.venv', 'bin', 'python');
const INBOX = 'faults-inbox';
const ARTIFACTS = 'faults-artifacts';
/** The reconcile Lambda (issue 8 item 2) that turns TIMED_OUT/ABORTED/FAILED executions into a terminal status. */
const RECONCILE = join(ROOT, 'lambdas', 'reconcile', 'handler.ts');
/** Written last into a resume state folder by the trainer, once its upload is verified (containers/trainer/src/trainer/train.py). */
const STATE_MARKER = '.complete.json';

type Template = ReturnType<typeof synthesizeTemplate>;

describeWithMoto('fault injection through the local harness', () => {
  let moto: Moto;
  let teams: LocalTeams;
  let template: Template;
  let definition: StateMachineDefinition;
  let photos: Array<{ name: string; bytes: Buffer }>;
  let work: string;

  beforeAll(async () => {
    // DynamoDB serialised as real DynamoDB's conditional writes are: the concurrent S3 events test admits concurrently.
    moto = await startMoto({ serializeDynamoDb: true });
    await moto.createBucket(INBOX);
    await moto.createBucket(ARTIFACTS);
    configureHandlers(moto.endpoint, { inboxBucket: INBOX, artifactsBucket: ARTIFACTS, urlExpirySeconds: 600 });
    teams = await localTeams(moto.endpoint, ['team-f']);
    template = synthesizeTemplate();
    definition = stateMachineDefinition(template);
    // The smallest set an object job accepts (10), at a size the intake accepts (short side >= 384).
    photos = await syntheticPhotos(10, 512);
    work = mkdtempSync(join(tmpdir(), 'avatar-faults-'));
    await uploadBaseModel(moto.s3(), ARTIFACTS);
    // The captioner's tiny BLIP (its tests' fixture, built from code: no weights are downloaded).
    if (existsSync(PYTHON)) {
      const blip = spawnSync(
        PYTHON,
        ['-c', 'import sys, pathlib; from tiny_blip import save_tiny_blip; save_tiny_blip(pathlib.Path(sys.argv[1]))', join(work, 'blip')],
        {
          encoding: 'utf8',
          env: { ...process.env, PYTHONPATH: join(ROOT, 'containers/captioner/tests') },
        },
      );
      expect(blip.status, blip.stderr).toBe(0);
    }
  }, 120_000);
  afterAll(async () => {
    await teams?.stop();
    await moto?.stop();
  });

  const SPEC = { token: 'zwxmug', classWord: 'mug', kind: 'object', training: { network: 'lora', networkDim: 8, networkAlpha: 8, repeats: 1, epochs: 3 } };

  async function upload(job: JobRef, spec: unknown = SPEC): Promise<void> {
    const s3 = moto.s3();
    for (const p of photos) await putBytes(s3, INBOX, `${keys.photosPrefix(job)}${p.name}`, p.bytes, 'image/jpeg');
    await putJson(s3, INBOX, keys.spec(job), spec);
  }

  const standIn = () => gpuStandIn({ s3: () => moto.s3(), artifactsBucket: ARTIFACTS });
  const batchEnv = {
    AVATAR_INBOX_BUCKET: INBOX,
    AVATAR_ARTIFACTS_BUCKET: ARTIFACTS,
    AWS_ENDPOINT_URL_S3: '',
    AWS_ACCESS_KEY_ID: 'testing',
    AWS_SECRET_ACCESS_KEY: 'testing',
    AWS_DEFAULT_REGION: 'us-east-1',
  };
  const emulator = (
    launch: ContainerLauncher,
    faults?: (job: { stage: string; attempt: number }) => AttemptFault | undefined,
    extra: { msPerTemplateSecond?: number; stopTimeoutMs?: number } = {},
  ) =>
    new BatchEmulator(template, {
      launch,
      faults,
      env: { ...batchEnv, AWS_ENDPOINT_URL_S3: moto.endpoint },
      stopTimeoutMs: extra.stopTimeoutMs ?? 5_000,
      msPerTemplateSecond: extra.msPerTemplateSecond,
    });

  /** The real `python -m avatar_job caption train` (captioner, then trainer) for train; the S3-boundary stand-in for evaluate. */
  function trainerLauncher(
    kohyaEnv: Record<string, string>,
    evaluate: ContainerLauncher = functionContainer(standIn()),
  ): { launch: ContainerLauncher; argsLog: string } {
    const argsLog = join(mkdtempSync(join(work, 'args-')), 'kohya-args.jsonl');
    const trainer = processContainer({
      python: PYTHON,
      env: (spec) => ({
        // The one GPU image: both stage packages and the shared runtime.
        PYTHONPATH: ['common', 'captioner', 'trainer'].map((p) => join(ROOT, 'containers', p, 'src')).join(':'),
        AVATAR_BLIP_MODEL_DIR: join(work, 'blip'),
        // Each attempt starts on a fresh host: nothing carries over but S3.
        AVATAR_CACHE_DIR: mkdtempSync(join(work, `cache-${spec.attempt}-`)),
        AVATAR_WORK_DIR: mkdtempSync(join(work, `train-${spec.attempt}-`)),
        AVATAR_KOHYA_CMD: `${PYTHON} ${join(ROOT, 'containers/trainer/tests/fake_kohya.py')}`,
        FAKE_KOHYA_ARGS_LOG: argsLog,
        ...kohyaEnv,
      }),
    });
    return { launch: (spec) => (spec.stage === 'train' ? trainer(spec) : evaluate(spec)), argsLog };
  }

  const statusOf = async (job: JobRef): Promise<Status> => StatusSchema.parse(await getJson(moto.s3(), ARTIFACTS, keys.status(job)));
  const entered = (result: RunResult) => result.events.filter((e) => e.type === 'StateEntered').map((e) => e.state);

  /**
   * Orphaned objects, by this definition:
   * - any object outside `teams/<t>/jobs/<j>/` of a job (the operator's `models/` excepted), in either bucket;
   * - a resume state folder (`train/state/<name>/`) whose upload never finished: no
   *   `.complete.json` (the trainer writes it last, after verifying the upload), or files that differ
   *   from the sizes it lists, or files it does not list; or more than the one newest folder (the
   *   trainer keeps only the newest state);
   * - an unfinished multipart upload (bytes stored and billed, but no object).
   */
  async function orphans(): Promise<string[]> {
    const s3 = moto.s3();
    const found: string[] = [];
    for (const bucket of [INBOX, ARTIFACTS]) {
      for (const o of await listAll(s3, bucket, '')) {
        if (!/^teams\/[a-z0-9-]+\/jobs\/[a-z0-9-]+\/./.test(o.key) && !(bucket === ARTIFACTS && o.key.startsWith('models/')))
          found.push(`${bucket}/${o.key}: outside any job prefix`);
      }
      const uploads = await s3.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
      for (const u of uploads.Uploads ?? []) found.push(`${bucket}/${u.Key}: unfinished multipart upload`);
    }
    const states = new Map<string, { job: string; files: Map<string, number> }>();
    for (const o of await listAll(s3, ARTIFACTS, 'teams/')) {
      const m = /^(teams\/[^/]+\/jobs\/[^/]+\/)train\/state\/([^/]+)\/(.+)$/.exec(o.key);
      if (!m) continue;
      const folder = `${m[1]}train/state/${m[2]}/`;
      if (!states.has(folder)) states.set(folder, { job: m[1]!, files: new Map() });
      states.get(folder)!.files.set(m[3]!, o.size);
    }
    const perJob = new Map<string, number>();
    for (const [folder, { job, files }] of states) {
      perJob.set(job, (perJob.get(job) ?? 0) + 1);
      const marker = (await getJson(s3, ARTIFACTS, `${folder}${STATE_MARKER}`)) as { files?: Array<{ path: string; size: number }> } | undefined;
      if (!marker?.files) {
        found.push(`${folder}: no ${STATE_MARKER}, its upload never finished (${[...files.keys()].join(', ')})`);
        continue;
      }
      const listed = new Map(marker.files.map((f) => [f.path, f.size]));
      for (const [path, size] of listed)
        if (files.get(path) !== size) found.push(`${folder}${path}: listed in ${STATE_MARKER} at ${size} bytes, found ${files.get(path) ?? 'nothing'}`);
      for (const path of files.keys()) if (path !== STATE_MARKER && !listed.has(path)) found.push(`${folder}${path}: not in ${STATE_MARKER}`);
    }
    for (const [job, n] of perJob) if (n > 1) found.push(`${job}train/state/: ${n} state folders, only the newest is kept`);
    return found;
  }

  /**
   * The local state machine over `batch`, and the start handler's deps for it. With `reconcile`, the
   * reconcile Lambda gets the execution's ABORTED, TIMED_OUT and FAILED events, as its EventBridge rule does.
   */
  async function localRun(batch: BatchEmulator, opts: { definition?: typeof definition; reconcile?: boolean } = {}) {
    const reconcile = opts.reconcile ? ((await import(RECONCILE)) as { handler: (event: unknown) => Promise<unknown> }) : undefined;
    const sfn = new LocalStepFunctions(
      opts.definition ?? definition,
      'arn:aws:states:us-east-1:123456789012:stateMachine:local',
      { batch: batch.runner(), taskTokens: teams.taskTokens },
      reconcile && ((event) => (['ABORTED', 'TIMED_OUT', 'FAILED'].includes(event.detail.status) ? reconcile.handler(event) : Promise.resolve())),
    );
    return { sfn, deps: sfn.startDeps(moto.s3(), { inbox: INBOX, artifacts: ARTIFACTS }) };
  }

  /** Nothing left running: no active Batch job, no container process. */
  async function expectNothingRunning(batch: BatchEmulator): Promise<void> {
    await batch.settled(20_000);
    expect(batch.active()).toEqual([]);
    expect(batch.liveProcesses()).toEqual([]);
  }

  // The real-trainer tests skip without the repo venv, except under CI=true, where they run and fail.
  const hasVenv = availability(existsSync(PYTHON) ? undefined : 'no .venv: run bash scripts/python-env.sh') !== 'skip';
  const hasReconcile = existsSync(RECONCILE);
  const queueHasRunnableLimit = () =>
    batchConfigOf().queueActions.some((a) => a.State === 'RUNNABLE' && a.Reason === 'CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY');
  const batchConfigOf = () => new BatchEmulator(template, { launch: functionContainer(async () => 0) }).config;

  // ---------------------------------------------------------------- image pull failures (simulated)

  it('image pull failure: Batch retries the attempt (CannotPullContainerError* in the retry strategy) and the job then succeeds', async () => {
    const job = { teamId: 'team-f', jobId: 'pull-once' };
    await upload(job);
    const batch = emulator(functionContainer(standIn()), ({ stage, attempt }) => (stage === 'train' && attempt === 1 ? { kind: 'imagePull' } : undefined));

    const result = await runWorkflow(definition, job, { batch: batch.runner(), taskTokens: teams.taskTokens });

    expect(result.cause).toBeUndefined();
    expect(result.succeeded).toBe(true);
    const train = [...batch.jobs.values()].find((j) => j.stage === 'train')!;
    expect(train.detail.Attempts.map((a) => [a.StatusReason, a.Container.Reason?.split(':')[0]])).toEqual([
      ['Task failed to start', 'CannotPullContainerError'],
      ['Essential container in task exited', undefined],
    ]);
    expect(train.transitions).toEqual(['SUBMITTED', 'PENDING', 'RUNNABLE', 'STARTING', 'RUNNABLE', 'STARTING', 'RUNNING', 'SUCCEEDED']);
    // The retry happened inside Batch: the Step Functions task did not resubmit.
    expect(result.events.filter((e) => e.type === 'StateRetried')).toEqual([]);
    expect(await statusOf(job)).toMatchObject({ state: 'succeeded', stage: 'finalize' });
    await expectNothingRunning(batch);
    expect(await orphans()).toEqual([]);
  });

  it("image pull failure on every attempt: the job fails after the retry strategy's 3 attempts with BATCH_JOB_FAILED naming CannotPullContainerError", async () => {
    const job = { teamId: 'team-f', jobId: 'pull-never' };
    await upload(job);
    const batch = emulator(functionContainer(standIn()), ({ stage }) => (stage === 'train' ? { kind: 'imagePull' } : undefined));

    const result = await runWorkflow(definition, job, { batch: batch.runner(), taskTokens: teams.taskTokens });

    expect(result.error).toBe('JobFailed');
    expect(entered(result)).toEqual(['CreateJobSecret', 'RegisterJobSecret', 'Validate', 'Normalize', 'Admit', 'Train', 'MarkFailed', 'Failed']);
    const train = [...batch.jobs.values()].find((j) => j.stage === 'train')!;
    expect(train.detail.Attempts).toHaveLength(3);
    // The image never ran, so no stage reported a failure: it is the Train state's job's.
    const status = await statusOf(job);
    expect(status).toMatchObject({ state: 'failed', stage: 'train', error: { code: 'BATCH_JOB_FAILED' } });
    expect(status.error!.message).toContain('3 attempt(s)');
    expect(status.error!.message).toContain('CannotPullContainerError');
    expect(status.finishedAt).toBeDefined();
    await expectNothingRunning(batch);
    expect(await orphans()).toEqual([]);
  });

  // ---------------------------------------------------------------- Spot reclaim (simulated) with the real trainer

  let spotObservation: { statusBetweenAttempts?: Status; drained: boolean } | undefined;

  it.skipIf(!hasVenv)(
    'Spot reclaim mid-epoch: attempt 2 of the same Batch job resumes from the state of the epoch before, so at most the current epoch is lost',
    async () => {
      const job = { teamId: 'team-f', jobId: 'spot' };
      await upload(job);
      let statusBetweenAttempts: Status | undefined;
      const { launch, argsLog } = trainerLauncher({ FAKE_KOHYA_STEP_DELAY: '1' });
      // Reclaimed during epoch 2 or later (10 steps of 1 s an epoch), once epoch 1's state is on S3;
      // the epoch kohya is in at that moment is the one a retry may lose.
      let epochAtReclaim = 0;
      const reclaimMidEpoch2 = async (container: Container) => {
        let epoch = 0;
        container.onLine((line) => (epoch = Number(/^(?:kohya: )?epoch (\d+)\/3$/.exec(line.trim())?.[1] ?? epoch)));
        const state1 = `${keys.stage(job, 'train')}state/zwxmug-000001-state/train_state.json`;
        for (let i = 0; i < 600 && (epoch < 2 || !(await listAll(moto.s3(), ARTIFACTS, state1)).length); i++) await new Promise((r) => setTimeout(r, 100));
        await new Promise((r) => setTimeout(r, 500));
        epochAtReclaim = epoch;
      };
      const batch = emulator(
        (spec) => {
          if (spec.stage === 'train' && spec.attempt === 2) void statusOf(job).then((s) => (statusBetweenAttempts = s));
          return launch(spec);
        },
        ({ stage, attempt }) => (stage === 'train' && attempt === 1 ? { kind: 'spotReclaim', at: reclaimMidEpoch2 } : undefined),
      );

      const result = await runWorkflow(definition, job, { batch: batch.runner(), taskTokens: teams.taskTokens });

      expect(result.cause).toBeUndefined();
      const train = [...batch.jobs.values()].find((j) => j.stage === 'train')!;
      expect(train.detail.Attempts[0]!.StatusReason).toMatch(/^Host EC2 \(instance i-[0-9a-z]+\) terminated\.$/);
      expect(train.detail.Attempts).toHaveLength(2);
      const calls = readFileSync(argsLog, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as string[]);
      expect(calls).toHaveLength(2);
      expect(calls[0]).not.toContain('--resume');
      const resumed = /\/output\/(zwxmug-(\d{6})-state)$/.exec(calls[1]![calls[1]!.indexOf('--resume') + 1]!);
      expect(resumed, `attempt 2 resumes from an epoch state: ${calls[1]!.join(' ')}`).not.toBeNull();
      expect(epochAtReclaim).toBeGreaterThanOrEqual(2);
      expect(Number(resumed![2]), `reclaimed in epoch ${epochAtReclaim}: at most that epoch is lost`).toBeGreaterThanOrEqual(epochAtReclaim - 1);
      const diary = (await getJson(moto.s3(), ARTIFACTS, `${keys.stage(job, 'train')}diary.json`)) as { attempts: Array<{ resumedFrom: string | null }> };
      expect(diary.attempts.map((a) => a.resumedFrom)).toEqual([null, resumed![1]]);
      expect(await statusOf(job)).toMatchObject({ state: 'succeeded', stage: 'finalize' });
      const trained = (await listAll(moto.s3(), ARTIFACTS, keys.stage(job, 'train'))).map((o) => o.key.slice(keys.stage(job, 'train').length));
      expect(trained).toEqual(
        expect.arrayContaining(['zwxmug-000001.safetensors', 'zwxmug-000002.safetensors', 'zwxmug.safetensors', 'state/zwxmug-state/train_state.json']),
      );
      spotObservation = { statusBetweenAttempts, drained: batch.config.spotDraining };
      await expectNothingRunning(batch);
      expect(await orphans()).toEqual([]);
    },
    240_000,
  );

  it.skipIf(!hasVenv)('Spot reclaim: between the attempts status.json says running (Batch retries), not failed', () => {
    expect(spotObservation, 'runs after the Spot reclaim test').toBeDefined();
    expect(spotObservation!.drained, 'ECS_ENABLE_SPOT_INSTANCE_DRAINING=true in the launch template user data').toBe(true);
    expect(spotObservation!.statusBetweenAttempts).toMatchObject({ state: 'running', stage: 'train' });
  });

  it.skipIf(!hasVenv)(
    "kill during a state save: the host dies while kohya writes epoch 2's state; attempt 2 resumes from epoch 1 and no half state is left on S3",
    async () => {
      const job = { teamId: 'team-f', jobId: 'kill-in-save' };
      await upload(job);
      // kohya writes train_state.json first, then one state file a second (epoch 2 only).
      const { launch, argsLog } = trainerLauncher({ FAKE_KOHYA_STEP_DELAY: '0.2', FAKE_KOHYA_SAVE_DELAY: '1', FAKE_KOHYA_SAVE_DELAY_EPOCH: '2' });
      const midSave = async (container: Container) => {
        await new Promise<void>((resolve) => container.onLine((line) => /save train state to .*zwxmug-000002-state/.test(line) && resolve()));
        await new Promise((r) => setTimeout(r, 2_500)); // train_state.json and two more files written, four to go
      };
      // A lost host, not a drained one: no SIGTERM, nothing gets to clean up.
      const batch = emulator(launch, ({ stage, attempt }) =>
        stage === 'train' && attempt === 1 ? { kind: 'spotReclaim', at: midSave, graceful: false } : undefined,
      );

      const result = await runWorkflow(definition, job, { batch: batch.runner(), taskTokens: teams.taskTokens });

      expect(result.cause).toBeUndefined();
      const calls = readFileSync(argsLog, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as string[]);
      expect(calls).toHaveLength(2);
      expect(calls[1]![calls[1]!.indexOf('--resume') + 1]).toMatch(/\/output\/zwxmug-000001-state$/);
      expect(await statusOf(job)).toMatchObject({ state: 'succeeded', stage: 'finalize' });
      await expectNothingRunning(batch);
      expect(await orphans()).toEqual([]);
    },
    240_000,
  );

  // ---------------------------------------------------------------- the evaluator fails after training succeeded

  it.skipIf(!hasVenv)(
    'evaluate fails after train succeeded: status says evaluate, checkpoints stay, and a re-run of the train job trains no epoch again',
    async () => {
      const job = { teamId: 'team-f', jobId: 'eval-fails' };
      await upload(job);
      // The evaluator exits 1 after reporting its failure, as run_stage does for an error.
      const failingEvaluate = functionContainer(async (spec) => {
        await writeStatus(moto.s3(), ARTIFACTS, job, {
          state: 'failed',
          stage: 'evaluate',
          error: { code: 'INTERNAL_ERROR', message: `evaluate crashed on attempt ${spec.attempt}; retry the job` },
        });
        return 1;
      });
      const { launch, argsLog } = trainerLauncher({}, failingEvaluate);
      const batch = emulator(launch);

      const result = await runWorkflow(definition, job, { batch: batch.runner(), taskTokens: teams.taskTokens });

      expect(result.error).toBe('JobFailed');
      expect(entered(result)).toEqual(['CreateJobSecret', 'RegisterJobSecret', 'Validate', 'Normalize', 'Admit', 'Train', 'Evaluate', 'MarkFailed', 'Failed']);
      expect(await statusOf(job)).toMatchObject({ state: 'failed', stage: 'evaluate', error: { code: 'INTERNAL_ERROR' } });
      const trainPrefix = keys.stage(job, 'train');
      const before = await checkpointVersions(trainPrefix);
      expect([...before.keys()].map((k) => k.slice(trainPrefix.length)).sort()).toEqual([
        'zwxmug-000001.safetensors',
        'zwxmug-000002.safetensors',
        'zwxmug.safetensors',
      ]);

      // The product has no retry-from-evaluate path: the same job.json event is a duplicate, and
      // nothing runs again (start refuses a second execution of a job).
      const sfn = new LocalStepFunctions(definition, 'arn:aws:states:us-east-1:123456789012:stateMachine:local', {
        batch: batch.runner(),
        taskTokens: teams.taskTokens,
      });
      sfn.executions.set('team-f_eval-fails', {
        name: 'team-f_eval-fails',
        arn: 'arn:local',
        input: JSON.stringify(job),
        startDate: Date.now(),
        status: 'FAILED',
        handle: undefined as never,
        finished: Promise.resolve(result),
      });
      const replay = await start(s3Event(job), sfn.startDeps(moto.s3(), { inbox: INBOX, artifacts: ARTIFACTS }));
      expect(replay.duplicate).toBe(true);
      expect(sfn.launches.size).toBe(0);

      // What a retry of the GPU stages would do (a redrive, or a resubmitted train job): the trainer
      // finds the final state and resumes from it, so kohya trains no epoch again.
      const rerun = batch.submitJob('train', {
        JobName: `${job.teamId}-${job.jobId}-train`,
        JobQueue: 'local',
        JobDefinition: trainDefinitionArn(),
        ContainerOverrides: {
          Environment: [
            { Name: 'AVATAR_TEAM_ID', Value: job.teamId },
            { Name: 'AVATAR_JOB_ID', Value: job.jobId },
          ],
        },
      });
      expect((await rerun.done).Status).toBe('SUCCEEDED');
      const calls = readFileSync(argsLog, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as string[]);
      expect(calls).toHaveLength(2);
      expect(calls[1]![calls[1]!.indexOf('--resume') + 1]).toMatch(/\/output\/zwxmug-state$/);
      const after = await checkpointVersions(trainPrefix);
      expect(after, 'no checkpoint was rewritten').toEqual(before);
      await expectNothingRunning(batch);
      expect(await orphans()).toEqual([]);
    },
    240_000,
  );

  /** Each published checkpoint's ETag and LastModified: the stand-in writes random weights, so a rewrite changes both. */
  async function checkpointVersions(prefix: string): Promise<Map<string, string>> {
    const page = await moto.s3().send(new ListObjectsV2Command({ Bucket: ARTIFACTS, Prefix: prefix }));
    const checkpoints = (page.Contents ?? []).filter((o) => /^[^/]+\.safetensors$/.test(o.Key!.slice(prefix.length)));
    return new Map(checkpoints.map((o) => [o.Key!, `${o.ETag} ${o.LastModified?.toISOString()}`]));
  }

  function trainDefinitionArn(): string {
    const id = Object.entries(template.Resources).find(([k, r]) => r.Type === 'AWS::Batch::JobDefinition' && /Train/.test(k))![0];
    return `arn:aws:batch:us-east-1:123456789012:job-definition:${id}`;
  }

  // ---------------------------------------------------------------- S3 events twice and out of order

  function s3Event(job: JobRef, key = keys.spec(job)) {
    return {
      version: '0',
      id: crypto.randomUUID(),
      'detail-type': 'Object Created',
      source: 'aws.s3',
      account: '123456789012',
      time: new Date().toISOString(),
      region: 'us-east-1',
      resources: [`arn:aws:s3:::${INBOX}`],
      detail: {
        version: '0',
        bucket: { name: INBOX },
        object: { key, size: 100, etag: 'x', sequencer: '00' },
        'request-id': 'r',
        requester: '123456789012',
        reason: 'PutObject',
      },
    };
  }

  it('S3 events twice, concurrently and after the run: one execution, and a late replay does not rewind the finished status', async () => {
    const job = { teamId: 'team-f', jobId: 'twice' };
    await upload(job);
    const batch = emulator(functionContainer(standIn()));
    const { sfn, deps } = await localRun(batch);

    const [a, b] = await Promise.all([start(s3Event(job), deps), start(s3Event(job), deps)]);
    expect([a.duplicate, b.duplicate].sort()).toEqual([false, true]);
    expect(sfn.launches.get('team-f_twice')).toBe(1);
    const result = await sfn.executions.get('team-f_twice')!.finished;
    expect(result.succeeded).toBe(true);

    const late = await start(s3Event(job), deps);
    expect(late.duplicate).toBe(true);
    expect(sfn.launches.get('team-f_twice')).toBe(1);
    expect(await statusOf(job)).toMatchObject({ state: 'succeeded', stage: 'finalize' });
    await expectNothingRunning(batch);
    expect(await orphans()).toEqual([]);
  });

  it('S3 events out of order: job.json arrives before the photos; the job fails at validate saying how many photos it found, and the photo events start nothing', async () => {
    const job = { teamId: 'team-f', jobId: 'early-spec' };
    const s3 = moto.s3();
    await putJson(s3, INBOX, keys.spec(job), SPEC);
    const batch = emulator(functionContainer(standIn()));
    const { sfn, deps } = await localRun(batch);

    await start(s3Event(job), deps);
    const result = await sfn.executions.get('team-f_early-spec')!.finished;
    // The photos land after the run started; their events do not match the rule's key (the start handler refuses them too).
    for (const p of photos.slice(0, 3)) {
      await putBytes(s3, INBOX, `${keys.photosPrefix(job)}${p.name}`, p.bytes, 'image/jpeg');
      await expect(start(s3Event(job, `${keys.photosPrefix(job)}${p.name}`), deps)).rejects.toThrow(/is not a job spec key/);
    }

    expect(result.error).toBe('JobFailed');
    expect(sfn.launches.size).toBe(1);
    expect([...batch.jobs.values()]).toEqual([]);
    const status = await statusOf(job);
    expect(status).toMatchObject({ state: 'failed', stage: 'validate' });
    expect(status.error!.message).toMatch(/0 .*photo|no .*photo/i);
    await expectNothingRunning(batch);
    expect(await orphans()).toEqual([]);
  });

  // ---------------------------------------------------------------- timeouts, stops and GPU waits (need issue 8 item 1/2 in the template)

  it("GPU wait past its limit: the queue cancels the RUNNABLE job (Batch's reason) and status.json says GPU_CAPACITY_UNAVAILABLE", async () => {
    expect(queueHasRunnableLimit(), 'the job queue has a jobStateTimeLimitActions entry for CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY').toBe(true);
    const job = { teamId: 'team-f', jobId: 'no-gpu-capacity' };
    await upload(job);
    // 1 template second = 1 ms: a 30-minute limit passes in 1.8 s.
    const batch = emulator(functionContainer(standIn()), ({ stage }) => (stage === 'train' ? { kind: 'noCapacity' } : undefined), { msPerTemplateSecond: 1 });

    const result = await runWorkflow(definition, job, { batch: batch.runner(), taskTokens: teams.taskTokens });

    const train = [...batch.jobs.values()].find((j) => j.stage === 'train')!;
    expect(train.detail).toMatchObject({
      Status: 'FAILED',
      StatusReason: BATCH_REASONS.canceledByTimeLimit('CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY'),
      Attempts: [],
    });
    expect(result.error).toBe('JobFailed');
    const status = await statusOf(job);
    expect(status).toMatchObject({ state: 'failed', stage: 'train', error: { code: 'GPU_CAPACITY_UNAVAILABLE' } });
    await expectNothingRunning(batch);
    expect(await orphans()).toEqual([]);
  });

  it('Lambda state timeout: a stage that runs past its TimeoutSeconds raises States.Timeout and status.json says TIMEOUT', async () => {
    const normalize = definition.States.Normalize!;
    expect(normalize.TimeoutSeconds, 'Normalize has its own TimeoutSeconds in the template').toBeTypeOf('number');
    const job = { teamId: 'team-f', jobId: 'lambda-timeout' };
    await upload(job);
    // The template's timeout scaled to 1 s; the handler never answers (a hung S3 call, say).
    const scaled = { ...definition, States: { ...definition.States, Normalize: { ...normalize, TimeoutSeconds: 1 } } };
    const hung = new AbortController();
    const lambda: LambdaRunner = (stage, payload) =>
      stage === 'normalize'
        ? new Promise((_, reject) => hung.signal.addEventListener('abort', () => reject(new Error('abandoned'))))
        : inProcessLambda(stage, payload);
    const batch = emulator(functionContainer(standIn()));

    const result = await runWorkflow(scaled, job, { batch: batch.runner(), taskTokens: teams.taskTokens, lambda });
    hung.abort();

    expect(result.events.filter((e) => e.type === 'StateFailed' && e.state === 'Normalize').map((e) => e.error)).toEqual(['States.Timeout']);
    expect(entered(result)).toEqual(['CreateJobSecret', 'RegisterJobSecret', 'Validate', 'Normalize', 'MarkFailed', 'Failed']);
    expect(await statusOf(job)).toMatchObject({ state: 'failed', stage: 'normalize', error: { code: 'TIMEOUT' } });
    expect([...batch.jobs.values()]).toEqual([]);
    expect(await orphans()).toEqual([]);
  });

  // Needs mark-failed to read a function timeout (Lambda.Unknown, "Task timed out after") as TIMEOUT: today it writes code UNKNOWN.
  // With each Lambda state's TimeoutSeconds = function timeout + 30 s (rel-infra), this is the error a slow Lambda really raises.
  it('Lambda function timeout: the function\'s own timeout (Lambda.Unknown, "Task timed out") ends in status.json TIMEOUT', async () => {
    const job = { teamId: 'team-f', jobId: 'function-timeout' };
    await upload(job);
    const timeout = functionTimeout('Normalize');
    // What the Lambda service answers for a function that ran out its Timeout: an unhandled error.
    const lambda: LambdaRunner = async (stage, payload) => {
      if (stage !== 'normalize') return inProcessLambda(stage, payload);
      const error = new Error(
        JSON.stringify({
          errorType: 'Sandbox.Timedout',
          errorMessage: `RequestId: 5b7b1a1e-0000-4000-8000-000000000000 Error: Task timed out after ${timeout.toFixed(2)} seconds`,
        }),
      );
      error.name = 'Lambda.Unknown';
      throw error;
    };
    const batch = emulator(functionContainer(standIn()));

    const result = await runWorkflow(definition, job, { batch: batch.runner(), taskTokens: teams.taskTokens, lambda });

    expect(entered(result)).toEqual(['CreateJobSecret', 'RegisterJobSecret', 'Validate', 'Normalize', 'MarkFailed', 'Failed']);
    expect(await statusOf(job)).toMatchObject({ state: 'failed', stage: 'normalize', error: { code: 'TIMEOUT' } });
    expect([...batch.jobs.values()]).toEqual([]);
    expect(await orphans()).toEqual([]);
  });

  /** The Timeout (seconds) of the Lambda function a Lambda state invokes, from the template. */
  function functionTimeout(state: string): number {
    const fn = (definition.States[state]!.Parameters as { FunctionName: string }).FunctionName.split(':').at(-1)!;
    return (template.Resources[fn]!.Properties as { Timeout?: number }).Timeout ?? 3;
  }

  // The trainer handles TerminateJob's SIGTERM like a Spot drain; its status writes are conditional and never
  // replace the terminal status reconcile writes (avatar_job Status._write).
  it.skipIf(!hasVenv)(
    'execution stopped during training: Step Functions terminates the Batch job and the reconcile Lambda writes CANCELLED',
    async () => {
      expect(batchConfigOf().stateMachineMayTerminate, 'the state machine role allows batch:TerminateJob').toBe(true);
      expect(hasReconcile, `${RECONCILE} exists`).toBe(true);
      const job = { teamId: 'team-f', jobId: 'stopped' };
      await upload(job);
      // The real trainer: on TerminateJob's SIGTERM it stops kohya and reports, while the reconcile
      // Lambda, on the ABORTED event, writes the terminal status. The last writer must not lie.
      const { launch } = trainerLauncher({ FAKE_KOHYA_STEP_DELAY: '0.5' });
      const batch = emulator(launch);
      const { sfn, deps } = await localRun(batch, { reconcile: true });
      await start(s3Event(job), deps);
      const execution = sfn.executions.get('team-f_stopped')!;
      for (let i = 0; i < 1200 && !/epoch 1\/3/.test((await statusOf(job)).progress?.message ?? ''); i++) await new Promise((r) => setTimeout(r, 100));
      expect((await statusOf(job)).progress?.message, 'training is under way').toMatch(/epoch 1\/3|step/);

      await sfn.send({ constructor: { name: 'StopExecutionCommand' }, input: { executionArn: execution.arn } });
      await execution.finished;

      expect(execution.status).toBe('ABORTED');
      // TerminateJob is asynchronous, as in Batch: the container gets SIGTERM and its stop timeout.
      await expectNothingRunning(batch);
      const train = [...batch.jobs.values()].find((j) => j.stage === 'train')!;
      expect(train.detail).toMatchObject({ Status: 'FAILED', StatusReason: 'Execution was stopped by Step Functions' });
      const status = await statusOf(job);
      expect(status).toMatchObject({ state: 'cancelled', stage: 'train', error: { code: 'CANCELLED' } });
      expect(status.finishedAt).toBeDefined();
      expect(await orphans()).toEqual([]);
    },
    240_000,
  );

  it('execution timed out while a GPU job waits: the job is terminated and the reconcile Lambda writes TIMEOUT', async () => {
    expect(batchConfigOf().stateMachineMayTerminate, 'the state machine role allows batch:TerminateJob').toBe(true);
    expect(hasReconcile, `${RECONCILE} exists`).toBe(true);
    const job = { teamId: 'team-f', jobId: 'exec-timeout' };
    await upload(job);
    // The execution's TimeoutSeconds scaled down to 20 s; the train job waits for capacity with no queue limit hit first.
    const scaled = { ...definition, TimeoutSeconds: 20 };
    const batch = emulator(functionContainer(standIn()), ({ stage }) =>
      stage === 'train' ? { kind: 'noCapacity', reason: 'MISCONFIGURATION:SERVICE_ROLE_PERMISSIONS' } : undefined,
    );
    const { sfn, deps } = await localRun(batch, { definition: scaled, reconcile: true });
    await start(s3Event(job), deps);
    const execution = sfn.executions.get('team-f_exec-timeout')!;
    await execution.finished;

    expect(execution.status).toBe('TIMED_OUT');
    await expectNothingRunning(batch);
    expect(await statusOf(job)).toMatchObject({ state: 'failed', error: { code: 'TIMEOUT' } });
    expect(await orphans()).toEqual([]);
  }, 60_000);
});
