import * as path from 'node:path';
import { Duration, RemovalPolicy, Size, Stack, Validations } from 'aws-cdk-lib';
import * as batch from 'aws-cdk-lib/aws-batch';
import * as ecrAssets from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type { Construct } from 'constructs';
import { CONTAINER_STOP_TIMEOUT_S, MODEL_CACHE_HOST_PATH } from './gpu-compute';

const CONTAINERS_DIR = path.join(__dirname, '..', '..', 'containers');

/** Where the containers see the host's model cache (`AVATAR_CACHE_DIR`). */
export const MODEL_CACHE_CONTAINER_PATH = '/cache';
/**
 * `/dev/shm` of the GPU jobs (Docker's default is 64 MiB, too small for PyTorch data loader workers).
 * A tmpfs cap, not a reservation: pages count against the job's memory only when used.
 */
export const SHARED_MEMORY = Size.gibibytes(4);
/** Open-file limit of the GPU jobs (data loader workers, safetensors shards, S3 transfers). */
export const NOFILE_LIMIT = 65_536;
/** Batch attempts of each GPU job (the first run plus retries after Spot reclaims or image pull failures). */
export const JOB_ATTEMPTS = 3;
/** Longest single attempt of each GPU stage (the job definition timeout). */
export const ATTEMPT_TIMEOUTS = {
  /** Caption (BLIP, minutes; at most 1 h) then train (at most 4 h), in one job. */
  train: Duration.hours(5),
  evaluate: Duration.hours(2),
} as const;
export type GpuStage = keyof typeof ATTEMPT_TIMEOUTS;
/** Sizing shared by all GPU jobs: fits g5.xlarge (4 vCPU, 16 GiB) with room for the ECS agent. */
export const JOB_VCPUS = 4;
const JOB_MEMORY = Size.mebibytes(14 * 1024);

/** Props of {@link GpuJobDefinitions}. */
export interface GpuJobDefinitionsProps {
  /** Passed to the containers as `AVATAR_INBOX_BUCKET`. */
  readonly inbox: s3.IBucket;
  /** Passed to the containers as `AVATAR_ARTIFACTS_BUCKET`. */
  readonly artifacts: s3.IBucket;
  /** Artifacts-bucket key of the base model (`AVATAR_BASE_MODEL_KEY` of train and evaluate). */
  readonly baseModelKey: string;
  /** The mint function (`AVATAR_MINT_FUNCTION`): the jobs' S3 credentials come from it, per job. */
  readonly mintFunctionName: string;
}

/** One stage's job definition and the task role its grants go to. */
export interface GpuJob {
  readonly definition: batch.EcsJobDefinition;
  readonly jobRole: iam.Role;
}

/**
 * One image (containers/trainer/Dockerfile, both packages) and two job definitions, one GPU each:
 * `train` runs the caption stage and then the train stage (`python -m avatar_job caption train`, one
 * process each, so BLIP's memory is freed before kohya starts), `evaluate` runs evaluate. Every stage
 * keeps its own name, S3 prefix and status reports; a retried `train` job does not caption again and
 * resumes training from the newest state. Both jobs have `/dev/shm` and `nofile` sized for the data
 * loaders, the host model cache mounted, and a retry strategy that resubmits a job after a Spot reclaim
 * (`Host EC2*`) or an image pull/start failure and stops on anything else. The Step Functions tasks do
 * not resubmit failed jobs. The task roles start empty; {@link GpuBatch} lets them invoke mint, whose
 * credentials (the stage's data role, limited to the job) reach their stages' keys.
 *
 * Builds its resources in `scope` (the {@link GpuBatch}), so they keep their logical IDs.
 */
export class GpuJobDefinitions {
  /** `python -m avatar_job caption train`: the caption stage, then the train stage. */
  public readonly train: GpuJob;
  /** `python -m trainer evaluate`. */
  public readonly evaluate: GpuJob;

  constructor(scope: Construct, props: GpuJobDefinitionsProps) {
    const logGroup = new logs.LogGroup(scope, 'JobLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      // Operational logs go with the stack; only the buckets are retained.
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const executionRole = new iam.Role(scope, 'ExecutionRole', {
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
      description: 'Pulls the GPU job images and writes their logs',
    });
    Validations.of(executionRole).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason: 'ecr:GetAuthorizationToken, granted with the image pull, supports no resource-level permissions.',
    });

    const platform = ecrAssets.Platform.LINUX_AMD64;
    // One image for both jobs, built once from containers/ (both packages and the shared job runtime
    // in common/src); a cold instance pulls it once.
    const imageAsset = new ecrAssets.DockerImageAsset(scope, 'GpuImage', {
      directory: CONTAINERS_DIR,
      file: 'trainer/Dockerfile',
      exclude: ['*/tests', '**/__pycache__'],
      platform,
    });
    const image = ecs.ContainerImage.fromDockerImageAsset(imageAsset);

    const region = Stack.of(scope).region;
    const baseEnv = {
      AWS_REGION: region,
      AWS_DEFAULT_REGION: region,
      AVATAR_INBOX_BUCKET: props.inbox.bucketName,
      AVATAR_ARTIFACTS_BUCKET: props.artifacts.bucketName,
      AVATAR_CACHE_DIR: MODEL_CACHE_CONTAINER_PATH,
      // Weights are baked into the images or read from S3; never reach for the Hugging Face hub.
      HF_HUB_OFFLINE: '1',
      TRANSFORMERS_OFFLINE: '1',
      // The SIGTERM grace the hosts give (ECS_CONTAINER_STOP_TIMEOUT): the trainer's must fit inside it.
      AVATAR_STOP_TIMEOUT_S: String(CONTAINER_STOP_TIMEOUT_S),
      // A SIGTERM before the last attempt leaves status `running`: Batch retries a Spot reclaim.
      AVATAR_BATCH_ATTEMPTS: String(JOB_ATTEMPTS),
      // The job's S3 credentials: minted for its job with AVATAR_JOB_SECRET (from SubmitJob).
      AVATAR_MINT_FUNCTION: props.mintFunctionName,
    };
    const newJob = (stage: GpuStage, command: string[], extraEnv: Record<string, string> = {}): GpuJob => {
      const jobRole = new iam.Role(scope, `${pascal(stage)}JobRole`, {
        assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
        description: `Task role of the ${stage} GPU job`,
      });
      const container = new batch.EcsEc2ContainerDefinition(scope, `${pascal(stage)}Container`, {
        image,
        command,
        cpu: JOB_VCPUS,
        memory: JOB_MEMORY,
        gpu: 1,
        jobRole,
        executionRole,
        environment: { ...baseEnv, ...extraEnv },
        logging: ecs.LogDriver.awsLogs({ logGroup, streamPrefix: stage }),
        readonlyRootFilesystem: false,
        linuxParameters: new batch.LinuxParameters(scope, `${pascal(stage)}LinuxParameters`, { sharedMemorySize: SHARED_MEMORY }),
        ulimits: [{ name: batch.UlimitName.NOFILE, softLimit: NOFILE_LIMIT, hardLimit: NOFILE_LIMIT }],
        volumes: [batch.EcsVolume.host({ name: 'model-cache', hostPath: MODEL_CACHE_HOST_PATH, containerPath: MODEL_CACHE_CONTAINER_PATH })],
      });
      const definition = new batch.EcsJobDefinition(scope, `${pascal(stage)}Job`, {
        container,
        timeout: ATTEMPT_TIMEOUTS[stage],
        retryAttempts: JOB_ATTEMPTS,
        retryStrategies: [
          batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.SPOT_INSTANCE_RECLAIMED),
          batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.custom({ onReason: 'CannotPullContainerError*' })),
          batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.custom({ onReason: 'CannotStartContainerError*' })),
          batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.custom({ onReason: 'CannotInspectContainerError*' })),
          // Anything else (a non-zero exit of our code) is final: the workflow records the failure.
          batch.RetryStrategy.of(batch.Action.EXIT, batch.Reason.custom({ onReason: '*' })),
        ],
      });
      return { definition, jobRole };
    };

    const modelEnv = { AVATAR_BASE_MODEL_KEY: props.baseModelKey };
    this.train = newJob('train', ['python', '-m', 'avatar_job', 'caption', 'train'], modelEnv);
    this.evaluate = newJob('evaluate', ['python', '-m', 'trainer', 'evaluate'], modelEnv);
  }
}

function pascal(stage: string): string {
  return stage.charAt(0).toUpperCase() + stage.slice(1);
}
