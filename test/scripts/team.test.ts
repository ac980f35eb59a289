/**
 * `npm run team`, run as the operator runs it (a separate process) against moto's DynamoDB: each
 * command's effect is read back from the table, and bad settings exit 2 naming the flag.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { BatchClient, CreateSchedulingPolicyCommand, DescribeSchedulingPoliciesCommand } from '@aws-sdk/client-batch';
import { BudgetsClient, DescribeBudgetCommand, DescribeNotificationsForBudgetCommand } from '@aws-sdk/client-budgets';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { admit } from '../../lambdas/shared/admission';
import { TeamRegistry, teamsDocumentClient } from '../../lambdas/shared/teams';
import { startTaskTokens } from '../../scripts/local/task-tokens';
import { admissionRequest } from '../../scripts/local/teams';
import { LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';
import { teamCommand } from './team-command';

const ROOT = join(__dirname, '..', '..');

describeWithMoto('npm run team', () => {
  let moto: Moto;
  let registry: TeamRegistry;
  const table = 'avatar-teams';

  const team = (args: string[], env: Record<string, string> = {}) => teamCommand(table, args, env);
  const ok = (args: string[]) => {
    const run = team([...args, '--endpoint', moto.endpoint]);
    expect(run.status, run.stderr).toBe(0);
    return run.stdout;
  };

  beforeAll(async () => {
    moto = await startMoto({ serializeDynamoDb: true });
    registry = new TeamRegistry(teamsDocumentClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS }), table);
    ok(['create-table']);
  });
  afterAll(() => moto?.stop());

  it('add stores the settings given and the defaults for the rest', async () => {
    const out = ok([
      'add',
      'acme',
      '--budget-usd',
      '200',
      '--max-concurrent',
      '2',
      '--kinds',
      'character,object',
      '--alert-email',
      'ops@acme.test',
      '--alert-email',
      'cfo@acme.test',
      '--weight',
      '0.5',
    ]);

    expect(out).toMatch(/^added acme\s+active\s+jobs 0\/2\s+spent \$0\.00 \+ reserved \$0\.00 of \$200/);
    const stored = (await registry.get('acme'))!;
    expect(stored.config).toMatchObject({
      teamId: 'acme',
      monthlyBudgetUsd: 200,
      maxConcurrentJobs: 2,
      allowedKinds: ['character', 'object'],
      alertEmails: ['ops@acme.test', 'cfo@acme.test'],
      fairShareWeight: 0.5,
      monthlyGpuHours: 50,
      suspended: false,
    });
    expect(stored.usage.running).toBe(0);
  });

  it('refuses bad settings with exit 2, naming the flag, and writes nothing', async () => {
    const notNumber = team(['add', 'beta', '--budget-usd', 'lots', '--endpoint', moto.endpoint]);
    const badKind = team(['add', 'beta', '--kinds', 'character,landscape', '--endpoint', moto.endpoint]);
    const badId = team(['add', 'Beta Team', '--endpoint', moto.endpoint]);
    const badFlag = team(['add', 'beta', '--budget', '5', '--endpoint', moto.endpoint]);

    expect([notNumber.status, badKind.status, badId.status, badFlag.status]).toEqual([2, 2, 2, 2]);
    expect(notNumber.stderr).toContain('--budget-usd: "lots" is not a number');
    expect(badKind.stderr).toMatch(/--kinds\[1\]: .*character.*style.*object/);
    expect(badId.stderr).toMatch(/<team>: "Beta Team": use 1-63 characters/);
    expect(badFlag.stderr).toMatch(/--budget/);
    expect(await registry.get('beta')).toBeUndefined();
  });

  it('refuses to add a team twice (its counters are never reset by accident)', () => {
    ok(['add', 'twice']);
    const again = team(['add', 'twice', '--budget-usd', '1', '--endpoint', moto.endpoint]);
    expect(again.status).toBe(1);
    expect(again.stderr).toContain('team "twice" already exists: use "update" to change it');
  });

  it('update changes only the settings given; show reads them back as JSON', async () => {
    ok(['add', 'gamma', '--budget-usd', '50']);

    ok(['update', 'gamma', '--max-concurrent', '7', '--instance-types', 'g6.xlarge']);

    const shown = JSON.parse(ok(['show', 'gamma', '--json']));
    expect(shown).toMatchObject({ teamId: 'gamma', monthlyBudgetUsd: 50, maxConcurrentJobs: 7, allowedInstanceTypes: ['g6.xlarge'], waiting: [] });
    expect(shown.usage).toMatchObject({ runningJobs: 0, spentUsd: 0, budgetLeftUsd: 50 });
    const missing = team(['update', 'nobody', '--weight', '2', '--endpoint', moto.endpoint]);
    expect(missing.stderr).toContain('team "nobody" does not exist');
  });

  it('suspend refuses new jobs; resume admits the jobs that waited', async () => {
    ok(['add', 'delta', '--max-concurrent', '1']);
    const job = (jobId: string) => admissionRequest('delta', jobId, { photos: 10, targetSteps: 1000, estimate: { usd: 1, gpuSeconds: 600 } });
    await admit(registry, job('running'));
    expect((await admit(registry, job('queued'))).code).toBe('CONCURRENCY_LIMIT');

    ok(['suspend', 'delta']);
    expect((await admit(registry, job('refused'))).code).toBe('TEAM_SUSPENDED');
    // A second slot while suspended (written directly, as update would wake the queue): nothing moves.
    await registry.update('delta', { maxConcurrentJobs: 2 });
    expect((await registry.items('delta', 'WAIT#')).map((w) => w.jobId)).toEqual(['queued']);
    const resumed = JSON.parse(ok(['resume', 'delta', '--json']));

    expect(resumed).toMatchObject({ suspended: false, admitted: ['queued'] });
    expect((await registry.get('delta'))!.usage.running).toBe(2);
  });

  it('list shows every team with its usage; the endpoint may come from AWS_ENDPOINT_URL_DYNAMODB', () => {
    const run = team(['list'], { AWS_ENDPOINT_URL_DYNAMODB: moto.endpoint });

    expect(run.status, run.stderr).toBe(0);
    const ids = run.stdout
      .trim()
      .split('\n')
      .map((l) => l.split(/\s+/)[0]);
    expect(ids).toEqual(['acme', 'delta', 'gamma', 'twice']);
    expect(run.stdout).toMatch(/delta\s+active\s+jobs 2\/2/);
  });

  it("pushes every team's fair-share weight into the Batch scheduling policy when one is named", async () => {
    const batch = new BatchClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    const { arn } = await batch.send(new CreateSchedulingPolicyCommand({ name: 'fair', fairsharePolicy: { shareDecaySeconds: 3600, computeReservation: 25 } }));

    const out = ok(['update', 'gamma', '--weight', '0.25', '--scheduling-policy', arn!]);

    expect(out).toContain(`fair-share weights of 4 team(s) pushed to ${arn}`);
    const [policy] = (await batch.send(new DescribeSchedulingPoliciesCommand({ arns: [arn!] }))).schedulingPolicies!;
    expect(policy!.fairsharePolicy!.shareDistribution).toEqual([
      { shareIdentifier: 'acme', weightFactor: 0.5 },
      { shareIdentifier: 'delta', weightFactor: 1 },
      { shareIdentifier: 'gamma', weightFactor: 0.25 },
      { shareIdentifier: 'twice', weightFactor: 1 },
    ]);
  });

  it('says which table to use when none is named', () => {
    const run = team(['list', '--endpoint', moto.endpoint], { AVATAR_TEAMS_TABLE: '' });
    expect(run.status).toBe(2);
    expect(run.stderr).toContain('--table NAME or AVATAR_TEAMS_TABLE');
  });

  it('resume and update answer the task token each admitted job waits on, so its execution goes on by itself', async () => {
    // The local Step Functions task-token endpoint; the command runs as a separate process reaching it.
    const tokens = await startTaskTokens();
    ok(['add', 'echo', '--max-concurrent', '1']);
    const job = (jobId: string) => admissionRequest('echo', jobId, { photos: 10, targetSteps: 1000, estimate: { usd: 1, gpuSeconds: 600 } });
    await admit(registry, job('running'));
    const waitingToken = tokens.open();
    expect(await admit(registry, job('waiting'), { taskToken: waitingToken })).toMatchObject({ outcome: 'waiting' });
    const run = (args: string[]) =>
      new Promise<{ status: number | null; stderr: string }>((resolve) => {
        const child = spawn(join(ROOT, 'node_modules', '.bin', 'tsx'), [join(ROOT, 'scripts', 'team.ts'), ...args, '--endpoint', moto.endpoint], {
          env: {
            ...process.env,
            AWS_ACCESS_KEY_ID: 'testing',
            AWS_SECRET_ACCESS_KEY: 'testing',
            AWS_REGION: LOCAL_REGION,
            AVATAR_TEAMS_TABLE: table,
            AWS_ENDPOINT_URL_SFN: tokens.endpoint,
          },
        });
        let stderr = '';
        child.stderr.on('data', (d) => (stderr += d));
        child.on('exit', (status) => resolve({ status, stderr }));
      });

    const updated = await run(['update', 'echo', '--max-concurrent', '2']);

    expect(updated.status, updated.stderr).toBe(0);
    expect(await tokens.wait(waitingToken)).toMatchObject({ teamId: 'echo', jobId: 'waiting', outcome: 'admitted' });
    await tokens.stop();
  });

  // moto emulates Budgets (CreateBudget with notifications, DescribeBudget, DeleteBudget); it sends no e-mail.
  it("add creates the team's AWS Budgets alert on its team tag, update replaces it, delete-budget removes it", async () => {
    const budgets = new BudgetsClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    const account = '123456789012';
    const describe = () => budgets.send(new DescribeBudgetCommand({ AccountId: account, BudgetName: 'avatar-team-foxtrot' }));

    ok(['add', 'foxtrot', '--budget-usd', '250', '--alert-email', 'ops@foxtrot.example', '--budgets-account', account]);

    const { Budget } = await describe();
    expect(Budget).toMatchObject({
      BudgetName: 'avatar-team-foxtrot',
      BudgetType: 'COST',
      TimeUnit: 'MONTHLY',
      BudgetLimit: { Amount: '250', Unit: 'USD' },
      CostFilters: { TagKeyValue: ['user:team$foxtrot'] },
    });
    const { Notifications } = await budgets.send(new DescribeNotificationsForBudgetCommand({ AccountId: account, BudgetName: 'avatar-team-foxtrot' }));
    expect(Notifications?.map((n) => [n.NotificationType, n.Threshold, n.ThresholdType])).toEqual([
      ['ACTUAL', 80, 'PERCENTAGE'],
      ['FORECASTED', 100, 'PERCENTAGE'],
    ]);

    ok(['update', 'foxtrot', '--budget-usd', '400', '--budgets-account', account]);
    expect((await describe()).Budget?.BudgetLimit).toMatchObject({ Amount: '400' });

    ok(['delete-budget', 'foxtrot', '--budgets-account', account]);
    await expect(describe()).rejects.toMatchObject({ name: 'NotFoundException' });
    expect(team(['add', 'golf', '--budgets-account', '12345', '--endpoint', moto.endpoint]).stderr).toContain(
      '--budgets-account: "12345" is not a 12-digit AWS account id',
    );
  });
});
