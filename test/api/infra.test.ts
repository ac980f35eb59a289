import { describe, expect, it } from 'vitest';
import { logicalId, resourcesOfType, synth } from '../infra/helpers';

const s = synth();
const role = (fn: { role?: { roleArn: string } }) => logicalId(s.stack, fn.role!.roleArn);
const statements = (roleId: string) =>
  resourcesOfType(s.json, 'AWS::IAM::Policy')
    .filter(([, p]) => (p.Properties.Roles as Array<{ Ref: string }>).some((r) => r.Ref === roleId))
    .flatMap(([, p]) => p.Properties.PolicyDocument.Statement as Array<{ Action: string | string[]; Resource: unknown; Condition?: unknown }>);

describe('job API infrastructure', () => {
  it('an HTTP API with one Lambda integration, stage throttling and access logs', () => {
    expect(resourcesOfType(s.json, 'AWS::ApiGatewayV2::Api')).toHaveLength(1);
    const [[, integration]] = resourcesOfType(s.json, 'AWS::ApiGatewayV2::Integration');
    expect(integration.Properties).toMatchObject({ IntegrationType: 'AWS_PROXY', PayloadFormatVersion: '2.0' });
    const [[, stage]] = resourcesOfType(s.json, 'AWS::ApiGatewayV2::Stage');
    expect(stage.Properties.DefaultRouteSettings).toMatchObject({ ThrottlingRateLimit: 50, ThrottlingBurstLimit: 100 });
    expect(stage.Properties.AccessLogSettings.DestinationArn).toBeDefined();
  });

  it('a Cognito pool for machine clients: no self sign-up, a resource server, a token domain, no app clients from the deploy', () => {
    const [[, pool]] = resourcesOfType(s.json, 'AWS::Cognito::UserPool');
    expect(pool.Properties.AdminCreateUserConfig).toMatchObject({ AllowAdminCreateUserOnly: true });
    const [[, server]] = resourcesOfType(s.json, 'AWS::Cognito::UserPoolResourceServer');
    expect(server.Properties.Identifier).toBe('avatar');
    expect(server.Properties.Scopes).toBeUndefined(); // team scopes are the admin's
    expect(resourcesOfType(s.json, 'AWS::Cognito::UserPoolDomain')).toHaveLength(1);
    expect(resourcesOfType(s.json, 'AWS::Cognito::UserPoolClient')).toHaveLength(0);
  });

  it("the per-team rate limit's window items: the function may count them, and the registry's TTL removes them", () => {
    const [[, table]] = resourcesOfType(s.json, 'AWS::DynamoDB::Table');
    expect(table.Properties.TimeToLiveSpecification).toEqual({ AttributeName: 'expiresAt', Enabled: true });
    const dynamo = statements(role(s.stack.api.function))
      .flatMap((st) => [st.Action].flat())
      .filter((a) => a.startsWith('dynamodb:'));
    expect(new Set(dynamo)).toEqual(new Set(['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem']));
  });

  it('the function verifies tokens of the pool and reaches only team prefixes and its executions', () => {
    const fn = s.json.Resources[logicalId(s.stack, s.stack.api.function.functionArn)]!;
    expect(Object.keys(fn.Properties.Environment.Variables)).toEqual(
      expect.arrayContaining(['AUTH_ISSUER', 'AUTH_JWKS_URL', 'INBOX_BUCKET', 'ARTIFACTS_BUCKET', 'STATE_MACHINE_ARN', 'URL_EXPIRY_SECONDS']),
    );
    const all = statements(role(s.stack.api.function));
    const actions = all.flatMap((st) => [st.Action].flat()).filter((a) => a.startsWith('s3:') || a.startsWith('states:'));
    expect(new Set(actions)).toEqual(
      new Set(['s3:PutObject', 's3:GetObject', 's3:ListBucket', 's3:ListBucketVersions', 's3:DeleteObject', 's3:DeleteObjectVersion', 'states:StopExecution']),
    );
    for (const st of all.filter((x) => [x.Action].flat().some((a) => a.startsWith('s3:')))) {
      const text = JSON.stringify(st.Resource) + JSON.stringify(st.Condition ?? '');
      expect(text).toMatch(/teams\//); // never a whole bucket's objects
    }
    const stop = all.find((st) => [st.Action].flat().includes('states:StopExecution'))!;
    expect(JSON.stringify(stop.Resource)).toContain(':execution:');
  });

  it('result links are signed by a read-only role only the API function may assume, sessions of at most an hour', () => {
    const signingId = logicalId(s.stack, s.stack.api.resultsSigningRole.roleArn);
    const apiRoleId = role(s.stack.api.function);
    const signing = s.json.Resources[signingId]!;
    expect(signing.Properties.MaxSessionDuration).toBe(3600);
    expect(signing.Properties.AssumeRolePolicyDocument.Statement).toEqual([
      { Action: 'sts:AssumeRole', Effect: 'Allow', Principal: { AWS: { 'Fn::GetAtt': [apiRoleId, 'Arn'] } } },
    ]);
    expect(signing.Properties.ManagedPolicyArns).toBeUndefined();
    // Read-only, the job's stage outputs in the artifacts bucket: no records, notify/, status or inbox.
    const granted = statements(signingId);
    expect(granted.map((st) => st.Action)).toEqual(['s3:GetObject']);
    const artifacts = logicalId(s.stack, s.stack.storage.artifacts.bucketArn);
    expect(granted[0]!.Resource).toEqual(
      ['validate', 'normalize', 'caption', 'train', 'evaluate'].map((stage) => ({
        'Fn::Join': ['', [{ 'Fn::GetAtt': [artifacts, 'Arn'] }, `/teams/*/jobs/*/${stage}/*`]],
      })),
    );
    // The API function may assume exactly this role, and is told which.
    const assume = statements(apiRoleId).filter((st) => [st.Action].flat().some((a) => a.startsWith('sts:')));
    expect(assume).toEqual([expect.objectContaining({ Action: 'sts:AssumeRole', Resource: { 'Fn::GetAtt': [signingId, 'Arn'] } })]);
    const fn = s.json.Resources[logicalId(s.stack, s.stack.api.function.functionArn)]!;
    expect(fn.Properties.Environment.Variables.RESULTS_SIGNING_ROLE_ARN).toEqual({ 'Fn::GetAtt': [signingId, 'Arn'] });
  });
});
