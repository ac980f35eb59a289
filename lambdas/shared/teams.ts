/**
 * The team registry: one DynamoDB table (single-table design) that holds, per team,
 *
 * - `pk=TEAM#<teamId>, sk=TEAM`: the team's limits (validated by {@link TeamConfigSchema}) and its
 *   live counters (running jobs, this month's reserved and spent money and GPU time);
 * - `sk=JOB#<jobId>`: a job's admission record (waiting, admitted, rejected, released) and what it reserved;
 * - `sk=WAIT#<time>#<jobId>`: the job's place in the team's queue while it waits for a slot;
 * - `sk=COST#<jobId>#<stage>`: cost ledger rows (lambdas/shared/cost.ts).
 *
 * Money is stored in integer micro-dollars and GPU time in integer seconds so DynamoDB's `ADD`
 * never accumulates rounding drift; the API speaks dollars and hours.
 *
 * Adding a team is one item: no IAM policy, no CloudFormation resource, no deploy.
 */
import { CreateTableCommand, DynamoDBClient, type DynamoDBClientConfig } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, GetCommand, PutCommand, QueryCommand, ScanCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { z } from 'zod';
import { IdSchema, KindSchema, NETWORKS, OPTIMIZERS } from './contract';

/** Instance types a team may be allowed (single-GPU sizes the job definitions fit, see infra/config.ts). */
const InstanceTypeSchema = z.string().regex(/^(g5|g6|g6e)\.(xlarge|2xlarge|4xlarge|8xlarge|16xlarge)$/, 'use a single-GPU g5/g6/g6e type such as g5.xlarge');

/** A team's limits and settings: what `npm run team -- add` writes. */
export const TeamConfigSchema = z
  .object({
    teamId: IdSchema,
    /** Jobs of the team holding a GPU slot at once; more wait (CONCURRENCY_LIMIT) and start when one ends. */
    maxConcurrentJobs: z.number().int().min(1).max(1000),
    /** Spend ceiling per calendar month (UTC), in US dollars: estimates are reserved against it. */
    monthlyBudgetUsd: z.number().min(0).max(1_000_000),
    /** GPU-hour ceiling per calendar month (UTC). */
    monthlyGpuHours: z.number().min(0).max(100_000),
    /** Most usable photos one job may train on. */
    maxPhotosPerJob: z.number().int().min(1).max(1000),
    /** Job kinds the team may submit. */
    allowedKinds: z.array(KindSchema).min(1),
    /** Optimizers and networks the team may choose (training options with very different GPU cost). */
    allowedOptimizers: z.array(z.enum(OPTIMIZERS)).min(1),
    allowedNetworks: z.array(z.enum(NETWORKS)).min(1),
    /** Largest `training.targetSteps` a job may ask for. */
    maxTargetSteps: z.number().int().min(100).max(10_000),
    /** Instance types the team's GPU jobs may run on; the estimate prices the dearest of them. */
    allowedInstanceTypes: z.array(InstanceTypeSchema).min(1),
    /** Days the team's job outputs are kept. */
    retentionDays: z.number().int().min(1).max(3650),
    /** Where budget alerts go. */
    alertEmails: z.array(z.email()).max(10),
    /**
     * AWS Batch fair-share weight factor of the team's share identifier (0.0001-999.9999). Batch gives
     * a share with a LOWER weight factor MORE of the compute: 0.5 gets twice the share of 1.
     */
    fairShareWeight: z.number().min(0.0001).max(999.9999),
    /** A suspended team's new jobs are refused (TEAM_SUSPENDED); running jobs finish. */
    suspended: z.boolean(),
  })
  .strict();
export type TeamConfig = z.infer<typeof TeamConfigSchema>;

/** Defaults for a new team: everything but the id may be left out of `team add`. */
export const TEAM_DEFAULTS: Omit<TeamConfig, 'teamId'> = {
  maxConcurrentJobs: 2,
  monthlyBudgetUsd: 100,
  monthlyGpuHours: 50,
  maxPhotosPerJob: 100,
  allowedKinds: ['character', 'style', 'object'],
  allowedOptimizers: ['AdamW8bit', 'AdamW', 'DAdaptation', 'Adafactor', 'Prodigy'],
  allowedNetworks: ['lora', 'locon', 'loha'],
  maxTargetSteps: 3000,
  allowedInstanceTypes: ['g5.xlarge', 'g5.2xlarge'],
  retentionDays: 30,
  alertEmails: [],
  fairShareWeight: 1,
  suspended: false,
};

/** A change to an existing team: any subset of the settings but the id. */
export const TeamPatchSchema = TeamConfigSchema.omit({ teamId: true }).partial().strict();
export type TeamPatch = z.infer<typeof TeamPatchSchema>;

/** Live counters kept on the team item next to its limits. */
export interface TeamUsage {
  /** Jobs holding a slot now. */
  readonly running: number;
  /** The UTC month (`YYYY-MM`) the month-to-date figures below belong to. */
  readonly usageMonth: string;
  /** Estimates of running jobs, not yet charged. */
  readonly reservedMicroUsd: number;
  /** Charged (actual) cost of jobs that ended this month. */
  readonly spentMicroUsd: number;
  /** reserved + spent: what admission compares against the budget. */
  readonly committedMicroUsd: number;
  readonly reservedGpuSeconds: number;
  readonly spentGpuSeconds: number;
  readonly committedGpuSeconds: number;
}

export interface TeamRecord {
  readonly config: TeamConfig;
  readonly usage: TeamUsage;
}

export const teamKey = (teamId: string) => ({ pk: `TEAM#${teamId}`, sk: 'TEAM' });
export const jobKey = (teamId: string, jobId: string) => ({ pk: `TEAM#${teamId}`, sk: `JOB#${jobId}` });

/** Micro-dollars from dollars, rounded up so an estimate never under-reserves. */
export const toMicroUsd = (usd: number) => Math.ceil(usd * 1_000_000 - 1e-6);
export const fromMicroUsd = (micro: number) => micro / 1_000_000;

/** The UTC calendar month of a time, `YYYY-MM`. */
export const monthOf = (at: Date) => at.toISOString().slice(0, 7);

/** The DynamoDB document client for the registry table; endpoint and credentials from the environment unless given. */
export function teamsDocumentClient(config: DynamoDBClientConfig = {}): DynamoDBDocumentClient {
  return DynamoDBDocumentClient.from(new DynamoDBClient(config), { marshallOptions: { removeUndefinedValues: true } });
}

/** The table layout (for local tables: tests, bench, `npm run local`); the CDK construct creates the same. */
export const TEAMS_TABLE_KEYS = {
  AttributeDefinitions: [
    { AttributeName: 'pk', AttributeType: 'S' as const },
    { AttributeName: 'sk', AttributeType: 'S' as const },
  ],
  KeySchema: [
    { AttributeName: 'pk', KeyType: 'HASH' as const },
    { AttributeName: 'sk', KeyType: 'RANGE' as const },
  ],
};

/** Creates the table on a local endpoint (tests, bench, local runs); the stack creates it in AWS. */
export async function createTeamsTable(client: DynamoDBClient, tableName: string): Promise<void> {
  await client.send(new CreateTableCommand({ TableName: tableName, BillingMode: 'PAY_PER_REQUEST', ...TEAMS_TABLE_KEYS }));
}

const ZERO_USAGE = (month: string): TeamUsage => ({
  running: 0,
  usageMonth: month,
  reservedMicroUsd: 0,
  spentMicroUsd: 0,
  committedMicroUsd: 0,
  reservedGpuSeconds: 0,
  spentGpuSeconds: 0,
  committedGpuSeconds: 0,
});

const USAGE_FIELDS = Object.keys(ZERO_USAGE('')) as (keyof TeamUsage)[];

/** Turns a stored team item into its validated config and counters; a corrupt item names the team. */
export function parseTeamItem(item: Record<string, unknown>): TeamRecord {
  const { pk: _pk, sk: _sk, ...rest } = item;
  const usage = Object.fromEntries(USAGE_FIELDS.map((f) => [f, rest[f]])) as unknown as TeamUsage;
  const configFields = Object.fromEntries(Object.entries(rest).filter(([k]) => !(USAGE_FIELDS as string[]).includes(k)));
  const parsed = TeamConfigSchema.safeParse(configFields);
  if (!parsed.success) {
    throw new Error(
      `Team item ${String(item.pk)} in the registry is invalid: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  }
  return { config: parsed.data, usage };
}

/** Registry access for the admin command and the admission stage. */
export class TeamRegistry {
  constructor(
    readonly doc: DynamoDBDocumentClient,
    readonly tableName: string,
    readonly now: () => Date = () => new Date(),
  ) {}

  /** Adds a team; refuses one that exists (no silent overwrite of its counters). */
  async add(config: TeamConfig): Promise<TeamRecord> {
    const valid = TeamConfigSchema.parse(config);
    const usage = ZERO_USAGE(monthOf(this.now()));
    try {
      await this.doc.send(
        new PutCommand({
          TableName: this.tableName,
          Item: { ...teamKey(valid.teamId), ...valid, ...usage },
          ConditionExpression: 'attribute_not_exists(pk)',
        }),
      );
    } catch (error) {
      if ((error as Error).name === 'ConditionalCheckFailedException') {
        throw new Error(`team "${valid.teamId}" already exists: use "update" to change it`);
      }
      throw error;
    }
    return { config: valid, usage };
  }

  /** Changes some settings of an existing team; counters are untouched. */
  async update(teamId: string, patch: TeamPatch): Promise<TeamRecord> {
    const valid = TeamPatchSchema.parse(patch);
    const entries = Object.entries(valid).filter(([, v]) => v !== undefined);
    if (entries.length === 0) throw new Error('nothing to change: give at least one setting');
    const names = Object.fromEntries(entries.map(([k], i) => [`#f${i}`, k]));
    const values = Object.fromEntries(entries.map(([, v], i) => [`:v${i}`, v]));
    try {
      const out = await this.doc.send(
        new UpdateCommand({
          TableName: this.tableName,
          Key: teamKey(IdSchema.parse(teamId)),
          UpdateExpression: `SET ${entries.map((_, i) => `#f${i} = :v${i}`).join(', ')}`,
          ConditionExpression: 'attribute_exists(pk)',
          ExpressionAttributeNames: names,
          ExpressionAttributeValues: values,
          ReturnValues: 'ALL_NEW',
        }),
      );
      return parseTeamItem(out.Attributes!);
    } catch (error) {
      if ((error as Error).name === 'ConditionalCheckFailedException') throw new Error(`team "${teamId}" does not exist: add it first`);
      throw error;
    }
  }

  /** The team with its counters, read strongly consistent; undefined when unknown. */
  async get(teamId: string): Promise<TeamRecord | undefined> {
    const out = await this.doc.send(new GetCommand({ TableName: this.tableName, Key: teamKey(teamId), ConsistentRead: true }));
    return out.Item ? parseTeamItem(out.Item) : undefined;
  }

  /** Every team: a scan filtered to team items (an admin command; teams are few). */
  async list(): Promise<TeamRecord[]> {
    const teams: TeamRecord[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const page = await this.doc.send(
        new ScanCommand({
          TableName: this.tableName,
          FilterExpression: 'sk = :team',
          ExpressionAttributeValues: { ':team': 'TEAM' },
          ExclusiveStartKey: start,
          ConsistentRead: true,
        }),
      );
      for (const item of page.Items ?? []) teams.push(parseTeamItem(item));
      start = page.LastEvaluatedKey;
    } while (start);
    return teams.sort((a, b) => a.config.teamId.localeCompare(b.config.teamId));
  }

  /** The team's items under a sort-key prefix (jobs, waiting queue, ledger rows), in key order. */
  async items(teamId: string, skPrefix: string): Promise<Record<string, unknown>[]> {
    const items: Record<string, unknown>[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const page = await this.doc.send(
        new QueryCommand({
          TableName: this.tableName,
          KeyConditionExpression: 'pk = :pk AND begins_with(sk, :prefix)',
          ExpressionAttributeValues: { ':pk': teamKey(teamId).pk, ':prefix': skPrefix },
          ExclusiveStartKey: start,
          ConsistentRead: true,
        }),
      );
      items.push(...(page.Items ?? []));
      start = page.LastEvaluatedKey;
    } while (start);
    return items;
  }
}
