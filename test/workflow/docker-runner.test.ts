/**
 * The Docker path of `npm run local` (GPU machines). This machine has no Docker engine and no GPU, so
 * `docker` and `nvidia-smi` are stand-in scripts on PATH that record their arguments: the test checks
 * what would be built and run, not the images themselves (those are built at `cdk deploy`).
 */
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { stateMachineDefinition, synthesizeTemplate } from '../../scripts/local/definition';
import { checkGpu, dockerRunner } from '../../scripts/local/gpu';
import { BatchJobFailed, type SubmitJobParameters } from '../../scripts/local/workflow';

const ROOT = join(__dirname, '..', '..');

describe('local Batch stages in Docker', () => {
  let bin: string;
  let log: string;
  let template: ReturnType<typeof synthesizeTemplate>;
  let trainParams: SubmitJobParameters;
  const path = process.env.PATH;

  beforeAll(() => {
    bin = mkdtempSync(join(tmpdir(), 'avatar-fake-docker-'));
    log = join(bin, 'calls.jsonl');
    const recorder = (name: string, body: string) => {
      writeFileSync(
        join(bin, name),
        `#!/usr/bin/env bash\nprintf '%s\\n' "$(node -e 'console.log(JSON.stringify(process.argv.slice(1)))' ${name} "$@")" >> ${log}\n${body}\n`,
      );
      chmodSync(join(bin, name), 0o755);
    };
    recorder('docker', 'if [ "$1" = run ] && [ -n "$FAKE_DOCKER_RUN_EXIT" ]; then exit "$FAKE_DOCKER_RUN_EXIT"; fi; [ "$1" = info ] && echo 28.2.2; exit 0');
    recorder('nvidia-smi', 'echo "GPU 0: NVIDIA A10G (UUID: GPU-0)"');
    template = synthesizeTemplate();
    const definition = stateMachineDefinition(template);
    const caption = definition.States.Train as unknown as { Parameters: Record<string, unknown> };
    trainParams = {
      JobName: 'team-a-job-1-train',
      JobQueue: caption.Parameters.JobQueue as string,
      JobDefinition: caption.Parameters.JobDefinition as string,
      ContainerOverrides: {
        Environment: [
          { Name: 'AVATAR_TEAM_ID', Value: 'team-a' },
          { Name: 'AVATAR_JOB_ID', Value: 'job-1' },
        ],
      },
    };
  });
  afterEach(() => {
    process.env.PATH = path;
    delete process.env.FAKE_DOCKER_RUN_EXIT;
    writeFileSync(log, '');
  });

  const calls = () =>
    readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as string[]);
  const runner = () =>
    dockerRunner({
      template,
      endpoint: 'http://127.0.0.1:5000',
      inboxBucket: 'in',
      artifactsBucket: 'out',
      cacheDir: '/tmp/avatar-cache',
      log: () => undefined,
    });

  it('finds the engine and the GPU', () => {
    process.env.PATH = `${bin}:${path}`;
    expect(checkGpu()).toEqual({ ok: true, reason: 'GPU 0: NVIDIA A10G (UUID: GPU-0)' });
  });

  it('builds the image from containers/ and runs the job definition command with the GPU, host network, cache and job env', async () => {
    process.env.PATH = `${bin}:${path}`;

    await runner()('train', trainParams);

    const [build, run] = calls();
    expect(build).toEqual(['docker', 'build', '-t', 'avatar-trainer:local', '-f', join(ROOT, 'containers/trainer/Dockerfile'), join(ROOT, 'containers')]);
    expect(run!.slice(0, 8)).toEqual(['docker', 'run', '--rm', '--gpus', 'all', '--network', 'host', '-v']);
    expect(run).toContain('/tmp/avatar-cache:/cache');
    expect(run!.slice(-6)).toEqual(['avatar-trainer:local', 'python', '-m', 'avatar_job', 'caption', 'train']);
    for (const env of [
      'AVATAR_TEAM_ID=team-a',
      'AVATAR_JOB_ID=job-1',
      'AVATAR_ARTIFACTS_BUCKET=out',
      'AWS_ENDPOINT_URL_S3=http://127.0.0.1:5000',
      'AVATAR_CACHE_DIR=/cache',
      'HF_HUB_OFFLINE=1',
    ]) {
      expect(run).toContain(env);
    }
  });

  it('reports a failing container as a failed Batch job with its exit code', async () => {
    process.env.PATH = `${bin}:${path}`;
    process.env.FAKE_DOCKER_RUN_EXIT = '3';

    const failure = await runner()('train', trainParams).catch((e: unknown) => e);

    expect(failure).toBeInstanceOf(BatchJobFailed);
    expect(JSON.parse((failure as Error).message)).toMatchObject({ Status: 'FAILED', Attempts: [{ Container: { ExitCode: 3 } }] });
  });
});
