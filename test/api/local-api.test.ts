/**
 * The job API as a SaaS backend uses it: real HTTP (fetch, and the avatar CLI as a process) against
 * the local API (`npm run api`'s server) over moto and the synthesized state machine run locally.
 *
 * What moto emulates here: S3 objects, versioning, ListObjectVersions, DeleteObjects, conditional
 * writes (IfNoneMatch/IfMatch), presigned GET expiry; the Step Functions API (StartExecution,
 * StopExecution, DescribeExecution) without running anything itself. What it does NOT: it accepts
 * any browser POST upload without checking the policy or its signature (checked: an oversized body,
 * a wrong Content-Type and a forged signature all get 204), so the upload policy is evaluated by
 * test/api/post-policy.ts with S3's documented rules, and start re-checks sizes server-side.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, ListObjectVersionsCommand, S3Client } from '@aws-sdk/client-s3';
import { DescribeExecutionCommand, SFNClient } from '@aws-sdk/client-sfn';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createApp } from '../../lambdas/api/app';
import { localKeys } from '../../lambdas/api/auth';
import { erasedJobId } from '../../lambdas/api/jobs';
import { writeLedgerRow } from '../../lambdas/shared/cost';
import { putBytes } from '../../lambdas/shared/s3';
import { TeamRegistry, teamsDocumentClient } from '../../lambdas/shared/teams';
import { executionName } from '../../lambdas/start/handler';
import { LOCAL_ISSUER, localKeyPair, localToken, TEAM_SCOPE_PREFIX } from '../../scripts/api/local-auth';
import { LOCAL_ARTIFACTS, LOCAL_INBOX, LOCAL_TEAMS_TABLE, type LocalApi, startLocalApi } from '../../scripts/api/local-server';
import { syntheticPhotos } from '../../scripts/local/demo-photos';
import { LOCAL_CREDENTIALS, LOCAL_REGION } from '../../scripts/local/moto';
import { describeWithMoto } from '../helpers/suites';
import { policyViolations } from './post-policy';

const MAX_PHOTO_BYTES = 2 * 1024 * 1024;
/** A GPU stage waits this long for capacity before GPU_UNAVAILABLE: the window to cancel a running job. */
const GPU_WAIT_MS = 8000;
const ROOT = join(__dirname, '..', '..');

let api: LocalApi;
let tokens: Record<'alpha' | 'beta' | 'gamma', string>;
let photos: Array<{ name: string; bytes: Buffer }>;
let mainJob: string;

type Json = Record<string, any>;

async function call(team: keyof typeof tokens | null, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${api.url}${path}`, {
    method,
    headers: { ...(team ? { authorization: `Bearer ${tokens[team]}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: (await res.json()) as Json, headers: res.headers };
}

const spec = { token: 'zwxapi', classWord: 'toy', kind: 'object' };
const declared = () => photos.map((p) => ({ name: p.name, contentType: 'image/jpeg' }));

async function upload(target: Json, bytes: Buffer, contentType = target.contentType as string) {
  const form = new FormData();
  for (const [k, v] of Object.entries(target.fields as Record<string, string>)) form.append(k, k === 'Content-Type' ? contentType : v);
  form.append('file', new Blob([bytes], { type: contentType }));
  return fetch(target.url, { method: 'POST', body: form });
}

async function createAndUpload(team: 'alpha' | 'beta', key?: string): Promise<string> {
  const created = await call(team, 'POST', '/jobs', { spec, photos: declared() }, key ? { 'idempotency-key': key } : {});
  expect(created.status).toBe(201);
  for (const [i, target] of (created.body.uploads as Json[]).entries()) expect((await upload(target, photos[i].bytes)).status).toBe(204);
  return created.body.jobId as string;
}

async function waitFor(team: 'alpha' | 'beta', jobId: string, done: (job: Json) => boolean, timeoutMs = 90_000): Promise<Json> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { body } = await call(team, 'GET', `/jobs/${jobId}`);
    if (done(body)) return body;
    if (Date.now() > deadline) throw new Error(`job ${jobId} did not get there: ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function versionsUnder(bucket: string, prefix: string): Promise<number> {
  const out = await api.s3.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: prefix }));
  return (out.Versions?.length ?? 0) + (out.DeleteMarkers?.length ?? 0);
}

describeWithMoto('job API over the local AWS endpoint', () => {
  beforeAll(async () => {
    [api, photos] = await Promise.all([startLocalApi({ gpuWaitMs: GPU_WAIT_MS, maxPhotoBytes: MAX_PHOTO_BYTES }), syntheticPhotos(20, 512)]);
    tokens = { alpha: await localToken('alpha'), beta: await localToken('beta'), gamma: await localToken('gamma') };
  });
  afterAll(async () => {
    await api?.stop();
  });

  it('creates a job, uploads 20 photos through the presigned targets, starts it and watches it reach GPU_UNAVAILABLE', async () => {
    const created = await call('alpha', 'POST', '/jobs', { spec, photos: declared() }, { 'idempotency-key': 'main-1' });
    expect(created.status).toBe(201);
    expect(created.body.replayed).toBe(false);
    const uploads = created.body.uploads as Json[];
    expect(uploads.map((u) => u.name)).toEqual(photos.map((p) => p.name));
    mainJob = created.body.jobId;
    const expiresAt = Date.parse(created.body.uploadsExpireAt);
    for (const [i, target] of uploads.entries()) {
      // The signed policy names this key, this content type and the size range; S3 would accept this photo.
      const policy = JSON.parse(Buffer.from(target.fields.Policy, 'base64').toString('utf8'));
      expect(policy.conditions).toEqual(
        expect.arrayContaining([
          { key: `teams/alpha/jobs/${mainJob}/photos/${photos[i].name}` },
          ['content-length-range', 1, MAX_PHOTO_BYTES],
          ['eq', '$Content-Type', 'image/jpeg'],
        ]),
      );
      expect(Date.parse(policy.expiration)).toBeLessThanOrEqual(expiresAt);
      expect(policyViolations({ fields: target.fields, fileBytes: photos[i].bytes.length, now: new Date() })).toEqual([]);
      expect((await upload(target, photos[i].bytes)).status).toBe(204);
    }
    const started = await call('alpha', 'POST', `/jobs/${mainJob}/start`);
    expect(started.status).toBe(202);
    expect(started.body.state).toMatch(/queued|running/);
    // The API wrote job.json where the inbox path expects it: the same trigger starts the job.
    const spec0 = await api.s3.send(new GetObjectCommand({ Bucket: LOCAL_INBOX, Key: `teams/alpha/jobs/${mainJob}/job.json` }));
    expect(JSON.parse(await spec0.Body!.transformToString())).toEqual(spec);

    const seen = new Set<string>();
    const final = await waitFor('alpha', mainJob, (job) => {
      seen.add(`${job.state}/${job.stage}`);
      return ['succeeded', 'failed', 'cancelled'].includes(job.state);
    });
    expect(final.state).toBe('failed');
    // The Train state's GPU job (caption, then train) found no GPU: it failed before any stage reported.
    expect(final.stage).toBe('train');
    expect(final.status.error.code).toBe('GPU_UNAVAILABLE');
    expect(seen).toContain('queued/caption'); // normalize finished: "waiting for a GPU"
    expect(final.photos).toBe(20);
  });

  it('results: links signed now return exactly the bytes they list', async () => {
    const { status, body } = await call('alpha', 'GET', `/jobs/${mainJob}/results`);
    expect(status).toBe(200);
    const names = (body.artifacts as Json[]).map((a) => a.name);
    expect(names).toEqual(expect.arrayContaining(['validate/report.json', 'validate/contact-sheet.png', 'normalize/plan.json']));
    expect(names.filter((n) => n.endsWith('.png') && n.startsWith('normalize/')).length).toBe(20);
    expect(Date.parse(body.urlExpiresAt)).toBeGreaterThan(Date.now());
    for (const a of body.artifacts as Json[]) {
      const res = await fetch(a.url);
      expect(res.status).toBe(200);
      const bytes = Buffer.from(await res.arrayBuffer());
      expect(bytes.length).toBe(a.size);
      const stored = await api.s3.send(new GetObjectCommand({ Bucket: LOCAL_ARTIFACTS, Key: a.key }));
      const hash = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
      expect(hash(bytes)).toBe(hash(await stored.Body!.transformToByteArray()));
    }
  });

  it("results of a finished job: manifest.json's list with sha256 and the recommendation, links signed again now", async () => {
    const created = await call('alpha', 'POST', '/jobs', { spec, photos: declared().slice(0, 1) });
    const jobId = created.body.jobId as string;
    const prefix = `teams/alpha/jobs/${jobId}/`;
    // What finalize leaves: an artifact, manifest.json (its links long dead) and a succeeded status.
    const lora = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 31) % 256));
    const sha = createHash('sha256').update(lora).digest('hex');
    const put = (key: string, body: string | Buffer) => putBytes(api.s3, LOCAL_ARTIFACTS, `${prefix}${key}`, body, 'application/octet-stream');
    await put('train/zwxapi.safetensors', lora);
    const recommendation = {
      checkpoint: 'zwxapi.safetensors',
      epoch: 5,
      strength: 0.8,
      tag: '<lora:zwxapi:0.8>',
      reason: 'highest likeness at 0.8',
      runnerUp: null,
    };
    await put(
      'manifest.json',
      JSON.stringify({
        teamId: 'alpha',
        jobId,
        createdAt: '2026-01-01T00:00:00.000Z',
        urlExpiresAt: '2026-01-01T01:00:00.000Z',
        artifacts: [
          {
            key: `${prefix}train/zwxapi.safetensors`,
            name: 'train/zwxapi.safetensors',
            stage: 'train',
            size: lora.length,
            sha256: sha,
            url: 'https://expired.example/old',
          },
        ],
        recommendation,
      }),
    );
    await put(
      'status.json',
      JSON.stringify({
        teamId: 'alpha',
        jobId,
        state: 'succeeded',
        stage: 'finalize',
        createdAt: '2026-01-01T00:00:00.000Z',
        updatedAt: '2026-01-01T00:30:00.000Z',
        finishedAt: '2026-01-01T00:30:00.000Z',
      }),
    );
    const { status, body } = await call('alpha', 'GET', `/jobs/${jobId}/results`);
    expect(status).toBe(200);
    expect(body.state).toBe('succeeded');
    expect(body.recommendation).toEqual(recommendation);
    expect(body.artifacts).toHaveLength(1);
    const [artifact] = body.artifacts as Json[];
    expect(artifact).toMatchObject({ name: 'train/zwxapi.safetensors', size: lora.length, sha256: sha });
    expect(artifact.url).not.toBe('https://expired.example/old');
    const fetched = Buffer.from(await (await fetch(artifact.url)).arrayBuffer());
    expect(createHash('sha256').update(fetched).digest('hex')).toBe(sha);
  });

  it('Idempotency-Key: a replay returns the same job; the key with another body is refused', async () => {
    const replay = await call('alpha', 'POST', '/jobs', { spec, photos: declared() }, { 'idempotency-key': 'main-1' });
    expect(replay.status).toBe(201);
    expect(replay.body).toMatchObject({ jobId: mainJob, replayed: true });
    expect(replay.body.uploads).toHaveLength(20);
    const other = await call('alpha', 'POST', '/jobs', { spec: { ...spec, token: 'zwxother' }, photos: declared() }, { 'idempotency-key': 'main-1' });
    expect(other.status).toBe(409);
    expect(other.body.error.code).toBe('IDEMPOTENCY_KEY_REUSED');
    // The same key in another team is another team's key.
    const beta = await call('beta', 'POST', '/jobs', { spec, photos: declared() }, { 'idempotency-key': 'main-1' });
    expect(beta.status).toBe(201);
    expect(beta.body.jobId).not.toBe(mainJob);
  });

  it('refuses an invalid spec, naming the field', async () => {
    const bad = await call('alpha', 'POST', '/jobs', { spec: { ...spec, token: 'man' }, photos: declared() });
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe('INVALID_JOB_SPEC');
    expect(bad.body.error.message).toMatch(/token/);
    const traversal = await call('alpha', 'POST', '/jobs', { spec, photos: [{ name: '../x.jpg', contentType: 'image/jpeg' }] });
    expect(traversal.status).toBe(400);
    expect(traversal.body.error.message).toMatch(/photos\.0\.name/);
    const http = await call('alpha', 'POST', '/jobs', { spec, photos: declared(), webhook: { url: 'http://example.com/hook' } });
    expect(http.status).toBe(400);
    expect(http.body.error.message).toMatch(/webhook\.url: the webhook url must use https/);
    const hooked = await call('alpha', 'POST', '/jobs', { spec, photos: declared().slice(0, 1), webhook: { url: 'https://hooks.example.com/avatar' } });
    expect(hooked.status).toBe(201);
    expect(hooked.body.webhook.url).toBe('https://hooks.example.com/avatar');
    expect(hooked.body.webhook.secret).toMatch(/^[0-9a-f]{64}$/);
  });

  it("lists the team's jobs a page at a time and filters by state", async () => {
    const extra = [];
    for (let i = 0; i < 3; i++) extra.push((await call('alpha', 'POST', '/jobs', { spec, photos: declared().slice(0, 1) })).body.jobId as string);
    const ids: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await call('alpha', 'GET', `/jobs?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      expect(page.status).toBe(200);
      expect(page.body.jobs.length).toBeLessThanOrEqual(2);
      ids.push(...(page.body.jobs as Json[]).map((j) => j.jobId));
      cursor = page.body.nextCursor;
      pages++;
    } while (cursor);
    expect(pages).toBeGreaterThanOrEqual(2);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).toEqual(expect.arrayContaining([mainJob, ...extra]));
    const failed = await call('alpha', 'GET', '/jobs?state=failed&limit=100');
    expect((failed.body.jobs as Json[]).map((j) => j.jobId)).toEqual([mainJob]);
    const created = await call('alpha', 'GET', '/jobs?state=created&limit=100');
    const createdIds = (created.body.jobs as Json[]).map((j) => j.jobId);
    expect(createdIds).toEqual(expect.arrayContaining(extra));
    expect(createdIds).not.toContain(mainJob);
    expect((created.body.jobs as Json[]).every((j) => j.state === 'created')).toBe(true);
    const beta = await call('beta', 'GET', '/jobs?limit=100');
    expect((beta.body.jobs as Json[]).map((j) => j.jobId)).not.toContain(mainJob);
  });

  it('another team gets 404 with the body of a missing job; no token is 401; an unknown team is 403', async () => {
    const missing = 'no-such-job';
    const notFound = (id: string) => ({ error: { code: 'JOB_NOT_FOUND', message: `no job "${id}" for your team: check the job id`, input: id } });
    expect(await call('alpha', 'GET', `/jobs/${missing}`)).toMatchObject({ status: 404, body: notFound(missing) });
    for (const [method, path] of [
      ['GET', ''],
      ['GET', '/results'],
      ['POST', '/start'],
      ['POST', '/cancel'],
      ['DELETE', ''],
    ]) {
      const res = await call('beta', method, `/jobs/${mainJob}${path}`);
      expect({ route: `${method} ${path}`, status: res.status, body: res.body }).toEqual({ route: `${method} ${path}`, status: 404, body: notFound(mainJob) });
    }
    expect((await call('alpha', 'GET', `/jobs/${mainJob}`)).status).toBe(200); // untouched by beta's DELETE
    const anonymous = await call(null, 'GET', '/jobs');
    expect(anonymous.status).toBe(401);
    expect(anonymous.body.error.code).toBe('UNAUTHORIZED');
    const gamma = await call('gamma', 'GET', '/jobs');
    expect(gamma.status).toBe(403);
    expect(gamma.body.error.code).toBe('TEAM_UNKNOWN');
  });

  it('an oversized upload is refused by its upload policy (evaluated here: moto does not) and again by start', async () => {
    const created = await call('alpha', 'POST', '/jobs', { spec, photos: [{ name: 'big.jpg', contentType: 'image/jpeg' }] });
    const target = (created.body.uploads as Json[])[0];
    const big = Buffer.alloc(MAX_PHOTO_BYTES + 1, 0xff);
    expect(policyViolations({ fields: target.fields, fileBytes: big.length, now: new Date() })).toEqual([
      `EntityTooLarge/Small: ${big.length} bytes outside 1..${MAX_PHOTO_BYTES}`,
    ]);
    expect(policyViolations({ fields: { ...target.fields, 'Content-Type': 'text/html' }, fileBytes: 10, now: new Date() })).toContain(
      'Content-Type fails eq image/jpeg',
    );
    expect(policyViolations({ fields: target.fields, fileBytes: 10, now: new Date(Date.now() + 3600_000) })).toEqual(['policy expired']);
    const res = await upload(target, big);
    if (res.status >= 400) {
      expect(res.status).toBe(400); // an S3 that enforces the policy: EntityTooLarge
    } else {
      expect(res.status).toBe(204); // moto stored it: the server-side check below is what refuses it here
      const start = await call('alpha', 'POST', `/jobs/${created.body.jobId}/start`);
      expect(start.status).toBe(413);
      expect(start.body.error).toMatchObject({ code: 'PHOTO_TOO_LARGE', input: 'big.jpg' });
    }
  });

  const registryOf = () =>
    new TeamRegistry(teamsDocumentClient({ endpoint: api.moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS }), LOCAL_TEAMS_TABLE);

  it('usage: month to date against the budget from the team registry', async () => {
    const res = await call('alpha', 'GET', '/usage');
    expect(res.status).toBe(200);
    // No job reached a GPU here: what the ended jobs were charged is their intake Lambdas and storage
    // (the ledger's lambda and storage rows), nothing is reserved; the budget is the registry's default.
    const rows = await registryOf().items('alpha', 'COST#');
    expect(rows.length).toBeGreaterThan(0);
    expect(new Set(rows.map((r) => r.stage))).toEqual(new Set(['lambda', 'storage']));
    const charged = Math.round(rows.reduce((sum, r) => sum + (r.usd as number), 0) * 1e6) / 1e6;
    expect(charged).toBeGreaterThan(0);
    expect(res.body).toEqual({
      teamId: 'alpha',
      month: new Date().toISOString().slice(0, 7),
      spentUsd: charged,
      reservedUsd: 0,
      budgetUsd: 100,
      spentGpuHours: 0,
      gpuHoursBudget: 50,
    });
  });

  it('start refuses a job whose declared photos are not all uploaded', async () => {
    const created = await call('alpha', 'POST', '/jobs', { spec, photos: declared().slice(0, 2) });
    const res = await call('alpha', 'POST', `/jobs/${created.body.jobId}/start`);
    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('UPLOADS_INCOMPLETE');
  });

  it('cancels a running job: the execution is stopped, no state runs after, status is cancelled', async () => {
    const jobId = await createAndUpload('alpha');
    expect((await call('alpha', 'POST', `/jobs/${jobId}/start`)).status).toBe(202);
    // Running: normalize is done; the job is queued for a GPU (admission, then the caption+train job's wait for capacity).
    await waitFor('alpha', jobId, (job) => job.stage === 'caption' && job.state === 'queued');
    const cancelled = await call('alpha', 'POST', `/jobs/${jobId}/cancel`);
    expect(cancelled.status).toBe(200);
    expect(cancelled.body.state).toBe('cancelled');
    const sfn = new SFNClient({ endpoint: api.moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    const execution = await sfn.send(
      new DescribeExecutionCommand({
        executionArn: `arn:aws:states:${LOCAL_REGION}:123456789012:execution:avatar-local:${executionName({ teamId: 'alpha', jobId })}`,
      }),
    );
    expect(execution.status).toBe('ABORTED');
    await api.run({ teamId: 'alpha', jobId });
    const after = await call('alpha', 'GET', `/jobs/${jobId}`);
    expect(after.body.state).toBe('cancelled'); // MarkFailed did not run after the stop
    expect(after.body.status.error.code).toBe('CANCELLED');
    const again = await call('alpha', 'POST', `/jobs/${jobId}/cancel`);
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe('JOB_FINISHED');
  });

  it('link lifetime: the stated expiry is never later than the signing credentials (expiring in 10 minutes)', async () => {
    const credentialsExpire = new Date(Date.now() + 10 * 60_000);
    const s3 = new S3Client({
      endpoint: api.moto.endpoint,
      forcePathStyle: true,
      region: LOCAL_REGION,
      credentials: async () => ({ ...LOCAL_CREDENTIALS, sessionToken: 'short', expiration: credentialsExpire }),
    });
    const app = createApp({
      deps: {
        s3,
        sfn: new SFNClient({ endpoint: api.moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS }),
        inboxBucket: LOCAL_INBOX,
        artifactsBucket: LOCAL_ARTIFACTS,
        stateMachineArn: 'arn:aws:states:us-east-1:123456789012:stateMachine:avatar-local',
        urlExpirySeconds: 7 * 24 * 3600,
        uploadExpirySeconds: 3600,
        maxPhotoBytes: MAX_PHOTO_BYTES,
        now: () => new Date(),
      },
      auth: { issuer: LOCAL_ISSUER, keys: localKeys((await localKeyPair()).jwks), teamScopePrefix: TEAM_SCOPE_PREFIX },
      rateLimit: { burst: 10, perSecond: 1 },
    });
    const headers = { authorization: `Bearer ${tokens.alpha}` };
    const results = (await (await app.request(`/jobs/${mainJob}/results`, { headers })).json()) as Json;
    expect(Date.parse(results.urlExpiresAt)).toBeLessThanOrEqual(credentialsExpire.getTime());
    for (const a of results.artifacts as Json[]) {
      const url = new URL(a.url);
      expect(Number(url.searchParams.get('X-Amz-Expires'))).toBeLessThanOrEqual(600);
      expect(
        Date.parse(url.searchParams.get('X-Amz-Date')!.replace(/^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/, '$1-$2-$3T$4:$5:$6Z')) +
          Number(url.searchParams.get('X-Amz-Expires')) * 1000,
      ).toBeLessThanOrEqual(credentialsExpire.getTime());
    }
    const created = (await (
      await app.request('/jobs', {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json' },
        body: JSON.stringify({ spec, photos: declared().slice(0, 1) }),
      })
    ).json()) as Json;
    expect(Date.parse(created.uploadsExpireAt)).toBeLessThanOrEqual(credentialsExpire.getTime());
    const policy = JSON.parse(Buffer.from(created.uploads[0].fields.Policy, 'base64').toString('utf8'));
    expect(Date.parse(policy.expiration)).toBeLessThanOrEqual(credentialsExpire.getTime());
  });

  it('delete erases every object and every version of the job in both buckets; 404 afterwards', async () => {
    const prefix = `teams/alpha/jobs/${mainJob}/`;
    // A cost ledger row for the job, as the cost stage writes it (nothing here reaches a GPU to write one).
    const registry = registryOf();
    await writeLedgerRow(registry, { teamId: 'alpha', jobId: mainJob, stage: 'train', usd: 0.42, gpuSeconds: 1500, lambdaUsd: 0, storageUsd: 0 });
    // The job has several versions of status.json in the versioned artifacts bucket.
    expect(await versionsUnder(LOCAL_ARTIFACTS, `${prefix}status.json`)).toBeGreaterThan(1);
    expect(await versionsUnder(LOCAL_INBOX, prefix)).toBe(21);
    const res = await call('alpha', 'DELETE', `/jobs/${mainJob}`);
    expect(res.status).toBe(200);
    expect(res.body.removed[LOCAL_INBOX]).toBe(21);
    expect(await versionsUnder(LOCAL_INBOX, prefix)).toBe(0);
    expect(await versionsUnder(LOCAL_ARTIFACTS, prefix)).toBe(0);
    expect(await versionsUnder(LOCAL_ARTIFACTS, 'teams/alpha/idempotency/')).toBe(0); // main-1 was the only alpha key
    for (const [method, path] of [
      ['GET', ''],
      ['GET', '/results'],
      ['DELETE', ''],
    ]) {
      expect((await call('alpha', method, `/jobs/${mainJob}${path}`)).status).toBe(404);
    }
    const tombstone = JSON.parse(
      await (await api.s3.send(new GetObjectCommand({ Bucket: LOCAL_ARTIFACTS, Key: `teams/alpha/tombstones/${mainJob}.json` }))).Body!.transformToString(),
    );
    expect(Object.keys(tombstone).sort()).toEqual(['deletedAt', 'jobId', 'ledgerRows', 'removed', 'teamId']);
    // The row above, and the job's end's lambda and storage rows.
    expect(tombstone.ledgerRows).toBe(3);
    // The ledger keeps the figures under an anonymous id; nothing in it names the job any more.
    expect(await registry.items('alpha', `COST#${mainJob}#`)).toEqual([]);
    const anonymous = await registry.items('alpha', `COST#${erasedJobId({ teamId: 'alpha', jobId: mainJob })}#`);
    expect(anonymous.map((r) => r.stage).sort()).toEqual(['lambda', 'storage', 'train']);
    expect(anonymous).toContainEqual(
      expect.objectContaining({ jobId: erasedJobId({ teamId: 'alpha', jobId: mainJob }), stage: 'train', usd: 0.42, gpuSeconds: 1500 }),
    );
    expect(JSON.stringify(await registry.items('alpha', 'COST#'))).not.toContain(mainJob);
  });

  it('the avatar CLI as a process: submit, status --watch, results --out, cancel, delete, errors with the API code', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'avatar-cli-'));
    mkdirSync(join(dir, 'photos'));
    for (const p of photos) writeFileSync(join(dir, 'photos', p.name), p.bytes);
    const env = { ...process.env, AVATAR_API_URL: api.url, AVATAR_API_TOKEN: tokens.beta };
    const avatar = (args: string[], extraEnv: Record<string, string | undefined> = env) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        // Asynchronous: the API serves from this process.
        const child = spawn(process.execPath, [join(ROOT, 'scripts', 'cli', 'avatar.js'), ...args], { env: extraEnv as NodeJS.ProcessEnv });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d) => (stdout += d));
        child.stderr.on('data', (d) => (stderr += d));
        child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
      });

    const submitted = await avatar(['submit', join(dir, 'photos'), '--token', 'zwxcli', '--kind', 'object', '--json']);
    expect(submitted.code).toBe(0);
    const { jobId } = JSON.parse(submitted.stdout);
    expect(jobId).toMatch(/^[0-9a-f-]{36}$/);

    const watched = await avatar(['status', jobId, '--watch', '--interval', '0.5', '--json']);
    expect(watched.code).toBe(1); // it did not succeed
    const status = JSON.parse(watched.stdout);
    expect(status).toMatchObject({ jobId, state: 'failed', stage: 'train' });
    expect(status.status.error.code).toBe('GPU_UNAVAILABLE');

    const out = join(dir, 'out');
    const results = await avatar(['results', jobId, '--out', out, '--json']);
    expect(results.code).toBe(0);
    const manifest = JSON.parse(results.stdout);
    const listed = (manifest.artifacts as Json[]).map((a) => a.name).sort();
    const downloaded = readdirSync(out, { recursive: true, withFileTypes: true })
      .filter((e) => e.isFile())
      .map((e) => join(e.parentPath, e.name).slice(out.length + 1))
      .sort();
    expect(downloaded).toEqual(listed);
    for (const a of manifest.artifacts as Json[]) expect(readFileSync(join(out, a.name)).length).toBe(a.size);

    const human = await avatar(['status', jobId]);
    expect(human.code).toBe(0);
    expect(human.stdout).toContain(`${jobId}: failed, stage train`);

    const cancel = await avatar(['cancel', jobId]);
    expect(cancel.code).toBe(1);
    expect(cancel.stderr).toContain('error: JOB_FINISHED:');

    const crossTeam = await avatar(['status', jobId, '--json'], { ...env, AVATAR_API_TOKEN: tokens.alpha });
    expect(crossTeam.code).toBe(1);
    expect(JSON.parse(crossTeam.stdout).error.code).toBe('JOB_NOT_FOUND');

    const deleted = await avatar(['delete', jobId, '--json']);
    expect(deleted.code).toBe(0);
    expect(JSON.parse(deleted.stdout).jobId).toBe(jobId);
    expect(await versionsUnder(LOCAL_INBOX, `teams/beta/jobs/${jobId}/`)).toBe(0);
    expect(await versionsUnder(LOCAL_ARTIFACTS, `teams/beta/jobs/${jobId}/`)).toBe(0);
    const gone = await avatar(['status', jobId]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain('error: JOB_NOT_FOUND:');

    const usage = await avatar(['usage', '--json']);
    expect(usage.code).toBe(0);
    expect(JSON.parse(usage.stdout)).toMatchObject({ teamId: 'beta', budgetUsd: 100 });

    const noUrl = await avatar(['status', jobId], { PATH: process.env.PATH, AVATAR_API_TOKEN: 'x' });
    expect(noUrl.code).toBe(2);
    expect(noUrl.stderr).toContain('pass --api-url <url> or set AVATAR_API_URL');
    const noToken = await avatar(['status', jobId, '--api-url', api.url], { PATH: process.env.PATH });
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toContain('AVATAR_API_TOKEN');
  });
});
