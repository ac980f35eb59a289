import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeFailure, markFailed, MarkFailedInputSchema } from '../../lambdas/mark-failed/handler';
import { InvalidInputError, toLambdaError } from '../../lambdas/shared/errors';
import type { StageContext } from '../../lambdas/shared/handler';
import { readStatus, writeStatus } from '../../lambdas/shared/status';
import { type Moto, startMoto } from '../../scripts/local/moto';
import { describeWithMoto } from '../helpers/suites';

/** The Cause Step Functions records for an error thrown by one of our Lambda handlers. */
function lambdaCause(error: Error): string {
  const wire = toLambdaError(error);
  return JSON.stringify({ errorType: wire.name, errorMessage: wire.message, trace: [] });
}

describe('describeFailure', () => {
  it('keeps the code, message and offending input our handlers raise', () => {
    const cause = lambdaCause(new InvalidInputError('TOO_FEW_PHOTOS', '6 usable photos, need 10', 'photos/'));
    expect(describeFailure('validate', 'InvalidInputError', cause)).toEqual({
      code: 'TOO_FEW_PHOTOS',
      message: '6 usable photos, need 10',
      input: 'photos/',
    });
  });

  it('summarises a failed Batch job with its reason and exit code', () => {
    const cause = JSON.stringify({
      JobName: 'team-a-job-1-train',
      Status: 'FAILED',
      StatusReason: 'Essential container in task exited',
      Attempts: [{ Container: { ExitCode: 137, Reason: 'OutOfMemoryError: Container killed due to memory usage' } }],
    });
    const info = describeFailure('train', 'States.TaskFailed', cause);
    expect(info.code).toBe('BATCH_JOB_FAILED');
    expect(info.message).toContain('train GPU job failed after 1 attempt(s)');
    expect(info.message).toContain('exit code 137');
  });

  it('names timeouts and unknown errors with stable codes', () => {
    expect(describeFailure('caption', 'States.Timeout', undefined).code).toBe('TIMEOUT');
    expect(describeFailure('normalize', 'Lambda.TooManyRequestsException', '{"errorMessage":"Rate exceeded"}')).toEqual({
      code: 'TOO_MANY_REQUESTS_EXCEPTION',
      message: 'normalize failed: Rate exceeded',
    });
  });
});

describeWithMoto('markFailed', () => {
  let moto: Moto;
  let ctx: StageContext;

  beforeAll(async () => {
    moto = await startMoto();
    await moto.createBucket('artifacts-bucket');
    ctx = { s3: moto.s3(), inboxBucket: 'inbox', artifactsBucket: 'artifacts-bucket', job: { teamId: 'team-a', jobId: 'job-1' }, now: () => new Date('2026-11-26T12:00:00Z') };
  });
  afterAll(() => moto?.stop());

  it('writes status.json failed with the stage and error, keeping createdAt', async () => {
    await writeStatus(ctx.s3, ctx.artifactsBucket, ctx.job, { state: 'running', stage: 'normalize' }, new Date('2026-11-26T11:00:00Z'));
    const input = MarkFailedInputSchema.parse({
      teamId: 'team-a',
      jobId: 'job-1',
      failure: { normalize: { Error: 'InvalidInputError', Cause: lambdaCause(new InvalidInputError('BAD_PHOTO', 'a.jpg does not decode', 'photos/a.jpg')) } },
    });

    await markFailed(ctx, input);

    const status = await readStatus(ctx.s3, ctx.artifactsBucket, ctx.job);
    expect(status).toMatchObject({
      state: 'failed',
      stage: 'normalize',
      createdAt: '2026-11-26T11:00:00.000Z',
      finishedAt: '2026-11-26T12:00:00.000Z',
      error: { code: 'BAD_PHOTO', message: 'a.jpg does not decode', input: 'photos/a.jpg' },
    });
  });

  it('keeps the detail a GPU container reported for the same stage', async () => {
    const job = { teamId: 'team-a', jobId: 'job-2' };
    await writeStatus(ctx.s3, ctx.artifactsBucket, job, { state: 'failed', stage: 'train', error: { code: 'NAN_LOSS', message: 'loss became NaN at step 40: lower unetLr' } });

    await markFailed({ ...ctx, job }, MarkFailedInputSchema.parse({ ...job, failure: { train: { Error: 'States.TaskFailed', Cause: '{"Status":"FAILED","StatusReason":"exit 1","Attempts":[]}' } } }));

    const status = await readStatus(ctx.s3, ctx.artifactsBucket, job);
    expect(status?.error).toEqual({ code: 'NAN_LOSS', message: 'loss became NaN at step 40: lower unetLr' });
  });
});
