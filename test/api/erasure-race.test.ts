/**
 * Erasure (DELETE /jobs/{id}) racing the functions that write under a job in answer to events: a
 * notify delivery record or an announce record written after the erasure swept the job must not
 * survive it. Real components: moto's versioned S3 (ListObjectVersions shows every version and delete
 * marker left) and a local https webhook receiver. The interleaving is made, not timed: the receiver
 * erases the job before it answers, so notify records the attempt after the sweep; for announce, the
 * erasure runs inside its S3 client just before its first record write (a middleware on the real client).
 */
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { EventBridgeClient } from '@aws-sdk/client-eventbridge';
import { ListObjectVersionsCommand, PutBucketVersioningCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { SFNClient } from '@aws-sdk/client-sfn';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { announce, lastStateKey } from '../../lambdas/announce/handler';
import { type ApiDeps, deleteJob } from '../../lambdas/api/jobs';
import { requestKey } from '../../lambdas/api/records';
import { notify } from '../../lambdas/notify/handler';
import { isErased, tombstoneKey } from '../../lambdas/shared/erasure';
import { stateChange } from '../../lambdas/shared/events';
import { jobPrefix } from '../../lambdas/shared/keys';
import { getJson, putJson } from '../../lambdas/shared/s3';
import { ALLOW_LOOPBACK_FOR_TESTS } from '../../lambdas/shared/webhook';
import { LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../helpers/moto';
import { describeNeeding, motoMissing } from '../helpers/suites';
import { opensslMissing, selfSignedCertificate } from './tls';

const INBOX = 'race-inbox';
const ARTIFACTS = 'race-artifacts';
let moto: Moto;
let server: Server;
let ca: Buffer;
/** What the receiver does before answering 200. */
let onDelivery: () => Promise<void> = async () => undefined;
let deliveries = 0;

const status = (jobId: string) => ({
  teamId: 'alpha',
  jobId,
  state: 'failed' as const,
  stage: 'train' as const,
  createdAt: '2026-01-01T00:00:00.000Z',
  updatedAt: '2026-01-01T00:05:00.000Z',
  error: { code: 'GPU_UNAVAILABLE', message: 'x' },
});

function apiDeps(s3: S3Client): ApiDeps {
  return {
    s3,
    sfn: new SFNClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS }),
    inboxBucket: INBOX,
    artifactsBucket: ARTIFACTS,
    stateMachineArn: 'arn:aws:states:us-east-1:123456789012:stateMachine:avatar-local',
    urlExpirySeconds: 900,
    uploadExpirySeconds: 900,
    maxPhotoBytes: 1024,
    now: () => new Date(),
  };
}

/** A job as the API leaves it after a failed run: request record (with webhook), status, a photo. */
async function seedJob(jobId: string, webhookUrl: string) {
  const s3 = moto.s3();
  await putJson(s3, ARTIFACTS, requestKey({ teamId: 'alpha', jobId }), {
    teamId: 'alpha',
    jobId,
    createdAt: '2026-01-01T00:00:00.000Z',
    requestHash: 'h',
    spec: {},
    photos: [{ name: 'a.jpg', contentType: 'image/jpeg' }],
    webhook: { url: webhookUrl, secret: 's3cret' },
  });
  await s3.send(new PutObjectCommand({ Bucket: INBOX, Key: `${jobPrefix({ teamId: 'alpha', jobId })}photos/a.jpg`, Body: 'jpeg' }));
  const written = await s3.send(
    new PutObjectCommand({ Bucket: ARTIFACTS, Key: `${jobPrefix({ teamId: 'alpha', jobId })}status.json`, Body: JSON.stringify(status(jobId)) }),
  );
  return written;
}

async function versionsLeft(jobId: string): Promise<string[]> {
  const left: string[] = [];
  for (const bucket of [INBOX, ARTIFACTS]) {
    const out = await moto.s3().send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: jobPrefix({ teamId: 'alpha', jobId }) }));
    left.push(...[...(out.Versions ?? []), ...(out.DeleteMarkers ?? [])].map((v) => `${bucket}/${v.Key}`));
  }
  return left;
}

beforeAll(async () => {
  if (opensslMissing()) return;
  const tls = selfSignedCertificate('IP:127.0.0.1');
  ca = tls.cert;
  server = createServer(tls, (req, res) => {
    req.resume();
    req.on('end', async () => {
      deliveries++;
      await onDelivery();
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
});
afterAll(async () => {
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  await moto?.stop();
});

describeNeeding('erasure racing late notify and announce writes', motoMissing() ?? opensslMissing(), () => {
  let url: string;
  beforeAll(async () => {
    moto = await startMoto();
    for (const bucket of [INBOX, ARTIFACTS]) {
      await moto.createBucket(bucket);
      await moto.s3().send(new PutBucketVersioningCommand({ Bucket: bucket, VersioningConfiguration: { Status: 'Enabled' } }));
    }
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  });

  it('a delivery record notify writes after the erasure swept the job is taken back: no object or version of the job remains', async () => {
    await seedJob('late-notify', url);
    let erased: unknown;
    onDelivery = async () => {
      // The job is erased while notify waits for the receiver's answer; it records the attempt after.
      erased = await deleteJob(apiDeps(moto.s3()), 'alpha', 'late-notify');
    };
    deliveries = 0;
    const result = await notify(
      { detail: stateChange(status('late-notify'), undefined)! },
      { s3: moto.s3(), artifactsBucket: ARTIFACTS, webhook: { ca, [ALLOW_LOOPBACK_FOR_TESTS]: true } },
    );
    onDelivery = async () => undefined;
    expect(deliveries).toBe(1);
    expect(erased).toMatchObject({ jobId: 'late-notify' });
    expect(result).toBeUndefined(); // delivery stopped: the job is gone
    expect(await versionsLeft('late-notify')).toEqual([]);
    expect(await isErased(moto.s3(), ARTIFACTS, { teamId: 'alpha', jobId: 'late-notify' })).toBe(true);
    const tombstone = (await getJson(moto.s3(), ARTIFACTS, tombstoneKey({ teamId: 'alpha', jobId: 'late-notify' }))) as Record<string, unknown>;
    expect(Object.keys(tombstone).sort()).toEqual(['deletedAt', 'jobId', 'ledgerRows', 'removed', 'teamId']);
  });

  it("announce's record written after the erasure is taken back and nothing is published", async () => {
    const written = await seedJob('late-announce', url);
    const s3 = moto.s3();
    let erasedBeforeWrite = false;
    s3.middlewareStack.add(
      (next, context) => async (args) => {
        const input = args.input as { Key?: string };
        if (!erasedBeforeWrite && context.commandName === 'PutObjectCommand' && input.Key === lastStateKey({ teamId: 'alpha', jobId: 'late-announce' })) {
          erasedBeforeWrite = true;
          await deleteJob(apiDeps(moto.s3()), 'alpha', 'late-announce');
        }
        return next(args);
      },
      { step: 'initialize', name: 'eraseBeforeRecordWrite' },
    );
    const real = new EventBridgeClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    let published = 0;
    const events = {
      send: ((command: Parameters<EventBridgeClient['send']>[0]) => {
        published++;
        return real.send(command);
      }) as EventBridgeClient['send'],
    };
    const result = await announce(
      {
        'detail-type': 'Object Created',
        detail: {
          bucket: { name: ARTIFACTS },
          object: { key: 'teams/alpha/jobs/late-announce/status.json', etag: written.ETag!.replace(/"/g, ''), 'version-id': written.VersionId },
        },
      },
      { s3, events, artifactsBucket: ARTIFACTS, now: () => new Date() },
    );
    expect(erasedBeforeWrite).toBe(true);
    expect(result).toEqual({ action: 'ignored', reason: 'job alpha/late-announce was erased' });
    expect(published).toBe(0);
    expect(await versionsLeft('late-announce')).toEqual([]);
  });
});
