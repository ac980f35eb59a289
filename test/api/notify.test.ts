import type { Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { requestKey } from '../../lambdas/api/records';
import { deliveryKey, notify } from '../../lambdas/notify/handler';
import { stateChange } from '../../lambdas/shared/events';
import { getJson, putJson } from '../../lambdas/shared/s3';
import { ALLOW_LOOPBACK_FOR_TESTS, verifyWebhookSignature } from '../../lambdas/shared/webhook';
import { type Moto, startMoto } from '../helpers/moto';
import { describeNeeding, motoMissing } from '../helpers/suites';
import { opensslMissing, type Received, selfSignedCertificate, startReceiver } from './tls';

const BUCKET = 'notify-artifacts';
let moto: Moto;
let server: Server;
let ca: Buffer;
let received: Received[] = [];

beforeAll(async () => {
  if (opensslMissing()) return;
  const tls = selfSignedCertificate('IP:127.0.0.1');
  ca = tls.cert;
  ({ server, received } = await startReceiver(tls));
});
afterAll(async () => {
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  await moto?.stop();
});

const status = (jobId: string) => ({
  teamId: 'alpha',
  jobId,
  state: 'failed' as const,
  stage: 'caption' as const,
  createdAt: '2026-01-01T00:00:00.000Z',
  updatedAt: '2026-01-01T00:05:00.000Z',
  error: { code: 'GPU_UNAVAILABLE', message: 'x' },
});

describeNeeding('notify: job webhooks from state change events', motoMissing() ?? opensslMissing(), () => {
  beforeAll(async () => {
    moto = await startMoto();
    await moto.createBucket(BUCKET);
  });

  it("delivers the signed event with the job's secret and records the attempt next to the job", async () => {
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    await putJson(moto.s3(), BUCKET, requestKey({ teamId: 'alpha', jobId: 'j1' }), {
      teamId: 'alpha',
      jobId: 'j1',
      createdAt: 'x',
      requestHash: 'h',
      spec: {},
      photos: [],
      webhook: { url, secret: 's3cret' },
    });
    const detail = stateChange(status('j1'), undefined)!;
    const result = await notify({ detail }, { s3: moto.s3(), artifactsBucket: BUCKET, webhook: { ca, [ALLOW_LOOPBACK_FOR_TESTS]: true } });
    expect(result?.delivered).toBe(true);
    expect(received).toHaveLength(1);
    expect(JSON.parse(received[0].body)).toEqual(detail);
    expect(verifyWebhookSignature('s3cret', received[0].signature, received[0].body)).toBe(true);
    const log = (await getJson(moto.s3(), BUCKET, deliveryKey('alpha', 'j1', detail.eventId))) as { attempts: Array<{ status: number }> };
    expect(log.attempts.map((a) => a.status)).toEqual([200]);
  });

  it('records a refused address (instance metadata) without sending anything', async () => {
    received.length = 0;
    await putJson(moto.s3(), BUCKET, requestKey({ teamId: 'alpha', jobId: 'j2' }), {
      teamId: 'alpha',
      jobId: 'j2',
      createdAt: 'x',
      requestHash: 'h',
      spec: {},
      photos: [],
      webhook: { url: 'https://169.254.169.254/latest', secret: 's' },
    });
    const detail = stateChange(status('j2'), undefined)!;
    const result = await notify({ detail }, { s3: moto.s3(), artifactsBucket: BUCKET });
    expect(result?.delivered).toBe(false);
    const log = (await getJson(moto.s3(), BUCKET, deliveryKey('alpha', 'j2', detail.eventId))) as { attempts: Array<{ error: string }> };
    expect(log.attempts[0].error).toMatch(/169\.254\.169\.254 is not a public address/);
    expect(received).toHaveLength(0);
  });

  it('does nothing for a job without a webhook', async () => {
    await putJson(moto.s3(), BUCKET, requestKey({ teamId: 'alpha', jobId: 'j3' }), {
      teamId: 'alpha',
      jobId: 'j3',
      createdAt: 'x',
      requestHash: 'h',
      spec: {},
      photos: [],
    });
    expect(await notify({ detail: stateChange(status('j3'), undefined)! }, { s3: moto.s3(), artifactsBucket: BUCKET })).toBeUndefined();
  });
});
