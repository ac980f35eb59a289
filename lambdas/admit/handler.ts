/**
 * The admission stage: after normalize (the plan and photo count are known), before the first GPU
 * minute. Reads `normalize/plan.json`, estimates the job's cost from the plan and the configured
 * prices, and admits it against its team's limits (lambdas/shared/admission.ts).
 *
 * - admitted: returns the decision (the workflow goes on to caption);
 * - waiting (CONCURRENCY_LIMIT): writes a `queued` status.json with the code and numbers and returns;
 *   the job is admitted by the release of another job of the team;
 * - rejected: throws InvalidInputError with the stable code, so the workflow's catch records a failed
 *   status.json (mark-failed) and nothing is reserved.
 * A retried invocation returns the recorded decision (`duplicate`) and reserves nothing again.
 *
 * Not wired into the state machine yet: resuming a waiting execution needs a task token (see the report).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { type AdmissionResult, admit } from '../shared/admission';
import { DatasetPlanSchema } from '../shared/contract';
import { requireEnv } from '../shared/env';
import { InvalidInputError } from '../shared/errors';
import { stageHandler } from '../shared/handler';
import { type JobRef, keys } from '../shared/keys';
import { estimateJobCost, loadPrices, type Prices } from '../shared/prices';
import { getValidJson } from '../shared/s3';
import { writeStatus } from '../shared/status';
import { TEAM_DEFAULTS, teamsDocumentClient, TeamRegistry } from '../shared/teams';

export interface AdmitDeps {
  readonly s3: S3Client;
  readonly artifactsBucket: string;
  readonly registry: TeamRegistry;
  readonly prices: Prices;
}

export async function admitJob(job: JobRef, deps: AdmitDeps): Promise<AdmissionResult> {
  const dataset = await getValidJson(deps.s3, deps.artifactsBucket, keys.plan(job), DatasetPlanSchema, { missing: 'MISSING_PLAN', invalid: 'INVALID_PLAN' });
  const team = await deps.registry.get(job.teamId);
  const estimate = estimateJobCost(dataset.plan, team?.config.allowedInstanceTypes ?? TEAM_DEFAULTS.allowedInstanceTypes, deps.prices);
  const { spec } = dataset;
  const result = await admit(deps.registry, {
    ...job,
    kind: spec.kind,
    photos: dataset.plan.numImages,
    optimizer: spec.training.optimizer,
    network: spec.training.network,
    targetSteps: spec.training.targetSteps,
    estimate: { usd: estimate.usd, gpuSeconds: estimate.gpuSeconds },
  });
  if (result.outcome === 'rejected') throw new InvalidInputError(result.code!, `${result.message}${numbers(result)}`);
  if (result.outcome === 'waiting' && !result.duplicate) {
    await writeStatus(deps.s3, deps.artifactsBucket, job, {
      state: 'queued',
      stage: 'caption',
      error: { code: result.code!, message: `${result.message}${numbers(result)}` },
    }, deps.registry.now());
  }
  return result;
}

/** The limit, what is used of it and this job's demand, for status.json (its error has no number fields). */
function numbers(r: AdmissionResult): string {
  return r.limit === undefined ? '' : ` (limit ${r.limit} ${r.unit}, used ${round(r.used!)}, this job ${round(r.estimate!)})`;
}

const round = (n: number) => Math.round(n * 100) / 100;

export const handler = stageHandler('admit', (ctx) =>
  admitJob(ctx.job, {
    s3: ctx.s3,
    artifactsBucket: ctx.artifactsBucket,
    registry: new TeamRegistry(teamsDocumentClient(), requireEnv('TEAMS_TABLE'), ctx.now),
    prices: loadPrices(),
  }),
);
