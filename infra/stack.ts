import { CfnOutput, Duration, Stack, type StackProps } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type { Construct } from 'constructs';
import { LAYOUT } from '../lambdas/shared/layout';
import type { AvatarConfig } from './config';
import { Alarms } from './constructs/alarms';
import { Announce } from './constructs/announce';
import { JobApi } from './constructs/api';
import { GpuBatch } from './constructs/gpu-batch';
import { JobCredentials } from './constructs/job-credentials';
import { Reconcile } from './constructs/reconcile';
import { SiloBudget } from './constructs/silo';
import { StageFunctions } from './constructs/stage-functions';
import { Storage } from './constructs/storage';
import { Teams } from './constructs/teams';
import { Trigger } from './constructs/trigger';
import { Workflow } from './constructs/workflow';

/**
 * Feature flags this stack depends on, set on the stack itself so it synthesizes the same under
 * `cdk synth` and under a bare `new App()` in tests.
 */
const FEATURE_FLAGS: Record<string, boolean> = {
  // Access-log delivery by bucket policy: the ACL alternative is impossible with ACLs disabled.
  '@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy': true,
  // Write the flow-log delivery policy ourselves instead of letting AWS add it out of band.
  '@aws-cdk/aws-s3:createDefaultLoggingPolicy': true,
};

/** Props of {@link AvatarStack}. */
export interface AvatarStackProps extends StackProps {
  /** Validated deployment configuration (see `loadConfig`). */
  readonly config: AvatarConfig;
}

/**
 * The photo-to-LoRA backend: storage, trigger, workflow, GPU batch and alarms. It only composes
 * constructs; each lives in `infra/constructs/`. Environment-agnostic: no lookups.
 */
export class AvatarStack extends Stack {
  /** Buckets. */
  public readonly storage: Storage;
  /** VPC, compute environments, job queue and job definitions. */
  public readonly gpu: GpuBatch;
  /** Lambda steps of the workflow. */
  public readonly functions: StageFunctions;
  /** The state machine. */
  public readonly workflow: Workflow;
  /** job.json -> start -> execution. */
  public readonly trigger: Trigger;
  /** Execution end -> reconcile -> truthful terminal status. */
  public readonly reconcile: Reconcile;
  /** status.json write -> announce -> "Avatar Job State Change" event. */
  public readonly announce: Announce;
  /** Operator alarms. */
  public readonly alarms: Alarms;
  /** Team registry table and the GPU fair-share policy. */
  public readonly teams: Teams;
  /** The job API (HTTP API, Cognito clients, webhooks). */
  public readonly api: JobApi;
  /** The mint function and the data roles it assumes (isolation by credentials). */
  public readonly credentials: JobCredentials;
  /** Silo mode's account budget alert (absent in pool mode). */
  public readonly silo?: SiloBudget;

  constructor(scope: Construct, id: string, props: AvatarStackProps) {
    super(scope, id, props);
    for (const [flag, value] of Object.entries(FEATURE_FLAGS)) this.node.setContext(flag, value);
    const { config } = props;

    const storage = new Storage(this, 'Storage', {
      rawPhotoRetentionDays: config.rawPhotoRetentionDays,
      jobDataRetentionDays: config.jobDataRetentionDays,
    });

    const teams = new Teams(this, 'Teams');
    const executionTimeout = Duration.hours(config.executionTimeoutHours);
    const credentials = new JobCredentials(this, 'JobCredentials', {
      inbox: storage.inbox,
      artifacts: storage.artifacts,
      teamsTable: teams.table,
      executionTimeout,
    });

    const gpu = new GpuBatch(this, 'GpuBatch', {
      inbox: storage.inbox,
      artifacts: storage.artifacts,
      logsBucket: storage.logs,
      instanceTypes: config.instanceTypes,
      maxVcpus: config.maxVcpus,
      minVcpus: config.minVcpus,
      gpuWait: Duration.minutes(config.gpuWaitMinutes),
      spot: config.spot,
      rootVolumeGiB: config.rootVolumeGiB,
      baseModelKey: config.baseModelKey,
      credentials,
    });

    teams.attachTo(gpu.jobQueue, [gpu.train, gpu.evaluate]);

    const functions = new StageFunctions(this, 'Stages', {
      inbox: storage.inbox,
      artifacts: storage.artifacts,
      urlExpirySeconds: config.urlExpirySeconds,
      teamsTable: teams.table,
      jobQueue: gpu.jobQueue,
      credentials,
    });

    const workflow = new Workflow(this, 'Workflow', {
      functions,
      batchJobs: gpu,
      teamsTable: teams.table,
      timeout: executionTimeout,
    });

    // A separate policy, not the roles' default ones: the state machine references the functions,
    // so a grant inside their roles would make the functions depend on the state machine (a cycle).
    new iam.Policy(this, 'TaskResponse', {
      roles: functions.taskResponders.map((fn) => fn.executionRole),
      statements: [
        new iam.PolicyStatement({ actions: ['states:SendTaskSuccess', 'states:SendTaskFailure'], resources: [workflow.stateMachine.stateMachineArn] }),
      ],
    });

    const trigger = new Trigger(this, 'Trigger', {
      inbox: storage.inbox,
      artifacts: storage.artifacts,
      stateMachine: workflow.stateMachine,
    });

    const reconcile = new Reconcile(this, 'Reconcile', {
      stateMachine: workflow.stateMachine,
      reconcileFunction: functions.reconcile,
      deadLetterQueue: trigger.deadLetterQueue,
    });

    const announce = new Announce(this, 'Announce', {
      artifacts: storage.artifacts,
      deadLetterQueue: trigger.deadLetterQueue,
    });

    const alarms = new Alarms(this, 'Alarms', {
      stateMachine: workflow.stateMachine,
      deadLetterQueue: trigger.deadLetterQueue,
      alarmEmail: config.alarmEmail,
    });

    const api = new JobApi(this, 'JobApi', {
      inbox: storage.inbox,
      artifacts: storage.artifacts,
      stateMachine: workflow.stateMachine,
      urlExpirySeconds: config.urlExpirySeconds,
      teamsTable: teams.table,
    });

    this.storage = storage;
    this.gpu = gpu;
    this.functions = functions;
    this.workflow = workflow;
    this.trigger = trigger;
    this.reconcile = reconcile;
    this.announce = announce;
    this.alarms = alarms;
    this.teams = teams;
    this.api = api;
    this.credentials = credentials;
    if (config.silo) this.silo = new SiloBudget(this, 'Silo', config.silo);

    new CfnOutput(this, 'InboxBucketName', { value: storage.inbox.bucketName, description: 'Upload photos and job.json here' });
    new CfnOutput(this, 'ArtifactsBucketName', { value: storage.artifacts.bucketName, description: `Results; upload base models under ${LAYOUT.models}` });
    new CfnOutput(this, 'StateMachineArn', { value: workflow.stateMachine.stateMachineArn });
    new CfnOutput(this, 'DeadLetterQueueUrl', { value: trigger.deadLetterQueue.queueUrl });
    new CfnOutput(this, 'JobQueueArn', { value: gpu.jobQueue.jobQueueArn });
    new CfnOutput(this, 'TeamsTableName', { value: teams.table.tableName, description: 'AVATAR_TEAMS_TABLE of npm run team' });
    new CfnOutput(this, 'SchedulingPolicyArn', {
      value: teams.schedulingPolicy.schedulingPolicyArn,
      description: 'AVATAR_SCHEDULING_POLICY_ARN of npm run team',
    });
  }
}
