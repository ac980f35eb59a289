import * as path from 'node:path';
import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';

const REPO_ROOT = path.join(__dirname, '..', '..');

/**
 * onnxruntime-node's npm package holds its native runtime for every OS and CPU (~290 MB, over
 * Lambda's 250 MB unzipped limit), and its postinstall would fetch optional CUDA libraries from
 * nuget.org. Shipped, it installs with that step skipped and keeps only the linux-x64 binaries.
 */
const ONNX_RUNTIME = 'onnxruntime-node';
const ONNX_RUNTIME_BUNDLING = {
  // Read by its postinstall; local bundling passes these variables to the npm install it runs.
  environment: { ONNXRUNTIME_NODE_INSTALL: 'skip' },
  commandHooks: {
    beforeBundling: () => [],
    beforeInstall: () => [],
    afterBundling: (_input: string, output: string) => [
      `find "${output}/node_modules/${ONNX_RUNTIME}/bin" -mindepth 2 -maxdepth 2 ! -name linux -exec rm -rf {} +`,
      `find "${output}/node_modules/${ONNX_RUNTIME}/bin" -mindepth 3 -maxdepth 3 ! -name x64 -exec rm -rf {} +`,
    ],
  } satisfies nodejs.ICommandHooks,
};

/** Props of {@link LambdaFunction}. */
export interface LambdaFunctionProps {
  /** Stage name; the handler is `lambdas/<stage>/handler.ts`, exporting `handler`. */
  readonly stage: string;
  /**
   * Memory in MB.
   * @default 256
   */
  readonly memorySize?: number;
  /**
   * Function timeout.
   * @default Duration.minutes(1)
   */
  readonly timeout?: Duration;
  /**
   * Extra environment variables, merged over the defaults (`SERVICE_NAME`, `NODE_OPTIONS`).
   * @default - none
   */
  readonly environment?: Record<string, string>;
  /**
   * Packages installed into the bundle instead of inlined by esbuild: native or wasm modules such
   * as `sharp`, whose platform binary (linux x64, the architecture below) must ship as files.
   * `onnxruntime-node` is installed without its postinstall and pruned to linux x64.
   * @default []
   */
  readonly nodeModules?: string[];
  /**
   * Retention of the function's own log group.
   * @default logs.RetentionDays.ONE_MONTH
   */
  readonly logRetention?: logs.RetentionDays;
  /**
   * Human-readable description.
   * @default - `Avatar <stage> stage`
   */
  readonly description?: string;
  /**
   * Destination of failed asynchronous invocations.
   * @default - none
   */
  readonly onFailure?: lambda.IDestination;
  /**
   * Retries of failed asynchronous invocations.
   * @default 2 (the Lambda default)
   */
  readonly retryAttempts?: number;
}

/**
 * A `NodejsFunction` carrying the project's defaults: Node.js 22 on x86_64 (the architecture of the
 * build machine, whose `sharp` binary is bundled), X-Ray tracing, a dedicated log group with
 * retention, source maps, and local esbuild bundling (never Docker).
 *
 * Its role starts with only the log group write grant and X-Ray; stages add their S3 grants.
 */
export class LambdaFunction extends nodejs.NodejsFunction {
  /** The execution role, exposed as a concrete `Role` so stages can add scoped statements. */
  public readonly executionRole: iam.Role;

  constructor(scope: Construct, id: string, props: LambdaFunctionProps) {
    if (!/^[a-z][a-z0-9-]*$/.test(props.stage)) {
      throw new Error(`LambdaFunction: stage must be a kebab-case folder name under lambdas/, got "${props.stage}"`);
    }
    // Created beside the function (not inside it) because they must exist before super() runs.
    const role = new iam.Role(scope, `${id}Role`, {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: `Execution role of the ${props.stage} Lambda`,
    });
    const logGroup = new logs.LogGroup(scope, `${id}LogGroup`, {
      retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH,
      // Operational logs go with the stack; only the buckets are retained.
      removalPolicy: RemovalPolicy.DESTROY,
    });

    super(scope, id, {
      entry: path.join(REPO_ROOT, 'lambdas', props.stage, 'handler.ts'),
      handler: 'handler',
      projectRoot: REPO_ROOT,
      depsLockFilePath: path.join(REPO_ROOT, 'package-lock.json'),
      runtime: lambda.Runtime.NODEJS_22_X,
      architecture: lambda.Architecture.X86_64,
      description: props.description ?? `Avatar ${props.stage} stage`,
      memorySize: props.memorySize ?? 256,
      timeout: props.timeout ?? Duration.minutes(1),
      tracing: lambda.Tracing.ACTIVE,
      role,
      logGroup,
      onFailure: props.onFailure,
      retryAttempts: props.retryAttempts,
      // Caller values win; defaults only fill gaps.
      environment: {
        SERVICE_NAME: 'avatar',
        NODE_OPTIONS: '--enable-source-maps',
        ...props.environment,
      },
      bundling: {
        forceDockerBundling: false,
        sourceMap: true,
        minify: false,
        target: 'node22',
        format: nodejs.OutputFormat.CJS,
        // Bundle the SDK versions pinned in package-lock.json rather than whatever the runtime ships.
        bundleAwsSDK: true,
        // Leave undefined when empty so no needless npm install runs in the bundle folder.
        nodeModules: props.nodeModules?.length ? props.nodeModules : undefined,
        ...(props.nodeModules?.includes(ONNX_RUNTIME) ? ONNX_RUNTIME_BUNDLING : {}),
      },
    });
    this.executionRole = role;
    logGroup.grantWrite(role);
    Validations.of(role).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason: 'Active tracing needs xray:PutTraceSegments and xray:PutTelemetryRecords, which support no resource-level permissions.',
    });
    Validations.of(this).acknowledge({
      id: 'AwsSolutions-L1',
      reason:
        'Node.js 22 is pinned on purpose: it matches @types/node 22 and the esbuild target the handlers are tested with; moving to 24 is a separate, tested upgrade.',
    });
  }
}
