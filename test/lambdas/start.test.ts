import { CreateStateMachineCommand, ListExecutionsCommand, SFNClient } from '@aws-sdk/client-sfn';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { StatusSchema } from '../../lambdas/shared/contract';
import { getJson } from '../../lambdas/shared/s3';
import { executionName, handler, ignoredReason, type StartDeps, start } from '../../lambdas/start/handler';
import { LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../../scripts/local/moto';
import { describeWithMoto } from '../helpers/suites';

// Runs against moto's S3 and Step Functions emulation: StartExecution with a reused name is refused
// there as in AWS (moto does not run the definition; the workflow tests do that).
describeWithMoto('start', () => {
  let moto: Moto;
  let deps: StartDeps;
  const event = (key: string, bucket = 'inbox-bucket') => ({
    'detail-type': 'Object Created',
    source: 'aws.s3',
    detail: { bucket: { name: bucket }, object: { key } },
  });

  beforeAll(async () => {
    moto = await startMoto();
    await moto.createBucket('inbox-bucket');
    await moto.createBucket('artifacts-bucket');
    const sfn = new SFNClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    const machine = await sfn.send(
      new CreateStateMachineCommand({
        name: 'avatar',
        roleArn: 'arn:aws:iam::123456789012:role/avatar',
        definition: JSON.stringify({ StartAt: 'Done', States: { Done: { Type: 'Succeed' } } }),
      }),
    );
    deps = {
      s3: moto.s3(),
      sfn,
      inboxBucket: 'inbox-bucket',
      artifactsBucket: 'artifacts-bucket',
      stateMachineArn: machine.stateMachineArn!,
      now: () => new Date('2026-11-26T10:00:00Z'),
    };
  });
  afterAll(() => moto?.stop());

  it('starts one execution named after the job and writes a queued status', async () => {
    const result = await start(event('teams/team-a/jobs/job-1/job.json'), deps);

    expect(result).toEqual({ job: { teamId: 'team-a', jobId: 'job-1' }, executionName: 'team-a_job-1', duplicate: false });
    const status = StatusSchema.parse(await getJson(deps.s3, 'artifacts-bucket', 'teams/team-a/jobs/job-1/status.json'));
    expect(status).toMatchObject({ state: 'queued', stage: 'validate', createdAt: '2026-11-26T10:00:00.000Z' });
  });

  it('ignores a duplicate event: no second execution, status untouched', async () => {
    await start(event('teams/team-a/jobs/job-2/job.json'), deps);
    const later = { ...deps, now: () => new Date('2026-11-26T11:00:00Z') };

    const again = await start(event('teams/team-a/jobs/job-2/job.json'), later);

    expect(again.duplicate).toBe(true);
    const executions = await deps.sfn.send(new ListExecutionsCommand({ stateMachineArn: deps.stateMachineArn }));
    expect(executions.executions!.filter((e) => e.name === 'team-a_job-2')).toHaveLength(1);
    const status = StatusSchema.parse(await getJson(deps.s3, 'artifacts-bucket', 'teams/team-a/jobs/job-2/status.json'));
    expect(status.updatedAt).toBe('2026-11-26T10:00:00.000Z');
  });

  it('refuses keys outside the job layout, naming the key', async () => {
    await expect(start(event('teams/team-a/jobs/../../x/job.json'), deps)).rejects.toThrow(
      /teams\/team-a\/jobs\/\.\.\/\.\.\/x\/job\.json" is not a job spec key/,
    );
    await expect(start(event('teams/Team A/jobs/j/job.json'), deps)).rejects.toMatchObject({ code: 'BAD_KEY' });
  });

  it('refuses events from another bucket', async () => {
    await expect(start(event('teams/team-a/jobs/job-3/job.json', 'other'), deps)).rejects.toMatchObject({ code: 'BAD_EVENT' });
  });
});

describe('executionName', () => {
  it('keeps short ids readable and unambiguous', () => {
    expect(executionName({ teamId: 'a-b', jobId: 'c' })).toBe('a-b_c');
    expect(executionName({ teamId: 'a', jobId: 'b-c' })).toBe('a_b-c');
  });

  it('hashes long ids to at most 80 characters, distinct per job', () => {
    const long = 'x'.repeat(63);
    const one = executionName({ teamId: long, jobId: `${long.slice(1)}1` });
    const two = executionName({ teamId: long, jobId: `${long.slice(1)}2` });
    expect(one.length).toBeLessThanOrEqual(80);
    expect(one).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(one).not.toBe(two);
  });
});

describe('start handler, events the rule matches that are not jobs', () => {
  const event = (key: string) => ({ 'detail-type': 'Object Created', source: 'aws.s3', detail: { bucket: { name: 'inbox' }, object: { key } } });

  it.each(['teams/t/jobs/j/photos/job.json', 'teams/t/jobs/j/a/b/job.json'])(
    'ignores a job.json nested inside a job (%s) with a log line, instead of failing into the dead-letter queue',
    async (key) => {
      const lines: string[] = [];
      const spy = vi.spyOn(console, 'log').mockImplementation((line: string) => void lines.push(line));
      let result: unknown;
      try {
        // No environment, no clients: an ignored event touches nothing.
        result = await handler(event(key));
      } finally {
        spy.mockRestore();
      }
      expect(result).toEqual({ ignored: `${key} is inside a job's folders, not a job spec key (teams/<teamId>/jobs/<jobId>/job.json)` });
      expect(lines.map((l) => JSON.parse(l))).toEqual([expect.objectContaining({ level: 'warn', message: 'trigger event ignored' })]);
    },
  );

  it('does not ignore a real spec key, or a traversal (which start refuses as BAD_KEY)', () => {
    expect(ignoredReason(event('teams/t/jobs/j/job.json'))).toBeUndefined();
    expect(ignoredReason(event('teams/team-a/jobs/../../x/job.json'))).toBeUndefined();
    expect(ignoredReason(event('teams/Team A/jobs/j/photos/job.json'))).toBeUndefined();
  });
});
