import { DockerImageAsset } from 'aws-cdk-lib/aws-ecr-assets';
import { beforeAll, describe, expect, it } from 'vitest';
import { CONTAINER_STOP_TIMEOUT_S } from '../../infra/constructs/gpu-compute';
import { logicalId, resourcesOfType, type Synthesized, synth } from './helpers';

let s: Synthesized;
let onDemandOnly: Synthesized;
let odd: Synthesized;
beforeAll(() => {
  s = synth({ maxVcpus: 24, instanceTypes: ['g5.xlarge', 'g6.2xlarge'], rootVolumeGiB: 300, gpuWaitMinutes: 20 });
  onDemandOnly = synth({ spot: false });
  odd = synth({ maxVcpus: 13 });
});

const computeEnvs = (x: Synthesized) =>
  resourcesOfType(x.json, 'AWS::Batch::ComputeEnvironment').map(([id, r]) => ({ id, ...r.Properties }) as Record<string, any>);
const jobDefs = (x: Synthesized) => resourcesOfType(x.json, 'AWS::Batch::JobDefinition').map(([id, r]) => ({ id, ...r.Properties }) as Record<string, any>);
const jobDef = (stage: 'train' | 'evaluate') => s.json.Resources[logicalId(s.stack, s.stack.gpu[stage].jobDefinitionArn)]!.Properties;

describe('compute environments', () => {
  it('creates one Spot and one on-demand managed EC2 environment', () => {
    const envs = computeEnvs(s);
    expect(envs.map((e) => e.ComputeResources.Type).sort()).toEqual(['EC2', 'SPOT']);
    expect(envs.every((e) => e.Type === 'managed')).toBe(true);
  });

  it('uses the configured instance types, from 0 vCPUs up', () => {
    for (const env of computeEnvs(s)) {
      expect(env.ComputeResources).toMatchObject({ InstanceTypes: ['g5.xlarge', 'g6.2xlarge'], MinvCpus: 0 });
    }
  });

  it.each([
    ['maxVcpus 24 with spot', () => s, 24, { SPOT: 12, EC2: 12 }],
    ['maxVcpus 13 with spot', () => odd, 13, { SPOT: 7, EC2: 6 }],
    ['maxVcpus 16 on-demand only', () => onDemandOnly, 16, { EC2: 16 }],
  ] as const)('splits the vCPU ceiling so the environments together never exceed it (%s)', (_name, get, max, expected) => {
    const envs = computeEnvs(get());
    const ceilings = Object.fromEntries(envs.map((e) => [e.ComputeResources.Type, e.ComputeResources.MaxvCpus]));
    expect(ceilings).toEqual(expected);
    expect(envs.reduce((sum, e) => sum + e.ComputeResources.MaxvCpus, 0)).toBeLessThanOrEqual(max);
  });

  it("points both environments at the launch template's latest version number, so edits reach them", () => {
    const [[ltId]] = resourcesOfType(s.json, 'AWS::EC2::LaunchTemplate');
    for (const env of computeEnvs(s)) {
      expect(env.ComputeResources.LaunchTemplate).toEqual({
        LaunchTemplateId: { Ref: ltId },
        Version: { 'Fn::GetAtt': [ltId, 'LatestVersionNumber'] },
      });
      // A new version number is then an in-place infrastructure update, not a replacement.
      expect(env.ReplaceComputeEnvironment).toBe(false);
    }
  });

  it('allocates Spot by price and capacity, on-demand best-fit-progressive', () => {
    const byType = Object.fromEntries(computeEnvs(s).map((e) => [e.ComputeResources.Type, e.ComputeResources.AllocationStrategy]));
    expect(byType).toEqual({ SPOT: 'SPOT_PRICE_CAPACITY_OPTIMIZED', EC2: 'BEST_FIT_PROGRESSIVE' });
  });

  it('boots the ECS AL2023 NVIDIA AMI', () => {
    for (const env of computeEnvs(s)) {
      expect(env.ComputeResources.Ec2Configuration).toEqual([{ ImageType: 'ECS_AL2023_NVIDIA' }]);
    }
  });

  it('launches with an encrypted gp3 root volume of the configured size and IMDSv2 required', () => {
    const [[, lt]] = resourcesOfType(s.json, 'AWS::EC2::LaunchTemplate') as [[string, any]];
    expect(lt.Properties.LaunchTemplateData.BlockDeviceMappings).toEqual([
      { DeviceName: '/dev/xvda', Ebs: { DeleteOnTermination: true, Encrypted: true, VolumeSize: 300, VolumeType: 'gp3' } },
    ]);
    expect(lt.Properties.LaunchTemplateData.MetadataOptions).toMatchObject({ HttpTokens: 'required', HttpPutResponseHopLimit: 1 });
  });

  it("hands the host model cache to the containers' user (UID 1000) in MIME multipart user data", () => {
    const [[, lt]] = resourcesOfType(s.json, 'AWS::EC2::LaunchTemplate') as [[string, any]];
    const userData = JSON.stringify(lt.Properties.LaunchTemplateData.UserData);
    expect(userData).toContain('Content-Type: multipart/mixed');
    expect(userData).toContain('chown 1000:1000 /var/cache/avatar');
  });

  it('drains instances on a Spot interruption notice and gives containers the stop timeout the jobs are told', () => {
    const [[, lt]] = resourcesOfType(s.json, 'AWS::EC2::LaunchTemplate') as [[string, any]];
    const userData = JSON.stringify(lt.Properties.LaunchTemplateData.UserData);
    expect(userData).toContain("echo 'ECS_ENABLE_SPOT_INSTANCE_DRAINING=true' >> /etc/ecs/ecs.config");
    expect(userData).toContain(`echo 'ECS_CONTAINER_STOP_TIMEOUT=${CONTAINER_STOP_TIMEOUT_S}s' >> /etc/ecs/ecs.config`);
    expect(CONTAINER_STOP_TIMEOUT_S).toBe(120);
    for (const def of jobDefs(s)) {
      expect(def.ContainerProperties.Environment).toContainEqual({ Name: 'AVATAR_STOP_TIMEOUT_S', Value: '120' });
    }
  });

  it('queues on Spot first, then on-demand', () => {
    const [[, queue]] = resourcesOfType(s.json, 'AWS::Batch::JobQueue') as [[string, any]];
    const typeOf = (ref: any) => s.json.Resources[ref['Fn::GetAtt'][0]]!.Properties.ComputeResources.Type;
    const order = [...queue.Properties.ComputeEnvironmentOrder].sort((a, b) => a.Order - b.Order).map((o) => typeOf(o.ComputeEnvironment));
    expect(order).toEqual(['SPOT', 'EC2']);
  });

  it('cancels a job that waits in RUNNABLE for capacity longer than gpuWaitMinutes', () => {
    const [[, queue]] = resourcesOfType(s.json, 'AWS::Batch::JobQueue') as [[string, any]];
    expect(queue.Properties.JobStateTimeLimitActions).toEqual(
      ['CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY', 'MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE', 'MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT'].map(
        (reason) => ({
          Action: 'CANCEL',
          State: 'RUNNABLE',
          MaxTimeSeconds: 20 * 60,
          Reason: reason,
        }),
      ),
    );
  });

  it('runs on-demand only when spot is off', () => {
    expect(computeEnvs(onDemandOnly).map((e) => e.ComputeResources.Type)).toEqual(['EC2']);
    const [[, queue]] = resourcesOfType(onDemandOnly.json, 'AWS::Batch::JobQueue') as [[string, any]];
    expect(queue.Properties.ComputeEnvironmentOrder).toHaveLength(1);
  });
});

describe('network', () => {
  it('has no NAT gateway and no private subnets', () => {
    expect(resourcesOfType(s.json, 'AWS::EC2::NatGateway')).toEqual([]);
    const subnets = resourcesOfType(s.json, 'AWS::EC2::Subnet');
    expect(subnets).toHaveLength(2);
    expect(subnets.every(([, sn]) => sn.Properties.MapPublicIpOnLaunch === true)).toBe(true);
  });

  it('picks availability zones at deploy time, so synth needs no account lookup', () => {
    for (const [, subnet] of resourcesOfType(s.json, 'AWS::EC2::Subnet')) {
      expect(subnet.Properties.AvailabilityZone['Fn::Select'][1]).toEqual({ 'Fn::GetAZs': '' });
    }
  });

  it('reaches S3 through a gateway endpoint', () => {
    const [[, endpoint]] = resourcesOfType(s.json, 'AWS::EC2::VPCEndpoint') as [[string, any]];
    expect(endpoint.Properties.VpcEndpointType).toBe('Gateway');
    expect(JSON.stringify(endpoint.Properties.ServiceName)).toContain('.s3');
  });

  it('admits no inbound traffic and only HTTPS outbound', () => {
    const [[, sg]] = resourcesOfType(s.json, 'AWS::EC2::SecurityGroup') as [[string, any]];
    expect(sg.Properties.SecurityGroupIngress).toBeUndefined();
    expect(sg.Properties.SecurityGroupEgress).toEqual([
      { CidrIp: '0.0.0.0/0', Description: 'HTTPS to AWS APIs, ECR and S3', FromPort: 443, IpProtocol: 'tcp', ToPort: 443 },
    ]);
    expect(resourcesOfType(s.json, 'AWS::EC2::SecurityGroupIngress')).toEqual([]);
  });

  it('records rejected flows into the logs bucket', () => {
    const [[, flowLog]] = resourcesOfType(s.json, 'AWS::EC2::FlowLog') as [[string, any]];
    expect(flowLog.Properties).toMatchObject({ LogDestinationType: 's3', TrafficType: 'REJECT' });
  });
});

describe('job definitions', () => {
  it('define two GPU jobs, caption+train and evaluate, each asking for exactly one GPU', () => {
    const defs = jobDefs(s);
    expect(defs).toHaveLength(2);
    for (const def of defs) {
      expect(def.ContainerProperties.ResourceRequirements).toContainEqual({ Type: 'GPU', Value: '1' });
    }
  });

  it('fit a g5.xlarge (4 vCPU, 16 GiB) with room for the ECS agent', () => {
    for (const def of jobDefs(s)) {
      const req = Object.fromEntries(def.ContainerProperties.ResourceRequirements.map((r: any) => [r.Type, Number(r.Value)]));
      expect(req.VCPU).toBeLessThanOrEqual(4);
      expect(req.MEMORY).toBeLessThan(16 * 1024 - 512);
    }
  });

  it.each([
    // caption (at most 1 h) then train (at most 4 h), one process each
    ['train', ['python', '-m', 'avatar_job', 'caption', 'train'], 5 * 3600],
    ['evaluate', ['python', '-m', 'trainer', 'evaluate'], 2 * 3600],
  ] as const)('%s runs %j with a timeout of %i s', (stage, command, seconds) => {
    const def = jobDef(stage);
    expect(def.ContainerProperties.Command).toEqual(command);
    expect(def.Timeout).toEqual({ AttemptDurationSeconds: seconds });
  });

  it('retry Spot reclaims and image pull/start failures, and stop on anything else', () => {
    for (const def of jobDefs(s)) {
      expect(def.RetryStrategy).toEqual({
        Attempts: 3,
        EvaluateOnExit: [
          { Action: 'RETRY', OnStatusReason: 'Host EC2*' },
          { Action: 'RETRY', OnReason: 'CannotPullContainerError*' },
          { Action: 'RETRY', OnReason: 'CannotStartContainerError*' },
          { Action: 'RETRY', OnReason: 'CannotInspectContainerError*' },
          { Action: 'EXIT', OnReason: '*' },
        ],
      });
    }
  });

  it('run both jobs from the one GPU image, built once from containers/trainer/Dockerfile', () => {
    const image = (stage: 'train' | 'evaluate') => JSON.stringify(jobDef(stage).ContainerProperties.Image);
    expect(image('train')).toBe(image('evaluate'));
    const assets = s.stack.node.findAll().filter((c): c is DockerImageAsset => c instanceof DockerImageAsset);
    expect(assets).toHaveLength(1);
    expect(JSON.stringify(jobDef('train').ContainerProperties.Image)).toContain(assets[0]!.imageTag);
  });

  it('mount the host model cache at /cache and tell the code where it is', () => {
    for (const def of jobDefs(s)) {
      expect(def.ContainerProperties.Volumes).toEqual([{ Name: 'model-cache', Host: { SourcePath: '/var/cache/avatar' } }]);
      expect(def.ContainerProperties.MountPoints).toEqual([{ SourceVolume: 'model-cache', ContainerPath: '/cache' }]);
    }
  });

  it('pass bucket names and offline switches, and the base model key to train and evaluate', () => {
    const env = (stage: 'train' | 'evaluate') => Object.fromEntries(jobDef(stage).ContainerProperties.Environment.map((e: any) => [e.Name, e.Value]));
    for (const stage of ['train', 'evaluate'] as const) {
      expect(env(stage)).toMatchObject({
        AVATAR_INBOX_BUCKET: { Ref: logicalId(s.stack, s.stack.storage.inbox.bucketName) },
        AVATAR_ARTIFACTS_BUCKET: { Ref: logicalId(s.stack, s.stack.storage.artifacts.bucketName) },
        AVATAR_CACHE_DIR: '/cache',
        HF_HUB_OFFLINE: '1',
        TRANSFORMERS_OFFLINE: '1',
      });
    }
    expect(env('train').AVATAR_BASE_MODEL_KEY).toBe('models/sd15/v1-5-pruned-emaonly.safetensors');
    expect(env('evaluate').AVATAR_BASE_MODEL_KEY).toBe('models/sd15/v1-5-pruned-emaonly.safetensors');
  });

  it('size /dev/shm for the data loader workers and raise the open-file limit', () => {
    for (const def of jobDefs(s)) {
      expect(def.ContainerProperties.LinuxParameters).toEqual({ SharedMemorySize: 4096 });
      expect(def.ContainerProperties.Ulimits).toEqual([{ Name: 'nofile', SoftLimit: 65536, HardLimit: 65536 }]);
    }
  });

  it('log with awslogs and give each GPU job its own job role', () => {
    const roles = jobDefs(s).map((d) => JSON.stringify(d.ContainerProperties.JobRoleArn));
    expect(new Set(roles).size).toBe(2);
    for (const def of jobDefs(s)) expect(def.ContainerProperties.LogConfiguration.LogDriver).toBe('awslogs');
  });
});

describe('warm path (minVcpus)', () => {
  it('keeps the warm vCPUs in the first environment of the queue and none elsewhere', () => {
    const warm = synth({ minVcpus: 4 });
    const mins = Object.fromEntries(computeEnvs(warm).map((e) => [e.ComputeResources.Type, e.ComputeResources.MinvCpus]));
    expect(mins).toEqual({ SPOT: 4, EC2: 0 });
    const onDemandWarm = synth({ minVcpus: 4, spot: false });
    expect(computeEnvs(onDemandWarm).map((e) => e.ComputeResources.MinvCpus)).toEqual([4]);
  });
});
