import { ArnFormat, Aws, CfnOutput, Duration, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import * as apigw from 'aws-cdk-lib/aws-apigatewayv2';
import { HttpLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import * as cognito from 'aws-cdk-lib/aws-cognito';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { RESOURCE_SERVER_ID } from '../../lambdas/api/auth';
import { LIST_PREFIX } from '../../lambdas/shared/access';
import { EVENT_SOURCE, JOB_STATE_CHANGE } from '../../lambdas/shared/events';
import { keyPattern, LAYOUT } from '../../lambdas/shared/layout';
import { grantStageAccess } from './bucket-access';
import { LambdaFunction } from './lambda-function';

/** Props of {@link JobApi}. */
export interface JobApiProps {
  readonly inbox: s3.IBucket;
  readonly artifacts: s3.IBucket;
  /** The workflow: the API stops its executions on cancel. */
  readonly stateMachine: sfn.StateMachine;
  /** Lifetime asked for result links (capped by the signing credentials). */
  readonly urlExpirySeconds: number;
  /** The team registry: unknown teams are refused; /usage reads the counters. */
  readonly teamsTable: dynamodb.ITable;
  /**
   * Another OIDC issuer instead of the stack's Cognito user pool; it must issue access tokens with
   * one `avatar/team:<teamId>` scope.
   * @default - a Cognito user pool for machine-to-machine clients, one per team, made by the admin
   */
  readonly issuer?: { readonly url: string; readonly jwksUrl?: string };
  /**
   * Requests per second across all callers (the stage's throttling; the per-team bucket is in the function).
   * @default { rateLimit: 50, burstLimit: 100 }
   */
  readonly throttle?: { readonly rateLimit: number; readonly burstLimit: number };
}

/**
 * The job API: an API Gateway HTTP API in front of one Lambda (`lambdas/api/handler.ts`), the
 * Cognito user pool its tokens come from, and the `notify` function (`lambdas/notify/handler.ts`) that sends job webhooks.
 *
 * Teams are app clients of the user pool with the client-credentials flow and one scope
 * `avatar/team:<teamId>` of the `avatar` resource server; the admin adds both with
 * `npm run team -- client <team>` (scripts/team-client.ts), no deploy. The
 * resource server's team scopes are the admin's: this construct creates it without them and never
 * changes it, so a deploy does not reset them.
 */
export class JobApi extends Construct {
  public readonly httpApi: apigw.HttpApi;
  public readonly function: LambdaFunction;
  public readonly notifyFunction: LambdaFunction;
  /** Read-only role the function assumes to sign result links with credentials whose expiry it knows. */
  public readonly resultsSigningRole: iam.Role;
  /** Absent when another issuer is configured. */
  public readonly userPool?: cognito.UserPool;

  constructor(scope: Construct, id: string, props: JobApiProps) {
    super(scope, id);

    let issuer = props.issuer?.url;
    let jwksUrl = props.issuer?.jwksUrl;
    if (!props.issuer) {
      const pool = new cognito.UserPool(this, 'Clients', {
        // Machine clients only: nobody signs up or signs in as a user.
        selfSignUpEnabled: false,
        signInAliases: { username: true },
        passwordPolicy: { minLength: 16, requireDigits: true, requireLowercase: true, requireUppercase: true, requireSymbols: true },
        mfa: cognito.Mfa.OFF,
        accountRecovery: cognito.AccountRecovery.NONE,
        // cdk destroy ends clean (the stack retains only buckets and the team registry); the team
        // app clients are the admin's and are made again after a redeploy.
        removalPolicy: RemovalPolicy.DESTROY,
      });
      new cognito.UserPoolResourceServer(this, 'ResourceServer', {
        userPool: pool,
        identifier: RESOURCE_SERVER_ID,
        userPoolResourceServerName: 'avatar job API',
      });
      // The token endpoint (https://<prefix>.auth.<region>.amazoncognito.com/oauth2/token) for client credentials.
      pool.addDomain('Domain', { cognitoDomain: { domainPrefix: `avatar-${Aws.ACCOUNT_ID}` } });
      for (const rule of ['AwsSolutions-COG2', 'AwsSolutions-COG3', 'AwsSolutions-COG8']) {
        Validations.of(pool).acknowledge({
          id: rule,
          reason:
            'The pool holds no users: only machine-to-machine app clients using the client-credentials flow, so MFA, user threat protection and the Plus tier have nothing to protect.',
        });
      }
      this.userPool = pool;
      issuer = `https://cognito-idp.${Stack.of(this).region}.amazonaws.com/${pool.userPoolId}`;
      new CfnOutput(Stack.of(this), 'ApiUserPoolId', {
        value: pool.userPoolId,
        description: 'Add one app client per team (client credentials, scope avatar/team:<id>)',
      });
    }
    jwksUrl ??= `${issuer}/.well-known/jwks.json`;

    this.function = new LambdaFunction(this, 'Handler', {
      stage: 'api',
      memorySize: 512,
      timeout: Duration.seconds(29),
      description: 'Avatar job API',
      environment: {
        INBOX_BUCKET: props.inbox.bucketName,
        ARTIFACTS_BUCKET: props.artifacts.bucketName,
        STATE_MACHINE_ARN: props.stateMachine.stateMachineArn,
        URL_EXPIRY_SECONDS: String(props.urlExpirySeconds),
        AUTH_ISSUER: issuer!,
        AUTH_JWKS_URL: jwksUrl,
        TEAMS_TABLE: props.teamsTable.tableName,
      },
    });
    const role = this.function.executionRole;
    // Result links: Lambda's environment credentials state no expiry, so links signed with them are
    // capped at 15 minutes; a session of this role states its expiry (at most an hour: role chaining).
    // It reads stage outputs only and trusts only the API function's role.
    this.resultsSigningRole = new iam.Role(this, 'ResultsSigning', {
      assumedBy: new iam.ArnPrincipal(role.roleArn),
      maxSessionDuration: Duration.hours(1),
      description: 'Signs job API result links (read-only: job stage outputs)',
    });
    grantStageAccess(this.resultsSigningRole, props, 'results');
    this.resultsSigningRole.grantAssumeRole(role);
    this.function.addEnvironment('RESULTS_SIGNING_ROLE_ARN', this.resultsSigningRole.roleArn);
    // Team lookups and /usage read the team item; erasure rewrites the job's ledger rows under an anonymous id;
    // the per-team rate limit counts requests in a window item (UpdateItem).
    role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem'],
        resources: [props.teamsTable.tableArn],
      }),
    );
    const why = 'the job API acts on jobs of the calling team, whose ids are only known per request (the team comes from the verified token)';
    // Photos are uploaded by the caller through POST policies this role signs; job.json starts the job.
    grantStageAccess(role, props, 'api');
    // Erasure: every version and delete marker of a job in both buckets.
    for (const bucket of [props.inbox, props.artifacts]) {
      role.addToPrincipalPolicy(
        new iam.PolicyStatement({
          actions: ['s3:ListBucketVersions'],
          resources: [bucket.bucketArn],
          conditions: { StringLike: { 's3:prefix': [LIST_PREFIX] } },
        }),
      );
      role.addToPrincipalPolicy(
        new iam.PolicyStatement({ actions: ['s3:DeleteObject', 's3:DeleteObjectVersion'], resources: [bucket.arnForObjects(keyPattern(LAYOUT.teams))] }),
      );
      Validations.of(role).acknowledge({
        id: `AwsSolutions-IAM5[Resource::<${Stack.of(this).resolve(bucket.bucketArn)['Fn::GetAtt'][0]}.Arn>/${keyPattern(LAYOUT.teams)}]`,
        reason: `${why}: erasure deletes every version under the job's prefix (and its idempotency key)`,
      });
    }
    role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['states:StopExecution'],
        resources: [
          Stack.of(this).formatArn({
            service: 'states',
            resource: 'execution',
            resourceName: `${props.stateMachine.stateMachineName}:*`,
            arnFormat: ArnFormat.COLON_RESOURCE_NAME,
          }),
        ],
      }),
    );
    Validations.of(role).acknowledge({
      id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:<${Stack.of(this).resolve(props.stateMachine.stateMachineArn).Ref}.Name>:*]`,
      reason: "cancel stops the execution of the calling team's job; execution names are only known per request",
    });

    const accessLogs = new logs.LogGroup(this, 'AccessLogs', { retention: logs.RetentionDays.ONE_MONTH, removalPolicy: RemovalPolicy.DESTROY });
    this.httpApi = new apigw.HttpApi(this, 'Http', {
      description: 'avatar job API',
      defaultIntegration: new HttpLambdaIntegration('Jobs', this.function),
      createDefaultStage: false,
    });
    const stage = new apigw.HttpStage(this, 'Stage', {
      httpApi: this.httpApi,
      autoDeploy: true,
      throttle: props.throttle ?? { rateLimit: 50, burstLimit: 100 },
      accessLogSettings: { destination: new apigw.LogGroupLogDestination(accessLogs) },
    });
    Validations.of(this.httpApi).acknowledge({
      id: 'AwsSolutions-APIG4',
      reason:
        'The function verifies every bearer token itself (jose against the issuer JWKS) and takes the team from its scope; a gateway JWT authorizer needs the audiences (app clients), which the admin adds after deploy.',
    });
    new CfnOutput(Stack.of(this), 'ApiUrl', { value: stage.url, description: 'The job API (AVATAR_API_URL)' });

    // Webhooks: one delivery per job state change event.
    this.notifyFunction = new LambdaFunction(this, 'Notify', {
      stage: 'notify',
      timeout: Duration.minutes(5),
      description: 'Avatar job webhooks',
      environment: { ARTIFACTS_BUCKET: props.artifacts.bucketName },
    });
    grantStageAccess(this.notifyFunction.executionRole, props, 'notify');
    new events.Rule(this, 'JobStateChanged', {
      description: 'Sends job webhooks',
      eventPattern: { source: [EVENT_SOURCE], detailType: [JOB_STATE_CHANGE] },
      targets: [new targets.LambdaFunction(this.notifyFunction, { retryAttempts: 2, maxEventAge: Duration.hours(1) })],
    });
  }
}
