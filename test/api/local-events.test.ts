/**
 * `npm run api` delivers webhooks as the stack does: every status.json write of a local job (the
 * in-process stages, the API's cancel) becomes S3's "Object Created" event in moto's EventBridge, the
 * real announce handler publishes "Avatar Job State Change" events, and the real notify handler POSTs
 * them, signed, to the job's webhook: here an https receiver on this machine, allowed by the local
 * server's explicit loopback option (the Lambda handlers never set it).
 */
// First: the API's schemas call .openapi() on contract schemas, which exists only on zod schemas made
// after @hono/zod-openapi extended zod (the app module loads it before the contract).
import '../../lambdas/api/app';
import type { Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { deliveryKey } from '../../lambdas/notify/handler';
import { JobStateChangeSchema } from '../../lambdas/shared/events';
import { getJson } from '../../lambdas/shared/s3';
import { ALLOW_LOOPBACK_FOR_TESTS, verifyWebhookSignature } from '../../lambdas/shared/webhook';
import { localToken } from '../../scripts/api/local-auth';
import { LOCAL_ARTIFACTS, type LocalApi, startLocalApi } from '../../scripts/api/local-server';
import { syntheticPhotos } from '../../scripts/local/demo-photos';
import { describeNeeding, motoMissing } from '../helpers/suites';
import { opensslMissing, type Received, selfSignedCertificate, startReceiver } from './tls';

type Json = Record<string, any>;
let api: LocalApi;
let server: Server;
let token: string;
let received: Received[] = [];

async function call(method: string, path: string, body?: unknown): Promise<{ status: number; body: Json }> {
  const res = await fetch(`${api.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: (await res.json()) as Json };
}

/** Waits until the receiver holds a delivery of `jobId` in `state` (deliveries are asynchronous, as in AWS). */
async function deliveredUntil(jobId: string, state: string, timeoutMs = 90_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const mine = received.filter((r) => JSON.parse(r.body).jobId === jobId);
    if (mine.some((r) => JSON.parse(r.body).state === state)) return mine;
    if (Date.now() > deadline) throw new Error(`no "${state}" delivery for ${jobId}: ${mine.map((r) => r.body).join('\n')}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describeNeeding('npm run api: state change events and webhooks of local jobs', motoMissing() ?? opensslMissing(), () => {
  beforeAll(async () => {
    const tls = selfSignedCertificate('IP:127.0.0.1');
    ({ server, received } = await startReceiver(tls));
    api = await startLocalApi({ webhook: { ca: tls.cert, [ALLOW_LOOPBACK_FOR_TESTS]: true } });
    token = await localToken('alpha');
  });
  afterAll(async () => {
    await api?.stop();
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  });

  it("a started job's every state change reaches its webhook, signed with the job's secret, ending failed/train", async () => {
    const photos = await syntheticPhotos(20, 512);
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/avatar`;
    const created = await call('POST', '/jobs', {
      spec: { token: 'zwxhook', classWord: 'toy', kind: 'object' },
      photos: photos.map((p) => ({ name: p.name, contentType: 'image/jpeg' })),
      webhook: { url },
    });
    expect(created.status).toBe(201);
    const { jobId, webhook } = created.body as { jobId: string; webhook: { secret: string } };
    for (const [i, target] of (created.body.uploads as Json[]).entries()) {
      const form = new FormData();
      for (const [k, v] of Object.entries(target.fields as Record<string, string>)) form.append(k, v);
      form.append('file', new Blob([photos[i]!.bytes], { type: 'image/jpeg' }));
      expect((await fetch(target.url, { method: 'POST', body: form })).status).toBe(204);
    }
    expect((await call('POST', `/jobs/${jobId}/start`)).status).toBe(202);
    await api.run({ teamId: 'alpha', jobId });

    const mine = await deliveredUntil(jobId, 'failed');
    const changes = mine.map((r) => JobStateChangeSchema.parse(JSON.parse(r.body)));
    for (const r of mine) expect(verifyWebhookSignature(webhook.secret, r.signature, r.body)).toBe(true);
    // Validate's start, normalize, the wait for a GPU, the failure: in order, each change once.
    const steps = changes.map((c) => `${c.state}/${c.stage}`);
    expect(steps[0]).toBe('queued/validate');
    expect(steps).toEqual(expect.arrayContaining(['running/validate', 'running/normalize', 'queued/caption']));
    expect(steps.at(-1)).toBe('failed/train');
    expect(changes.at(-1)!.error?.code).toBe('GPU_UNAVAILABLE');
    expect(new Set(changes.map((c) => c.eventId)).size).toBe(changes.length);
    // What announce published is what the webhook got, and each attempt is recorded next to the job.
    expect(api.events.published.filter((c) => c.jobId === jobId)).toEqual(changes);
    const record = (await getJson(api.s3, LOCAL_ARTIFACTS, deliveryKey('alpha', jobId, changes.at(-1)!.eventId))) as Json;
    expect(record).toMatchObject({ url, eventId: changes.at(-1)!.eventId, attempts: [{ attempt: 1, status: 200 }] });
  });

  it('a cancel written by the API is delivered too', async () => {
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/cancel`;
    const created = await call('POST', '/jobs', {
      spec: { token: 'zwxhook', classWord: 'toy', kind: 'object' },
      photos: [{ name: 'a.jpg', contentType: 'image/jpeg' }],
      webhook: { url },
    });
    const { jobId, webhook } = created.body as { jobId: string; webhook: { secret: string } };
    expect((await call('POST', `/jobs/${jobId}/cancel`)).body.state).toBe('cancelled');
    const [delivery] = await deliveredUntil(jobId, 'cancelled');
    expect(JSON.parse(delivery!.body)).toMatchObject({ teamId: 'alpha', jobId, state: 'cancelled', stage: 'validate', error: { code: 'CANCELLED' } });
    expect(verifyWebhookSignature(webhook.secret, delivery!.signature, delivery!.body)).toBe(true);
  });
});
