/**
 * The Batch emulator itself (scripts/local/batch.ts), on the synthesized template: that it applies
 * the job definitions' retry strategies as Batch does, and that stopping a container reaches every
 * process in it, so the fault tests' "nothing left running" means what it says.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { type AttemptDetail, BATCH_REASONS, BatchEmulator, batchConfig, evaluateOnExit, processContainer } from '../../scripts/local/batch';
import { synthesizeTemplate } from '../../scripts/local/definition';
import type { SubmitJobParameters } from '../../scripts/local/workflow';

type Template = ReturnType<typeof synthesizeTemplate>;

describe('Batch emulator', () => {
  let template: Template;
  let trainId: string;
  beforeAll(() => {
    template = synthesizeTemplate();
    trainId = Object.keys(template.Resources).find((id) => template.Resources[id]!.Type === 'AWS::Batch::JobDefinition' && /Train/.test(id))!;
  });

  const attempt = (statusReason: string, container: AttemptDetail['Container']): AttemptDetail => ({ StatusReason: statusReason, Container: container });

  it("applies the train job definition's retry strategy from the template as Batch does", () => {
    const strategy = batchConfig(template).jobDefinitions.get(trainId)!.retry;
    expect(strategy?.Attempts).toBeGreaterThanOrEqual(2);
    expect(evaluateOnExit(strategy, attempt(BATCH_REASONS.hostTerminated('i-0abc'), {}))).toBe('RETRY');
    expect(evaluateOnExit(strategy, attempt(BATCH_REASONS.taskFailedToStart, { Reason: BATCH_REASONS.cannotPull('img') }))).toBe('RETRY');
    expect(evaluateOnExit(strategy, attempt(BATCH_REASONS.essentialContainerExited, { ExitCode: 1 }))).toBe('EXIT');
    // No rule matches: Batch retries (while attempts remain).
    expect(evaluateOnExit({ Attempts: 3, EvaluateOnExit: [{ Action: 'EXIT', OnExitCode: '2' }] }, attempt('x', { ExitCode: 1 }))).toBe('RETRY');
  });

  const params = (name: string): SubmitJobParameters => ({
    JobName: name,
    JobQueue: 'arn:aws:batch:us-east-1:123456789012:job-queue/local',
    JobDefinition: `arn:aws:batch:us-east-1:123456789012:job-definition:${trainId}`,
    ContainerOverrides: {
      Environment: [
        { Name: 'AVATAR_TEAM_ID', Value: 't' },
        { Name: 'AVATAR_JOB_ID', Value: 'j' },
      ],
    },
  });

  /** A container whose main process ignores SIGTERM and has a child in its own session (as the trainer's kohya is). */
  const stubborn = processContainer({ python: 'python3' });
  const stubbornCommand = ['bash', '-c', "trap '' TERM; setsid sleep 300 & echo started; wait"];

  it('TerminateJob stops the whole container, its detached children too, and fails the job with the given reason', async () => {
    const batch = new BatchEmulator(template, { launch: (spec) => stubborn({ ...spec, command: stubbornCommand }), stopTimeoutMs: 300 });
    const job = batch.submitJob('train', params('terminate-me'));
    for (let i = 0; i < 100 && batch.liveProcesses().length < 2; i++) await new Promise((r) => setTimeout(r, 50));
    expect(batch.liveProcesses().length).toBeGreaterThanOrEqual(2);

    batch.terminateJob(job.detail.JobId, 'stopped by the test');
    const detail = await job.done;

    expect(detail).toMatchObject({ Status: 'FAILED', StatusReason: 'stopped by the test' });
    expect(job.transitions).toEqual(['SUBMITTED', 'PENDING', 'RUNNABLE', 'STARTING', 'RUNNING', 'FAILED']);
    await batch.settled(5_000);
    expect(batch.liveProcesses()).toEqual([]);
  });

  it('a stopped execution leaves its job running when the state machine role lacks batch:TerminateJob', async () => {
    const denied = structuredClone(template);
    for (const [id, r] of Object.entries(denied.Resources)) {
      if (r.Type !== 'AWS::IAM::Policy' || !/StateMachineRole/.test(id)) continue;
      const doc = r.Properties!.PolicyDocument as { Statement: Array<{ Action: string | string[] }> };
      doc.Statement = doc.Statement.filter((s) => ![s.Action].flat().includes('batch:TerminateJob'));
    }
    const batch = new BatchEmulator(denied, { launch: (spec) => stubborn({ ...spec, command: stubbornCommand }), stopTimeoutMs: 300 });
    expect(batch.config.stateMachineMayTerminate).toBe(false);
    const stop = new AbortController();
    const run = batch
      .runner()('train', params('orphaned'), { signal: stop.signal })
      .catch((e: Error) => e);
    for (let i = 0; i < 100 && batch.liveProcesses().length < 2; i++) await new Promise((r) => setTimeout(r, 50));

    stop.abort();
    await new Promise((r) => setTimeout(r, 500));

    const [job] = [...batch.jobs.values()];
    expect(batch.deniedTerminations).toEqual([job!.detail.JobId]);
    expect(job!.detail.Status).toBe('RUNNING');
    batch.terminateJob(job!.detail.JobId, 'cleanup');
    await run;
    await batch.settled(5_000);
  });
});
