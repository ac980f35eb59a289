import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { describeFailure, MarkFailedInputSchema, markFailed } from '../../lambdas/mark-failed/handler';
import { rejectTask } from '../../lambdas/shared/accounting';
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

  it.each(['CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY', 'MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE', 'MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT'])(
    'maps a GPU job the queue cancelled in RUNNABLE (%s) to GPU_CAPACITY_UNAVAILABLE, saying what to do',
    (reason) => {
      // The Cause .sync records for a failed job is the job description; the StatusReason of a job the
      // queue cancelled, as the AWS Batch user guide gives it ("Jobs stuck in RUNNABLE due to capacity").
      const cause = JSON.stringify({
        JobName: 'job-1-abc-train',
        Status: 'FAILED',
        StatusReason: `Canceled by JobStateTimeLimit action due to reason: ${reason}`,
        Attempts: [],
      });
      const info = describeFailure('train', 'States.TaskFailed', cause);
      expect(info.code).toBe('GPU_CAPACITY_UNAVAILABLE');
      expect(info.message).toContain(`no GPU instance became available for the train stage (AWS Batch: ${reason})`);
      expect(info.message).toContain('submit it again later');
      expect(info.message).toContain('vCPU quotas');
    },
  );

  it('maps the exit code of a GPU job without job credentials to CREDENTIALS_UNAVAILABLE, saying what to do', () => {
    // The container cannot write status.json without S3 access; exit code 3 is all Batch reports.
    const cause = JSON.stringify({ Status: 'FAILED', StatusReason: 'Essential container in task exited', Attempts: [{ Container: { ExitCode: 3 } }] });
    const info = describeFailure('evaluate', 'States.TaskFailed', cause);
    expect(info.code).toBe('CREDENTIALS_UNAVAILABLE');
    expect(info.message).toContain('the evaluate GPU job got no job-scoped credentials from the mint function');
    expect(info.message).toContain('submit the job again');
  });

  it('keeps other Batch failures as BATCH_JOB_FAILED', () => {
    const cause = JSON.stringify({ Status: 'FAILED', StatusReason: 'Essential container in task exited', Attempts: [{ Container: { ExitCode: 1 } }] });
    expect(describeFailure('caption', 'States.TaskFailed', cause).code).toBe('BATCH_JOB_FAILED');
  });

  it('names timeouts and unknown errors with stable codes', () => {
    expect(describeFailure('caption', 'States.Timeout', undefined)).toEqual({
      code: 'TIMEOUT',
      message: 'the caption stage ran past its time limit and was stopped; retry the job, and if it recurs use fewer photos or steps',
    });
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
    ctx = {
      s3: moto.s3(),
      inboxBucket: 'inbox',
      artifactsBucket: 'artifacts-bucket',
      job: { teamId: 'team-a', jobId: 'job-1' },
      now: () => new Date('2026-11-26T12:00:00Z'),
    };
  });
  afterAll(() => moto?.stop());

  it("records an Admit failure at stage caption: a wait past the workflow's time says so; a rejection keeps its code and numbers", async () => {
    const waited = { teamId: 'team-a', jobId: 'waited' };
    await markFailed(
      { ...ctx, job: waited },
      MarkFailedInputSchema.parse({ ...waited, failure: { admit: { Error: 'States.Timeout', Cause: 'state timed out' } } }),
    );
    expect(await readStatus(ctx.s3, ctx.artifactsBucket, waited)).toMatchObject({
      state: 'failed',
      stage: 'caption',
      error: { code: 'TIMEOUT', message: expect.stringContaining('waited for a free slot of team "team-a"') },
    });

    const refused = { teamId: 'team-a', jobId: 'refused' };
    const failure = rejectTask('token', {
      teamId: 'team-a',
      jobId: 'refused',
      outcome: 'rejected',
      code: 'BUDGET_EXHAUSTED',
      message: 'over budget',
      limit: 10,
      used: 9.5,
      estimate: 2,
      unit: 'USD',
      duplicate: false,
    });
    await markFailed(
      { ...ctx, job: refused },
      MarkFailedInputSchema.parse({ ...refused, failure: { admit: { Error: failure.input.error, Cause: failure.input.cause } } }),
    );
    expect(await readStatus(ctx.s3, ctx.artifactsBucket, refused)).toMatchObject({
      stage: 'caption',
      error: { code: 'BUDGET_EXHAUSTED', message: 'over budget (limit 10 USD, used 9.5, this job 2)' },
    });
  });

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

  it('counts a SystemFailures metric for a timeout, and none for a client input error', async () => {
    const lines: string[] = [];
    const spy = vi.spyOn(console, 'log').mockImplementation((line: string) => void lines.push(line));
    try {
      const job = { teamId: 'team-a', jobId: 'job-3' };
      await markFailed({ ...ctx, job }, MarkFailedInputSchema.parse({ ...job, failure: { train: { Error: 'States.Timeout', Cause: 'state timed out' } } }));
      const bad = { teamId: 'team-a', jobId: 'job-4' };
      await markFailed(
        { ...ctx, job: bad },
        MarkFailedInputSchema.parse({
          ...bad,
          failure: { validate: { Error: 'InvalidInputError', Cause: lambdaCause(new InvalidInputError('TOO_FEW_PHOTOS', 'need 10', 'photos/')) } },
        }),
      );
    } finally {
      spy.mockRestore();
    }
    const metrics = lines.map((l) => JSON.parse(l)).filter((r) => r._aws);
    expect(metrics).toHaveLength(1);
    expect(metrics[0]).toMatchObject({ SystemFailures: 1, jobId: 'job-3', stage: 'train', code: 'TIMEOUT', source: 'mark-failed' });
    expect((await readStatus(ctx.s3, ctx.artifactsBucket, { teamId: 'team-a', jobId: 'job-3' }))?.error?.code).toBe('TIMEOUT');
  });

  it('keeps the detail a GPU container reported for the same stage', async () => {
    const job = { teamId: 'team-a', jobId: 'job-2' };
    await writeStatus(ctx.s3, ctx.artifactsBucket, job, {
      state: 'failed',
      stage: 'train',
      error: { code: 'NAN_LOSS', message: 'loss became NaN at step 40: lower unetLr' },
    });

    await markFailed(
      { ...ctx, job },
      MarkFailedInputSchema.parse({
        ...job,
        failure: { train: { Error: 'States.TaskFailed', Cause: '{"Status":"FAILED","StatusReason":"exit 1","Attempts":[]}' } },
      }),
    );

    const status = await readStatus(ctx.s3, ctx.artifactsBucket, job);
    expect(status?.error).toEqual({ code: 'NAN_LOSS', message: 'loss became NaN at step 40: lower unetLr' });
  });

  it("keeps a failure the caption stage reported inside the Train state (one GPU job: caption, then train) as caption's", async () => {
    const job = { teamId: 'team-a', jobId: 'job-5' };
    await writeStatus(ctx.s3, ctx.artifactsBucket, job, {
      state: 'failed',
      stage: 'caption',
      error: { code: 'BAD_IMAGE', message: 'cannot decode a.png', input: 'a.png' },
    });

    await markFailed(
      { ...ctx, job },
      MarkFailedInputSchema.parse({
        ...job,
        failure: { train: { Error: 'States.TaskFailed', Cause: '{"Status":"FAILED","StatusReason":"exit 1","Attempts":[]}' } },
      }),
    );

    expect(await readStatus(ctx.s3, ctx.artifactsBucket, job)).toMatchObject({
      state: 'failed',
      stage: 'caption',
      error: { code: 'BAD_IMAGE', message: 'cannot decode a.png', input: 'a.png' },
    });
    // Not the other way round: evaluate's job runs no caption stage.
    const other = { teamId: 'team-a', jobId: 'job-6' };
    await writeStatus(ctx.s3, ctx.artifactsBucket, other, { state: 'failed', stage: 'caption', error: { code: 'BAD_IMAGE', message: 'old' } });
    await markFailed(
      { ...ctx, job: other },
      MarkFailedInputSchema.parse({
        ...other,
        failure: { evaluate: { Error: 'States.TaskFailed', Cause: '{"Status":"FAILED","StatusReason":"exit 1","Attempts":[]}' } },
      }),
    );
    expect(await readStatus(ctx.s3, ctx.artifactsBucket, other)).toMatchObject({ stage: 'evaluate', error: { code: 'BATCH_JOB_FAILED' } });
  });
});
