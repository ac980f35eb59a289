/**
 * What a job actually cost, per stage, from AWS Batch's own records, and the ledger rows that keep it.
 *
 * GPU: Batch `DescribeJobs` gives each attempt's `startedAt`/`stoppedAt` (epoch ms, RUNNING to
 * terminal) and the ECS `containerInstanceArn` it ran on, but neither the instance type nor whether
 * it was Spot. Both are derived from the container instance:
 * - Spot or on demand: the ARN names the ECS cluster (`.../container-instance/<cluster>/<id>`), and
 *   each Batch compute environment owns one cluster (`DescribeComputeEnvironments` ->
 *   `ecsClusterArn`, `computeResources.type` SPOT or EC2). The cluster stays known even after a
 *   Spot reclaim removed the instance.
 * - Instance type: ECS `DescribeContainerInstances` attribute `ecs.instance-type`. A reclaimed
 *   instance may be deregistered by the time the job ends; then the dearest type configured for
 *   that environment is priced and the row says `instanceTypeAssumed`.
 * The production resolver ({@link InstanceResolver}) does those two lookups; tests give a table.
 * Each attempt is billed for its running time plus `gpuStartupSeconds` (image pull and model load
 * before RUNNING, when the instance already bills) once it was placed on an instance.
 *
 * Lambda and storage are estimates: billed GB-seconds the caller reports, and the bytes a stage
 * keeps for the team's retention period.
 */

import { type BatchClient, DescribeComputeEnvironmentsCommand } from '@aws-sdk/client-batch';
import { PutCommand } from '@aws-sdk/lib-dynamodb';
import type { Prices } from './prices';
import { fromMicroUsd, type TeamRegistry, teamKey } from './teams';

/** The parts of a Batch `DescribeJobs` job (`jobs[]`) the ledger reads; the SDK's `JobDetail` fits. */
export interface BatchJobRecord {
  readonly jobId?: string;
  readonly jobName?: string;
  readonly status?: string;
  readonly startedAt?: number;
  readonly stoppedAt?: number;
  readonly attempts?: ReadonlyArray<{
    readonly startedAt?: number;
    readonly stoppedAt?: number;
    readonly statusReason?: string;
    readonly container?: { readonly containerInstanceArn?: string; readonly taskArn?: string; readonly exitCode?: number; readonly reason?: string };
  }>;
}

/** Where an attempt ran: from the container instance (see the module comment). */
export interface InstanceFacts {
  readonly instanceType: string;
  readonly spot: boolean;
  /** True when the instance was gone and the type is the environment's dearest. */
  readonly instanceTypeAssumed?: boolean;
}
export type InstanceResolver = (containerInstanceArn: string) => Promise<InstanceFacts>;

export interface AttemptCost {
  readonly startedAt?: number;
  readonly stoppedAt?: number;
  readonly runningSeconds: number;
  readonly billedSeconds: number;
  readonly instanceType?: string;
  readonly spot?: boolean;
  readonly instanceTypeAssumed?: boolean;
  readonly hourlyUsd: number;
  readonly usd: number;
  /** Batch's reason, e.g. `Host EC2 (instance i-...) terminated.` for a Spot reclaim. */
  readonly statusReason?: string;
}

export interface GpuStageCost {
  readonly batchJobId?: string;
  readonly attempts: AttemptCost[];
  readonly gpuSeconds: number;
  readonly usd: number;
}

/** The cost of one Batch job from its DescribeJobs record. */
export async function batchJobCost(job: BatchJobRecord, resolve: InstanceResolver, prices: Prices): Promise<GpuStageCost> {
  const attempts: AttemptCost[] = [];
  for (const attempt of job.attempts ?? []) {
    const arn = attempt.container?.containerInstanceArn;
    const running = attempt.startedAt !== undefined && attempt.stoppedAt !== undefined ? Math.max(0, attempt.stoppedAt - attempt.startedAt) / 1000 : 0;
    if (!arn) {
      // Never placed on an instance: nothing billed.
      attempts.push({
        startedAt: attempt.startedAt,
        stoppedAt: attempt.stoppedAt,
        runningSeconds: running,
        billedSeconds: 0,
        hourlyUsd: 0,
        usd: 0,
        statusReason: attempt.statusReason,
      });
      continue;
    }
    const facts = await resolve(arn);
    const price = prices.instances[facts.instanceType];
    if (!price) throw new Error(`no price configured for instance type ${facts.instanceType}: add it to AVATAR_PRICES.instances`);
    const hourlyUsd = facts.spot ? price.spotHourlyUsd : price.onDemandHourlyUsd;
    const billedSeconds = running + prices.gpuStartupSeconds;
    attempts.push({
      startedAt: attempt.startedAt,
      stoppedAt: attempt.stoppedAt,
      runningSeconds: running,
      billedSeconds,
      instanceType: facts.instanceType,
      spot: facts.spot,
      ...(facts.instanceTypeAssumed ? { instanceTypeAssumed: true } : {}),
      hourlyUsd,
      usd: (billedSeconds / 3600) * hourlyUsd,
      statusReason: attempt.statusReason,
    });
  }
  return {
    batchJobId: job.jobId,
    attempts,
    gpuSeconds: Math.round(attempts.reduce((s, a) => s + a.billedSeconds, 0)),
    usd: roundUsd(attempts.reduce((s, a) => s + a.usd, 0)),
  };
}

/**
 * The resolver from Batch alone: the container instance ARN's cluster -> its compute environment
 * (`DescribeComputeEnvironments`, cached): Spot exactly from `computeResources.type`; the instance
 * type is the environment's only type, or its dearest (`instanceTypeAssumed`) when it has several.
 * An ECS `DescribeContainerInstances` lookup (attribute `ecs.instance-type`) would make the type exact
 * while the instance is registered; it needs @aws-sdk/client-ecs and is not wired yet.
 */
export function computeEnvironmentResolver(batch: BatchClient, prices: Prices): InstanceResolver {
  let clusters: Promise<Map<string, { spot: boolean; instanceTypes: string[] }>> | undefined;
  const load = async () => {
    const map = new Map<string, { spot: boolean; instanceTypes: string[] }>();
    let nextToken: string | undefined;
    do {
      const page = await batch.send(new DescribeComputeEnvironmentsCommand({ nextToken }));
      for (const env of page.computeEnvironments ?? []) {
        const cluster = env.ecsClusterArn?.split('/').pop();
        if (cluster) map.set(cluster, { spot: env.computeResources?.type === 'SPOT', instanceTypes: env.computeResources?.instanceTypes ?? [] });
      }
      nextToken = page.nextToken;
    } while (nextToken);
    return map;
  };
  return async (arn) => {
    const cluster = clusterOfContainerInstance(arn);
    clusters ??= load();
    const env = (await clusters).get(cluster);
    if (!env || env.instanceTypes.length === 0) throw new Error(`container instance ${arn}: no compute environment owns cluster "${cluster}"`);
    const dearest = [...env.instanceTypes].sort((a, b) => (prices.instances[b]?.onDemandHourlyUsd ?? 0) - (prices.instances[a]?.onDemandHourlyUsd ?? 0))[0]!;
    return { instanceType: dearest, spot: env.spot, ...(env.instanceTypes.length > 1 ? { instanceTypeAssumed: true } : {}) };
  };
}

/** `arn:aws:ecs:<region>:<account>:container-instance/<cluster>/<id>` -> `<cluster>`. */
export function clusterOfContainerInstance(arn: string): string {
  const match = /^arn:aws[a-z-]*:ecs:[^:]*:\d*:container-instance\/([^/]+)\/[^/]+$/.exec(arn);
  if (!match) throw new Error(`"${arn}" is not an ECS container instance ARN of the form arn:aws:ecs:<region>:<account>:container-instance/<cluster>/<id>`);
  return match[1]!;
}

/** Lambda: billed GB-seconds of a stage's invocations, priced. */
export function lambdaCost(invocations: ReadonlyArray<{ billedMs: number; memoryMb: number }>, prices: Prices): number {
  const gbSeconds = invocations.reduce((s, i) => s + (i.billedMs / 1000) * (i.memoryMb / 1024), 0);
  return roundUsd(gbSeconds * prices.lambdaUsdPerGbSecond);
}

/** Storage: bytes kept for the team's retention period, at the S3 Standard price. */
export function storageCost(bytes: number, retentionDays: number, prices: Prices): number {
  return roundUsd((bytes / 1024 ** 3) * (retentionDays / 30) * prices.storageUsdPerGbMonth);
}

/** A ledger row: `pk=TEAM#<team>, sk=COST#<job>#<stage>`. Rewriting it with the same figures is harmless. */
export interface LedgerRow {
  readonly teamId: string;
  readonly jobId: string;
  readonly stage: string;
  readonly usd: number;
  readonly gpuSeconds: number;
  readonly lambdaUsd: number;
  readonly storageUsd: number;
  readonly gpu?: GpuStageCost;
  readonly month: string;
  readonly recordedAt: string;
}

export async function writeLedgerRow(registry: TeamRegistry, row: Omit<LedgerRow, 'month' | 'recordedAt'>): Promise<LedgerRow> {
  const now = registry.now();
  const full: LedgerRow = { ...row, usd: roundUsd(row.usd), month: now.toISOString().slice(0, 7), recordedAt: now.toISOString() };
  await registry.doc.send(
    new PutCommand({ TableName: registry.tableName, Item: { pk: teamKey(row.teamId).pk, sk: `COST#${row.jobId}#${row.stage}`, ...full } }),
  );
  return full;
}

/** A job's cost so far: its ledger rows and their sum (what status.json and manifest.json carry). */
export async function jobCost(
  registry: TeamRegistry,
  teamId: string,
  jobId: string,
): Promise<{ usd: number; gpuSeconds: number; stages: Record<string, number> }> {
  const rows = (await registry.items(teamId, `COST#${jobId}#`)) as unknown as LedgerRow[];
  return {
    usd: roundUsd(rows.reduce((s, r) => s + r.usd, 0)),
    gpuSeconds: rows.reduce((s, r) => s + r.gpuSeconds, 0),
    stages: Object.fromEntries(rows.map((r) => [r.stage, r.usd])),
  };
}

/** A team's month-to-date usage against its budget, from the admission counters. */
export async function monthToDate(
  registry: TeamRegistry,
  teamId: string,
): Promise<{ month: string; spentUsd: number; reservedUsd: number; budgetUsd: number; spentGpuHours: number; gpuHoursBudget: number } | undefined> {
  const team = await registry.get(teamId);
  if (!team) return undefined;
  return {
    month: team.usage.usageMonth,
    spentUsd: fromMicroUsd(team.usage.spentMicroUsd),
    reservedUsd: fromMicroUsd(team.usage.reservedMicroUsd),
    budgetUsd: team.config.monthlyBudgetUsd,
    spentGpuHours: team.usage.spentGpuSeconds / 3600,
    gpuHoursBudget: team.config.monthlyGpuHours,
  };
}

/** Micro-dollar precision, as the registry stores money. */
const roundUsd = (usd: number) => Math.round(usd * 1e6) / 1e6;
