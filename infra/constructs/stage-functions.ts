import { Duration, Stack } from 'aws-cdk-lib';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { grantStageAccess } from './bucket-access';
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
    grantStageAccess(this.validate.executionRole, props, 'validate');

    this.normalize = new LambdaFunction(this, 'Normalize', {
      stage: 'normalize',
      memorySize: 2048,
      timeout: Duration.minutes(15),
      environment,
    });
    grantStageAccess(this.normalize.executionRole, props, 'normalize');

    this.finalize = new LambdaFunction(this, 'Finalize', {
      stage: 'finalize',
      memorySize: 512,
      timeout: Duration.minutes(5),
      environment: { ...environment, URL_EXPIRY_SECONDS: String(props.urlExpirySeconds ?? 3600) },
    });
    grantStageAccess(this.finalize.executionRole, props, 'finalize');

    // The SystemFailures metric (lambdas/shared/metrics.ts) carries the stack name as its dimension.
    const metricsEnv = { METRICS_STACK_NAME: Stack.of(this).stackName };
    this.markFailed = new LambdaFunction(this, 'MarkFailed', {
      stage: 'mark-failed',
      memorySize: 256,
      timeout: Duration.minutes(1),
      environment: { ...environment, ...metricsEnv },
    });
    grantStageAccess(this.markFailed.executionRole, props, 'mark-failed');

    this.reconcile = new LambdaFunction(this, 'Reconcile', {
      stage: 'reconcile',
      memorySize: 256,
      timeout: Duration.seconds(30),
      environment: { ARTIFACTS_BUCKET: artifacts.bucketName, ...metricsEnv },
    });
    grantStageAccess(this.reconcile.executionRole, props, 'reconcile');
  }
}
