/**
 * Bearer-token auth: an OIDC access token (JWT) verified against the issuer's JWKS. The team comes
 * only from a verified claim: exactly one OAuth scope `<resourceServer>/team:<teamId>` (Cognito's
 * client-credentials flow puts the app client's allowed scopes there; one app client per team, made
 * by the admin). Another issuer works if it issues the same scope.
 */
import { createLocalJWKSet, createRemoteJWKSet, type JSONWebKeySet, type JWTPayload, type JWTVerifyGetKey, jwtVerify } from 'jose';
import { IdSchema } from '../shared/contract';

/** The stack's Cognito resource server (infra/constructs/api.ts) whose scopes name teams. */
export const RESOURCE_SERVER_ID = 'avatar';
/** A team's scope within the resource server: `team:<teamId>`. */
export const teamScopeName = (teamId: string) => `team:${teamId}`;
/** What a token carries for a team, `avatar/team:<teamId>`, minus the id: what {@link authenticate} looks for. */
export const TEAM_SCOPE_PREFIX = `${RESOURCE_SERVER_ID}/${teamScopeName('')}`;

export interface AuthConfig {
  /** `iss` the token must carry, e.g. `https://cognito-idp.<region>.amazonaws.com/<poolId>`. */
  readonly issuer: string;
  /** The key set: remote (`<issuer>/.well-known/jwks.json` for Cognito) or local. */
  readonly keys: JWTVerifyGetKey;
  /** Scope prefix naming the team, e.g. `avatar/team:`. */
  readonly teamScopePrefix: string;
  /** When set, `aud` (or Cognito's `client_id`) must be one of these. */
  readonly audiences?: readonly string[];
}

export class AuthError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AuthError';
  }
}

export interface Caller {
  readonly teamId: string;
  readonly subject: string;
}

export function remoteKeys(jwksUrl: string): JWTVerifyGetKey {
  return createRemoteJWKSet(new URL(jwksUrl));
}

export function localKeys(jwks: JSONWebKeySet): JWTVerifyGetKey {
  return createLocalJWKSet(jwks);
}

/** Verifies the `Authorization: Bearer <jwt>` header and returns the caller's team. */
export async function authenticate(header: string | undefined, config: AuthConfig): Promise<Caller> {
  const match = /^Bearer\s+([A-Za-z0-9._~+/=-]+)$/.exec(header ?? '');
  if (!match) throw new AuthError('send "Authorization: Bearer <access token>"');
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(match[1], config.keys, {
      issuer: config.issuer,
      algorithms: ['RS256', 'ES256'],
      clockTolerance: 30,
    }));
  } catch (error) {
    throw new AuthError(`the bearer token was refused (${(error as Error).message}); get a new token`);
  }
  // Cognito access tokens carry token_use=access; an ID token must not pass as an API credential.
  if (payload.token_use !== undefined && payload.token_use !== 'access') throw new AuthError('use an access token, not an ID token');
  if (config.audiences?.length) {
    const aud = [payload.aud, payload.client_id].flat().filter((a): a is string => typeof a === 'string');
    if (!aud.some((a) => config.audiences!.includes(a))) throw new AuthError('the token was issued for another client');
  }
  const scopes = typeof payload.scope === 'string' ? payload.scope.split(' ') : [];
  const teams = scopes.filter((s) => s.startsWith(config.teamScopePrefix)).map((s) => s.slice(config.teamScopePrefix.length));
  if (teams.length !== 1) throw new AuthError(`the token must carry exactly one "${config.teamScopePrefix}<team>" scope`);
  const team = IdSchema.safeParse(teams[0]);
  if (!team.success) throw new AuthError('the token names an invalid team id');
  return { teamId: team.data, subject: String(payload.sub ?? payload.client_id ?? 'unknown') };
}
