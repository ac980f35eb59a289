/**
 * The edge every stage handler shares: parse the execution input, run the pure core with injected
 * clients, and turn failures into named Lambda errors that Step Functions Retry/Catch can match.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { ExecutionInputSchema, describeIssues } from './contract';
import { requireEnv } from './env';
import { InvalidInputError, toLambdaError } from './errors';
import type { JobRef } from './keys';
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

/** Wraps a stage core as a Lambda handler taking `{ teamId, jobId }`. */
export function stageHandler<T>(core: (ctx: StageContext) => Promise<T>): (event: unknown) => Promise<T> {
  return async (event) => {
    try {
      const parsed = ExecutionInputSchema.safeParse(event);
      if (!parsed.success) throw new InvalidInputError('BAD_EXECUTION_INPUT', describeIssues(parsed.error, 'execution input'));
      return await core(contextFromEnv(parsed.data));
    } catch (error) {
      throw toLambdaError(error);
    }
  };
}
