import { Duration, Stack } from 'aws-cdk-lib';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { grantList, grantObjects, JOB_PREFIX } from './bucket-access';
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
}

const STATUS = `${JOB_PREFIX}/status.json`;

/**
 * Packages shipped as files beside the bundle: sharp's linux-x64 native binary, and WASM modules
 * whose .wasm files and model weights are read from disk at run time (lambdas/validate).
 */
const DECODE_MODULES = ['sharp', 'heic-decode'];
// Face detection runs BlazeFace on ONNX Runtime's native CPU runtime; @vladmandic/human ships the
// model's graph and weights, read from disk (bench/bundled-validate.ts runs the bundle).
const FACE_MODULES = ['@vladmandic/human', 'onnxruntime-node'];
const STATUS_REASON = 'Every stage rewrites the status.json of the job it runs; team and job ids are only known at run time';

/**
 * The Lambda steps of the workflow (`validate`, `normalize`, `finalize`, `mark-failed`), and
 * `reconcile`, which records the end of an execution that skipped MarkFailed; each with a role that
 * reaches only the key prefixes its stage reads and writes.
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
    const validateRole = this.validate.executionRole;
    grantObjects(validateRole, inbox, ['s3:GetObject'], [`${JOB_PREFIX}/*`], 'validate reads the job.json and photos of the job it checks');
    grantList(validateRole, inbox, ['teams/*']);
    grantObjects(validateRole, artifacts, ['s3:PutObject'], [`${JOB_PREFIX}/validate/*`], 'validate writes its report and contact sheet under the job');
    grantObjects(validateRole, artifacts, ['s3:GetObject', 's3:PutObject'], [STATUS], STATUS_REASON);

    this.normalize = new LambdaFunction(this, 'Normalize', {
      stage: 'normalize',
      memorySize: 2048,
      timeout: Duration.minutes(15),
      environment,
    });
    const normalizeRole = this.normalize.executionRole;
    grantObjects(normalizeRole, inbox, ['s3:GetObject'], [`${JOB_PREFIX}/*`], 'normalize reads the user captions uploaded beside the photos of the job');
    grantObjects(normalizeRole, artifacts, ['s3:GetObject'], [`${JOB_PREFIX}/validate/*`], 'normalize reads the validate report of the job');
    // The dataset lives under the stage's own prefix (lambdas/shared/keys.ts): normalize/<repeats>_<token>/, normalize/plan.json.
    grantObjects(normalizeRole, artifacts, ['s3:PutObject'], [`${JOB_PREFIX}/normalize/*`], 'normalize writes the dataset and plan of the job');
    grantObjects(normalizeRole, artifacts, ['s3:GetObject', 's3:PutObject'], [STATUS], STATUS_REASON);

    this.finalize = new LambdaFunction(this, 'Finalize', {
      stage: 'finalize',
      memorySize: 512,
      timeout: Duration.minutes(5),
      environment: { ...environment, URL_EXPIRY_SECONDS: String(props.urlExpirySeconds ?? 3600) },
    });
    const finalizeRole = this.finalize.executionRole;
    grantObjects(finalizeRole, artifacts, ['s3:GetObject'], [`${JOB_PREFIX}/*`], 'finalize reads and presigns every output of the job');
    grantList(finalizeRole, artifacts, ['teams/*']);
    grantObjects(finalizeRole, artifacts, ['s3:PutObject'], [`${JOB_PREFIX}/manifest.json`, STATUS], 'finalize writes the manifest and final status of the job');

    // The SystemFailures metric (lambdas/shared/metrics.ts) carries the stack name as its dimension.
    const metricsEnv = { METRICS_STACK_NAME: Stack.of(this).stackName };
    this.markFailed = new LambdaFunction(this, 'MarkFailed', {
      stage: 'mark-failed',
      memorySize: 256,
      timeout: Duration.minutes(1),
      environment: { ...environment, ...metricsEnv },
    });
    grantObjects(this.markFailed.executionRole, artifacts, ['s3:GetObject', 's3:PutObject'], [STATUS], STATUS_REASON);

    this.reconcile = new LambdaFunction(this, 'Reconcile', {
      stage: 'reconcile',
      memorySize: 256,
      timeout: Duration.seconds(30),
      environment: { ARTIFACTS_BUCKET: artifacts.bucketName, ...metricsEnv },
    });
    grantObjects(this.reconcile.executionRole, artifacts, ['s3:GetObject', 's3:PutObject'], [STATUS], STATUS_REASON);
  }
}
