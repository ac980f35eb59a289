/**
 * A Lambda stage with `MINT_FUNCTION` set gets its S3 client from mint: the handler shows the
 * execution's jobSecret, mint checks it against the registry (moto's DynamoDB) and assumes the
 * stage's data role (moto's STS), and the stage's S3 calls go out with those credentials. The Lambda
 * Invoke call itself reaches scripts/local/mint.ts, which speaks the Invoke wire protocol and runs the
 * real mint handler in-process (there is no Lambda runtime locally; moto's needs Docker).
 */
import { createHash } from 'node:crypto';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { PutCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { secretKey } from '../../lambdas/mint/handler';
import { lambdaMint } from '../../lambdas/shared/credentials';
import { contextFromEnv, stageHandler } from '../../lambdas/shared/handler';
import { keys } from '../../lambdas/shared/keys';
import { getJson, putJson } from '../../lambdas/shared/s3';
import { createTeamsTable, teamsDocumentClient } from '../../lambdas/shared/teams';
import { type LocalMint, startLocalMint } from '../../scripts/local/mint';
import { configureHandlers, LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';

const TABLE = 'credentials-teams';
const SECRET = '3f2c1b0a-9e8d-4c7b-a6f5-e4d3c2b1a098';
const JOB = { teamId: 'team-a', jobId: 'job-1' };
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

describeWithMoto('stage credentials from mint', () => {
  let moto: Moto;
  let localMint: LocalMint;
  const invocations = () => localMint.invocations;

  beforeAll(async () => {
    moto = await startMoto();
    await moto.createBucket('cred-inbox');
    await moto.createBucket('cred-artifacts');
    configureHandlers(moto.endpoint, { inboxBucket: 'cred-inbox', artifactsBucket: 'cred-artifacts', urlExpirySeconds: 600 });
    const config = { endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS };
    await createTeamsTable(new DynamoDBClient(config), TABLE);
    const registry = teamsDocumentClient(config);
    await registry.send(
      new PutCommand({
        TableName: TABLE,
        Item: {
          ...secretKey(JOB.teamId, JOB.jobId),
          stageSecrets: { finalize: sha256(SECRET), 'mark-failed': sha256(SECRET) },
          registeredAt: new Date().toISOString(),
        },
      }),
    );
    localMint = await startLocalMint({ endpoint: moto.endpoint, tableName: TABLE, buckets: { inbox: 'cred-inbox', artifacts: 'cred-artifacts' } });
    Object.assign(process.env, localMint.env);
  });
  afterAll(async () => {
    delete process.env.MINT_FUNCTION;
    await localMint?.stop();
    await moto?.stop();
  });

  it('builds the stage context from credentials minted for the job, and its S3 client works', async () => {
    const before = invocations().length;
    const ctx = await contextFromEnv('mark-failed', JOB, SECRET);
    expect(invocations().slice(before)).toEqual([{ stage: 'mark-failed', ...JOB, secret: SECRET }]);
    expect(ctx.credentialsExpireAt!.getTime()).toBeGreaterThan(Date.now() + 50 * 60_000);
    const credentials = await ctx.s3.config.credentials();
    expect(credentials.accessKeyId).toMatch(/^ASIA/);
    expect(credentials.sessionToken).toBeTruthy();
    await putJson(ctx.s3, ctx.artifactsBucket, keys.status(JOB), { probe: 1 });
    expect(await getJson(moto.s3(), 'cred-artifacts', keys.status(JOB))).toEqual({ probe: 1 });
  });

  it('fails the stage with MintRefused for a wrong secret, and without a secret before asking mint', async () => {
    await expect(contextFromEnv('finalize', JOB, 'f'.repeat(36))).rejects.toMatchObject({
      name: 'MintRefused',
      message: expect.stringMatching(/not the one registered/),
    });
    const before = invocations().length;
    await expect(contextFromEnv('finalize', JOB, undefined)).rejects.toMatchObject({ name: 'MintRefused', message: expect.stringMatching(/no jobSecret/) });
    expect(invocations().length).toBe(before);
  });

  it('a stage handler passes the execution’s jobSecret to mint and works with what it mints', async () => {
    const handler = stageHandler('finalize', async (ctx) => {
      await putJson(ctx.s3, ctx.artifactsBucket, keys.status(ctx.job), { state: 'running' });
      return { expires: ctx.credentialsExpireAt?.toISOString() };
    });
    const out = await handler({ ...JOB, jobSecret: SECRET });
    expect(out.expires).toMatch(/^\d{4}-/);
    expect(invocations().at(-1)).toEqual({ stage: 'finalize', ...JOB, secret: SECRET });
    await expect(handler({ ...JOB, jobSecret: 'f'.repeat(36) })).rejects.toMatchObject({ name: 'MintRefused' });
    // A jobSecret that is no string is refused as bad input, and the message does not carry the value.
    await expect(handler({ ...JOB, jobSecret: 'short' })).rejects.toMatchObject({ name: 'InvalidInputError', message: expect.not.stringContaining('short"') });
  });

  it('lambdaMint reports a function error under its own name', async () => {
    await expect(lambdaMint(localMint.env.MINT_FUNCTION)({ stage: 'finalize', teamId: 'team-b', jobId: 'job-1', secret: SECRET })).rejects.toMatchObject({
      name: 'MintRefused',
      message: expect.stringMatching(/no running execution registered a secret for job job-1 of team team-b/),
    });
  });
});
