/**
 * Result links signed with a session of the results signing role (as in Lambda), taken from moto's
 * STS: the stated expiry never passes the session's Expiration, and the links carry that session.
 * moto's AssumeRole returns real-shaped temporary credentials with Expiration = now + DurationSeconds;
 * it does not check the role's trust policy (the infra test asserts that).
 */
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { SFNClient } from '@aws-sdk/client-sfn';
import { STSClient } from '@aws-sdk/client-sts';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type ApiDeps, results } from '../../lambdas/api/jobs';
import { requestKey } from '../../lambdas/api/records';
import { assumedRoleCredentials, ROLE_CHAINING_MAX_SECONDS } from '../../lambdas/api/signing';
import { putJson } from '../../lambdas/shared/s3';
import { LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';

const BUCKET = 'signing-artifacts';
const ROLE = 'arn:aws:iam::123456789012:role/avatar-results-signing';
const job = { teamId: 'alpha', jobId: 'j1' };

describeWithMoto('result links signed with the results signing role', () => {
  let moto: Moto;
  let sts: STSClient;
  const deps = (resultsS3: S3Client): ApiDeps => ({
    s3: moto.s3(),
    resultsS3,
    sfn: new SFNClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS }),
    inboxBucket: 'unused',
    artifactsBucket: BUCKET,
    stateMachineArn: 'arn:aws:states:us-east-1:123456789012:stateMachine:avatar-local',
    urlExpirySeconds: 7 * 24 * 3600,
    uploadExpirySeconds: 900,
    maxPhotoBytes: 1024,
    now: () => new Date(),
  });
  const signer = (credentials: () => Promise<{ accessKeyId: string; secretAccessKey: string; expiration: Date }>) =>
    new S3Client({ endpoint: moto.endpoint, forcePathStyle: true, region: LOCAL_REGION, credentials });

  beforeAll(async () => {
    moto = await startMoto();
    await moto.createBucket(BUCKET);
    sts = new STSClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    await putJson(moto.s3(), BUCKET, requestKey(job), { ...job, createdAt: '2026-01-01T00:00:00.000Z', requestHash: 'h', spec: {}, photos: [] });
    await moto.s3().send(new PutObjectCommand({ Bucket: BUCKET, Key: 'teams/alpha/jobs/j1/validate/report.json', Body: '{"ok":true}' }));
  });
  afterAll(() => moto?.stop());

  it('states an expiry no later than the assumed-role credentials Expiration, and signs with that session', async () => {
    const credentials = assumedRoleCredentials(sts, ROLE, { durationSeconds: 900 });
    const session = await credentials();
    const before = Date.now();
    const out = await results(deps(signer(credentials)), 'alpha', 'j1');
    const expiration = session.expiration.getTime();
    // 15 minutes of session (minus the margin), not the configured week.
    expect(expiration - before).toBeLessThanOrEqual(900_000);
    expect(Date.parse(out.urlExpiresAt)).toBeLessThanOrEqual(expiration);
    expect(Date.parse(out.urlExpiresAt)).toBeGreaterThan(expiration - 120_000);
    expect(out.artifacts.map((a) => a.name)).toEqual(['validate/report.json']);
    const url = new URL(out.artifacts[0]!.url);
    expect(url.searchParams.get('X-Amz-Security-Token')).toBe(session.sessionToken);
    expect(url.searchParams.get('X-Amz-Credential')).toMatch(new RegExp(`^${session.accessKeyId}/`));
    const signedAt = Date.parse(url.searchParams.get('X-Amz-Date')!.replace(/^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/, '$1-$2-$3T$4:$5:$6Z'));
    expect(signedAt + Number(url.searchParams.get('X-Amz-Expires')) * 1000).toBeLessThanOrEqual(expiration);
    const fetched = await fetch(url);
    expect(fetched.status).toBe(200);
    expect(await fetched.text()).toBe('{"ok":true}');
  });

  it('asks for at most an hour (role chaining), keeps the session, and takes a new one when under half is left', async () => {
    let clock = new Date();
    const credentials = assumedRoleCredentials(sts, ROLE, { durationSeconds: 12 * 3600, now: () => clock });
    const first = await credentials();
    const asked = (first.expiration.getTime() - Date.now()) / 1000;
    expect(asked).toBeLessThanOrEqual(ROLE_CHAINING_MAX_SECONDS);
    expect(asked).toBeGreaterThan(ROLE_CHAINING_MAX_SECONDS - 120);
    expect(await credentials()).toBe(first); // cached: no AssumeRole per request
    clock = new Date(first.expiration.getTime() - 1000 * (ROLE_CHAINING_MAX_SECONDS / 2 - 1)); // under half left
    const second = await credentials();
    expect(second.accessKeyId).not.toBe(first.accessKeyId);
    // Every link signed from here on lives at least half an hour (the configured week is longer).
    const lifetime = await results(deps(signer(credentials)), 'alpha', 'j1');
    expect(Date.parse(lifetime.urlExpiresAt)).toBeLessThanOrEqual(second.expiration.getTime());
  });
});
