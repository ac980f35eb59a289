/**
 * The whole pipeline with the real container code: the synthesized state machine runs locally, the
 * Lambda stages run their handlers, and the Batch stages run the job definitions' own commands
 * (`python -m avatar_job caption train`: the caption stage, then the train stage, in one GPU job) as processes on CPU, with the environment
 * Batch would give them, against the same local S3. Only the models are small: a tiny random BLIP,
 * and the kohya stand-in the trainer's tests use (sd-scripts is not installable here). Evaluate
 * needs a base model that matches the LoRA's layers, which the stand-in cannot give; it runs the
 * S3-boundary stand-in, and its own tests render for real.
 */

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ManifestSchema, StatusSchema } from '../../lambdas/shared/contract';
import { keys } from '../../lambdas/shared/keys';
import { getJson, listAll, putBytes, putJson } from '../../lambdas/shared/s3';
import { stateMachineDefinition, synthesizeTemplate } from '../../scripts/local/definition';
import { syntheticPhotos } from '../../scripts/local/demo-photos';
import { submittedJob } from '../../scripts/local/gpu';
import { startLocalMint } from '../../scripts/local/mint';
import { configureHandlers, type Moto, startMoto } from '../../scripts/local/moto';
import { type LocalTeams, localTeams } from '../../scripts/local/teams';
import { BatchJobFailed, type BatchRunner, runWorkflow } from '../../scripts/local/workflow';
import { uploadBaseModel } from '../helpers/base-model';
import { describeWithMoto } from '../helpers/suites';

const ROOT = join(__dirname, '..', '..');
const PYTHON = join(ROOT, '.venv', 'bin', 'python');
const INBOX = 'ct-inbox';
const ARTIFACTS = 'ct-artifacts';

describeWithMoto(
  existsSync(PYTHON)
    ? 'pipeline with the container entrypoints'
    : 'pipeline with the container entrypoints (skipped: no .venv; run bash scripts/python-env.sh)',
  () => {
    let moto: Moto;
    let teams: LocalTeams;
    let work: string;
    let template: ReturnType<typeof synthesizeTemplate>;
    const ran: Array<{ stage: string; command: string[]; status: number | null }> = [];

    beforeAll(async () => {
      if (!existsSync(PYTHON)) return;
      moto = await startMoto();
      await moto.createBucket(INBOX);
      await moto.createBucket(ARTIFACTS);
      configureHandlers(moto.endpoint, { inboxBucket: INBOX, artifactsBucket: ARTIFACTS, urlExpirySeconds: 600 });
      teams = await localTeams(moto.endpoint, ['team-a']);
      template = synthesizeTemplate();
      work = mkdtempSync(join(tmpdir(), 'avatar-containers-'));
      const blip = spawnSync(
        PYTHON,
        ['-c', `import sys; from tiny_blip import save_tiny_blip; save_tiny_blip(__import__('pathlib').Path(sys.argv[1]))`, join(work, 'blip')],
        {
          encoding: 'utf8',
          env: { ...process.env, PYTHONPATH: join(ROOT, 'containers/captioner/tests') },
        },
      );
      expect(blip.status, blip.stderr).toBe(0);
    });
    afterAll(async () => {
      await teams?.stop();
      await moto?.stop();
    });

    /** The environment the one GPU image gives a job: both packages and the shared runtime on PYTHONPATH. */
    const containerEnv = (env: Record<string, string>, attempt: string): NodeJS.ProcessEnv => ({
      ...process.env,
      ...env,
      PYTHONPATH: ['common', 'captioner', 'trainer'].map((p) => join(ROOT, 'containers', p, 'src')).join(':'),
      AVATAR_CACHE_DIR: join(work, 'cache'),
      AVATAR_WORK_DIR: join(work, attempt),
      AVATAR_BLIP_MODEL_DIR: join(work, 'blip'),
      AVATAR_KOHYA_CMD: `${PYTHON} ${join(ROOT, 'containers/trainer/tests/fake_kohya.py')}`,
    });

    /** Batch, locally: the job definition's command from the template, run as a process. */
    const processes: BatchRunner = async (stage, params) => {
      const { command, env } = submittedJob({ template, endpoint: moto.endpoint, inboxBucket: INBOX, artifactsBucket: ARTIFACTS }, params);
      if (stage === 'evaluate') {
        const job = { teamId: env.AVATAR_TEAM_ID!, jobId: env.AVATAR_JOB_ID! };
        await putBytes(moto.s3(), ARTIFACTS, `${keys.stage(job, 'evaluate')}grid.png`, 'grid', 'image/png');
        return { JobId: 'evaluate-stand-in' };
      }
      const [program, ...args] = command;
      expect(program).toBe('python');
      // Asynchronously: the container calls back into this process (the local mint), which must keep serving.
      const result = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
        const child = spawn(PYTHON, args, { env: containerEnv(env, stage), timeout: 300_000 });
        let stderr = '';
        child.stdout.resume(); // drained, so a chatty stage never blocks on a full pipe
        child.stderr.on('data', (d) => {
          stderr += d;
        });
        child.on('close', (status) => resolve({ status, stderr }));
      });
      ran.push({ stage, command, status: result.status });
      if (result.status !== 0) {
        throw new BatchJobFailed({
          JobName: params.JobName,
          StatusReason: result.stderr.slice(-500),
          Attempts: [{ Container: { ExitCode: result.status ?? undefined } }],
        });
      }
      return { JobId: `${stage}-process` };
    };

    /** A job of `photos` synthetic photos, the base model and a spec that trains 3 short epochs. */
    const seedJob = async (job: { teamId: string; jobId: string }, photos: number) => {
      const s3 = moto.s3();
      for (const p of await syntheticPhotos(photos, 640)) await putBytes(s3, INBOX, `${keys.photosPrefix(job)}${p.name}`, p.bytes, 'image/jpeg');
      await uploadBaseModel(s3, ARTIFACTS);
      await putJson(s3, INBOX, keys.spec(job), {
        token: 'zwxmug',
        classWord: 'mug',
        kind: 'object',
        captioning: { numBeams: 2, minLength: 3, maxLength: 8, commonTraits: [] },
        training: { network: 'lora', networkDim: 8, networkAlpha: 8, repeats: 1, epochs: 3 },
      });
      return s3;
    };

    it('captions and trains in one GPU job through the real entrypoints, every stage on credentials from mint, and finalizes a manifest with the LoRA', async () => {
      const job = { teamId: 'team-a', jobId: 'containers' };
      const s3 = await seedJob(job, 12);
      // The real mint over the Lambda Invoke protocol: the Lambda stages (MINT_FUNCTION) and the
      // Python container (AVATAR_MINT_FUNCTION, with the stage secret the state machine hands it).
      const mint = await startLocalMint({ endpoint: moto.endpoint, tableName: process.env.TEAMS_TABLE!, buckets: { inbox: INBOX, artifacts: ARTIFACTS } });
      Object.assign(process.env, mint.env, { AVATAR_MINT_FUNCTION: mint.env.MINT_FUNCTION });
      let result: Awaited<ReturnType<typeof runWorkflow>>;
      try {
        result = await runWorkflow(stateMachineDefinition(template), job, { taskTokens: teams.taskTokens, batch: processes });
      } finally {
        for (const name of ['MINT_FUNCTION', 'AVATAR_MINT_FUNCTION', 'AWS_ENDPOINT_URL_LAMBDA']) delete process.env[name];
        await mint.stop();
      }

      expect(ran.map((r) => [r.stage, r.command.join(' '), r.status])).toEqual([['train', 'python -m avatar_job caption train', 0]]);
      expect(result.cause).toBeUndefined();
      // The caption and train processes of the GPU job each minted train's credentials with its secret.
      expect(mint.invocations.map((i) => i.stage)).toEqual(['validate', 'normalize', 'admit', 'train', 'train', 'finalize']);
      const gpu = mint.invocations.filter((i) => i.stage === 'train');
      expect(gpu.every((i) => i.teamId === 'team-a' && i.jobId === 'containers' && i.secret === gpu[0]!.secret)).toBe(true);
      expect(StatusSchema.parse(await getJson(s3, ARTIFACTS, keys.status(job)))).toMatchObject({ state: 'succeeded', stage: 'finalize' });
      const manifest = ManifestSchema.parse(await getJson(s3, ARTIFACTS, keys.manifest(job)));
      const names = manifest.artifacts.map((a) => a.name);
      expect(names.filter((n) => /^caption\/1_zwxmug\/zwxmug-\d\d\.txt$/.test(n))).toHaveLength(12);
      expect(names).toEqual(
        expect.arrayContaining([
          'caption/captions.json',
          'train/zwxmug-000001.safetensors',
          'train/zwxmug-000002.safetensors',
          'train/zwxmug.safetensors',
          'train/diary.json',
        ]),
      );
      const captions = (await getJson(s3, ARTIFACTS, `${keys.stage(job, 'caption')}captions.json`)) as { captions: Array<{ caption: string }> };
      for (const c of captions.captions) expect(c.caption.startsWith('photo of zwxmug, ')).toBe(true);
      const diary = (await getJson(s3, ARTIFACTS, `${keys.stage(job, 'train')}diary.json`)) as {
        plan: { totalSteps: number };
        config: { network_dim: number };
      };
      expect(diary.plan.totalSteps).toBe(36);
      expect(diary.config.network_dim).toBe(8);
    }, 600_000);

    it('resumes a caption+train job Batch retried after a Spot reclaim, without captioning again', async () => {
      const job = { teamId: 'team-a', jobId: 'reclaimed' };
      const s3 = await seedJob(job, 10);
      const trainKeys = async () => (await listAll(s3, ARTIFACTS, keys.stage(job, 'train'))).map((o) => o.key);
      const captionsEtag = async () => (await s3.send(new HeadObjectCommand({ Bucket: ARTIFACTS, Key: `${keys.stage(job, 'caption')}captions.json` }))).ETag;
      const attempts: Array<{ code: number | null; stdout: string }> = [];
      let etagAfterReclaim: string | undefined;

      // Batch's retry strategy, locally: attempt 1 is reclaimed (SIGTERM) once epoch 1 is published while
      // the stand-in is in epoch 2; Batch resubmits the same job (RETRY on "Host EC2*"); attempt 2 runs
      // in a fresh container with a BLIP folder that does not exist, so captioning again would fail it.
      const reclaimedOnce: BatchRunner = async (stage, params) => {
        if (stage !== 'train') return processes(stage, params);
        const { command, env } = submittedJob({ template, endpoint: moto.endpoint, inboxBucket: INBOX, artifactsBucket: ARTIFACTS }, params);
        const run = (attempt: string, extra: Record<string, string>, reclaim: boolean) =>
          new Promise<{ code: number | null; stdout: string }>((resolve) => {
            const child = spawn(PYTHON, command.slice(1), { env: { ...containerEnv(env, attempt), ...extra } });
            let stdout = '';
            child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
            child.stderr.on('data', () => undefined);
            const poll = reclaim
              ? setInterval(async () => {
                  if ((await trainKeys()).some((k) => k.endsWith('-000001.safetensors'))) {
                    clearInterval(poll);
                    child.kill('SIGTERM');
                  }
                }, 500)
              : undefined;
            child.on('exit', (code) => {
              if (poll) clearInterval(poll);
              resolve({ code, stdout });
            });
          });
        attempts.push(await run('attempt-1', { FAKE_KOHYA_HANG_AFTER_EPOCH: '2' }, true));
        etagAfterReclaim = await captionsEtag();
        attempts.push(await run('attempt-2', { AVATAR_BLIP_MODEL_DIR: join(work, 'no-blip-here'), AWS_BATCH_JOB_ATTEMPT: '2' }, false));
        const last = attempts.at(-1)!;
        if (last.code !== 0)
          throw new BatchJobFailed({
            JobName: params.JobName,
            StatusReason: 'Essential container in task exited',
            Attempts: [{ Container: { ExitCode: last.code ?? undefined } }],
          });
        return { JobId: 'train-retried' };
      };

      const result = await runWorkflow(stateMachineDefinition(template), job, { taskTokens: teams.taskTokens, batch: reclaimedOnce });

      // Attempt 1 of 3 was interrupted: it leaves status running for Batch's retry and exits 143 (SIGTERM).
      expect(attempts.map((a) => a.code)).toEqual([143, 0]);
      expect(attempts[1]!.stdout).toContain('caption/captions.json already covers the 10 images of this plan; not captioning again');
      expect(attempts[1]!.stdout).toMatch(/--resume \S*zwxmug-00000[12]-state/);
      expect(await captionsEtag()).toBe(etagAfterReclaim);
      expect(result.cause).toBeUndefined();
      expect(StatusSchema.parse(await getJson(s3, ARTIFACTS, keys.status(job)))).toMatchObject({ state: 'succeeded', stage: 'finalize' });
      expect(await trainKeys()).toEqual(
        expect.arrayContaining([
          `${keys.stage(job, 'train')}zwxmug-000001.safetensors`,
          `${keys.stage(job, 'train')}zwxmug-000002.safetensors`,
          `${keys.stage(job, 'train')}zwxmug.safetensors`,
        ]),
      );
    }, 600_000);
  },
);
