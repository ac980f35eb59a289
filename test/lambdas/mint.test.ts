/**
 * The mint function against moto's DynamoDB (the registered secret hash) and STS (AssumeRole with the
 * job's session policy). moto does not evaluate IAM: what the minted session may reach is asserted by
 * test/infra/isolation.test.ts with the session policy mint sends, which this test checks it sends.
 */
import { createHash } from 'node:crypto';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { STSClient } from '@aws-sdk/client-sts';
import { PutCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type MintDeps, mint, secretKey, sessionName } from '../../lambdas/mint/handler';
import { jobSessionPolicy } from '../../lambdas/shared/session-policy';
import { createTeamsTable, teamsDocumentClient } from '../../lambdas/shared/teams';
import { LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';

const TABLE = 'mint-teams';
const ROLE = (stage: string) => `arn:aws:iam::123456789012:role/${stage}-data`;
const BUCKETS = { artifacts: 'arn:aws:s3:::artifacts', inbox: 'arn:aws:s3:::inbox' };
const SECRET_J = '0b6f3c2e-6a55-4b0e-9f43-1d2c3b4a5e6f';
const SECRET_K = '7d1e9a40-2c3b-4f5e-8a6b-0c1d2e3f4a5b';
const hex = (s: string) => createHash('sha256').update(s).digest('hex');

describeWithMoto('mint', () => {
  let moto: Moto;
  let deps: MintDeps;
  const sent: Array<Record<string, unknown>> = [];
  let now = new Date('2026-01-01T01:00:00Z');

  beforeAll(async () => {
    moto = await startMoto();
    const config = { endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS };
    await createTeamsTable(new DynamoDBClient(config), TABLE);
    const registry = teamsDocumentClient(config);
    // As RegisterJobSecret writes it: the SHA-256 of each stage's secret (here train's and mark-failed's).
    const register = (teamId: string, jobId: string, secret: string) =>
      registry.send(
        new PutCommand({
          TableName: TABLE,
          Item: {
            ...secretKey(teamId, jobId),
            stageSecrets: { train: hex(secret), 'mark-failed': hex(`${secret}-mf`) },
            registeredAt: '2026-01-01T00:00:00.000Z',
          },
        }),
      );
    await register('team-a', 'job-j', SECRET_J);
    await register('team-a', 'job-k', SECRET_K);
    const sts = new STSClient(config);
    deps = {
      registry,
      tableName: TABLE,
      // The real client; each AssumeRole input is kept to check what mint asked STS for.
      sts: {
        send: ((command: { input: Record<string, unknown> }) => {
          sent.push(command.input);
          return sts.send(command as never);
        }) as never,
      },
      roles: { train: ROLE('train'), validate: ROLE('validate'), 'mark-failed': ROLE('mark-failed') },
      buckets: BUCKETS,
      maxAgeSeconds: 12 * 3600,
      now: () => now,
    };
  });
  afterAll(async () => {
    await moto?.stop();
  });

  const refusal = async (event: unknown): Promise<Error> => {
    const before = sent.length;
    const error = await mint(deps, event).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(error?.name).toBe('MintRefused');
    expect(sent.length).toBe(before); // refused before any AssumeRole
    return error!;
  };

  it('mints credentials of the stage data role limited to the job, for the secret registered for that job', async () => {
    const creds = await mint(deps, { stage: 'train', teamId: 'team-a', jobId: 'job-j', secret: SECRET_J });
    expect(creds.accessKeyId).toMatch(/^ASIA/);
    expect(creds.secretAccessKey.length).toBeGreaterThan(20);
    expect(creds.sessionToken.length).toBeGreaterThan(20);
    expect(new Date(creds.expiration).toISOString()).toBe(creds.expiration);
    expect(sent.at(-1)).toEqual({
      RoleArn: ROLE('train'),
      RoleSessionName: 'train-job-j',
      DurationSeconds: 3600,
      Policy: JSON.stringify(jobSessionPolicy('train', 'team-a', 'job-j', BUCKETS)),
    });
  });

  it('refuses a wrong secret, another job’s secret, an unknown job and bad ids, without echoing the secret', async () => {
    const wrong = await refusal({ stage: 'train', teamId: 'team-a', jobId: 'job-j', secret: 'f'.repeat(36) });
    expect(wrong.message).toMatch(/not the one registered for the train stage of job job-j of team team-a/);
    // A stage secret proves its own stage only: train's secret mints no mark-failed or validate credentials.
    await refusal({ stage: 'mark-failed', teamId: 'team-a', jobId: 'job-j', secret: SECRET_J });
    await refusal({ stage: 'validate', teamId: 'team-a', jobId: 'job-j', secret: SECRET_J });
    expect((await mint(deps, { stage: 'mark-failed', teamId: 'team-a', jobId: 'job-j', secret: `${SECRET_J}-mf` })).sessionToken).toBeTruthy();
    const other = await refusal({ stage: 'train', teamId: 'team-a', jobId: 'job-j', secret: SECRET_K });
    expect(other.message).not.toContain(SECRET_K);
    expect((await refusal({ stage: 'train', teamId: 'team-b', jobId: 'job-j', secret: SECRET_J })).message).toMatch(/no running execution/);
    expect((await refusal({ stage: 'train', teamId: 'team-a', jobId: 'job-x', secret: SECRET_J })).message).toMatch(/no running execution/);
    const bad = await refusal({ stage: 'train', teamId: 'team-a', jobId: '../job-j', secret: SECRET_J });
    expect(bad.message).toBe('invalid request: check jobId');
    await refusal({ stage: 'train', teamId: 'TEAM#a', jobId: 'job-j', secret: SECRET_J });
    await refusal({ stage: 'api', teamId: 'team-a', jobId: 'job-j', secret: SECRET_J });
    await refusal({ stage: 'train', teamId: 'team-a', jobId: 'job-j' });
    const extra = await refusal({ stage: 'train', teamId: 'team-a', jobId: 'job-j', secret: 'short' });
    expect(extra.message).not.toContain('short');
  });

  it('refuses a secret older than the execution timeout (its execution has ended)', async () => {
    now = new Date('2026-01-01T12:00:01Z');
    try {
      expect((await refusal({ stage: 'train', teamId: 'team-a', jobId: 'job-j', secret: SECRET_J })).message).toMatch(/has ended/);
    } finally {
      now = new Date('2026-01-01T01:00:00Z');
    }
  });

  it('names sessions <stage>-<jobId> within STS’s 64 characters', () => {
    expect(sessionName('mark-failed', 'j'.repeat(63))).toHaveLength(64);
    expect(sessionName('validate', 'job-1')).toBe('validate-job-1');
  });
});
