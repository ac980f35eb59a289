/**
 * `npm run team -- <command>`: the operator's team registry command. It writes one DynamoDB item per
 * team: adding or changing a team creates no IAM policy and no CloudFormation resource and needs no deploy.
 *
 *   add <team> [settings]      register a team (settings below; the rest take the defaults)
 *   update <team> [settings]   change some settings (raised limits admit waiting jobs that now fit)
 *   suspend <team>             refuse new jobs (TEAM_SUSPENDED); running jobs finish, waiting ones wait
 *   resume <team>              accept jobs again and admit waiting ones that fit (their executions resume:
 *                              SendTaskSuccess with the token each waits on; AWS_ENDPOINT_URL_SFN locally)
 *   list                       every team with its month-to-date usage
 *   show <team>                one team: settings, counters, waiting jobs
 *   delete-budget <team>       delete the team's AWS Budgets alert (the team stays registered)
 *   client <team> [--rotate]   the team's Cognito app client (client credentials, scope avatar/team:<team>):
 *                              created once and found by name afterwards; prints its id, and its secret
 *                              only when it creates one; --rotate makes a new one and deletes the old
 *   create-table               create the table (local endpoints only; the stack creates it in AWS)
 *
 * Settings: --budget-usd N  --gpu-hours N  --max-concurrent N  --max-photos N  --max-steps N
 *   --kinds a,b  --optimizers a,b  --networks a,b  --instance-types a,b  --retention-days N
 *   --alert-email a@b (repeat or comma-separate)  --weight N (Batch fair-share weight factor: lower = more share)
 *
 * Where: --table NAME (or AVATAR_TEAMS_TABLE), --endpoint URL (or AWS_ENDPOINT_URL_DYNAMODB), --json.
 * Budget alert: --budgets-account ID (or AVATAR_BUDGETS_ACCOUNT_ID, the account that pays): add/update
 *   create or replace the team's AWS Budgets alert (scripts/team-budget.ts), delete-budget removes it.
 * API credentials: --user-pool ID (or AVATAR_USER_POOL_ID, the stack output ApiUserPoolId): `client`
 *   needs it, and `add` then also creates the team's app client (scripts/team-client.ts). Nothing
 *   else needs Cognito: suspend, resume and update only change the registry.
 * Fair share: --scheduling-policy ARN (or AVATAR_SCHEDULING_POLICY_ARN, the stack output SchedulingPolicyArn):
 *   add/update/suspend/resume then push every team's weight into the Batch policy (no deploy).
 */
import { parseArgs } from 'node:util';
import { BatchClient } from '@aws-sdk/client-batch';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SFNClient } from '@aws-sdk/client-sfn';
import type { z } from 'zod';
import { resume } from '../lambdas/shared/accounting';
import { admitWaiting } from '../lambdas/shared/admission';
import { IdSchema } from '../lambdas/shared/contract';
import { syncFairShareWeights } from '../lambdas/shared/fair-share';
import {
  createTeamsTable,
  fromMicroUsd,
  TEAM_DEFAULTS,
  type TeamConfig,
  TeamConfigSchema,
  type TeamPatch,
  TeamPatchSchema,
  type TeamRecord,
  TeamRegistry,
  teamsDocumentClient,
} from '../lambdas/shared/teams';
import { BudgetsClient, deleteTeamBudget, putTeamBudget, teamBudgetName } from './team-budget';
import { CognitoIdentityProviderClient, ensureTeamClient, type TeamClient } from './team-client';

/** Flag -> config field, for parsing and for naming the flag in errors. */
const FLAGS = {
  'budget-usd': { field: 'monthlyBudgetUsd', type: 'number' },
  'gpu-hours': { field: 'monthlyGpuHours', type: 'number' },
  'max-concurrent': { field: 'maxConcurrentJobs', type: 'number' },
  'max-photos': { field: 'maxPhotosPerJob', type: 'number' },
  'max-steps': { field: 'maxTargetSteps', type: 'number' },
  kinds: { field: 'allowedKinds', type: 'list' },
  optimizers: { field: 'allowedOptimizers', type: 'list' },
  networks: { field: 'allowedNetworks', type: 'list' },
  'instance-types': { field: 'allowedInstanceTypes', type: 'list' },
  'retention-days': { field: 'retentionDays', type: 'number' },
  'alert-email': { field: 'alertEmails', type: 'list' },
  weight: { field: 'fairShareWeight', type: 'number' },
} as const;
type Flag = keyof typeof FLAGS;
const FLAG_OF_FIELD = Object.fromEntries(Object.entries(FLAGS).map(([flag, { field }]) => [field, `--${flag}`]));

class UsageError extends Error {}

function settingsFrom(values: Record<string, unknown>): TeamPatch {
  const patch: Record<string, unknown> = {};
  for (const [flag, spec] of Object.entries(FLAGS) as [Flag, (typeof FLAGS)[Flag]][]) {
    const raw = values[flag] as string[] | undefined;
    if (raw === undefined) continue;
    if (spec.type === 'number') {
      const text = raw[raw.length - 1]!;
      const n = Number(text);
      if (text.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${flag}: "${text}" is not a number`);
      patch[spec.field] = n;
    } else {
      patch[spec.field] = raw
        .flatMap((v) => v.split(','))
        .map((v) => v.trim())
        .filter((v) => v !== '');
    }
  }
  return patch as TeamPatch;
}

/** zod issues in the operator's words: the flag, not the stored field name. */
function describe(error: z.ZodError): string {
  return error.issues
    .map((i) => {
      const field = String(i.path[0] ?? '');
      const where = FLAG_OF_FIELD[field] ?? (field === 'teamId' ? '<team>' : field || '(settings)');
      return `${where}${i.path.length > 1 ? `[${i.path.slice(1).join('.')}]` : ''}: ${i.message}`;
    })
    .join('; ');
}

function summary({ config, usage }: TeamRecord): Record<string, unknown> {
  return {
    ...config,
    usage: {
      month: usage.usageMonth,
      runningJobs: usage.running,
      spentUsd: fromMicroUsd(usage.spentMicroUsd),
      reservedUsd: fromMicroUsd(usage.reservedMicroUsd),
      budgetLeftUsd: Math.max(0, config.monthlyBudgetUsd - fromMicroUsd(usage.committedMicroUsd)),
      spentGpuHours: usage.spentGpuSeconds / 3600,
      reservedGpuHours: usage.reservedGpuSeconds / 3600,
    },
  };
}

function line({ config, usage }: TeamRecord): string {
  const state = config.suspended ? 'SUSPENDED' : 'active';
  return `${config.teamId.padEnd(20)} ${state.padEnd(9)} jobs ${usage.running}/${config.maxConcurrentJobs}  spent $${fromMicroUsd(usage.spentMicroUsd).toFixed(2)} + reserved $${fromMicroUsd(usage.reservedMicroUsd).toFixed(2)} of $${config.monthlyBudgetUsd} (${usage.usageMonth})  weight ${config.fairShareWeight}`;
}

export async function main(argv: string[]): Promise<number> {
  const options = Object.fromEntries(Object.keys(FLAGS).map((f) => [f, { type: 'string' as const, multiple: true }]));
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      ...options,
      table: { type: 'string' },
      endpoint: { type: 'string' },
      'scheduling-policy': { type: 'string' },
      'budgets-account': { type: 'string' },
      'user-pool': { type: 'string' },
      rotate: { type: 'boolean' },
      json: { type: 'boolean' },
    },
  });
  const [command, teamArg, ...extra] = positionals;
  if (!command) throw new UsageError('give a command: add, update, suspend, resume, list, show, client, delete-budget or create-table');
  if (extra.length > 0) throw new UsageError(`unexpected argument(s): ${extra.join(' ')}`);
  const tableName = (values.table as string | undefined) ?? process.env.AVATAR_TEAMS_TABLE;
  if (!tableName) throw new UsageError('name the registry table: --table NAME or AVATAR_TEAMS_TABLE (the stack output TeamsTableName)');
  const endpoint = (values.endpoint as string | undefined) ?? process.env.AWS_ENDPOINT_URL_DYNAMODB;
  const clientConfig = endpoint ? { endpoint } : {};
  const registry = new TeamRegistry(teamsDocumentClient(clientConfig), tableName);
  const policyArn = (values['scheduling-policy'] as string | undefined) ?? process.env.AVATAR_SCHEDULING_POLICY_ARN;
  const print = (human: string, json: unknown) => console.log(values.json ? JSON.stringify(json, null, 2) : human);
  /** After a change: every team's weight into the Batch policy, when one is named. */
  const syncShares = async () => {
    if (!policyArn) return;
    const shares = await syncFairShareWeights(
      new BatchClient(clientConfig),
      policyArn,
      (await registry.list()).map((t) => t.config),
    );
    if (!values.json) console.log(`fair-share weights of ${shares.length} team(s) pushed to ${policyArn}`);
  };
  const budgetsAccount = (values['budgets-account'] as string | undefined) ?? process.env.AVATAR_BUDGETS_ACCOUNT_ID;
  if (budgetsAccount !== undefined && !/^\d{12}$/.test(budgetsAccount))
    throw new UsageError(`--budgets-account: "${budgetsAccount}" is not a 12-digit AWS account id`);
  /** After add/update: the team's Budgets alert, when the paying account is named. */
  const syncBudget = async (config: TeamConfig) => {
    if (!budgetsAccount) {
      if (!values.json) console.log("no --budgets-account (AVATAR_BUDGETS_ACCOUNT_ID): the team's AWS Budgets alert was not created or changed");
      return;
    }
    await putTeamBudget(new BudgetsClient(clientConfig), budgetsAccount, config);
    if (!values.json)
      console.log(
        `AWS Budgets alert ${teamBudgetName(config.teamId)}: $${config.monthlyBudgetUsd}/month on tag team=${config.teamId}, to ${config.alertEmails.join(', ') || 'nobody (no --alert-email)'}`,
      );
  };
  const userPoolId = (values['user-pool'] as string | undefined) ?? (process.env.AVATAR_USER_POOL_ID || undefined);
  if (userPoolId !== undefined && !/^[\w-]+_[0-9a-zA-Z]+$/.test(userPoolId))
    throw new UsageError(`--user-pool: "${userPoolId}" is not a Cognito user pool id (<region>_<id>, the stack output ApiUserPoolId)`);
  if (values.rotate && command !== 'client') throw new UsageError('--rotate is for "client"');
  /** The team's app client, printed; the secret only when this run made it. */
  const teamClient = async (id: string): Promise<TeamClient> => {
    const client = await ensureTeamClient(new CognitoIdentityProviderClient(clientConfig), userPoolId!, id, { rotate: values.rotate === true });
    if (!values.json) {
      console.log(
        client.created
          ? `app client ${client.clientName} created: client id ${client.clientId}\nclient secret ${client.clientSecret}\n(shown once: hand it to the team; its tokens carry scope ${client.scope})`
          : `app client ${client.clientName} exists: client id ${client.clientId} (scope ${client.scope}); --rotate makes a new one`,
      );
      if (client.deleted.length) console.log(`deleted the old app client(s): ${client.deleted.join(', ')}`);
    }
    return client;
  };
  const teamId = () => {
    const parsed = IdSchema.safeParse(teamArg);
    if (!parsed.success) throw new UsageError(`<team>: ${teamArg === undefined ? 'give the team id' : `"${teamArg}": ${parsed.error.issues[0]!.message}`}`);
    return parsed.data;
  };
  const needsNoSettings = () => {
    if (Object.keys(settingsFrom(values)).length > 0) throw new UsageError(`"${command}" takes no settings; use "update"`);
  };

  switch (command) {
    case 'add': {
      const parsed = TeamConfigSchema.safeParse({ ...TEAM_DEFAULTS, ...settingsFrom(values), teamId: teamId() });
      if (!parsed.success) throw new UsageError(describe(parsed.error));
      const team = await registry.add(parsed.data);
      if (values.json) {
        const client = userPoolId ? await teamClient(team.config.teamId) : undefined;
        print('', { ...summary(team), ...(client ? { client } : {}) });
      } else {
        print(`added ${line(team)}`, undefined);
        if (userPoolId) await teamClient(team.config.teamId);
        else console.log('no --user-pool (AVATAR_USER_POOL_ID): make its API credentials later with "client <team>"');
      }
      await syncShares();
      await syncBudget(team.config);
      return 0;
    }
    case 'update': {
      const id = teamId();
      const parsed = TeamPatchSchema.safeParse(settingsFrom(values));
      if (!parsed.success) throw new UsageError(describe(parsed.error));
      const team = await registry.update(id, parsed.data);
      // Raised limits let waiting jobs in now; their executions resume (or fail with the code).
      const woken = await admitWaiting(registry, id);
      await resume({ sfn: new SFNClient({}), log: (m, f) => console.error(`${m}: ${JSON.stringify(f)}`) }, woken.admitted, woken.rejected);
      const admitted = woken.admitted.map((a) => a.jobId);
      print(`updated ${line(team)}${admitted.length ? `\nadmitted waiting jobs: ${admitted.join(', ')}` : ''}`, {
        ...summary(team),
        admitted,
        rejected: woken.rejected,
      });
      await syncShares();
      await syncBudget(team.config);
      return 0;
    }
    case 'suspend':
    case 'resume': {
      needsNoSettings();
      const id = teamId();
      const team = await registry.update(id, { suspended: command === 'suspend' });
      // A resumed team's queue moves now, not only when one of its running jobs ends.
      const woken = command === 'resume' ? await admitWaiting(registry, id) : { admitted: [], rejected: [] };
      await resume({ sfn: new SFNClient({}), log: (m, f) => console.error(`${m}: ${JSON.stringify(f)}`) }, woken.admitted, woken.rejected);
      const admitted = woken.admitted.map((a) => a.jobId);
      print(`${command === 'suspend' ? 'suspended' : 'resumed'} ${line(team)}${admitted.length ? `\nadmitted waiting jobs: ${admitted.join(', ')}` : ''}`, {
        ...summary(team),
        admitted,
        rejected: woken.rejected,
      });
      await syncShares();
      return 0;
    }
    case 'list': {
      needsNoSettings();
      const teams = await registry.list();
      print(teams.length ? teams.map(line).join('\n') : 'no teams registered', teams.map(summary));
      return 0;
    }
    case 'show': {
      needsNoSettings();
      const id = teamId();
      const team = await registry.get(id);
      if (!team) throw new UsageError(`team "${id}" does not exist: add it with "add ${id}"`);
      const waiting = (await registry.items(id, 'WAIT#')).map((w) => w.jobId as string);
      print(`${line(team)}\n${JSON.stringify(team.config, null, 2)}\nwaiting: ${waiting.join(', ') || 'none'}`, { ...summary(team), waiting });
      return 0;
    }
    case 'delete-budget': {
      needsNoSettings();
      const id = teamId();
      if (!budgetsAccount) throw new UsageError('delete-budget needs the paying account: --budgets-account ID or AVATAR_BUDGETS_ACCOUNT_ID');
      await deleteTeamBudget(new BudgetsClient(clientConfig), budgetsAccount, id);
      print(`deleted AWS Budgets alert ${teamBudgetName(id)}`, { deleted: teamBudgetName(id) });
      return 0;
    }
    case 'client': {
      needsNoSettings();
      const id = teamId();
      if (!userPoolId) throw new UsageError('client needs the user pool: --user-pool ID or AVATAR_USER_POOL_ID (the stack output ApiUserPoolId)');
      if (!(await registry.get(id))) throw new UsageError(`team "${id}" does not exist: add it with "add ${id}"`);
      const client = await teamClient(id);
      if (values.json) print('', client);
      return 0;
    }
    case 'create-table': {
      if (!endpoint) throw new UsageError('create-table is for local endpoints (give --endpoint); in AWS the stack creates the table');
      await createTeamsTable(new DynamoDBClient(clientConfig), tableName);
      print(`created table ${tableName} at ${endpoint}`, { tableName, endpoint });
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${command}": use add, update, suspend, resume, list, show, client, delete-budget or create-table`);
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: Error) => {
      const usage = error instanceof UsageError || String((error as { code?: string }).code).startsWith('ERR_PARSE_ARGS');
      console.error(`team: ${error.message}`);
      process.exit(usage ? 2 : 1);
    },
  );
}
