import { Duration, Stack, Validations } from 'aws-cdk-lib';
import type * as batch from 'aws-cdk-lib/aws-batch';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { grantStageAccess } from './bucket-access';
import type { JobCredentials } from './job-credentials';
import { LambdaFunction } from './lambda-function';

/** Props of {@link StageFunctions}. */
export interface StageFunctionsProps {
  /** Customer uploads (`teams/<team>/jobs/<job>/job.json`, photos). */
  readonly inbox: s3.IBucket;
  /** Pipeline outputs. */
  readonly artifacts: s3.IBucket;
  /**
   * Lifetime of the presigned URLs finalize writes into `manifest.json`.
   * @default 3600
   */
  readonly urlExpirySeconds?: number;
  /** The team registry (limits, counters, admission records, cost ledger). */
  readonly teamsTable: dynamodb.ITable;
  /** The GPU job queue, where the ends of a job look up its Batch jobs to price them. */
  readonly jobQueue: batch.IJobQueue;
  /** Mints the job-scoped S3 credentials of the workflow's Lambda stages. */
  readonly credentials: JobCredentials;
}

/** Item actions the admission and release code uses (transactions need no action of their own). */
const REGISTRY_ACTIONS = [
  'dynamodb:GetItem',
  'dynamodb:PutItem',
  'dynamodb:UpdateItem',
  'dynamodb:DeleteItem',
  'dynamodb:Query',
  'dynamodb:ConditionCheckItem',
];

/**
 * Packages shipped as files beside the bundle: sharp's linux-x64 native binary, and WASM modules
 * whose .wasm files and model weights are read from disk at run time (lambdas/validate).
 */
const DECODE_MODULES = ['sharp', 'heic-decode'];
// Face detection runs BlazeFace on ONNX Runtime's native CPU runtime; @vladmandic/human ships the
// model's graph and weights, read from disk (bench/bundled-validate.ts runs the bundle).
const FACE_MODULES = ['@vladmandic/human', 'onnxruntime-node'];

/**
 * The Lambda steps of the workflow (`validate`, `normalize`, `finalize`, `mark-failed`), and
 * `reconcile`, which records the end of an execution that skipped MarkFailed. The workflow's stages
 * get their S3 access per job from mint ({@link JobCredentials}); reconcile keeps its own grants.
 */
export class StageFunctions extends Construct {
  /** Checks uploads and job.json; writes `validate/`. */
  public readonly validate: LambdaFunction;
  /** Copies validate's crops and the user captions into kohya's layout; writes the dataset and plan under `normalize/`. */
  public readonly normalize: LambdaFunction;
  /** Writes `manifest.json` with presigned URLs of the results. */
  public readonly finalize: LambdaFunction;
  /** Records a failure in `status.json`. */
  public readonly markFailed: LambdaFunction;
  /** Records a truthful terminal `status.json` for a timed-out, stopped or failed execution. */
  public readonly reconcile: LambdaFunction;
  /** Admits the job against its team's limits before the first GPU minute. */
  public readonly admit: LambdaFunction;
  /**
   * Functions that answer a waiting execution's task token (admit; the job ends that release a
   * slot): the stack grants them states:SendTaskSuccess/SendTaskFailure on the state machine.
   */
  public readonly taskResponders: LambdaFunction[];

  constructor(scope: Construct, id: string, props: StageFunctionsProps) {
    super(scope, id);
    const { inbox, artifacts } = props;
    const environment = { INBOX_BUCKET: inbox.bucketName, ARTIFACTS_BUCKET: artifacts.bucketName };

    this.validate = new LambdaFunction(this, 'Validate', {
      stage: 'validate',
      memorySize: 2048,
      timeout: Duration.minutes(10),
      environment,
      nodeModules: [...DECODE_MODULES, ...FACE_MODULES],
    });

    this.normalize = new LambdaFunction(this, 'Normalize', {
      stage: 'normalize',
      memorySize: 2048,
      timeout: Duration.minutes(15),
      environment,
    });

    this.finalize = new LambdaFunction(this, 'Finalize', {
      stage: 'finalize',
      memorySize: 512,
      timeout: Duration.minutes(5),
      environment: { ...environment, URL_EXPIRY_SECONDS: String(props.urlExpirySeconds ?? 3600) },
    });

    // The SystemFailures metric (lambdas/shared/metrics.ts) carries the stack name as its dimension.
    const metricsEnv = { METRICS_STACK_NAME: Stack.of(this).stackName };
    this.markFailed = new LambdaFunction(this, 'MarkFailed', {
      stage: 'mark-failed',
      memorySize: 256,
      timeout: Duration.minutes(1),
      environment: { ...environment, ...metricsEnv },
    });

    this.reconcile = new LambdaFunction(this, 'Reconcile', {
      stage: 'reconcile',
      memorySize: 256,
      timeout: Duration.seconds(30),
      environment: { ARTIFACTS_BUCKET: artifacts.bucketName, ...metricsEnv },
    });
    grantStageAccess(this.reconcile.executionRole, props, 'reconcile');

    const teamsEnv = { TEAMS_TABLE: props.teamsTable.tableName };
    this.admit = new LambdaFunction(this, 'Admit', {
      stage: 'admit',
      memorySize: 256,
      timeout: Duration.seconds(30),
      environment: { ...environment, ...teamsEnv },
    });
    this.admit.executionRole.addToPrincipalPolicy(new iam.PolicyStatement({ actions: REGISTRY_ACTIONS, resources: [props.teamsTable.tableArn] }));

    // The ends of a job charge its cost and release its slot (lambdas/shared/accounting.ts).
    for (const fn of [this.finalize, this.markFailed, this.reconcile]) {
      fn.addEnvironment('TEAMS_TABLE', props.teamsTable.tableName);
      fn.addEnvironment('JOB_QUEUE', props.jobQueue.jobQueueArn);
      const role = fn.executionRole;
      role.addToPrincipalPolicy(new iam.PolicyStatement({ actions: REGISTRY_ACTIONS, resources: [props.teamsTable.tableArn] }));
      // ListJobs, DescribeJobs and DescribeComputeEnvironments support no resource-level permission.
      role.addToPrincipalPolicy(
        new iam.PolicyStatement({ actions: ['batch:ListJobs', 'batch:DescribeJobs', 'batch:DescribeComputeEnvironments'], resources: ['*'] }),
      );
      Validations.of(role).acknowledge({
        id: 'AwsSolutions-IAM5[Resource::*]',
        reason:
          'X-Ray (PutTraceSegments, PutTelemetryRecords) and the read-only Batch calls that price a job (ListJobs, DescribeJobs, DescribeComputeEnvironments) support no resource-level permissions.',
      });
    }
    this.taskResponders = [this.admit, this.finalize, this.markFailed, this.reconcile];

    // The workflow's Lambda stages act on the one job of their execution: no S3 grant of their own, only
    // mint, whose credentials reach that job's keys (reconcile acts on jobs named by events: above).
    for (const fn of [this.validate, this.normalize, this.admit, this.finalize, this.markFailed]) {
      fn.addEnvironment('MINT_FUNCTION', props.credentials.mint.functionName);
      props.credentials.grantMint(fn.executionRole);
    }
  }
}
