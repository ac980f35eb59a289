/**
 * The edge every stage handler shares: parse the execution input, run the pure core with injected
 * clients, and turn failures into named Lambda errors that Step Functions Retry/Catch can match.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { z } from 'zod';
import { describeIssues, type ExecutionInput, ExecutionInputSchema, type Stage } from './contract';
import { requireEnv } from './env';
import { InvalidInputError, toLambdaError } from './errors';
import type { JobRef } from './keys';
import { logger, publishStageMetrics } from './powertools';
import { s3Client } from './s3';

export interface StageContext {
  readonly s3: S3Client;
  readonly inboxBucket: string;
  readonly artifactsBucket: string;
  readonly job: JobRef;
  readonly now: () => Date;
}

export function contextFromEnv(job: JobRef): StageContext {
  return {
    s3: s3Client(),
    inboxBucket: requireEnv('INBOX_BUCKET'),
    artifactsBucket: requireEnv('ARTIFACTS_BUCKET'),
    job,
    now: () => new Date(),
  };
}

/**
 * Wraps a stage core as a Lambda handler taking `{ teamId, jobId }`. Every log line of the
 * invocation carries the stage, team and job; each invocation publishes its stage's outcome and
 * duration as metrics.
 */
export function stageHandler<T, I extends ExecutionInput = ExecutionInput>(
  stage: Stage | 'admit',
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
      const result = await core(contextFromEnv({ teamId: parsed.data.teamId, jobId: parsed.data.jobId }), parsed.data);
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
