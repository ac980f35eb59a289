import { type CryptoKey, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { type AuthConfig, AuthError, authenticate, localKeys } from '../../lambdas/api/auth';

const ISSUER = 'https://cognito-idp.us-east-1.amazonaws.com/us-east-1_test';
let key: CryptoKey;
let other: CryptoKey;
let config: AuthConfig;

beforeAll(async () => {
  const pair = await generateKeyPair('RS256', { extractable: true });
  key = pair.privateKey;
  other = (await generateKeyPair('RS256')).privateKey;
  config = { issuer: ISSUER, keys: localKeys({ keys: [{ ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'RS256' }] }), teamScopePrefix: 'avatar/team:' };
});

async function token(claims: Record<string, unknown>, options: { signer?: CryptoKey; issuer?: string; exp?: string | number } = {}) {
  return new SignJWT({ token_use: 'access', client_id: 'c1', ...claims })
    .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
    .setIssuer(options.issuer ?? ISSUER)
    .setIssuedAt()
    .setExpirationTime(options.exp ?? '5m')
    .sign(options.signer ?? key);
}

describe('bearer auth', () => {
  it('takes the team from the one verified team scope', async () => {
    const caller = await authenticate(`Bearer ${await token({ scope: 'avatar/team:alpha avatar/read', sub: 'c1' })}`, config);
    expect(caller).toEqual({ teamId: 'alpha', subject: 'c1' });
  });

  const refused: Array<[string, () => Promise<string | undefined>, RegExp]> = [
    ['no header', async () => undefined, /Authorization: Bearer/],
    ['a token signed by another key', async () => `Bearer ${await token({ scope: 'avatar/team:alpha' }, { signer: other })}`, /refused/],
    ['another issuer', async () => `Bearer ${await token({ scope: 'avatar/team:alpha' }, { issuer: 'https://evil.example' })}`, /refused.*iss/],
    ['an expired token', async () => `Bearer ${await token({ scope: 'avatar/team:alpha' }, { exp: Math.floor(Date.now() / 1000) - 120 })}`, /refused.*exp/],
    ['an ID token', async () => `Bearer ${await token({ scope: 'avatar/team:alpha', token_use: 'id' })}`, /ID token/],
    ['no team scope', async () => `Bearer ${await token({ scope: 'avatar/read' })}`, /exactly one/],
    ['two team scopes', async () => `Bearer ${await token({ scope: 'avatar/team:alpha avatar/team:beta' })}`, /exactly one/],
    ['a team claim outside the scope (not trusted)', async () => `Bearer ${await token({ team: 'alpha' })}`, /exactly one/],
    ['a team id that is not an id', async () => `Bearer ${await token({ scope: 'avatar/team:../beta' })}`, /invalid team/],
  ];
  for (const [name, header, message] of refused) {
    it(`refuses ${name}`, async () => {
      const error = await authenticate(await header(), config).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(AuthError);
      expect((error as Error).message).toMatch(message);
    });
  }

  it('checks the audience (or Cognito client_id) when configured', async () => {
    const t = await token({ scope: 'avatar/team:alpha' });
    await expect(authenticate(`Bearer ${t}`, { ...config, audiences: ['c2'] })).rejects.toThrow(/another client/);
    await expect(authenticate(`Bearer ${t}`, { ...config, audiences: ['c1'] })).resolves.toMatchObject({ teamId: 'alpha' });
  });
});
