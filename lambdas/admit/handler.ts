/**
 * The admission stage (the `Admit` state): after normalize (the plan and photo count are known),
 * before the first GPU minute. Reads `normalize/plan.json`, estimates the job's cost from the plan
 * and the configured prices, and admits it against its team's limits (lambdas/shared/admission.ts).
 *
 * The state invokes this function with `.waitForTaskToken`, so the execution goes on only when its
 * task token is answered:
 * - admitted: SendTaskSuccess with the decision, at once;
 * - waiting (CONCURRENCY_LIMIT): the token is stored with the decision on the job's registry item and
 *   a `queued` status.json carries the code and numbers; the release of another job of the team
 *   (lambdas/shared/accounting.ts) or `npm run team -- resume/update` answers the token later;
 * - rejected: SendTaskFailure with the stable code in the Lambda error shape, so the state's Catch
 *   runs mark-failed, which writes a failed status.json; nothing is reserved.
 * A retried invocation answers its (new) token with the recorded decision and reserves nothing again.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { SendTaskSuccessCommand, SFNClient } from '@aws-sdk/client-sfn';
import { z } from 'zod';
import { decision, numbers, rejectTask } from '../shared/accounting';
import { type AdmissionResult, admissionOf, admit } from '../shared/admission';
import { DatasetPlanSchema, ExecutionInputSchema } from '../shared/contract';
import { requireEnv } from '../shared/env';
import { InvalidInputError } from '../shared/errors';
import { stageHandler } from '../shared/handler';
import { type JobRef, keys } from '../shared/keys';
import { estimateJobCost, loadPrices, type Prices } from '../shared/prices';
import { getValidJson } from '../shared/s3';
import { writeStatus } from '../shared/status';
import { TEAM_DEFAULTS, TeamRegistry, teamsDocumentClient } from '../shared/teams';

export interface AdmitDeps {
  readonly s3: S3Client;
  readonly artifactsBucket: string;
  readonly registry: TeamRegistry;
  readonly prices: Prices;
  /** Answers the task token; absent only when a test calls the core without a state machine. */
  readonly sfn?: Pick<SFNClient, 'send'>;
}

/** The Admit state's payload: the job and the token its execution waits on. */
export const AdmitInputSchema = ExecutionInputSchema.extend({ taskToken: z.string().min(1).max(1024) }).strict();

export async function admitJob(job: JobRef, deps: AdmitDeps, taskToken?: string): Promise<AdmissionResult> {
  const dataset = await getValidJson(deps.s3, deps.artifactsBucket, keys.plan(job), DatasetPlanSchema, { missing: 'MISSING_PLAN', invalid: 'INVALID_PLAN' });
  const team = await deps.registry.get(job.teamId);
  const estimate = estimateJobCost(dataset.plan, team?.config.allowedInstanceTypes ?? TEAM_DEFAULTS.allowedInstanceTypes, deps.prices);
  const { spec } = dataset;
  let result: AdmissionResult = await admit(
    deps.registry,
    {
      ...job,
      kind: spec.kind,
      photos: dataset.plan.numImages,
      optimizer: spec.training.optimizer,
      network: spec.training.network,
      targetSteps: spec.training.targetSteps,
      estimate: { usd: estimate.usd, gpuSeconds: estimate.gpuSeconds, lambdaUsd: estimate.lambdaUsd, storageUsd: estimate.storageUsd },
    },
    { taskToken },
  );
  if (result.duplicate && result.outcome === 'admitted' && (await admissionOf(deps.registry, job.teamId, job.jobId))?.state === 'released') {
    // The job ran and ended already: running it again would run unreserved and uncounted.
    result = {
      ...result,
      outcome: 'rejected',
      code: 'JOB_ALREADY_ENDED',
      message: `job "${job.jobId}" of team "${job.teamId}" already ran and ended: submit it again under a new jobId`,
    };
  }
  if (result.outcome === 'waiting' && !result.duplicate) {
    await writeStatus(
      deps.s3,
      deps.artifactsBucket,
      job,
      {
        state: 'queued',
        stage: 'caption',
        error: { code: result.code!, message: `${result.message}${numbers(result)}` },
      },
      deps.registry.now(),
    );
  }
  if (taskToken && deps.sfn) {
    if (result.outcome === 'admitted') await deps.sfn.send(new SendTaskSuccessCommand({ taskToken, output: JSON.stringify(decision(result)) }));
    if (result.outcome === 'rejected') await deps.sfn.send(rejectTask(taskToken, result));
  } else if (result.outcome === 'rejected') {
    // Called without a token (no execution waits): the rejection is the function's error.
    throw new InvalidInputError(result.code!, `${result.message}${numbers(result)}`);
  }
  return result;
}

let sfn: SFNClient | undefined;
export const handler = stageHandler(
  'admit',
  (ctx, input) => {
    sfn ??= new SFNClient({});
    return admitJob(
      ctx.job,
      {
        s3: ctx.s3,
        artifactsBucket: ctx.artifactsBucket,
        registry: new TeamRegistry(teamsDocumentClient(), requireEnv('TEAMS_TABLE'), ctx.now),
        prices: loadPrices(),
        sfn,
      },
      input.taskToken,
    );
  },
  AdmitInputSchema,
);
