import { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { InvalidInputError } from '../../lambdas/shared/errors';
import { getBytes, getJson, isMissingObject, putJson } from '../../lambdas/shared/s3';
import { readStatus } from '../../lambdas/shared/status';
import { LOCAL_REGION, type Moto, startMoto } from '../../scripts/local/moto';
import { describeWithMoto } from '../helpers/suites';

const BUCKET = 'iam-enforced';

/**
 * Calls moto's IAM query API. Moto routes by the credential scope of the Authorization header; the
 * signature is not checked for requests within INITIAL_NO_AUTH_ACTION_COUNT.
 */
async function iam(endpoint: string, params: Record<string, string>): Promise<string> {
  const res = await fetch(`${endpoint}/`, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: 'AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=unchecked',
    },
    body: new URLSearchParams({ ...params, Version: '2010-05-08' }).toString(),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`IAM ${params.Action} failed: ${res.status} ${text}`);
  return text;
}

// A real 403 from S3: moto enforcing IAM (after the first 5 requests) for a user allowed to read only
// `allowed/*`. Moto answers a missing key with 404 whatever the caller's ListBucket right (real S3
// answers 403 without it), so the missing-without-ListBucket case is represented by the same
// AccessDenied 403 S3 sends for it, produced for real by a denied read.
describeWithMoto('S3 reads that fail with 403 or 404', () => {
  let moto: Moto;
  let restricted: S3Client;

  beforeAll(async () => {
    moto = await startMoto({ env: { INITIAL_NO_AUTH_ACTION_COUNT: '5' } });
    await moto.createBucket(BUCKET); // 1
    await iam(moto.endpoint, { Action: 'CreateUser', UserName: 'stage' }); // 2
    const policy = {
      Version: '2012-10-17',
      Statement: [{ Effect: 'Allow', Action: ['s3:GetObject', 's3:PutObject'], Resource: `arn:aws:s3:::${BUCKET}/allowed/*` }],
    };
    await iam(moto.endpoint, { Action: 'PutUserPolicy', UserName: 'stage', PolicyName: 'objects-only', PolicyDocument: JSON.stringify(policy) }); // 3
    const keyXml = await iam(moto.endpoint, { Action: 'CreateAccessKey', UserName: 'stage' }); // 4
    if (!keyXml.includes('<AccessKeyId>')) throw new Error(`unexpected CreateAccessKey answer: ${keyXml.slice(0, 500)}`);
    const accessKeyId = /<AccessKeyId>([^<]+)</.exec(keyXml)![1]!;
    const secretAccessKey = /<SecretAccessKey>([^<]+)</.exec(keyXml)![1]!;
    restricted = new S3Client({ endpoint: moto.endpoint, forcePathStyle: true, region: LOCAL_REGION, credentials: { accessKeyId, secretAccessKey } });
    await putJson(restricted, BUCKET, 'allowed/present.json', { ok: true }); // 5, and enforced from here on
  });
  afterAll(() => moto?.stop());

  it('reads what the policy allows (IAM is enforced, the credentials work)', async () => {
    expect(await getJson(restricted, BUCKET, 'allowed/present.json')).toEqual({ ok: true });
  });

  it('gets a real 403 AccessDenied for a read the policy does not allow', async () => {
    const error = await restricted
      .send(new (await import('@aws-sdk/client-s3')).GetObjectCommand({ Bucket: BUCKET, Key: 'teams/a/jobs/j/photos/x.jpg' }))
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ name: 'AccessDenied', $metadata: { httpStatusCode: 403 } });
    expect(isMissingObject(error)).toBe(true);
  });

  it('maps that 403 to MISSING_INPUT naming the key, not an internal error', async () => {
    const key = 'teams/a/jobs/j/photos/x.jpg';
    const error = await getBytes(restricted, BUCKET, key).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidInputError);
    expect(error).toMatchObject({ code: 'MISSING_INPUT', input: key, message: expect.stringContaining(`${key} does not exist or can no longer be read`) });
  });

  it('maps a 404 NoSuchKey to MISSING_INPUT the same way', async () => {
    const error = await getBytes(restricted, BUCKET, 'allowed/absent.jpg').catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'MISSING_INPUT', input: 'allowed/absent.jpg' });
  });

  it('reads a missing JSON document or status.json as absent, whichever of 403 and 404 S3 sends', async () => {
    expect(await getJson(restricted, BUCKET, 'allowed/absent.json')).toBeUndefined();
    expect(await getJson(restricted, BUCKET, 'elsewhere/absent.json')).toBeUndefined();
    expect(await readStatus(restricted, BUCKET, { teamId: 'a', jobId: 'j' })).toBeUndefined();
  });
});
