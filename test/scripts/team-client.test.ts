/**
 * `npm run team -- client <team>` (and `add` with a user pool), run as the operator runs it (a
 * separate process) against moto's cognito-idp and DynamoDB: the app client and the resource server's
 * scopes are read back from moto.
 */
import {
  CognitoIdentityProviderClient,
  CreateResourceServerCommand,
  CreateUserPoolCommand,
  DescribeResourceServerCommand,
  DescribeUserPoolClientCommand,
  ListUserPoolClientsCommand,
} from '@aws-sdk/client-cognito-identity-provider';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { RESOURCE_SERVER_ID, TEAM_SCOPE_PREFIX } from '../../lambdas/api/auth';
import { LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';
import { teamCommand } from './team-command';

const TABLE = 'avatar-teams-clients';

describeWithMoto('npm run team: API app clients in the Cognito user pool', () => {
  let moto: Moto;
  let cognito: CognitoIdentityProviderClient;
  let poolId: string;

  const team = (args: string[], env: Record<string, string> = {}) =>
    teamCommand(TABLE, [...args, '--endpoint', moto.endpoint], { AVATAR_USER_POOL_ID: '', ...env });
  const ok = (args: string[], env: Record<string, string> = {}) => {
    const run = team(args, env);
    expect(run.status, run.stderr).toBe(0);
    return run.stdout;
  };
  const clients = async () => (await cognito.send(new ListUserPoolClientsCommand({ UserPoolId: poolId, MaxResults: 60 }))).UserPoolClients ?? [];
  const scopes = async () =>
    ((await cognito.send(new DescribeResourceServerCommand({ UserPoolId: poolId, Identifier: RESOURCE_SERVER_ID }))).ResourceServer?.Scopes ?? []).map(
      (s) => s.ScopeName,
    );

  beforeAll(async () => {
    moto = await startMoto({ serializeDynamoDb: true });
    cognito = new CognitoIdentityProviderClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    // What the stack creates (infra/constructs/api.ts): the pool and the resource server, with one
    // scope an operator added by hand, which the command must keep.
    poolId = (await cognito.send(new CreateUserPoolCommand({ PoolName: 'avatar-clients' }))).UserPool!.Id!;
    await cognito.send(
      new CreateResourceServerCommand({
        UserPoolId: poolId,
        Identifier: RESOURCE_SERVER_ID,
        Name: 'avatar job API',
        Scopes: [{ ScopeName: 'ops:read', ScopeDescription: 'kept' }],
      }),
    );
    ok(['create-table']);
    ok(['add', 'acme']); // no pool named: no client, and no Cognito call
    ok(['add', 'zenith']);
  });
  afterAll(() => moto?.stop());

  it('client creates one client-credentials app client with the scope the API reads the team from, and adds the scope', async () => {
    expect(await clients()).toEqual([]);
    const out = JSON.parse(ok(['client', 'acme', '--user-pool', poolId, '--json']));
    expect(out).toMatchObject({ clientName: 'avatar-team-acme', scope: `${TEAM_SCOPE_PREFIX}acme`, created: true, deleted: [] });
    expect(out.clientSecret).toEqual(expect.any(String));
    const { UserPoolClient: client } = await cognito.send(new DescribeUserPoolClientCommand({ UserPoolId: poolId, ClientId: out.clientId }));
    expect(client).toMatchObject({
      ClientName: 'avatar-team-acme',
      AllowedOAuthFlows: ['client_credentials'],
      AllowedOAuthFlowsUserPoolClient: true,
      AllowedOAuthScopes: ['avatar/team:acme'],
      ClientSecret: out.clientSecret,
    });
    expect((await scopes()).sort()).toEqual(['ops:read', 'team:acme']);
  });

  it('running it again creates nothing and shows no secret; --rotate replaces the client', async () => {
    const [first] = await clients();
    const again = ok(['client', 'acme'], { AVATAR_USER_POOL_ID: poolId });
    expect(again).toContain(`client id ${first!.ClientId} (scope avatar/team:acme)`);
    expect(again).not.toContain('secret');
    expect((await clients()).map((c) => c.ClientId)).toEqual([first!.ClientId]);
    expect((await scopes()).filter((s) => s === 'team:acme')).toHaveLength(1);

    const rotated = JSON.parse(ok(['client', 'acme', '--user-pool', poolId, '--rotate', '--json']));
    expect(rotated).toMatchObject({ created: true, deleted: [first!.ClientId] });
    expect(rotated.clientId).not.toBe(first!.ClientId);
    expect((await clients()).map((c) => c.ClientId)).toEqual([rotated.clientId]);
  });

  it('add with a user pool creates the team and its client; scopes of other teams are kept', async () => {
    const out = ok(['add', 'nova', '--user-pool', poolId]);
    expect(out).toMatch(/^added nova/);
    expect(out).toMatch(/app client avatar-team-nova created: client id \S+\nclient secret \S+/);
    expect((await clients()).map((c) => c.ClientName).sort()).toEqual(['avatar-team-acme', 'avatar-team-nova']);
    expect((await scopes()).sort()).toEqual(['ops:read', 'team:acme', 'team:nova']);
  });

  it('suspend needs no user pool; client refuses an unknown team, a missing pool and a bad pool id', () => {
    expect(ok(['suspend', 'zenith'])).toMatch(/^suspended zenith\s+SUSPENDED/);
    const unknown = team(['client', 'ghost', '--user-pool', poolId]);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain('team "ghost" does not exist');
    const noPool = team(['client', 'zenith']);
    expect(noPool.status).toBe(2);
    expect(noPool.stderr).toContain('--user-pool ID or AVATAR_USER_POOL_ID');
    const badPool = team(['client', 'zenith', '--user-pool', '../etc']);
    expect(badPool.status).toBe(2);
    expect(badPool.stderr).toContain('is not a Cognito user pool id');
  });
});
