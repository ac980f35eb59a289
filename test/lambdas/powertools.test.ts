/**
 * The shared stage handler's logs and metrics, as CloudWatch would read them from the function's
 * output: JSON log lines with stage, team and job, and one EMF document per invocation.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { InvalidInputError } from '../../lambdas/shared/errors';
import { stageHandler } from '../../lambdas/shared/handler';
import { METRICS_NAMESPACE } from '../../lambdas/shared/powertools';

/** A line the handler wrote: a log entry, or an EMF document when `_aws` is set. */
interface Line {
  _aws?: { CloudWatchMetrics: Array<{ Namespace: string; Dimensions: string[][]; Metrics: Array<{ Name: string }> }> };
  [key: string]: unknown;
}
let lines: Line[];

beforeEach(() => {
  vi.stubEnv('INBOX_BUCKET', 'inbox');
  vi.stubEnv('ARTIFACTS_BUCKET', 'artifacts');
  lines = [];
  // Powertools writes through its own Console on process.stdout and process.stderr.
  for (const stream of [process.stdout, process.stderr]) {
    vi.spyOn(stream, 'write').mockImplementation((chunk: string | Uint8Array) => {
      for (const line of String(chunk)
        .split('\n')
        .filter((l) => l.startsWith('{')))
        lines.push(JSON.parse(line) as Line);
      return true;
    });
  }
});

afterEach(() => {
  vi.restoreAllMocks();
  vi.unstubAllEnvs();
});

const emf = () => lines.filter((l) => l._aws?.CloudWatchMetrics);
const logs = () => lines.filter((l) => !l._aws);

describe('stageHandler', () => {
  it('logs success with stage, team and job, and counts it with its duration', async () => {
    const handler = stageHandler('normalize', async (ctx) => ({ images: 3, job: ctx.job.jobId }));
    expect(await handler({ teamId: 'acme', jobId: 'anna-1' })).toEqual({ images: 3, job: 'anna-1' });

    expect(logs()).toEqual([
      expect.objectContaining({ level: 'INFO', message: 'stage succeeded', service: 'avatar', stage: 'normalize', teamId: 'acme', jobId: 'anna-1' }),
    ]);
    expect(emf()).toHaveLength(1);
    const [doc] = emf();
    expect(doc!._aws!.CloudWatchMetrics[0]).toMatchObject({ Namespace: METRICS_NAMESPACE, Dimensions: [['service', 'stage']] });
    expect(doc!._aws!.CloudWatchMetrics[0]!.Metrics.map((m) => m.Name).sort()).toEqual(['StageDuration', 'StageSucceeded']);
    expect(doc).toMatchObject({ service: 'avatar', stage: 'normalize', StageSucceeded: 1 });
    expect(doc!.StageDuration).toBeGreaterThanOrEqual(0);
  });

  it('logs a failure with its error type and counts it, then rethrows the named error', async () => {
    const handler = stageHandler('validate', async () => {
      throw new InvalidInputError('TOO_FEW_PHOTOS', 'only 3 usable photos: upload at least 10', 'validate/report.json');
    });
    const error = await handler({ teamId: 'acme', jobId: 'anna-1' }).catch((e: Error) => e);

    expect(error).toMatchObject({ name: 'InvalidInputError' });
    expect(JSON.parse((error as Error).message)).toMatchObject({ code: 'TOO_FEW_PHOTOS' });
    expect(logs()).toEqual([
      expect.objectContaining({ level: 'ERROR', message: 'stage failed', stage: 'validate', teamId: 'acme', jobId: 'anna-1', errorType: 'InvalidInputError' }),
    ]);
    expect(emf()).toEqual([expect.objectContaining({ stage: 'validate', StageFailed: 1 })]);
    expect(emf()[0]).not.toHaveProperty('StageSucceeded');
  });

  it('counts a bad execution input as a failure of the stage, without ids it could not read', async () => {
    const error = await stageHandler('finalize', async () => 'never')({ teamId: 'Not Valid' }).catch((e: Error) => e);

    expect(error).toMatchObject({ name: 'InvalidInputError' });
    expect(logs()).toHaveLength(1);
    expect(logs()[0]).toMatchObject({ message: 'stage failed', stage: 'finalize' });
    expect(logs()[0]).not.toHaveProperty('teamId');
    expect(emf()).toEqual([expect.objectContaining({ stage: 'finalize', StageFailed: 1 })]);
  });

  it('does not carry one job’s ids into the next invocation', async () => {
    await stageHandler('normalize', async () => 1)({ teamId: 'acme', jobId: 'anna-1' });
    await stageHandler('normalize', async () => 1)({ teamId: 'Bad' }).catch(() => undefined);

    expect(logs()[1]).not.toHaveProperty('jobId');
  });
});
