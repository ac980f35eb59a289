/**
 * The end of a job, for its team: what it cost is charged, its slot and reservation are released,
 * and the team's waiting jobs that now fit are admitted and their executions resumed. finalize
 * (success), mark-failed (failure) and reconcile (stop, execution timeout) all end here; each step
 * is idempotent, so a retried or duplicated end changes nothing.
 *
 * Cost: the GPU stages' Batch jobs are found by their deterministic names on the job queue
 * (`ListJobs` with a JOB_NAME filter: every submission, including one whose state timed out or was
 * resubmitted, not only the id the execution kept) and priced from `DescribeJobs` (cost.ts). When
 * the records cannot be read, the admission estimate is charged and the cost says `estimated`.
 *
 * Resuming: an execution waiting in the Admit state (`.waitForTaskToken`) gets SendTaskSuccess with
 * its admission decision; one whose job no longer fits the budget gets SendTaskFailure with the
 * code, in the Lambda error shape mark-failed reads.
 */
import { createHash } from 'node:crypto';
import { BatchClient, DescribeJobsCommand, ListJobsCommand } from '@aws-sdk/client-batch';
import { SendTaskFailureCommand, SendTaskSuccessCommand, SFNClient } from '@aws-sdk/client-sfn';
import { type AdmissionRequest, type AdmissionResult, admissionOf, release, type WokenJob } from './admission';
import type { Cost } from './contract';
import { type BatchJobRecord, batchJobCost, computeEnvironmentResolver, type InstanceResolver, type LedgerRow, writeLedgerRow } from './cost';
import { requireEnv } from './env';
import type { JobRef } from './keys';
import { loadPrices, type Prices } from './prices';
import { fromMicroUsd, TeamRegistry, teamsDocumentClient } from './teams';

export const GPU_STAGES = ['caption', 'train', 'evaluate'] as const;
/** The ledger rows a job's end writes: its GPU stages, and Lambda and storage at their estimate. */
const CHARGED_STAGES = [...GPU_STAGES, 'lambda', 'storage'] as const;

/** The Batch job name the state machine gives a stage (infra/constructs/workflow.ts, `batchJobName`). */
export function batchJobNameOf({ teamId, jobId }: JobRef, stage: string): string {
  return `${jobId}-${createHash('md5').update(`${teamId}/${jobId}`).digest('hex')}-${stage}`;
}

/** Every Batch job submitted for a stage of the job, described (all attempts). */
export type GpuJobSource = (job: JobRef, stage: string) => Promise<BatchJobRecord[]>;

/** The production source: ListJobs by name on the queue, then DescribeJobs. */
export function batchJobSource(batch: Pick<BatchClient, 'send'>, jobQueue: string): GpuJobSource {
  return async (job, stage) => {
    const ids: string[] = [];
    let nextToken: string | undefined;
    do {
      // With a filter, ListJobs returns jobs in every status.
      const page = await batch.send(new ListJobsCommand({ jobQueue, filters: [{ name: 'JOB_NAME', values: [batchJobNameOf(job, stage)] }], nextToken }));
      ids.push(...(page.jobSummaryList ?? []).map((j) => j.jobId!).filter(Boolean));
      nextToken = page.nextToken;
    } while (nextToken);
    if (ids.length === 0) return [];
    const described = await batch.send(new DescribeJobsCommand({ jobs: ids }));
    return (described.jobs ?? []) as BatchJobRecord[];
  };
}

export interface Accounting {
  readonly registry: TeamRegistry;
  /** Resumes or fails waiting executions. */
  readonly sfn: Pick<SFNClient, 'send'>;
  readonly gpuJobs: GpuJobSource;
  readonly resolveInstance: InstanceResolver;
  readonly prices: Prices;
  readonly log?: (message: string, fields: Record<string, unknown>) => void;
}

/** The resolver and source from a Batch client (the handlers' production wiring). */
export function batchAccounting(batch: BatchClient, jobQueue: string, prices: Prices): Pick<Accounting, 'gpuJobs' | 'resolveInstance' | 'prices'> {
  return { gpuJobs: batchJobSource(batch, jobQueue), resolveInstance: computeEnvironmentResolver(batch, prices), prices };
}

export interface JobEnd {
  /** What the job cost; zero for a job that never held a slot. */
  readonly cost: Cost;
  /** False when nothing was held (never admitted, or already released). */
  readonly released: boolean;
  /** Jobs of the team this end admitted (their executions resumed). */
  readonly resumed: string[];
  /** Waiting jobs of the team refused when they came up (their executions failed with the code). */
  readonly refused: string[];
}

const NO_COST: Cost = { usd: 0, gpuSeconds: 0, breakdown: {}, estimated: false };

/** Charges, releases and resumes (see the module comment). Safe to call again. */
export async function endJob(acc: Accounting, job: JobRef): Promise<JobEnd> {
  const admission = await admissionOf(acc.registry, job.teamId, job.jobId);
  // Only an admitted job can have run a GPU stage; a released one was charged already (a retried end).
  const cost =
    admission?.state === 'admitted'
      ? await jobCost(acc, job, admission)
      : admission?.state === 'released' && admission.chargedMicroUsd !== undefined
        ? await chargedCost(acc.registry, job, admission.chargedMicroUsd, admission.chargedGpuSeconds ?? 0)
        : NO_COST;
  const freed = await release(acc.registry, job.teamId, job.jobId, { usd: cost.usd, gpuSeconds: cost.gpuSeconds });
  const resumed = await resume(acc, freed.admitted, freed.rejected);
  return { cost, released: freed.released, ...resumed };
}

async function jobCost(
  acc: Accounting,
  job: JobRef,
  admission: { estimateMicroUsd: number; estimateGpuSeconds: number; request?: AdmissionRequest },
): Promise<Cost> {
  try {
    const breakdown: Record<string, number> = {};
    let usd = 0;
    let gpuSeconds = 0;
    let estimated = false;
    for (const stage of GPU_STAGES) {
      const records = await acc.gpuJobs(job, stage);
      if (records.length === 0) continue;
      const costs = await Promise.all(records.map((r) => batchJobCost(r, acc.resolveInstance, acc.prices)));
      // From the attempts' unrounded figures (each job's own total is rounded).
      const exactUsd = costs.reduce((s, c) => s + c.attempts.reduce((t, a) => t + a.usd, 0), 0);
      const stageUsd = round(exactUsd);
      const stageSeconds = costs.reduce((s, c) => s + c.gpuSeconds, 0);
      estimated ||= costs.some((c) => c.attempts.some((a) => a.instanceTypeAssumed));
      // One ledger row per stage (its Batch jobs together); rewriting it on a retry is harmless.
      await writeLedgerRow(acc.registry, {
        ...job,
        stage,
        usd: stageUsd,
        gpuSeconds: stageSeconds,
        lambdaUsd: 0,
        storageUsd: 0,
        gpu: costs.length === 1 ? costs[0] : undefined,
      });
      breakdown[stage] = stageUsd;
      usd += exactUsd; // rounded once, below
      gpuSeconds += stageSeconds;
    }
    // Lambda and storage at their admission estimate: no per-job bill exists for either.
    const estimate = admission.request?.estimate;
    for (const [stage, part] of [
      ['lambda', estimate?.lambdaUsd ?? 0],
      ['storage', estimate?.storageUsd ?? 0],
    ] as const) {
      if (part <= 0) continue;
      await writeLedgerRow(acc.registry, {
        ...job,
        stage,
        usd: part,
        gpuSeconds: 0,
        lambdaUsd: stage === 'lambda' ? part : 0,
        storageUsd: stage === 'storage' ? part : 0,
      });
      breakdown[stage] = part;
      usd += part;
    }
    return { usd: round(usd), gpuSeconds, breakdown, estimated };
  } catch (error) {
    // Never leave a slot held because Batch could not be read: charge the estimate, say so.
    acc.log?.('GPU cost unavailable: charging the admission estimate', { ...job, error: (error as Error).message });
    return { usd: fromMicroUsd(admission.estimateMicroUsd), gpuSeconds: admission.estimateGpuSeconds, breakdown: {}, estimated: true };
  }
}

/** The cost a released job was charged, from its job item and ledger rows (what a retried end reports again). */
async function chargedCost(registry: TeamRegistry, job: JobRef, chargedMicroUsd: number, chargedGpuSeconds: number): Promise<Cost> {
  const rows = (await registry.items(job.teamId, `COST#${job.jobId}#`)) as unknown as LedgerRow[];
  const breakdown = Object.fromEntries(rows.filter((r) => (CHARGED_STAGES as readonly string[]).includes(r.stage)).map((r) => [r.stage, r.usd]));
  const usd = fromMicroUsd(chargedMicroUsd);
  const fromRows = round(Object.values(breakdown).reduce((s, v) => s + v, 0));
  // No rows for a charged amount: the estimate was charged. An assumed instance type is estimated too.
  // (Per-stage figures are rounded to the micro-dollar, so their sum may differ by a few.)
  const estimated = Math.abs(fromRows - usd) > 1e-5 || rows.some((r) => r.gpu?.attempts.some((a) => a.instanceTypeAssumed));
  return { usd, gpuSeconds: chargedGpuSeconds, breakdown, estimated };
}

/** SendTaskSuccess/SendTaskFailure to the executions the release decided about. */
export async function resume(
  acc: Pick<Accounting, 'sfn' | 'log'>,
  admitted: readonly WokenJob[],
  rejected: readonly WokenJob[],
): Promise<{ resumed: string[]; refused: string[] }> {
  const send = async (woken: WokenJob, command: SendTaskSuccessCommand | SendTaskFailureCommand) => {
    try {
      await acc.sfn.send(command as never);
      return true;
    } catch (error) {
      // The execution ended meanwhile (stopped, timed out): reconcile releases what it holds.
      const name = (error as Error).name;
      if (name === 'TaskTimedOut' || name === 'TaskDoesNotExist' || name === 'InvalidToken') {
        acc.log?.('waiting execution already gone', { teamId: woken.teamId, jobId: woken.jobId, error: name });
        return false;
      }
      throw error;
    }
  };
  const resumed: string[] = [];
  const refused: string[] = [];
  for (const woken of admitted) {
    if (woken.taskToken && (await send(woken, new SendTaskSuccessCommand({ taskToken: woken.taskToken, output: JSON.stringify(decision(woken)) }))))
      resumed.push(woken.jobId);
  }
  for (const woken of rejected) {
    if (woken.taskToken && (await send(woken, rejectTask(woken.taskToken, woken)))) refused.push(woken.jobId);
  }
  return { resumed, refused };
}

/** The admission decision without its token: what the Admit state outputs. */
export function decision(result: AdmissionResult & { taskToken?: string }): AdmissionResult {
  const { taskToken: _token, ...rest } = result;
  return rest;
}

/** The limit, what is used of it and this job's demand, for messages (status.json's error has no number fields). */
export function numbers(r: AdmissionResult): string {
  const round2 = (n: number) => Math.round(n * 100) / 100;
  return r.limit === undefined ? '' : ` (limit ${r.limit} ${r.unit}, used ${round2(r.used!)}, this job ${round2(r.estimate!)})`;
}

/**
 * SendTaskFailure for a refused job, shaped as a Lambda error of our handlers (InvalidInputError with
 * the ErrorInfo JSON as its message) so mark-failed records the code and message as it does for any stage.
 */
export function rejectTask(taskToken: string, result: AdmissionResult): SendTaskFailureCommand {
  const info = { code: result.code ?? 'ADMISSION_REJECTED', message: `${result.message}${numbers(result)}` };
  return new SendTaskFailureCommand({
    taskToken,
    error: 'InvalidInputError',
    cause: JSON.stringify({ errorType: 'InvalidInputError', errorMessage: JSON.stringify(info) }),
  });
}

const round = (usd: number) => Math.round(usd * 1e6) / 1e6;

/** The handlers' wiring from the environment the stack sets: TEAMS_TABLE, JOB_QUEUE, AVATAR_PRICES. */
export function accountingFromEnv(now: () => Date = () => new Date()): Accounting {
  const batch = new BatchClient({});
  return {
    registry: new TeamRegistry(teamsDocumentClient(), requireEnv('TEAMS_TABLE'), now),
    sfn: new SFNClient({}),
    ...batchAccounting(batch, requireEnv('JOB_QUEUE'), loadPrices()),
    log: (message, fields) => console.log(JSON.stringify({ level: 'warn', message, ...fields })),
  };
}
