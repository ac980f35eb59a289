/**
 * The edge every stage handler shares: parse the execution input, run the pure core with injected
 * clients, and turn failures into named Lambda errors that Step Functions Retry/Catch can match.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { z } from 'zod';
import { describeIssues, type ExecutionInput, ExecutionInputSchema } from './contract';
import { jobS3Client, mintFromEnv } from './credentials';
import { requireEnv } from './env';
import { InvalidInputError, toLambdaError } from './errors';
import type { JobRef } from './keys';
import { logger, publishStageMetrics } from './powertools';
import type { DataStage } from './session-policy';

export interface StageContext {
  readonly s3: S3Client;
  readonly inboxBucket: string;
  readonly artifactsBucket: string;
  readonly job: JobRef;
  readonly now: () => Date;
  /** When the S3 client's minted credentials expire (absent: ambient credentials); URLs it signs expire then too. */
  readonly credentialsExpireAt?: Date;
}

/**
 * The stage's context for `job`: its S3 client has the job's minted credentials when the stack set
 * `MINT_FUNCTION` (the execution's `jobSecret` proves the job), the ambient ones otherwise.
 */
export async function contextFromEnv(stage: DataStage, job: JobRef, jobSecret: string | undefined): Promise<StageContext> {
  const { s3, expiresAt } = await jobS3Client(stage, job, jobSecret, mintFromEnv());
  return {
    s3,
    ...(expiresAt ? { credentialsExpireAt: expiresAt } : {}),
    inboxBucket: requireEnv('INBOX_BUCKET'),
    artifactsBucket: requireEnv('ARTIFACTS_BUCKET'),
    job,
    now: () => new Date(),
  };
}

/**
 * Wraps a stage core as a Lambda handler taking `{ teamId, jobId, jobSecret? }`. Every log line of the
 * invocation carries the stage, team and job; each invocation publishes its stage's outcome and
 * duration as metrics.
 */
export function stageHandler<T, I extends ExecutionInput = ExecutionInput>(
  stage: Exclude<DataStage, 'train' | 'evaluate' | 'mark-failed'>,
  core: (ctx: StageContext, input: I) => Promise<T>,
  /** The event's schema when a stage takes more than the job reference (admit: its task token). */
  inputSchema: z.ZodType<I> = ExecutionInputSchema as unknown as z.ZodType<I>,
): (event: unknown) => Promise<T> {
  return async (event) => {
    const started = performance.now();
    logger.appendKeys({ stage });
    try {
      const parsed = inputSchema.safeParse(event);
      if (!parsed.success) throw new InvalidInputError('BAD_EXECUTION_INPUT', describeIssues(parsed.error, 'execution input'));
      logger.appendKeys({ teamId: parsed.data.teamId, jobId: parsed.data.jobId });
      // The secret stays out of every log line: only the ids are appended.
      const ctx = await contextFromEnv(stage, { teamId: parsed.data.teamId, jobId: parsed.data.jobId }, parsed.data.jobSecret);
      const result = await core(ctx, parsed.data);
      logger.info('stage succeeded');
      publishStageMetrics(stage, 'StageSucceeded', performance.now() - started);
      return result;
    } catch (error) {
      const wire = toLambdaError(error);
      logger.error('stage failed', { errorType: wire.name, errorMessage: wire.message });
      publishStageMetrics(stage, 'StageFailed', performance.now() - started);
      throw wire;
    } finally {
      logger.resetKeys();
    }
  };
}
