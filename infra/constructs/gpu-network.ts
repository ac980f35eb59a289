import * as ec2 from 'aws-cdk-lib/aws-ec2';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type { Construct } from 'constructs';

/**
 * The GPU instances' network, free while idle: a VPC with public subnets only in two AZs, no NAT
 * gateway and a free S3 gateway endpoint. Instances get public IPs (the public subnets map them)
 * because they need outbound HTTPS to ECR, ECS, CloudWatch Logs and S3 without a NAT gateway
 * (~$32/month each); the security group admits no inbound traffic and only TCP 443 outbound.
 *
 * Builds its resources in `scope` (the {@link GpuBatch}) rather than in a child construct, so they
 * keep the logical IDs they had before the GPU construct was split: a new ID would replace the VPC.
 */
export class GpuNetwork {
  /** The zero-idle-cost VPC. */
  public readonly vpc: ec2.Vpc;
  /** The instances' security group: no inbound, HTTPS outbound only. */
  public readonly securityGroup: ec2.SecurityGroup;

  /** `logsBucket` receives the rejected-traffic flow logs (prefix `vpc-flow-logs/`). */
  constructor(scope: Construct, logsBucket: s3.IBucket) {
    this.vpc = new ec2.Vpc(scope, 'Vpc', {
      maxAzs: 2,
      natGateways: 0,
      subnetConfiguration: [{ name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 }],
      gatewayEndpoints: { S3: { service: ec2.GatewayVpcEndpointAwsService.S3 } },
      flowLogs: {
        s3: {
          destination: ec2.FlowLogDestination.toS3(logsBucket, 'vpc-flow-logs/'),
          trafficType: ec2.FlowLogTrafficType.REJECT,
        },
      },
    });

    this.securityGroup = new ec2.SecurityGroup(scope, 'InstanceSecurityGroup', {
      vpc: this.vpc,
      description: 'GPU batch instances: no inbound, HTTPS outbound only',
      allowAllOutbound: false,
    });
    this.securityGroup.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS to AWS APIs, ECR and S3');
  }
}
