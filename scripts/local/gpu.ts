/**
 * Batch stages on this machine: the container images built from containers/ and run with Docker on
 * an NVIDIA GPU, with the job definition's command and environment from the synthesized template.
 * Without Docker or a GPU the stage fails with `Local.GpuUnavailable`, never a fake success.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { PLACEHOLDER_ACCOUNT, PLACEHOLDER_REGION } from './definition';
import { BatchJobFailed, type BatchRunner, type SubmitJobParameters } from './workflow';

const ROOT = join(__dirname, '..', '..');

export interface GpuCheck {
  readonly ok: boolean;
  readonly reason: string;
}

/**
 * Docker engine and an NVIDIA GPU, both required to run the caption/train/evaluate images.
 * `AVATAR_LOCAL_GPU=off` skips them even where they exist (tests that must not build images).
 */
export function checkGpu(): GpuCheck {
  if (process.env.AVATAR_LOCAL_GPU === 'off') return { ok: false, reason: 'the GPU stages are turned off (AVATAR_LOCAL_GPU=off)' };
  const docker = spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], { encoding: 'utf8' });
  if (docker.status !== 0) return { ok: false, reason: 'no Docker engine is running on this machine' };
  const smi = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8' });
  if (smi.status !== 0) return { ok: false, reason: 'no NVIDIA GPU (nvidia-smi) on this machine' };
  return { ok: true, reason: smi.stdout.trim() };
}

/** The error a Batch state raises locally when the GPU stages cannot run here. */
export class GpuUnavailable extends Error {
  constructor(reason: string) {
    super(
      `${reason}, so the GPU stages (caption, train, evaluate) cannot run locally. The photos were validated and ` +
        'normalized (see validate/report.json and normalize/). To go on: run `npm run local` on a machine with ' +
        'Docker and an NVIDIA GPU (nvidia-container-toolkit), or deploy with `npx cdk deploy` and upload the job to the inbox bucket.',
    );
    this.name = 'Local.GpuUnavailable';
  }
}

export const noGpuRunner =
  (check: GpuCheck): BatchRunner =>
  async () => {
    throw new GpuUnavailable(check.reason);
  };

type Template = { Resources: Record<string, { Type: string; Properties?: Record<string, unknown> }> };

export interface LocalJobTarget {
  readonly template: Template;
  /** Endpoint of the local S3. */
  readonly endpoint: string;
  readonly inboxBucket: string;
  readonly artifactsBucket: string;
}

/**
 * What Batch would run for a submitted job: the job definition's command and environment from the
 * synthesized template, the state's overrides (team and job ids), and the local endpoint and buckets
 * in place of the deployed ones.
 */
export function submittedJob(target: LocalJobTarget, params: SubmitJobParameters): { command: string[]; env: Record<string, string> } {
  const logicalId = params.JobDefinition.split(':').at(-1)!;
  const props = target.template.Resources[logicalId]?.Properties as
    | { ContainerProperties?: { Command?: string[]; Environment?: Array<{ Name: string; Value: unknown }> } }
    | undefined;
  const command = props?.ContainerProperties?.Command;
  if (!command) throw new Error(`job definition ${logicalId} has no command in the template`);
  const env: Record<string, string> = {};
  for (const e of props?.ContainerProperties?.Environment ?? []) if (typeof e.Value === 'string') env[e.Name] = e.Value;
  for (const e of params.ContainerOverrides?.Environment ?? []) env[e.Name] = e.Value;
  return {
    command,
    env: {
      ...env,
      AVATAR_INBOX_BUCKET: target.inboxBucket,
      AVATAR_ARTIFACTS_BUCKET: target.artifactsBucket,
      AWS_ENDPOINT_URL_S3: target.endpoint,
      AWS_ACCESS_KEY_ID: 'testing',
      AWS_SECRET_ACCESS_KEY: 'testing',
      AWS_DEFAULT_REGION: PLACEHOLDER_REGION,
    },
  };
}

// One GPU image for both jobs (containers/trainer/Dockerfile).
const IMAGE_OF: Record<string, string> = { train: 'trainer', evaluate: 'trainer' };

export interface DockerRunnerOptions extends LocalJobTarget {
  /** Host folder mounted at /cache (base model cache across jobs, as on the Batch hosts). */
  readonly cacheDir: string;
  readonly log: (line: string) => void;
}

/** Builds each image once and runs the stage's job definition command in it with the GPU. */
export function dockerRunner(options: DockerRunnerOptions): BatchRunner {
  const built = new Set<string>();
  return async (stage: string, params: SubmitJobParameters) => {
    const image = IMAGE_OF[stage];
    if (!image) throw new Error(`no container image for stage ${stage}`);
    const tag = `avatar-${image}:local`;
    if (!built.has(tag)) {
      options.log(`building ${tag} from containers/${image}`);
      const context = join(ROOT, 'containers'); // shared by both images, for common/src
      const build = spawnSync('docker', ['build', '-t', tag, '-f', join(context, image, 'Dockerfile'), context], { stdio: 'inherit' });
      if (build.status !== 0) throw new BatchJobFailed({ JobName: params.JobName, StatusReason: `docker build of ${tag} failed`, Attempts: [] });
      built.add(tag);
    }
    const { command, env } = submittedJob(options, params);
    env.AVATAR_CACHE_DIR = '/cache';
    const args = ['run', '--rm', '--gpus', 'all', '--network', 'host', '-v', `${options.cacheDir}:/cache`];
    for (const [k, v] of Object.entries(env)) args.push('-e', `${k}=${v}`);
    options.log(`running ${stage}: docker run ${tag} ${command.join(' ')}`);
    const run = spawnSync('docker', [...args, tag, ...command], { stdio: 'inherit' });
    if (run.status !== 0) {
      throw new BatchJobFailed({
        JobName: params.JobName,
        StatusReason: 'Essential container in task exited',
        Attempts: [{ Container: { ExitCode: run.status ?? undefined, Reason: run.signal ? `killed by ${run.signal}` : undefined } }],
      });
    }
    return { JobId: `local-${stage}-${PLACEHOLDER_ACCOUNT}` };
  };
}
