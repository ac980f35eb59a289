import { Duration, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import type * as batch from 'aws-cdk-lib/aws-batch';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import { DATA_STAGES, type DataStage } from '../../lambdas/shared/session-policy';
import { stageTimeout } from './gpu-batch';
import { iam5ResourceFinding } from './nag';
import { TeamBatchSubmitJob } from './team-batch-job';

/** A Lambda step: the function and its own timeout, which sizes the state's timeout. */
export type StepFunction = lambda.IFunction & { readonly timeout?: Duration };

/** Lambda stages of the workflow. */
export interface WorkflowFunctions {
  /** `lambdas/validate`. */
  readonly validate: StepFunction;
  /** `lambdas/normalize`. */
  readonly normalize: StepFunction;
  /** `lambdas/admit`: the team's limits, before the first GPU minute (answers its task token). */
  readonly admit: StepFunction;
  /** `lambdas/finalize`. */
  readonly finalize: StepFunction;
  /** `lambdas/mark-failed`. */
  readonly markFailed: StepFunction;
}

/** Batch GPU stages of the workflow: one job definition each, one shared queue. */
export interface WorkflowBatchJobs {
  /** The queue every GPU job is submitted to. */
  readonly jobQueue: batch.IJobQueue;
  /** `python -m avatar_job caption train`: the caption stage, then the train stage, in one GPU job. */
  readonly train: batch.IJobDefinition;
  /** `python -m trainer evaluate`. */
  readonly evaluate: batch.IJobDefinition;
  /** How long a job may wait in RUNNABLE before the queue cancels it (sizes the Batch state timeouts). */
  readonly gpuWait: Duration;
}

/** Props of {@link Workflow}. */
export interface WorkflowProps {
  /** The Lambda steps. */
  readonly functions: WorkflowFunctions;
  /** The Batch steps. */
  readonly batchJobs: WorkflowBatchJobs;
  /** The team registry: the state machine registers the hashes of each execution's stage secrets there (mint reads them). */
  readonly teamsTable: dynamodb.ITable;
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
  createSecret: 'CreateJobSecret',
  registerSecret: 'RegisterJobSecret',
  validate: 'Validate',
  normalize: 'Normalize',
  admit: 'Admit',
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
export const BATCH_RETRY_ERRORS = ['Batch.AWSBatchException', 'Batch.ServerException', 'Batch.TooManyRequestsException'] as const;

/**
 * How long a Lambda state waits beyond the function's own timeout before raising `States.Timeout`:
 * the function's timeout error normally arrives first; this catches an invocation that never answers.
 */
export const LAMBDA_STATE_MARGIN = Duration.seconds(30);

/** The registry item of a job's secret (lambdas/mint/handler.ts `secretKey`): no team, job, wait or cost item uses `SECRET#`. */
const SECRET_SK_PREFIX = 'SECRET#';

/**
 * The job state machine (STANDARD, JSONPath):
 * `CreateJobSecret -> RegisterJobSecret -> Validate -> Normalize -> Admit -> Train -> Evaluate -> Finalize -> Succeeded`,
 * with every task caught into `MarkFailed -> Failed`. `Train` is one GPU job that runs the caption
 * stage and then the train stage (each reports as itself in status.json); `Evaluate` is the second.
 *
 * Admit invokes `lambdas/admit` with `.waitForTaskToken` (payload `{ teamId, jobId, taskToken }`):
 * the execution waits there while its team is at its concurrency limit, until a release answers the
 * token; a rejected job's token is failed with the admission code (caught into MarkFailed). Its
 * decision is kept at `$.admit.result`. Its timeout is the execution's: a job may wait for a slot as
 * long as its execution may run.
 *
 * Stage secrets (isolation by credentials, docs/architecture.md): `CreateJobSecret` puts one fresh
 * `States.UUID()` per data stage at `$.stageSecrets` ({@link stageSecret}), and `RegisterJobSecret`
 * writes the SHA-256 of each to the team registry (`pk=TEAM#<teamId>, sk=SECRET#<jobId>`, map
 * `stageSecrets` by stage name), from the state machine itself: no stage can register one. Each stage
 * gets its own secret only and shows it to the mint function for its job's S3 credentials, which are
 * that stage's only.
 *
 * Input:
 * ```json
 * { "teamId": "acme", "jobId": "job-42" }
 * ```
 * Every Lambda step receives `{ "teamId", "jobId", "jobSecret" }` (its stage's secret) and its result is kept at
 * `$.<stage>.result` (the Lambda `Payload`); every Batch step is submitted as job
 * `<jobId>-<md5(teamId/jobId)>-<stage>` (at most 105 characters, under Batch's 128; unique per job,
 * see {@link batchJobName}) with env `AVATAR_TEAM_ID`/`AVATAR_JOB_ID`/`AVATAR_JOB_SECRET`, and its Batch job id is kept
 * at `$.<stage>.jobId`.
 *
 * Timeouts: every task has its own `TimeoutSeconds` (Lambda: the function timeout plus
 * {@link LAMBDA_STATE_MARGIN}; Batch: {@link stageTimeout}), so a stuck stage raises the catchable
 * `States.Timeout` and MarkFailed records `TIMEOUT`. The execution's own timeout skips every Catch;
 * the reconcile function records those (and aborted executions) from EventBridge.
 *
 * Output (success):
 * ```json
 * { "teamId": "acme", "jobId": "job-42",
 *   "validate": { "result": {} }, "normalize": { "result": {} },
 *   "train": { "jobId": "..." }, "evaluate": { "jobId": "..." },
 *   "finalize": { "result": {} } }
 * ```
 *
 * Error: the failing step's error is stored at `$.failure.<stage>` as
 * `{ "Error": "<name>", "Cause": "<message>" }` and handed to `mark-failed` as
 * `{ "teamId", "jobId", "jobSecret", "failure": { "<stage>": { "Error", "Cause" } } }`; the execution then ends
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
    const jobRef = (stage: DataStage) => ({
      teamId: sfn.JsonPath.stringAt('$.teamId'),
      jobId: sfn.JsonPath.stringAt('$.jobId'),
      jobSecret: stageSecret(stage),
    });
    const markFailed = lambdaStep(this, STATE_NAMES.markFailed, functions.markFailed, 'markFailed', {
      ...jobRef('mark-failed'),
      failure: sfn.JsonPath.objectAt('$.failure'),
    });
    // Even if recording the failure fails, end in the same terminal error for alarms and callers.
    markFailed.addCatch(failed, { errors: [sfn.Errors.ALL], resultPath: '$.failure.markFailed' });
    markFailed.next(failed);

    const catchInto = <T extends tasks.LambdaInvoke | tasks.BatchSubmitJob>(task: T, stage: string): T => {
      task.addCatch(markFailed, { errors: [sfn.Errors.ALL], resultPath: `$.failure.${stage}` });
      return task;
    };

    const validate = catchInto(lambdaStep(this, STATE_NAMES.validate, functions.validate, 'validate', jobRef('validate')), 'validate');
    const normalize = catchInto(lambdaStep(this, STATE_NAMES.normalize, functions.normalize, 'normalize', jobRef('normalize')), 'normalize');
    const executionTimeout = props.timeout ?? Duration.hours(12);
    const admit = catchInto(
      lambdaStep(
        this,
        STATE_NAMES.admit,
        functions.admit,
        'admit',
        { ...jobRef('admit'), taskToken: sfn.JsonPath.taskToken },
        {
          integrationPattern: sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
          timeout: executionTimeout,
          // The token's answer is the decision itself, not a Lambda response.
          resultSelector: { 'result.$': '$' },
        },
      ),
      'admit',
    );
    const gpuStep = (name: string, stage: 'train' | 'evaluate') =>
      catchInto(batchStep(this, name, batchJobs.jobQueue, batchJobs[stage], stage, stageTimeout(stage, batchJobs.gpuWait)), stage);
    const train = gpuStep(STATE_NAMES.train, 'train');
    const evaluate = gpuStep(STATE_NAMES.evaluate, 'evaluate');
    const finalize = catchInto(lambdaStep(this, STATE_NAMES.finalize, functions.finalize, 'finalize', jobRef('finalize')), 'finalize');
    const succeeded = new sfn.Succeed(this, STATE_NAMES.succeeded);

    // The execution input is `{ teamId, jobId }` (lambdas/start); the stage secrets join it.
    const createSecret = new sfn.Pass(this, STATE_NAMES.createSecret, {
      parameters: {
        teamId: sfn.JsonPath.stringAt('$.teamId'),
        jobId: sfn.JsonPath.stringAt('$.jobId'),
        stageSecrets: Object.fromEntries(DATA_STAGES.map((stage) => [secretField(stage), sfn.JsonPath.uuid()])),
      },
    });
    const registerSecret = new tasks.DynamoPutItem(this, STATE_NAMES.registerSecret, {
      table: props.teamsTable,
      item: {
        pk: tasks.DynamoAttributeValue.fromString(sfn.JsonPath.format('TEAM#{}', sfn.JsonPath.stringAt('$.teamId'))),
        sk: tasks.DynamoAttributeValue.fromString(sfn.JsonPath.format(`${SECRET_SK_PREFIX}{}`, sfn.JsonPath.stringAt('$.jobId'))),
        // What mint compares a presented stage secret with (lambdas/mint/handler.ts).
        stageSecrets: tasks.DynamoAttributeValue.fromMap(
          Object.fromEntries(DATA_STAGES.map((stage) => [stage, tasks.DynamoAttributeValue.fromString(sfn.JsonPath.hash(stageSecret(stage), 'SHA-256'))])),
        ),
        // mint refuses a secret older than the execution timeout: the execution has ended by then.
        registeredAt: tasks.DynamoAttributeValue.fromString(sfn.JsonPath.stringAt('$$.Execution.StartTime')),
      },
      resultPath: sfn.JsonPath.DISCARD,
      taskTimeout: sfn.Timeout.duration(Duration.seconds(30)),
    });
    registerSecret.addRetry({
      errors: [
        'DynamoDB.ProvisionedThroughputExceededException',
        'DynamoDB.RequestLimitExceeded',
        'DynamoDB.InternalServerErrorException',
        'DynamoDB.ThrottlingException',
      ],
      interval: Duration.seconds(2),
      backoffRate: 2,
      maxAttempts: 5,
      jitterStrategy: sfn.JitterType.FULL,
    });
    // Not caught into MarkFailed: without a registered secret MarkFailed could not get credentials
    // either. The execution fails, and reconcile records that from its status-change event.

    const definition = createSecret.next(registerSecret).next(validate).next(normalize).next(admit).next(train).next(evaluate).next(finalize).next(succeeded);

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
      timeout: executionTimeout,
      tracingEnabled: true,
      logs: { destination: this.logGroup, level: sfn.LogLevel.ALL, includeExecutionData: true },
      comment: 'Avatar LoRA job: stage secrets, validate, normalize, admit, caption+train (one GPU job), evaluate, finalize',
    });

    const role = this.stateMachine.role;
    // The .sync integration polls the job, and stops it when the execution is stopped or the state
    // times out; CDK's BatchSubmitJob grants only SubmitJob and the events rule actions.
    const stack = Stack.of(this);
    role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['batch:TerminateJob'],
        resources: [stack.formatArn({ service: 'batch', resource: 'job', resourceName: '*' })],
      }),
    );
    role.addToPrincipalPolicy(new iam.PolicyStatement({ actions: ['batch:DescribeJobs'], resources: ['*'] }));
    Validations.of(role).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job/*]',
      reason:
        'batch:TerminateJob stops the Batch job of a stopped or timed-out execution, and batch:TagResource tags (team, job, stage) a job at SubmitJob; job ARNs carry a random id known only after SubmitJob, so both are scoped to jobs of this account and region.',
    });
    for (const fn of [functions.validate, functions.normalize, functions.admit, functions.finalize, functions.markFailed]) {
      Validations.of(role).acknowledge({
        id: iam5ResourceFinding(this, fn.functionArn, ':*'),
        reason: 'LambdaInvoke grants the function and its versions/aliases (<arn>:*) so a published version can be invoked; nothing else.',
      });
    }
    Validations.of(role).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job-definition/*]',
      reason:
        'BatchSubmitJob grants batch:SubmitJob on job-definition/* because a job definition ARN changes with every revision; the job queue is still limited to ours.',
    });
    Validations.of(role).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason:
        'Execution logging (logs:*LogDelivery, PutResourcePolicy, Describe*), X-Ray tracing and batch:DescribeJobs (polled by the .sync Batch integration) support no resource-level permissions.',
    });
  }
}

/**
 * The Batch job name of a stage, computed by the state machine: `<jobId>-<md5(teamId/jobId)>-<stage>`.
 * Two 63-character ids plus the stage would pass Batch's 128-character limit; the job id (<= 63),
 * a 32-character digest and the stage stay under it, and the digest keeps names unique across teams.
 */
export function batchJobName(stage: string): string {
  const digest = sfn.JsonPath.hash(sfn.JsonPath.format('{}/{}', sfn.JsonPath.stringAt('$.teamId'), sfn.JsonPath.stringAt('$.jobId')), 'MD5');
  return sfn.JsonPath.format(`{}-{}-${stage}`, sfn.JsonPath.stringAt('$.jobId'), digest);
}

/**
 * The secret a stage is given: its own `States.UUID()` of the execution, at `$.stageSecrets.<stage>`
 * (camelCase: a `-` would need JSONPath brackets). It proves that stage of that job to mint and
 * nothing else. Independent UUIDs rather than hashes of one job secret: registering a hash of a hash
 * would nest States.Hash, which the local emulator does not evaluate as sha256(sha256(x)).
 */
export function stageSecret(stage: DataStage): string {
  return sfn.JsonPath.stringAt(`$.stageSecrets.${secretField(stage)}`);
}

/** `mark-failed` -> `markFailed`. */
function secretField(stage: DataStage): string {
  return stage.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
}

/** A unique, deterministic log group suffix (no hard-coded physical name, no time-based hash). */
function idSuffix(scope: Construct): string {
  return `avatar-workflow-${scope.node.addr.slice(0, 12)}`;
}

function lambdaStep(
  scope: Construct,
  name: string,
  fn: StepFunction,
  stage: string,
  payload: Record<string, unknown>,
  callback?: { integrationPattern: sfn.IntegrationPattern; timeout: Duration; resultSelector: Record<string, unknown> },
): tasks.LambdaInvoke {
  const task = new tasks.LambdaInvoke(scope, name, {
    lambdaFunction: fn,
    payload: sfn.TaskInput.fromObject(payload),
    payloadResponseOnly: false,
    integrationPattern: callback?.integrationPattern,
    taskTimeout: sfn.Timeout.duration(callback?.timeout ?? (fn.timeout ?? Duration.seconds(3)).plus(LAMBDA_STATE_MARGIN)),
    // Replaced by the explicit retry below (adds throttling and TransientError, full jitter).
    retryOnServiceExceptions: false,
    resultSelector: callback?.resultSelector ?? { 'result.$': '$.Payload' },
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
  stage: 'train' | 'evaluate',
  timeout: Duration,
): tasks.BatchSubmitJob {
  // The team's share identifier, stage priority and team/job/stage tags (see TeamBatchSubmitJob).
  const task = new TeamBatchSubmitJob(scope, name, {
    stage,
    stateTimeout: timeout,
    jobName: batchJobName(stage),
    jobQueueArn: jobQueue.jobQueueArn,
    jobDefinitionArn: jobDefinition.jobDefinitionArn,
    integrationPattern: sfn.IntegrationPattern.RUN_JOB,
    containerOverrides: {
      environment: {
        AVATAR_TEAM_ID: sfn.JsonPath.stringAt('$.teamId'),
        AVATAR_JOB_ID: sfn.JsonPath.stringAt('$.jobId'),
        // The stage secret, shown to mint for the job's S3 credentials (containers/common: AVATAR_MINT_FUNCTION).
        AVATAR_JOB_SECRET: stageSecret(stage),
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
