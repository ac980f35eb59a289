import { Duration, Stack } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { DATA_STAGES, type DataStage } from '../../lambdas/shared/session-policy';
import { grantStageAccess } from './bucket-access';
import { LambdaFunction } from './lambda-function';

/** Props of {@link JobCredentials}. */
export interface JobCredentialsProps {
  readonly inbox: s3.IBucket;
  readonly artifacts: s3.IBucket;
  /** The team registry, where the state machine registers each execution's secret hash. */
  readonly teamsTable: dynamodb.ITable;
  /** The execution timeout: a secret older than this belongs to an execution that has ended. */
  readonly executionTimeout: Duration;
}

/**
 * Isolation by credentials (docs/architecture.md): one data role per data stage holding that stage's
 * S3 grants (lambdas/shared/access.ts), assumable only by the `mint` function, which hands a stage of
 * job J credentials of its data role limited by the job's session policy once the stage shows the
 * secret the state machine registered for J. The stages' own roles hold no S3 grant for job data:
 * they may only invoke mint ({@link grantMint}).
 */
export class JobCredentials extends Construct {
  /** `lambdas/mint`. */
  public readonly mint: LambdaFunction;
  /** Each data stage's role (assumed by mint only). */
  public readonly dataRoles: Record<DataStage, iam.Role>;

  constructor(scope: Construct, id: string, props: JobCredentialsProps) {
    super(scope, id);
    this.mint = new LambdaFunction(this, 'Mint', {
      stage: 'mint',
      memorySize: 256,
      timeout: Duration.seconds(10),
    });
    const mintRole = this.mint.executionRole;
    const roles = {} as Record<DataStage, iam.Role>;
    for (const stage of DATA_STAGES) {
      const role = new iam.Role(this, `${pascal(stage)}DataRole`, {
        // The trust policy names mint's role alone; no stage role and no service can assume it.
        assumedBy: new iam.ArnPrincipal(mintRole.roleArn),
        description: `S3 access of the ${stage} stage, minted per job by the mint function`,
      });
      grantStageAccess(role, props, stage);
      roles[stage] = role;
    }
    this.dataRoles = roles;
    mintRole.addToPrincipalPolicy(new iam.PolicyStatement({ actions: ['sts:AssumeRole'], resources: Object.values(roles).map((r) => r.roleArn) }));
    mintRole.addToPrincipalPolicy(new iam.PolicyStatement({ actions: ['dynamodb:GetItem'], resources: [props.teamsTable.tableArn] }));
    const env: Record<string, string> = {
      TEAMS_TABLE: props.teamsTable.tableName,
      DATA_ROLE_ARNS: Stack.of(this).toJsonString(Object.fromEntries(Object.entries(roles).map(([stage, role]) => [stage, role.roleArn]))),
      ARTIFACTS_BUCKET_ARN: props.artifacts.bucketArn,
      INBOX_BUCKET_ARN: props.inbox.bucketArn,
      SECRET_MAX_AGE_SECONDS: String(props.executionTimeout.toSeconds()),
    };
    for (const [name, value] of Object.entries(env)) this.mint.addEnvironment(name, value);
  }

  /** Lets `grantee` invoke mint (and nothing else of it): how a stage gets its job's credentials. */
  grantMint(grantee: iam.IRole): void {
    grantee.addToPrincipalPolicy(new iam.PolicyStatement({ actions: ['lambda:InvokeFunction'], resources: [this.mint.functionArn] }));
  }
}

function pascal(stage: string): string {
  return stage.replace(/(^|-)([a-z])/g, (_m, _dash, c: string) => c.toUpperCase());
}
