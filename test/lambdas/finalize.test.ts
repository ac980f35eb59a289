import { createHash } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { finalize } from '../../lambdas/finalize/handler';
import { ManifestSchema, StatusSchema } from '../../lambdas/shared/contract';
import type { StageContext } from '../../lambdas/shared/handler';
import { getJson, putBytes } from '../../lambdas/shared/s3';
import { type Moto, startMoto } from '../../scripts/local/moto';
import { describeWithMoto } from '../helpers/suites';

describeWithMoto('finalize', () => {
  let moto: Moto;
  let ctx: StageContext;
  const prefix = 'teams/team-a/jobs/job-1/';
  const files: Record<string, string> = {
    'validate/report.json': '{"accepted":25}',
    'normalize/15_ohwx/ohwx-01.png': 'png-bytes',
    'caption/captions.json': '{}',
    'train/ohwx.safetensors': 'weights',
    'train/state/ohwx-state/train_state.json': '{"step":10}',
    'evaluate/grid.png': 'grid',
  };

  beforeAll(async () => {
    moto = await startMoto();
    await moto.createBucket('artifacts-bucket');
    ctx = {
      s3: moto.s3(),
      inboxBucket: 'inbox-bucket',
      artifactsBucket: 'artifacts-bucket',
      job: { teamId: 'team-a', jobId: 'job-1' },
      now: () => new Date('2026-11-26T10:00:00Z'),
    };
    for (const [name, body] of Object.entries(files)) await putBytes(ctx.s3, ctx.artifactsBucket, prefix + name, body, 'application/octet-stream');
    // Another job's artifact must never appear in this job's manifest.
    await putBytes(ctx.s3, ctx.artifactsBucket, 'teams/team-a/jobs/job-10/train/x.safetensors', 'other', 'application/octet-stream');
  });
  afterAll(() => moto?.stop());

  it('lists every public artifact with size, sha256 and a signed URL, and marks the job succeeded', async () => {
    const result = await finalize(ctx, { urlExpirySeconds: 900 });

    expect(result).toEqual({ manifestKey: `${prefix}manifest.json`, artifacts: 5 });
    const manifest = ManifestSchema.parse(await getJson(ctx.s3, ctx.artifactsBucket, result.manifestKey));
    expect(manifest.artifacts.map((a) => a.name)).toEqual([
      'caption/captions.json',
      'evaluate/grid.png',
      'normalize/15_ohwx/ohwx-01.png',
      'train/ohwx.safetensors',
      'validate/report.json',
    ]);
    const weights = manifest.artifacts.find((a) => a.name === 'train/ohwx.safetensors')!;
    expect(weights.size).toBe(7);
    expect(weights.sha256).toBe(createHash('sha256').update('weights').digest('hex'));
    expect(manifest.urlExpiresAt).toBe('2026-11-26T10:15:00.000Z');
    const status = StatusSchema.parse(await getJson(ctx.s3, ctx.artifactsBucket, `${prefix}status.json`));
    expect(status).toMatchObject({ state: 'succeeded', stage: 'finalize' });
  });

  it('signs URLs that download the artifact and expire as configured', async () => {
    const { manifestKey } = await finalize(ctx, { urlExpirySeconds: 900 });
    const manifest = ManifestSchema.parse(await getJson(ctx.s3, ctx.artifactsBucket, manifestKey));
    const weights = manifest.artifacts.find((a) => a.name === 'train/ohwx.safetensors')!;

    const url = new URL(weights.url);
    expect(url.searchParams.get('X-Amz-Expires')).toBe('900');
    expect(url.searchParams.get('X-Amz-Signature')).toMatch(/^[0-9a-f]{64}$/);
    const res = await fetch(weights.url);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('weights');
  });

  it('states the true expiry when its minted credentials expire before the configured one (URLs die with them)', async () => {
    const minted = { ...ctx, credentialsExpireAt: new Date('2026-11-26T10:10:00Z') };
    const { manifestKey } = await finalize(minted, { urlExpirySeconds: 900 });
    const manifest = ManifestSchema.parse(await getJson(ctx.s3, ctx.artifactsBucket, manifestKey));
    expect(manifest.urlExpiresAt).toBe('2026-11-26T10:10:00.000Z');
    expect(new URL(manifest.artifacts[0]!.url).searchParams.get('X-Amz-Expires')).toBe('600');
  });

  it("copies evaluate's recommended checkpoint and strength, with its A1111 tag, into the manifest", async () => {
    const job2 = { ...ctx, job: { teamId: 'team-a', jobId: 'job-2' } };
    const runner = { checkpoint: 'ohwx-000002.safetensors', epoch: 2, strength: 1, tag: '<lora:ohwx-000002:1.0>', adherence: 0.3, likeness: 0.7 };
    const scores = {
      cells: [],
      recommendation: {
        checkpoint: 'ohwx-000003.safetensors',
        epoch: 3,
        strength: 0.9,
        tag: '<lora:ohwx-000003:0.9>',
        adherence: 0.31,
        likeness: 0.74,
        runnerUp: runner,
        reason: 'best likeness',
        rule: 'r',
        adherenceFloor: 0.28,
      },
    };
    await putBytes(ctx.s3, ctx.artifactsBucket, 'teams/team-a/jobs/job-2/evaluate/scores.json', JSON.stringify(scores), 'application/json');

    const { manifestKey } = await finalize(job2, { urlExpirySeconds: 900 });
    const manifest = ManifestSchema.parse(await getJson(ctx.s3, ctx.artifactsBucket, manifestKey));

    expect(manifest.recommendation).toEqual({
      checkpoint: 'ohwx-000003.safetensors',
      epoch: 3,
      strength: 0.9,
      tag: '<lora:ohwx-000003:0.9>',
      reason: 'best likeness',
      runnerUp: { checkpoint: 'ohwx-000002.safetensors', epoch: 2, strength: 1, tag: '<lora:ohwx-000002:1.0>' },
    });
  });

  it('has no recommendation when the job has no scores', async () => {
    const { manifestKey } = await finalize(ctx, { urlExpirySeconds: 900 });
    const manifest = ManifestSchema.parse(await getJson(ctx.s3, ctx.artifactsBucket, manifestKey));
    expect(manifest.recommendation).toBeUndefined();
  });
});
