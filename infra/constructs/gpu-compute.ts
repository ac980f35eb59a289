import type { Duration } from 'aws-cdk-lib';
import { Validations } from 'aws-cdk-lib';
import * as batch from 'aws-cdk-lib/aws-batch';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import type { Construct } from 'constructs';
import type { GpuNetwork } from './gpu-network';

/** Host directory that keeps the base model between jobs on the same instance. */
export const MODEL_CACHE_HOST_PATH = '/var/cache/avatar';
/** The user the GPU image runs as (`useradd --uid 1000` in containers/trainer/Dockerfile). */
export const CONTAINER_UID = 1000;
/**
 * Seconds ECS waits after SIGTERM before SIGKILL (`ECS_CONTAINER_STOP_TIMEOUT` on the hosts). A Spot
 * interruption notice comes two minutes ahead, so this is the most a job can use. The containers get
 * it as `AVATAR_STOP_TIMEOUT_S` and finish their SIGTERM work (status, state upload) inside it.
 */
export const CONTAINER_STOP_TIMEOUT_S = 120;
/**
 * RUNNABLE reasons the job queue cancels after `gpuWait`: no capacity (Spot or on-demand, or
 * a vCPU quota), a ceiling below the job, or no instance type that fits. mark-failed maps them to
 * `GPU_CAPACITY_UNAVAILABLE`.
 */
export const CAPACITY_WAIT_REASONS = [
  batch.JobStateTimeLimitActionsReason.INSUFFICIENT_INSTANCE_CAPACITY,
  batch.JobStateTimeLimitActionsReason.COMPUTE_ENVIRONMENT_MAX_RESOURCE,
  batch.JobStateTimeLimitActionsReason.JOB_RESOURCE_REQUIREMENT,
] as const;

/** Props of {@link GpuCompute}. */
export interface GpuComputeProps {
  readonly network: GpuNetwork;
  /** Single-GPU EC2 instance types. */
  readonly instanceTypes: readonly string[];
  /** vCPU ceiling of each environment (`spot: 0`: no Spot environment); see `splitVcpus`. */
  readonly ceilings: { readonly spot: number; readonly onDemand: number };
  /** vCPUs kept running while idle (the warm path), in the first environment of the queue's order. */
  readonly minVcpus: number;
  /** How long a job may wait in RUNNABLE for capacity before the queue cancels it. */
  readonly gpuWait: Duration;
  /** Encrypted gp3 root volume size of each instance, in GiB. */
  readonly rootVolumeGiB: number;
}

/**
 * The GPU fleet and its queue. A Spot environment (price-capacity-optimized) is ordered before an
 * on-demand one (best-fit-progressive), scaling from `minVcpus` (the first one; 0 for the other) to the given ceilings (Batch may overshoot one
 * environment's ceiling by at most one instance to place a job), on the ECS AL2023 NVIDIA AMI, with an
 * encrypted gp3 root volume and IMDSv2 required. The environments use the launch template's latest
 * version number, so an edit to it reaches them on the next deploy. The hosts drain on a Spot
 * interruption notice (SIGTERM to the jobs) and give containers {@link CONTAINER_STOP_TIMEOUT_S} to
 * stop. A job that waits in RUNNABLE for capacity longer than `gpuWait` is cancelled
 * ({@link CAPACITY_WAIT_REASONS}), so no job waits for a GPU until the workflow times out.
 *
 * Builds its resources in `scope` (the {@link GpuBatch}), so they keep their logical IDs.
 */
export class GpuCompute {
  /** Queue every GPU job is submitted to (Spot first when enabled). */
  public readonly jobQueue: batch.JobQueue;

  constructor(scope: Construct, props: GpuComputeProps) {
    const launchTemplate = gpuLaunchTemplate(scope, props.rootVolumeGiB);
    const instanceRole = new iam.Role(scope, 'InstanceRole', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      description: 'ECS container instance role of the GPU batch instances',
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AmazonEC2ContainerServiceforEC2Role')],
    });
    Validations.of(instanceRole).acknowledge({
      id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role]',
      reason:
        'The AWS-maintained ECS instance policy tracks what the ECS agent needs; jobs get their own task roles, and IMDS hop limit 1 keeps containers off this role.',
    });

    const computeProps = {
      vpc: props.network.vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PUBLIC },
      securityGroups: [props.network.securityGroup],
      instanceTypes: props.instanceTypes.map((t) => new ec2.InstanceType(t)),
      useOptimalInstanceClasses: false,
      minvCpus: 0,
      images: [{ imageType: batch.EcsMachineImageType.ECS_AL2023_NVIDIA }],
      launchTemplate,
      instanceRole,
      updateToLatestImageVersion: true,
    } satisfies batch.ManagedEc2EcsComputeEnvironmentProps;
    const spot = props.ceilings.spot > 0;
    const onDemand = new batch.ManagedEc2EcsComputeEnvironment(scope, 'OnDemand', {
      ...computeProps,
      minvCpus: spot ? 0 : props.minVcpus,
      maxvCpus: props.ceilings.onDemand,
      spot: false,
      allocationStrategy: batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
    });
    const environments = [onDemand];
    const order: batch.OrderedComputeEnvironment[] = [];
    if (spot) {
      const spotEnv = new batch.ManagedEc2EcsComputeEnvironment(scope, 'Spot', {
        ...computeProps,
        minvCpus: props.minVcpus,
        maxvCpus: props.ceilings.spot,
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
      (env.node.defaultChild as batch.CfnComputeEnvironment).addPropertyOverride('ComputeResources.LaunchTemplate.Version', launchTemplate.latestVersionNumber);
    }
    this.jobQueue = new batch.JobQueue(scope, 'JobQueue', {
      computeEnvironments: order,
      priority: 1,
      jobStateTimeLimitActions: CAPACITY_WAIT_REASONS.map((reason) => ({
        action: batch.JobStateTimeLimitActionsAction.CANCEL,
        state: batch.JobStateTimeLimitActionsState.RUNNABLE,
        maxTime: props.gpuWait,
        reason,
      })),
    });
  }
}

/** IMDSv2 with one hop, an encrypted gp3 root volume, the host cache and ECS agent settings. */
function gpuLaunchTemplate(scope: Construct, rootVolumeGiB: number): ec2.LaunchTemplate {
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

  return new ec2.LaunchTemplate(scope, 'LaunchTemplate', {
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
}
