/**
 * The local API's token issuer: an RS256 key pair kept in .local/api-auth/ (made on first use). The
 * local server verifies with its public JWKS; `npm run -s api:token` signs with the private key.
 * Tokens look like Cognito client-credentials access tokens: scope `avatar/team:<id>`, token_use access.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, importJWK, type JSONWebKeySet, type JWK, SignJWT } from 'jose';
import { TEAM_SCOPE_PREFIX } from '../../lambdas/api/auth';

/** The scope prefix the API reads the team from (one definition, in lambdas/api/auth.ts). */
export { TEAM_SCOPE_PREFIX };

export const LOCAL_ISSUER = 'avatar-local';
export const DEMO_TEAMS = ['alpha', 'beta'] as const;
const DIR = join(__dirname, '..', '..', '.local', 'api-auth');

interface KeyFiles {
  readonly privateJwk: JWK;
  readonly jwks: JSONWebKeySet;
}

/** Loads the key pair, making it the first time (the private key file is readable by its owner only). */
export async function localKeyPair(dir = DIR): Promise<KeyFiles> {
  const privatePath = join(dir, 'private.jwk.json');
  const jwksPath = join(dir, 'jwks.json');
  if (!existsSync(privatePath) || !existsSync(jwksPath)) {
    const { publicKey, privateKey } = await generateKeyPair('RS256', { extractable: true });
    const kid = `local-${Date.now()}`;
    mkdirSync(dir, { recursive: true });
    writeFileSync(privatePath, JSON.stringify({ ...(await exportJWK(privateKey)), kid, alg: 'RS256' }), { mode: 0o600 });
    writeFileSync(jwksPath, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' }] }));
  }
  return { privateJwk: JSON.parse(readFileSync(privatePath, 'utf8')), jwks: JSON.parse(readFileSync(jwksPath, 'utf8')) };
}

export async function localToken(teamId: string, options: { dir?: string; expiresIn?: string } = {}): Promise<string> {
  const { privateJwk } = await localKeyPair(options.dir);
  const key = await importJWK(privateJwk, 'RS256');
  return new SignJWT({ scope: `${TEAM_SCOPE_PREFIX}${teamId}`, token_use: 'access', client_id: `local-${teamId}` })
    .setProtectedHeader({ alg: 'RS256', kid: privateJwk.kid })
    .setIssuer(LOCAL_ISSUER)
    .setSubject(`local-${teamId}`)
    .setIssuedAt()
    .setExpirationTime(options.expiresIn ?? '12h')
    .sign(key);
}
