import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { SFNClient } from '@aws-sdk/client-sfn';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { type ReconcileDeps, reconcile, terminalFor } from '../../lambdas/reconcile/handler';
import type { Accounting } from '../../lambdas/shared/accounting';
import { admit } from '../../lambdas/shared/admission';
import { StatusSchema } from '../../lambdas/shared/contract';
import { keys } from '../../lambdas/shared/keys';
import { DEFAULT_PRICES } from '../../lambdas/shared/prices';
import { getJson } from '../../lambdas/shared/s3';
import { readStatus, writeStatus } from '../../lambdas/shared/status';
import { LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../../scripts/local/moto';
import { startTaskTokens, type TaskTokens } from '../../scripts/local/task-tokens';
import { describeWithMoto } from '../helpers/suites';
import { admissionRequest, freshRegistry, team } from '../teams/helpers';

const BUCKET = 'reconcile-artifacts';
const ARN = 'arn:aws:states:us-east-1:123456789012:stateMachine:avatar';

/** A "Step Functions Execution Status Change" event as EventBridge delivers it (shape from the AWS docs). */
function executionEvent(status: string, input: unknown, extra: Record<string, unknown> = {}) {
  return {
    version: '0',
    id: '315c1398-40ff-a850-213b-158f73e60175',
    'detail-type': 'Step Functions Execution Status Change',
    source: 'aws.states',
    account: '123456789012',
    time: '2026-11-26T12:00:00Z',
    region: 'us-east-1',
    resources: [`${ARN.replace(':stateMachine:', ':execution:')}:x`],
    detail: {
      executionArn: `${ARN.replace(':stateMachine:', ':execution:')}:x`,
      stateMachineArn: ARN,
      name: 'x',
      status,
      startDate: 1_764_150_000_000,
      stopDate: 1_764_160_000_000,
      input: typeof input === 'string' ? input : JSON.stringify(input),
      output: null,
      inputDetails: { included: true },
      error: null,
      cause: null,
      ...extra,
    },
  };
}

/** Captures console.log lines (the handler's logs and EMF metric records) while `fn` runs. */
async function captureLogs<T>(fn: () => Promise<T>): Promise<{ result: T; records: Record<string, any>[] }> {
  const lines: string[] = [];
  const spy = vi.spyOn(console, 'log').mockImplementation((line: string) => void lines.push(line));
  try {
    const result = await fn();
    return { result, records: lines.map((l) => JSON.parse(l)) };
  } finally {
    spy.mockRestore();
  }
}

describe('terminalFor', () => {
  it('maps each execution end to a stable code naming the stage', () => {
    expect(terminalFor('TIMED_OUT', 'train')).toMatchObject({
      state: 'failed',
      error: { code: 'TIMEOUT', message: expect.stringContaining('during the train stage') },
    });
    expect(terminalFor('ABORTED', 'caption')).toMatchObject({ state: 'cancelled', error: { code: 'CANCELLED' } });
    expect(terminalFor('FAILED', 'finalize', 'States.Runtime')).toMatchObject({
      state: 'failed',
      error: { code: 'INTERNAL_ERROR', message: expect.stringContaining('States.Runtime') },
    });
  });
});

describeWithMoto('reconcile', () => {
  let moto: Moto;
  let deps: ReconcileDeps;
  const created = new Date('2026-11-26T10:00:00Z');

  beforeAll(async () => {
    moto = await startMoto();
    await moto.createBucket(BUCKET);
    deps = { s3: moto.s3(), artifactsBucket: BUCKET, now: () => new Date('2026-11-26T12:00:00Z') };
  });
  afterAll(() => moto?.stop());

  it('records a timed-out execution as failed/TIMEOUT at the stage it reached, and counts a system failure', async () => {
    const job = { teamId: 'team-a', jobId: 'timed-out' };
    await writeStatus(deps.s3, BUCKET, job, { state: 'running', stage: 'train', progress: { fraction: 0.4, message: 'epoch 2/5' } }, created);

    const { result, records } = await captureLogs(() => reconcile(executionEvent('TIMED_OUT', job), deps));

    expect(result.action).toBe('written');
    expect(await readStatus(deps.s3, BUCKET, job)).toEqual({
      ...job,
      state: 'failed',
      stage: 'train',
      createdAt: '2026-11-26T10:00:00.000Z',
      updatedAt: '2026-11-26T12:00:00.000Z',
      finishedAt: '2026-11-26T12:00:00.000Z',
      error: { code: 'TIMEOUT', message: expect.stringContaining('during the train stage') },
    });
    expect(records.filter((r) => r._aws)).toEqual([expect.objectContaining({ SystemFailures: 1, code: 'TIMEOUT', source: 'reconcile', jobId: 'timed-out' })]);
  });

  it('records a stopped execution as cancelled/CANCELLED without counting a system failure', async () => {
    const job = { teamId: 'team-a', jobId: 'stopped' };
    await writeStatus(deps.s3, BUCKET, job, { state: 'queued', stage: 'validate' }, created);

    const { records } = await captureLogs(() => reconcile(executionEvent('ABORTED', job), deps));

    expect(await readStatus(deps.s3, BUCKET, job)).toMatchObject({ state: 'cancelled', stage: 'validate', error: { code: 'CANCELLED' } });
    expect(records.filter((r) => r._aws)).toEqual([]);
  });

  it('records a failed execution whose status never became terminal as INTERNAL_ERROR with the error name', async () => {
    const job = { teamId: 'team-a', jobId: 'mark-failed-broke' };
    await writeStatus(deps.s3, BUCKET, job, { state: 'running', stage: 'evaluate' }, created);

    await captureLogs(() => reconcile(executionEvent('FAILED', job, { error: 'JobFailed', cause: 'A stage failed' }), deps));

    const status = await readStatus(deps.s3, BUCKET, job);
    expect(status).toMatchObject({ state: 'failed', stage: 'evaluate', error: { code: 'INTERNAL_ERROR' } });
    expect(status?.error?.message).toContain('JobFailed');
  });

  it.each([
    ['failed', 'FAILED'],
    ['succeeded', 'ABORTED'],
    ['cancelled', 'TIMED_OUT'],
  ] as const)('never rewrites a terminal status (%s, event %s)', async (state, event) => {
    const job = { teamId: 'team-a', jobId: `terminal-${state}` };
    const before = await writeStatus(
      deps.s3,
      BUCKET,
      job,
      { state, stage: 'train', ...(state === 'succeeded' ? {} : { error: { code: 'NAN_LOSS', message: 'loss became NaN' } }) },
      created,
    );

    const { result } = await captureLogs(() => reconcile(executionEvent(event, job), deps));

    expect(result).toEqual({ action: 'already-terminal', job, state });
    expect(await readStatus(deps.s3, BUCKET, job)).toEqual(before);
  });

  it('creates status.json when none exists (conditional on it still not existing)', async () => {
    const job = { teamId: 'team-a', jobId: 'no-status' };
    await captureLogs(() => reconcile(executionEvent('TIMED_OUT', job), deps));
    expect(StatusSchema.parse(await getJson(deps.s3, BUCKET, keys.status(job)))).toMatchObject({
      state: 'failed',
      stage: 'validate',
      error: { code: 'TIMEOUT' },
    });
  });

  it('loses a race to a terminal write without rewinding it: the ETag condition fails, the re-read sees the terminal state', async () => {
    const job = { teamId: 'team-a', jobId: 'raced' };
    await writeStatus(deps.s3, BUCKET, job, { state: 'running', stage: 'finalize' }, created);
    let raced = false;
    // Finalize writes `succeeded` between reconcile's read and its write: the real conditional write
    // on moto's S3 must refuse reconcile's stale write.
    const racing = {
      send: async (command: unknown) => {
        if (command instanceof PutObjectCommand && !raced) {
          raced = true;
          await writeStatus(deps.s3, BUCKET, job, { state: 'succeeded', stage: 'finalize' }, new Date('2026-11-26T11:59:00Z'));
        }
        return deps.s3.send(command as never);
      },
    } as unknown as S3Client;

    const { result } = await captureLogs(() => reconcile(executionEvent('FAILED', job), { ...deps, s3: racing }));

    expect(raced).toBe(true);
    expect(result).toEqual({ action: 'already-terminal', job, state: 'succeeded' });
    expect(await readStatus(deps.s3, BUCKET, job)).toMatchObject({ state: 'succeeded', updatedAt: '2026-11-26T11:59:00.000Z' });
  });

  it.each([
    ['input that is not JSON', executionEvent('TIMED_OUT', '{not json')],
    ['input without ids', executionEvent('TIMED_OUT', { teamId: 'team-a' })],
    ['input with a traversal id', executionEvent('TIMED_OUT', { teamId: '..', jobId: 'x' })],
    ['a status it does not handle', executionEvent('SUCCEEDED', { teamId: 'team-a', jobId: 'x' })],
    ['another detail-type', { 'detail-type': 'Object Created', detail: {} }],
    ['no event at all', undefined],
  ])('logs and ignores a malformed event (%s) instead of failing into retries', async (_name, event) => {
    const { result, records } = await captureLogs(() => reconcile(event, deps));
    expect(result).toMatchObject({ action: 'ignored' });
    expect(records).toEqual([expect.objectContaining({ level: 'warn', message: 'malformed execution event ignored' })]);
  });
});

// With the team's accounting (moto's DynamoDB and the local task-token endpoint): an execution that
// ends without MarkFailed still gives back what its job held.
describeWithMoto('reconcile releases what the job held', () => {
  let moto: Moto;
  let tokens: TaskTokens;
  let s3: S3Client;
  const AC_BUCKET = 'reconcile-accounting';
  const request = (jobId: string) => admissionRequest('acme', jobId, { estimate: { usd: 2, gpuSeconds: 3600 } });

  beforeAll(async () => {
    moto = await startMoto({ serializeDynamoDb: true });
    tokens = await startTaskTokens();
    await moto.createBucket(AC_BUCKET);
    s3 = moto.s3();
  });
  afterAll(async () => {
    await tokens?.stop();
    await moto?.stop();
  });

  it('a stopped waiting job leaves the queue (cancelled, cost 0); a timed-out running one frees its slot for the next, which resumes', async () => {
    const registry = await freshRegistry(moto.endpoint);
    await registry.add(team('acme', { maxConcurrentJobs: 1 }));
    // Batch has no job of this one on the queue (it timed out before its first GPU job started): charged $0.
    const accounting: Accounting = {
      registry,
      sfn: new SFNClient({ endpoint: tokens.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS }),
      gpuJobs: async () => [],
      resolveInstance: async () => ({ instanceType: 'g5.xlarge', spot: false }),
      prices: DEFAULT_PRICES,
    };
    const deps: ReconcileDeps = { s3, artifactsBucket: AC_BUCKET, now: () => new Date('2026-12-02T12:00:00Z'), accounting };
    await admit(registry, request('running'));
    await admit(registry, request('stopped'), { taskToken: tokens.open() });
    const nextToken = tokens.open();
    await admit(registry, request('next'), { taskToken: nextToken });
    for (const jobId of ['running', 'stopped', 'next'])
      await writeStatus(
        s3,
        AC_BUCKET,
        { teamId: 'acme', jobId },
        { state: jobId === 'running' ? 'running' : 'queued', stage: jobId === 'running' ? 'train' : 'caption' },
      );

    const stopped = await captureLogs(() => reconcile(executionEvent('ABORTED', { teamId: 'acme', jobId: 'stopped' }), deps));
    expect(stopped.result).toMatchObject({ action: 'written', status: { state: 'cancelled', cost: { usd: 0, gpuSeconds: 0, estimated: false } } });
    expect((await registry.items('acme', 'WAIT#')).map((w) => w.jobId)).toEqual(['next']);

    const timedOut = await captureLogs(() => reconcile(executionEvent('TIMED_OUT', { teamId: 'acme', jobId: 'running' }), deps));
    expect(timedOut.result).toMatchObject({
      action: 'written',
      status: { state: 'failed', error: { code: 'TIMEOUT' }, cost: { usd: 0, gpuSeconds: 0, breakdown: {}, estimated: false } },
    });
    expect(await tokens.wait(nextToken)).toMatchObject({ jobId: 'next', outcome: 'admitted' });
    expect((await registry.get('acme'))!.usage).toMatchObject({ running: 1, reservedMicroUsd: 2_000_000 });
  });
});
