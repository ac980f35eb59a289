/**
 * finalize: lists every artifact the stages wrote, hashes each (sha256, streamed), signs a short-lived
 * download URL for it, writes manifest.json (with evaluate's recommended checkpoint and strength), and
 * marks the job succeeded.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import pMap from 'p-map';
import { type Accounting, accountingFromEnv, endJob } from '../shared/accounting';
import { type Manifest, ManifestSchema, STAGES } from '../shared/contract';
import { requireEnv } from '../shared/env';
import { type StageContext, stageHandler } from '../shared/handler';
import { jobKey, jobPrefix, keys } from '../shared/keys';
import { LAYOUT } from '../shared/layout';
import { getJson, listAll, putJson } from '../shared/s3';
import { writeStatus } from '../shared/status';

/** Stage outputs handed out; training state is internal (resume after Spot) and stays private. */
const PRIVATE = [LAYOUT.trainState];
const HASH_CONCURRENCY = 4;

export interface FinalizeOptions {
  readonly urlExpirySeconds: number;
  /** The team's accounting: charge the job, free its slot, resume waiting jobs (absent in unit tests of the manifest alone). */
  readonly accounting?: Accounting;
}

export interface FinalizeResult {
  readonly manifestKey: string;
  readonly artifacts: number;
}

/** The evaluate stage's recommendation (evaluate/scores.json), trimmed to what a client acts on. */
async function recommendation(ctx: StageContext): Promise<Manifest['recommendation']> {
  const scores = (await getJson(ctx.s3, ctx.artifactsBucket, jobKey(ctx.job, 'scores'), 20_000_000)) as
    | { recommendation?: Record<string, unknown> & { runnerUp?: Record<string, unknown> | null } }
    | undefined;
  const r = scores?.recommendation;
  if (!r) return undefined;
  const brief = (c: Record<string, unknown>) => ({ checkpoint: c.checkpoint, epoch: c.epoch, strength: c.strength, tag: c.tag });
  return { ...brief(r), reason: r.reason, runnerUp: r.runnerUp ? brief(r.runnerUp) : null } as Manifest['recommendation'];
}

async function sha256(ctx: StageContext, key: string): Promise<string> {
  const out = await ctx.s3.send(new GetObjectCommand({ Bucket: ctx.artifactsBucket, Key: key }));
  const hash = createHash('sha256');
  for await (const chunk of out.Body as Readable) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export async function finalize(ctx: StageContext, options: FinalizeOptions): Promise<FinalizeResult> {
  await writeStatus(
    ctx.s3,
    ctx.artifactsBucket,
    ctx.job,
    { state: 'running', stage: 'finalize', progress: { fraction: 0, message: 'listing artifacts' } },
    ctx.now(),
  );
  const prefix = jobPrefix(ctx.job);
  const stageDirs = new Set<string>(STAGES);
  const objects = (await listAll(ctx.s3, ctx.artifactsBucket, prefix))
    .map((o) => ({ ...o, name: o.key.slice(prefix.length) }))
    .filter((o) => stageDirs.has(o.name.split('/')[0]) && !PRIVATE.some((p) => o.name.startsWith(p)))
    .sort((a, b) => a.name.localeCompare(b.name));

  const created = ctx.now();
  // A URL signed with minted credentials stops working when they expire (at most an hour): the
  // manifest states the true expiry; the job API signs fresh links at request time.
  const urlSeconds = ctx.credentialsExpireAt
    ? Math.max(1, Math.min(options.urlExpirySeconds, Math.floor((ctx.credentialsExpireAt.getTime() - created.getTime()) / 1000)))
    : options.urlExpirySeconds;
  const artifacts = await pMap(
    objects,
    async (o) => ({
      key: o.key,
      name: o.name,
      stage: o.name.split('/')[0],
      size: o.size,
      sha256: await sha256(ctx, o.key),
      url: await getSignedUrl(ctx.s3, new GetObjectCommand({ Bucket: ctx.artifactsBucket, Key: o.key }), {
        expiresIn: urlSeconds,
      }),
    }),
    { concurrency: HASH_CONCURRENCY, stopOnError: true },
  );
  // Charged before the manifest: a retry after a failure here charges once (endJob is idempotent).
  const cost = options.accounting ? (await endJob(options.accounting, ctx.job)).cost : undefined;
  const manifest: Manifest = ManifestSchema.parse({
    ...ctx.job,
    ...(cost ? { cost } : {}),
    createdAt: created.toISOString(),
    urlExpiresAt: new Date(created.getTime() + urlSeconds * 1000).toISOString(),
    artifacts,
    recommendation: await recommendation(ctx),
  });
  const manifestKey = keys.manifest(ctx.job);
  await putJson(ctx.s3, ctx.artifactsBucket, manifestKey, manifest);
  await writeStatus(
    ctx.s3,
    ctx.artifactsBucket,
    ctx.job,
    {
      state: 'succeeded',
      stage: 'finalize',
      progress: { fraction: 1, message: `${artifacts.length} artifacts in manifest.json` },
      finishedAt: ctx.now().toISOString(),
      ...(cost ? { cost } : {}),
    },
    ctx.now(),
  );
  return { manifestKey, artifacts: artifacts.length };
}

export const handler = stageHandler('finalize', (ctx) =>
  finalize(ctx, { urlExpirySeconds: Number(requireEnv('URL_EXPIRY_SECONDS')), accounting: accountingFromEnv(ctx.now) }),
);
