/**
 * A team's machine-to-machine credentials: one Cognito app client of the stack's user pool, allowed
 * only the client-credentials flow and the one scope `avatar/team:<teamId>` of the `avatar` resource
 * server, which the job API reads the team from (lambdas/api/auth.ts). Made by the operator with
 * `npm run team -- client <team>` (or by `add` when the pool is named); no deploy.
 *
 * The client is found by its name, `avatar-team-<teamId>`, so running it again creates nothing: it
 * answers the existing client id (the secret is shown only when a client is created). `rotate`
 * creates a new client and then deletes the old one: tokens it already issued keep working until they
 * expire (the API checks the token's signature and scope, not that its client still exists).
 */
import {
  type CognitoIdentityProviderClient,
  CreateUserPoolClientCommand,
  DeleteUserPoolClientCommand,
  DescribeResourceServerCommand,
  ListUserPoolClientsCommand,
  type ResourceServerScopeType,
  UpdateResourceServerCommand,
  type UserPoolClientDescription,
} from '@aws-sdk/client-cognito-identity-provider';
import { RESOURCE_SERVER_ID, teamScopeName } from '../lambdas/api/auth';

export { CognitoIdentityProviderClient } from '@aws-sdk/client-cognito-identity-provider';

/** The app client's name: one per team, recognisable in the Cognito console. */
export const teamClientName = (teamId: string) => `avatar-team-${teamId}`;

/** Access tokens live an hour (Cognito's default); the team's backend fetches a new one when it expires. */
const ACCESS_TOKEN_MINUTES = 60;

export interface TeamClient {
  readonly clientId: string;
  readonly clientName: string;
  /** The full scope its tokens carry, `avatar/team:<teamId>`. */
  readonly scope: string;
  /** Only when this call created the client: shown once. */
  readonly clientSecret?: string;
  readonly created: boolean;
  /** Client ids deleted by a rotation. */
  readonly deleted: string[];
}

async function clientsNamed(cognito: Pick<CognitoIdentityProviderClient, 'send'>, userPoolId: string, name: string): Promise<UserPoolClientDescription[]> {
  const found: UserPoolClientDescription[] = [];
  let NextToken: string | undefined;
  do {
    const page = await cognito.send(new ListUserPoolClientsCommand({ UserPoolId: userPoolId, MaxResults: 60, NextToken }));
    found.push(...(page.UserPoolClients ?? []).filter((c) => c.ClientName === name));
    NextToken = page.NextToken;
  } while (NextToken);
  return found;
}

/**
 * Adds the team's scope to the resource server, keeping every scope already there (Cognito's
 * UpdateResourceServer replaces the whole list). A resource server holds at most 100 scopes.
 */
async function ensureScope(cognito: Pick<CognitoIdentityProviderClient, 'send'>, userPoolId: string, teamId: string): Promise<void> {
  const { ResourceServer } = await cognito.send(new DescribeResourceServerCommand({ UserPoolId: userPoolId, Identifier: RESOURCE_SERVER_ID }));
  const scopes: ResourceServerScopeType[] = ResourceServer?.Scopes ?? [];
  if (scopes.some((s) => s.ScopeName === teamScopeName(teamId))) return;
  await cognito.send(
    new UpdateResourceServerCommand({
      UserPoolId: userPoolId,
      Identifier: RESOURCE_SERVER_ID,
      Name: ResourceServer?.Name ?? RESOURCE_SERVER_ID,
      Scopes: [...scopes, { ScopeName: teamScopeName(teamId), ScopeDescription: `jobs of team ${teamId}` }],
    }),
  );
}

/** The team's app client: the existing one, or a new one (with `rotate`, always a new one, the old deleted). */
export async function ensureTeamClient(
  cognito: Pick<CognitoIdentityProviderClient, 'send'>,
  userPoolId: string,
  teamId: string,
  { rotate = false } = {},
): Promise<TeamClient> {
  const clientName = teamClientName(teamId);
  const scope = `${RESOURCE_SERVER_ID}/${teamScopeName(teamId)}`;
  await ensureScope(cognito, userPoolId, teamId);
  const existing = await clientsNamed(cognito, userPoolId, clientName);
  if (existing.length > 0 && !rotate) return { clientId: existing[0]!.ClientId!, clientName, scope, created: false, deleted: [] };
  const { UserPoolClient: client } = await cognito.send(
    new CreateUserPoolClientCommand({
      UserPoolId: userPoolId,
      ClientName: clientName,
      GenerateSecret: true,
      AllowedOAuthFlowsUserPoolClient: true,
      AllowedOAuthFlows: ['client_credentials'],
      AllowedOAuthScopes: [scope],
      AccessTokenValidity: ACCESS_TOKEN_MINUTES,
      TokenValidityUnits: { AccessToken: 'minutes' },
      // No user sign-in flow (the pool holds no users); refresh is the one Cognito always requires.
      ExplicitAuthFlows: ['ALLOW_REFRESH_TOKEN_AUTH'],
      EnableTokenRevocation: true,
    }),
  );
  // Deleted only once the new one exists, so a failed rotation leaves the team its old client.
  const deleted: string[] = [];
  for (const old of existing) {
    await cognito.send(new DeleteUserPoolClientCommand({ UserPoolId: userPoolId, ClientId: old.ClientId! }));
    deleted.push(old.ClientId!);
  }
  return { clientId: client!.ClientId!, clientSecret: client!.ClientSecret!, clientName, scope, created: true, deleted };
}
