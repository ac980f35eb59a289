import * as path from 'node:path';
import { Duration, RemovalPolicy, Size, Stack, Validations } from 'aws-cdk-lib';
import * as batch from 'aws-cdk-lib/aws-batch';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecrAssets from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { splitVcpus } from '../config';
import { grantList, grantObjects, JOB_PREFIX } from './bucket-access';

const CONTAINERS_DIR = path.join(__dirname, '..', '..', 'containers');

/** Host directory that keeps the base model between jobs on the same instance. */
export const MODEL_CACHE_HOST_PATH = '/var/cache/avatar';
/** Where the containers see that cache (`AVATAR_CACHE_DIR`). */
export const MODEL_CACHE_CONTAINER_PATH = '/cache';
/** The user the GPU image runs as (`useradd --uid 1000` in containers/trainer/Dockerfile). */
export const CONTAINER_UID = 1000;
/**
 * Seconds ECS waits after SIGTERM before SIGKILL (`ECS_CONTAINER_STOP_TIMEOUT` on the hosts). A Spot
 * interruption notice comes two minutes ahead, so this is the most a job can use. The containers get
 * it as `AVATAR_STOP_TIMEOUT_S` and finish their SIGTERM work (status, state upload) inside it.
 */
export const CONTAINER_STOP_TIMEOUT_S = 120;
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
/** Allowance for an instance to boot, join the cluster and pull the image, per attempt. */
export const STARTUP_ALLOWANCE = Duration.minutes(15);
/**
 * RUNNABLE reasons the job queue cancels after `gpuWaitMinutes`: no capacity (Spot or on-demand, or
 * a vCPU quota), a ceiling below the job, or no instance type that fits. mark-failed maps them to
 * `GPU_CAPACITY_UNAVAILABLE`.
 */
export const CAPACITY_WAIT_REASONS = [
  batch.JobStateTimeLimitActionsReason.INSUFFICIENT_INSTANCE_CAPACITY,
  batch.JobStateTimeLimitActionsReason.COMPUTE_ENVIRONMENT_MAX_RESOURCE,
  batch.JobStateTimeLimitActionsReason.JOB_RESOURCE_REQUIREMENT,
] as const;

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
   * @default 'models/sd15/v1-5-pruned-emaonly.safetensors'
   */
  readonly baseModelKey?: string;
}

/** Sizing shared by all GPU jobs: fits g5.xlarge (4 vCPU, 16 GiB) with room for the ECS agent. */
const JOB_VCPUS = 4;
const JOB_MEMORY = Size.mebibytes(14 * 1024);

/**
 * GPU compute for the caption, train and evaluate stages on AWS Batch: two jobs from one image.
 *
 * Network: a VPC with public subnets only in two AZs, no NAT gateway and a free S3 gateway
 * endpoint, so it costs nothing while idle. Instances get public IPs (the public subnets map them)
 * because they need outbound HTTPS to ECR, ECS, CloudWatch Logs and S3 without a NAT gateway
 * (~$32/month each); the security group admits no inbound traffic and only TCP 443 outbound.
 *
 * Compute: a Spot environment (price-capacity-optimized) ordered before an on-demand one
 * (best-fit-progressive), scaling from 0 to ceilings that add up to `maxVcpus` (Batch may overshoot
 * one environment's ceiling by at most one instance to place a job), on the ECS AL2023 NVIDIA AMI,
 * with an encrypted gp3 root volume and IMDSv2 required. The environments use the launch template's
 * latest version number, so an edit to it reaches them on the next deploy. The hosts drain on a Spot
 * interruption notice (SIGTERM to the jobs) and give containers {@link CONTAINER_STOP_TIMEOUT_S} to stop.
 *
 * Queue: a job that waits in RUNNABLE for capacity longer than `gpuWait` is cancelled
 * ({@link CAPACITY_WAIT_REASONS}), so no job waits for a GPU until the workflow times out.
 *
 * Jobs: one image (containers/trainer/Dockerfile, both packages) and two job definitions, one GPU
 * each: `train` runs the caption stage and then the train stage (`python -m avatar_job caption train`,
 * one process each, so BLIP's memory is freed before kohya starts), `evaluate` runs evaluate. Every
 * stage keeps its own name, S3 prefix and status reports; a retried `train` job does not caption
 * again and resumes training from the newest state. Both jobs have `/dev/shm` and `nofile` sized for the data
 * loaders, and a retry strategy that resubmits a job after a Spot reclaim (`Host EC2*`) or an image
 * pull/start failure and stops on anything else. The Step Functions tasks do not resubmit failed jobs.
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
    const gpuWait = props.gpuWait ?? Duration.minutes(30);
    this.gpuWait = gpuWait;
    const rootVolumeGiB = props.rootVolumeGiB ?? 200;
    const baseModelKey = props.baseModelKey ?? 'models/sd15/v1-5-pruned-emaonly.safetensors';
    if (instanceTypes.length === 0) throw new GpuBatchError('instanceTypes must name at least one instance type');
    if (!Number.isInteger(maxVcpus) || maxVcpus < JOB_VCPUS) {
      throw new GpuBatchError(`maxVcpus must be an integer >= ${JOB_VCPUS} (one job), got ${maxVcpus}`);
    }

    this.vpc = new ec2.Vpc(this, 'Vpc', {
      maxAzs: 2,
      natGateways: 0,
      subnetConfiguration: [{ name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 }],
      gatewayEndpoints: { S3: { service: ec2.GatewayVpcEndpointAwsService.S3 } },
      flowLogs: {
        s3: {
          destination: ec2.FlowLogDestination.toS3(props.logsBucket, 'vpc-flow-logs/'),
          trafficType: ec2.FlowLogTrafficType.REJECT,
        },
      },
    });

    const securityGroup = new ec2.SecurityGroup(this, 'InstanceSecurityGroup', {
      vpc: this.vpc,
      description: 'GPU batch instances: no inbound, HTTPS outbound only',
      allowAllOutbound: false,
    });
    securityGroup.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS to AWS APIs, ECR and S3');

    // The images run as UID 1000 (see the Dockerfiles); the host cache the ECS agent would
    // create as root must be theirs to write. Batch takes launch-template user data only as MIME multipart.
    const userData = new ec2.MultipartUserData();
    const prepareCache = ec2.UserData.forLinux();
    prepareCache.addCommands(
      `mkdir -p ${MODEL_CACHE_HOST_PATH}`,
      `chown ${CONTAINER_UID}:${CONTAINER_UID} ${MODEL_CACHE_HOST_PATH}`,
      `chmod 0750 ${MODEL_CACHE_HOST_PATH}`,
    );
    userData.addUserDataPart(prepareCache, ec2.MultipartBody.SHELL_SCRIPT, true);
    // Batch appends ECS_CLUSTER to the same file after this part runs.
    const ecsConfig = ec2.UserData.forLinux();
    ecsConfig.addCommands(
      // A Spot interruption notice drains the instance: ECS sends the jobs SIGTERM instead of nothing.
      "echo 'ECS_ENABLE_SPOT_INSTANCE_DRAINING=true' >> /etc/ecs/ecs.config",
      `echo 'ECS_CONTAINER_STOP_TIMEOUT=${CONTAINER_STOP_TIMEOUT_S}s' >> /etc/ecs/ecs.config`,
    );
    userData.addUserDataPart(ecsConfig, ec2.MultipartBody.SHELL_SCRIPT, true);

    const launchTemplate = new ec2.LaunchTemplate(this, 'LaunchTemplate', {
      userData,
      requireImdsv2: true,
      // One hop: the ECS agent (host network) reaches IMDS, bridged job containers cannot, so they
      // only ever hold their own job role (AL2023 AMIs default to two hops).
      httpPutResponseHopLimit: 1,
      blockDevices: [
        {
          // Root device of the ECS AL2023 AMIs; holds the images and the model cache.
          deviceName: '/dev/xvda',
          volume: ec2.BlockDeviceVolume.ebs(rootVolumeGiB, {
            volumeType: ec2.EbsDeviceVolumeType.GP3,
            encrypted: true,
            deleteOnTermination: true,
          }),
        },
      ],
    });

    const instanceRole = new iam.Role(this, 'InstanceRole', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      description: 'ECS container instance role of the GPU batch instances',
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AmazonEC2ContainerServiceforEC2Role')],
    });
    Validations.of(instanceRole).acknowledge({
      id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role]',
      reason: 'The AWS-maintained ECS instance policy tracks what the ECS agent needs; jobs get their own task roles, and IMDS hop limit 1 keeps containers off this role.',
    });

    const computeProps = {
      vpc: this.vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PUBLIC },
      securityGroups: [securityGroup],
      instanceTypes: instanceTypes.map((t) => new ec2.InstanceType(t)),
      useOptimalInstanceClasses: false,
      minvCpus: 0,
      images: [{ imageType: batch.EcsMachineImageType.ECS_AL2023_NVIDIA }],
      launchTemplate,
      instanceRole,
      updateToLatestImageVersion: true,
    } satisfies batch.ManagedEc2EcsComputeEnvironmentProps;

    const ceilings = splitVcpus(maxVcpus, spot);
    if (Math.min(ceilings.onDemand, spot ? ceilings.spot : Infinity) < JOB_VCPUS) {
      throw new GpuBatchError(`maxVcpus ${maxVcpus} leaves an environment below one job (${JOB_VCPUS} vCPUs): with spot, use at least ${2 * JOB_VCPUS}`);
    }
    const minVcpus = props.minVcpus ?? 0;
    const firstCeiling = spot ? ceilings.spot : ceilings.onDemand;
    if (!Number.isInteger(minVcpus) || minVcpus < 0 || minVcpus > firstCeiling) {
      throw new GpuBatchError(`minVcpus must be an integer from 0 to ${firstCeiling} (the first environment's ceiling), got ${minVcpus}`);
    }
    const onDemand = new batch.ManagedEc2EcsComputeEnvironment(this, 'OnDemand', {
      ...computeProps,
      minvCpus: spot ? 0 : minVcpus,
      maxvCpus: ceilings.onDemand,
      spot: false,
      allocationStrategy: batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
    });
    const environments = [onDemand];
    const order: batch.OrderedComputeEnvironment[] = [];
    if (spot) {
      const spotEnv = new batch.ManagedEc2EcsComputeEnvironment(this, 'Spot', {
        ...computeProps,
        minvCpus: minVcpus,
        maxvCpus: ceilings.spot,
        spot: true,
        allocationStrategy: batch.AllocationStrategy.SPOT_PRICE_CAPACITY_OPTIMIZED,
      });
      environments.push(spotEnv);
      order.push({ computeEnvironment: spotEnv, order: 1 });
    }
    order.push({ computeEnvironment: onDemand, order: order.length + 1 });
    // CDK writes `$Latest`, which Batch resolves once at creation: template edits would never reach
    // the instances. The version number changes with every edit and updates the environments.
    for (const env of environments) {
      (env.node.defaultChild as batch.CfnComputeEnvironment).addPropertyOverride(
        'ComputeResources.LaunchTemplate.Version',
        launchTemplate.latestVersionNumber,
      );
    }
    this.jobQueue = new batch.JobQueue(this, 'JobQueue', {
      computeEnvironments: order,
      priority: 1,
      jobStateTimeLimitActions: CAPACITY_WAIT_REASONS.map((reason) => ({
        action: batch.JobStateTimeLimitActionsAction.CANCEL,
        state: batch.JobStateTimeLimitActionsState.RUNNABLE,
        maxTime: gpuWait,
        reason,
      })),
    });

    const logGroup = new logs.LogGroup(this, 'JobLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      // Operational logs go with the stack; only the buckets are retained.
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const executionRole = new iam.Role(this, 'ExecutionRole', {
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
    const imageAsset = new ecrAssets.DockerImageAsset(this, 'GpuImage', {
      directory: CONTAINERS_DIR,
      file: 'trainer/Dockerfile',
      exclude: ['*/tests', '**/__pycache__'],
      platform,
    });
    const image = ecs.ContainerImage.fromDockerImageAsset(imageAsset);

    const region = Stack.of(this).region;
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
    };
    const status = `${JOB_PREFIX}/status.json`;
    const statusReason = 'The job reports progress in the status.json of the job it runs';

    const newJob = (
      stage: keyof typeof ATTEMPT_TIMEOUTS,
      command: string[],
      extraEnv: Record<string, string> = {},
    ) => {
      const jobRole = new iam.Role(this, `${pascal(stage)}JobRole`, {
        assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
        description: `Task role of the ${stage} GPU job`,
      });
      const container = new batch.EcsEc2ContainerDefinition(this, `${pascal(stage)}Container`, {
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
        linuxParameters: new batch.LinuxParameters(this, `${pascal(stage)}LinuxParameters`, { sharedMemorySize: SHARED_MEMORY }),
        ulimits: [{ name: batch.UlimitName.NOFILE, softLimit: NOFILE_LIMIT, hardLimit: NOFILE_LIMIT }],
        volumes: [
          batch.EcsVolume.host({
            name: 'model-cache',
            hostPath: MODEL_CACHE_HOST_PATH,
            containerPath: MODEL_CACHE_CONTAINER_PATH,
          }),
        ],
      });
      const definition = new batch.EcsJobDefinition(this, `${pascal(stage)}Job`, {
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
      grantObjects(jobRole, props.artifacts, ['s3:GetObject', 's3:PutObject'], [status], statusReason);
      return { definition, jobRole };
    };

    const modelEnv = { AVATAR_BASE_MODEL_KEY: baseModelKey };
    const train = newJob('train', ['python', '-m', 'avatar_job', 'caption', 'train'], modelEnv);
    this.train = train.definition;
    // Key layout from lambdas/shared/keys.ts: every stage writes only under its own prefix.
    grantObjects(train.jobRole, props.artifacts, ['s3:GetObject'], [`${JOB_PREFIX}/normalize/*`, `${JOB_PREFIX}/caption/*`], 'caption and train read the dataset, user captions and plan normalize wrote; train and a retried caption read the captions');
    grantObjects(train.jobRole, props.artifacts, ['s3:PutObject'], [`${JOB_PREFIX}/caption/*`], 'caption writes caption files and captions.json under the job');
    grantObjects(train.jobRole, props.artifacts, ['s3:GetObject'], ['models/*'], 'train reads the operator-uploaded base models');
    grantObjects(train.jobRole, props.artifacts, ['s3:GetObject', 's3:PutObject'], [`${JOB_PREFIX}/train/*`], 'train writes checkpoints and reads its own state back to resume after a Spot reclaim');
    // Only the newest training state is kept (train.py deletes the older ones after each upload).
    grantObjects(train.jobRole, props.artifacts, ['s3:DeleteObject'], [`${JOB_PREFIX}/train/state/*`], 'train deletes its own superseded resume state');
    grantList(train.jobRole, props.artifacts, [`teams/*`]);

    const evaluate = newJob('evaluate', ['python', '-m', 'trainer', 'evaluate'], modelEnv);
    this.evaluate = evaluate.definition;
    grantObjects(evaluate.jobRole, props.artifacts, ['s3:GetObject'], [`${JOB_PREFIX}/train/*`, `${JOB_PREFIX}/normalize/*`], 'evaluate reads the checkpoints, train diary, plan and training photos (likeness, near-copies) of the job');
    grantObjects(evaluate.jobRole, props.artifacts, ['s3:GetObject'], [`${JOB_PREFIX}/validate/contact-sheet.png`, `${JOB_PREFIX}/caption/captions.json`], 'evaluate shows the intake contact sheet and the captions in report.html');
    grantObjects(evaluate.jobRole, props.artifacts, ['s3:GetObject'], ['models/*'], 'evaluate reads the operator-uploaded base models');
    grantObjects(evaluate.jobRole, props.artifacts, ['s3:PutObject'], [`${JOB_PREFIX}/evaluate/*`], 'evaluate writes its grid, image pack and scores under the job');
  }
}

/**
 * The longest a GPU stage can legitimately take from submission to exit: every attempt waiting for
 * capacity up to `gpuWait`, starting up, and running to its attempt timeout. The workflow's Batch
 * states time out after this, so a job stuck anywhere else (e.g. STARTING) still ends in MarkFailed.
 */
export function stageTimeout(stage: keyof typeof ATTEMPT_TIMEOUTS, gpuWait: Duration): Duration {
  const perAttempt = gpuWait.toSeconds() + STARTUP_ALLOWANCE.toSeconds() + ATTEMPT_TIMEOUTS[stage].toSeconds();
  return Duration.seconds(JOB_ATTEMPTS * perAttempt);
}

class GpuBatchError extends Error {
  constructor(message: string) {
    super(`GpuBatch: ${message}`);
  }
}

function pascal(stage: string): string {
  return stage.charAt(0).toUpperCase() + stage.slice(1);
}
