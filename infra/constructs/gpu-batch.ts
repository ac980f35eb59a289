import { Duration } from 'aws-cdk-lib';
import type * as batch from 'aws-cdk-lib/aws-batch';
import type * as ec2 from 'aws-cdk-lib/aws-ec2';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { DEFAULT_BASE_MODEL_KEY, splitVcpus } from '../config';
import { GpuCompute } from './gpu-compute';
import { ATTEMPT_TIMEOUTS, GpuJobDefinitions, type GpuStage, JOB_ATTEMPTS, JOB_VCPUS } from './gpu-jobs';
import { GpuNetwork } from './gpu-network';
import type { JobCredentials } from './job-credentials';

/** Allowance for an instance to boot, join the cluster and pull the image, per attempt. */
export const STARTUP_ALLOWANCE = Duration.minutes(15);

/** Props of {@link GpuBatch}. */
export interface GpuBatchProps {
  /** Customer uploads (read by no GPU job today; passed to the containers as `AVATAR_INBOX_BUCKET`). */
  readonly inbox: s3.IBucket;
  /** Pipeline outputs and base models. */
  readonly artifacts: s3.IBucket;
  /** Where VPC flow logs go (prefix `vpc-flow-logs/`). */
  readonly logsBucket: s3.IBucket;
  /**
   * EC2 instance types of the compute environments; single-GPU types only.
   * @default ['g5.xlarge', 'g5.2xlarge']
   */
  readonly instanceTypes?: string[];
  /**
   * Hard ceiling of vCPUs the compute environments run at once, together (the spend limit); with
   * Spot it is split between the two environments (see `splitVcpus`).
   * @default 16
   */
  readonly maxVcpus?: number;
  /**
   * vCPUs kept running while idle (the warm path), in the first environment of the queue's order
   * (Spot when enabled: Batch places a job in the first environment that can take it, so warm
   * capacity anywhere else would sit idle while that one scales up).
   * @default 0 (scale to zero)
   */
  readonly minVcpus?: number;
  /**
   * How long a job may wait in RUNNABLE for capacity before the queue cancels it.
   * @default Duration.minutes(30)
   */
  readonly gpuWait?: Duration;
  /**
   * Run on Spot first and fall back to on-demand; `false` creates only the on-demand environment.
   * @default true
   */
  readonly spot?: boolean;
  /**
   * Encrypted gp3 root volume size of each instance, in GiB.
   * @default 200
   */
  readonly rootVolumeGiB?: number;
  /**
   * Artifacts-bucket key of the base model (`AVATAR_BASE_MODEL_KEY` of train and evaluate).
   * @default DEFAULT_BASE_MODEL_KEY
   */
  readonly baseModelKey?: string;
  /** Mints the jobs' S3 credentials (isolation by credentials): the task roles may only invoke it. */
  readonly credentials: JobCredentials;
}

/**
 * GPU compute for the caption, train and evaluate stages on AWS Batch: the network
 * ({@link GpuNetwork}), the Spot/on-demand fleet and its queue ({@link GpuCompute}) and two jobs from
 * one image ({@link GpuJobDefinitions}: caption then train, and evaluate), whose task roles only invoke
 * mint for credentials that reach their stages' keys of their job (lambdas/shared/access.ts).
 */
export class GpuBatch extends Construct {
  /** Queue every GPU job is submitted to (Spot first when enabled). */
  public readonly jobQueue: batch.JobQueue;
  /** `python -m avatar_job caption train`: the caption stage, then the train stage. */
  public readonly train: batch.EcsJobDefinition;
  /** `python -m trainer evaluate`. */
  public readonly evaluate: batch.EcsJobDefinition;
  /** The zero-idle-cost VPC. */
  public readonly vpc: ec2.Vpc;
  /** How long a job may wait in RUNNABLE before the queue cancels it. */
  public readonly gpuWait: Duration;

  constructor(scope: Construct, id: string, props: GpuBatchProps) {
    super(scope, id);
    const instanceTypes = props.instanceTypes ?? ['g5.xlarge', 'g5.2xlarge'];
    const maxVcpus = props.maxVcpus ?? 16;
    const spot = props.spot ?? true;
    this.gpuWait = props.gpuWait ?? Duration.minutes(30);
    if (instanceTypes.length === 0) throw new GpuBatchError('instanceTypes must name at least one instance type');
    if (!Number.isInteger(maxVcpus) || maxVcpus < JOB_VCPUS) {
      throw new GpuBatchError(`maxVcpus must be an integer >= ${JOB_VCPUS} (one job), got ${maxVcpus}`);
    }
    const ceilings = splitVcpus(maxVcpus, spot);
    if (Math.min(ceilings.onDemand, spot ? ceilings.spot : Infinity) < JOB_VCPUS) {
      throw new GpuBatchError(`maxVcpus ${maxVcpus} leaves an environment below one job (${JOB_VCPUS} vCPUs): with spot, use at least ${2 * JOB_VCPUS}`);
    }
    const minVcpus = props.minVcpus ?? 0;
    const firstCeiling = spot ? ceilings.spot : ceilings.onDemand;
    if (!Number.isInteger(minVcpus) || minVcpus < 0 || minVcpus > firstCeiling) {
      throw new GpuBatchError(`minVcpus must be an integer from 0 to ${firstCeiling} (the first environment's ceiling), got ${minVcpus}`);
    }

    // The parts build in this construct's scope, so the resources keep the logical IDs they had
    // when this was one construct (a changed ID makes CloudFormation replace the VPC and fleet).
    const network = new GpuNetwork(this, props.logsBucket);
    this.vpc = network.vpc;
    const compute = new GpuCompute(this, {
      network,
      instanceTypes,
      ceilings,
      minVcpus,
      gpuWait: this.gpuWait,
      rootVolumeGiB: props.rootVolumeGiB ?? 200,
    });
    this.jobQueue = compute.jobQueue;

    const jobs = new GpuJobDefinitions(this, {
      inbox: props.inbox,
      artifacts: props.artifacts,
      baseModelKey: props.baseModelKey ?? DEFAULT_BASE_MODEL_KEY,
      mintFunctionName: props.credentials.mint.functionName,
    });
    for (const job of ['train', 'evaluate'] as const) {
      props.credentials.grantMint(jobs[job].jobRole);
    }
    this.train = jobs.train.definition;
    this.evaluate = jobs.evaluate.definition;
  }
}

/**
 * The longest a GPU stage can legitimately take from submission to exit: every attempt waiting for
 * capacity up to `gpuWait`, starting up, and running to its attempt timeout. The workflow's Batch
 * states time out after this, so a job stuck anywhere else (e.g. STARTING) still ends in MarkFailed.
 */
export function stageTimeout(stage: GpuStage, gpuWait: Duration): Duration {
  const perAttempt = gpuWait.toSeconds() + STARTUP_ALLOWANCE.toSeconds() + ATTEMPT_TIMEOUTS[stage].toSeconds();
  return Duration.seconds(JOB_ATTEMPTS * perAttempt);
}

class GpuBatchError extends Error {
  constructor(message: string) {
    super(`GpuBatch: ${message}`);
  }
}
