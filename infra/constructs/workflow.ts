import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import type * as batch from 'aws-cdk-lib/aws-batch';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import { iam5ResourceFinding } from './nag';
import { TeamBatchSubmitJob } from './team-batch-job';

/** Lambda stages of the workflow. */
export interface WorkflowFunctions {
  /** `lambdas/validate`. */
  readonly validate: lambda.IFunction;
  /** `lambdas/normalize`. */
  readonly normalize: lambda.IFunction;
  /** `lambdas/finalize`. */
  readonly finalize: lambda.IFunction;
  /** `lambdas/mark-failed`. */
  readonly markFailed: lambda.IFunction;
}

/** Batch GPU stages of the workflow: one job definition each, one shared queue. */
export interface WorkflowBatchJobs {
  /** The queue every GPU job is submitted to. */
  readonly jobQueue: batch.IJobQueue;
  /** `python -m captioner run`. */
  readonly caption: batch.IJobDefinition;
  /** `python -m trainer train`. */
  readonly train: batch.IJobDefinition;
  /** `python -m trainer evaluate`. */
  readonly evaluate: batch.IJobDefinition;
}

/** Props of {@link Workflow}. */
export interface WorkflowProps {
  /** The Lambda steps. */
  readonly functions: WorkflowFunctions;
  /** The Batch steps. */
  readonly batchJobs: WorkflowBatchJobs;
  /**
   * Timeout of a whole execution.
   * @default Duration.hours(12)
   */
  readonly timeout?: Duration;
  /**
   * Retention of the execution log group.
   * @default logs.RetentionDays.THREE_MONTHS
   */
  readonly logRetention?: logs.RetentionDays;
}

/** State names: other code (local workflow tests) maps handlers by these names. */
export const STATE_NAMES = {
  validate: 'Validate',
  normalize: 'Normalize',
  caption: 'Caption',
  train: 'Train',
  evaluate: 'Evaluate',
  finalize: 'Finalize',
  markFailed: 'MarkFailed',
  failed: 'Failed',
  succeeded: 'Succeeded',
} as const;

/**
 * Errors retried on Lambda tasks: the Lambda service's transient errors, plus `TransientError`,
 * which our handlers throw for throttled or 5xx AWS calls.
 */
export const LAMBDA_RETRY_ERRORS = [
  'Lambda.ServiceException',
  'Lambda.AWSLambdaException',
  'Lambda.SdkClientException',
  'Lambda.TooManyRequestsException',
  'Lambda.ClientExecutionTimeoutException',
  'TransientError',
] as const;

/**
 * Errors retried on Batch tasks: transient failures of the Batch API calls only. A job that fails
 * is not resubmitted here: Spot reclaims (`Host EC2*`) and image pull/start failures are retried
 * inside Batch by each job definition's retry strategy, which sees the real exit reason.
 */
export const BATCH_RETRY_ERRORS = [
  'Batch.AWSBatchException',
  'Batch.ServerException',
  'Batch.TooManyRequestsException',
] as const;

/**
 * The job state machine (STANDARD, JSONPath):
 * `Validate -> Normalize -> Caption -> Train -> Evaluate -> Finalize -> Succeeded`,
 * with every task caught into `MarkFailed -> Failed`.
 *
 * Input:
 * ```json
 * { "teamId": "acme", "jobId": "job-42" }
 * ```
 * Every Lambda step receives `{ "teamId", "jobId" }` and its result is kept at
 * `$.<stage>.result` (the Lambda `Payload`); every Batch step is submitted as job
 * `<teamId>-<jobId>-<stage>` with env `AVATAR_TEAM_ID`/`AVATAR_JOB_ID` and its Batch job id is
 * kept at `$.<stage>.jobId`.
 *
 * Output (success):
 * ```json
 * { "teamId": "acme", "jobId": "job-42",
 *   "validate": { "result": {} }, "normalize": { "result": {} },
 *   "caption": { "jobId": "..." }, "train": { "jobId": "..." }, "evaluate": { "jobId": "..." },
 *   "finalize": { "result": {} } }
 * ```
 *
 * Error: the failing step's error is stored at `$.failure.<stage>` as
 * `{ "Error": "<name>", "Cause": "<message>" }` and handed to `mark-failed` as
 * `{ "teamId", "jobId", "failure": { "<stage>": { "Error", "Cause" } } }`; the execution then ends
 * in the `Failed` state with error `JobFailed`.
 *
 * Retries: Lambda steps retry {@link LAMBDA_RETRY_ERRORS} (2 s, x2, 5 attempts, full jitter);
 * Batch steps retry {@link BATCH_RETRY_ERRORS} (10 s, x2, 4 attempts). Nothing retries
 * `States.ALL`, so validation errors fail fast.
 */
export class Workflow extends Construct {
  /** The state machine. */
  public readonly stateMachine: sfn.StateMachine;
  /** Execution history log group (`/aws/vendedlogs/states/...`). */
  public readonly logGroup: logs.LogGroup;

  constructor(scope: Construct, id: string, props: WorkflowProps) {
    super(scope, id);
    const { functions, batchJobs } = props;

    const failed = new sfn.Fail(this, STATE_NAMES.failed, {
      error: 'JobFailed',
      cause: 'A stage failed; see status.json of the job and $.failure in the execution history',
    });
    const markFailed = lambdaStep(this, STATE_NAMES.markFailed, functions.markFailed, 'markFailed', {
      teamId: sfn.JsonPath.stringAt('$.teamId'),
      jobId: sfn.JsonPath.stringAt('$.jobId'),
      failure: sfn.JsonPath.objectAt('$.failure'),
    });
    // Even if recording the failure fails, end in the same terminal error for alarms and callers.
    markFailed.addCatch(failed, { errors: [sfn.Errors.ALL], resultPath: '$.failure.markFailed' });
    markFailed.next(failed);

    const jobRef = {
      teamId: sfn.JsonPath.stringAt('$.teamId'),
      jobId: sfn.JsonPath.stringAt('$.jobId'),
    };
    const catchInto = <T extends tasks.LambdaInvoke | tasks.BatchSubmitJob>(task: T, stage: string): T => {
      task.addCatch(markFailed, { errors: [sfn.Errors.ALL], resultPath: `$.failure.${stage}` });
      return task;
    };

    const validate = catchInto(lambdaStep(this, STATE_NAMES.validate, functions.validate, 'validate', jobRef), 'validate');
    const normalize = catchInto(lambdaStep(this, STATE_NAMES.normalize, functions.normalize, 'normalize', jobRef), 'normalize');
    const caption = catchInto(batchStep(this, STATE_NAMES.caption, batchJobs.jobQueue, batchJobs.caption, 'caption'), 'caption');
    const train = catchInto(batchStep(this, STATE_NAMES.train, batchJobs.jobQueue, batchJobs.train, 'train'), 'train');
    const evaluate = catchInto(batchStep(this, STATE_NAMES.evaluate, batchJobs.jobQueue, batchJobs.evaluate, 'evaluate'), 'evaluate');
    const finalize = catchInto(lambdaStep(this, STATE_NAMES.finalize, functions.finalize, 'finalize', jobRef), 'finalize');
    const succeeded = new sfn.Succeed(this, STATE_NAMES.succeeded);

    const definition = validate.next(normalize).next(caption).next(train).next(evaluate).next(finalize).next(succeeded);

    this.logGroup = new logs.LogGroup(this, 'Logs', {
      // The vendedlogs prefix keeps the CloudWatch Logs resource policy small (AWS guidance).
      logGroupName: `/aws/vendedlogs/states/${idSuffix(this)}`,
      retention: props.logRetention ?? logs.RetentionDays.THREE_MONTHS,
      removalPolicy: RemovalPolicy.DESTROY,
    });

    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      definitionBody: sfn.DefinitionBody.fromChainable(definition),
      stateMachineType: sfn.StateMachineType.STANDARD,
      queryLanguage: sfn.QueryLanguage.JSON_PATH,
      timeout: props.timeout ?? Duration.hours(12),
      tracingEnabled: true,
      logs: { destination: this.logGroup, level: sfn.LogLevel.ALL, includeExecutionData: true },
      comment: 'Avatar LoRA job: validate, normalize, caption, train, evaluate, finalize',
    });

    const role = this.stateMachine.role;
    for (const fn of [functions.validate, functions.normalize, functions.finalize, functions.markFailed]) {
      Validations.of(role).acknowledge({
        id: iam5ResourceFinding(this, fn.functionArn, ':*'),
        reason: 'LambdaInvoke grants the function and its versions/aliases (<arn>:*) so a published version can be invoked; nothing else.',
      });
    }
    Validations.of(role).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job-definition/*]',
      reason: 'BatchSubmitJob grants batch:SubmitJob on job-definition/* because a job definition ARN changes with every revision; the job queue is still limited to ours.',
    });
    Validations.of(role).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job/*]',
      reason: 'Tags (team, job, stage) are set at SubmitJob, which needs batch:TagResource on the job being created: its id is unknown until then.',
    });
    Validations.of(role).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason: 'Execution logging (logs:*LogDelivery, PutResourcePolicy, Describe*) and X-Ray tracing actions support no resource-level permissions.',
    });
  }
}

/** A unique, deterministic log group suffix (no hard-coded physical name, no time-based hash). */
function idSuffix(scope: Construct): string {
  return `avatar-workflow-${scope.node.addr.slice(0, 12)}`;
}

function lambdaStep(
  scope: Construct,
  name: string,
  fn: lambda.IFunction,
  stage: string,
  payload: Record<string, unknown>,
): tasks.LambdaInvoke {
  const task = new tasks.LambdaInvoke(scope, name, {
    lambdaFunction: fn,
    payload: sfn.TaskInput.fromObject(payload),
    payloadResponseOnly: false,
    // Replaced by the explicit retry below (adds throttling and TransientError, full jitter).
    retryOnServiceExceptions: false,
    resultSelector: { 'result.$': '$.Payload' },
    resultPath: `$.${stage}`,
  });
  task.addRetry({
    errors: [...LAMBDA_RETRY_ERRORS],
    interval: Duration.seconds(2),
    backoffRate: 2,
    maxAttempts: 5,
    jitterStrategy: sfn.JitterType.FULL,
  });
  return task;
}

function batchStep(
  scope: Construct,
  name: string,
  jobQueue: batch.IJobQueue,
  jobDefinition: batch.IJobDefinition,
  stage: 'caption' | 'train' | 'evaluate',
): tasks.BatchSubmitJob {
  // The team's share identifier, stage priority and team/job/stage tags (see TeamBatchSubmitJob).
  const task = new TeamBatchSubmitJob(scope, name, {
    stage,
    jobName: sfn.JsonPath.format(`{}-{}-${stage}`, sfn.JsonPath.stringAt('$.teamId'), sfn.JsonPath.stringAt('$.jobId')),
    jobQueueArn: jobQueue.jobQueueArn,
    jobDefinitionArn: jobDefinition.jobDefinitionArn,
    integrationPattern: sfn.IntegrationPattern.RUN_JOB,
    containerOverrides: {
      environment: {
        AVATAR_TEAM_ID: sfn.JsonPath.stringAt('$.teamId'),
        AVATAR_JOB_ID: sfn.JsonPath.stringAt('$.jobId'),
      },
    },
    resultSelector: { 'jobId.$': '$.JobId' },
    resultPath: `$.${stage}`,
  });
  task.addRetry({
    errors: [...BATCH_RETRY_ERRORS],
    interval: Duration.seconds(10),
    backoffRate: 2,
    maxAttempts: 4,
  });
  return task;
}
