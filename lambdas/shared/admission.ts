/**
 * Admission: every job passes here once, before its first GPU minute. It checks the team's limits
 * and reserves the job's estimate atomically (one DynamoDB transaction per decision, with
 * condition expressions), so concurrent submissions never over-admit and a duplicate event never
 * reserves twice (the job's item is written with `attribute_not_exists`).
 *
 * Outcomes: `admitted` (a slot and the estimate are reserved), `waiting` (CONCURRENCY_LIMIT: the job
 * is queued and admitted by {@link release} when a slot frees, oldest first), `rejected` (a terminal
 * code). Release is idempotent and charges the actual cost instead of the estimate.
 *
 * No lost wake-up: a job is queued only in a transaction that re-checks `running >= maxConcurrentJobs`,
 * and release decrements `running` before it reads the queue (strongly consistent). Either the
 * queueing committed first and release sees the job, or the check fails and the job is admitted.
 *
 * DynamoDB conditions cannot add numbers, so the budget test is `committed <= budget - estimate`
 * with the budget the caller read, guarded by `monthlyBudgetUsd = :budget` (a concurrent change
 * fails the transaction and the decision is taken again).
 */
import { GetCommand, TransactWriteCommand, type TransactWriteCommandInput, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { fromMicroUsd, jobKey, monthOf, type TeamConfig, type TeamRecord, type TeamRegistry, teamKey, toMicroUsd } from './teams';

type TransactItem = NonNullable<TransactWriteCommandInput['TransactItems']>[number];

export const ADMISSION_CODES = [
  'TEAM_UNKNOWN',
  'TEAM_SUSPENDED',
  'CONCURRENCY_LIMIT',
  'BUDGET_EXHAUSTED',
  'PHOTO_LIMIT',
  'KIND_NOT_ALLOWED',
  'OPTION_NOT_ALLOWED',
  /** A job id whose job already ran and ended (a resubmission under the same id): never admitted again. */
  'JOB_ALREADY_ENDED',
] as const;
export type AdmissionCode = (typeof ADMISSION_CODES)[number];

/** What admission needs to know about a job (from its resolved spec and plan). */
export interface AdmissionRequest {
  readonly teamId: string;
  readonly jobId: string;
  readonly kind: string;
  readonly photos: number;
  readonly optimizer: string;
  readonly network: string;
  readonly targetSteps: number;
  /**
   * The job's estimate (see `estimateJobCost`): `usd` is the whole; `lambdaUsd` and `storageUsd` are
   * its non-GPU parts, which the job's end charges as estimated (Batch's attempts price the GPU part).
   */
  readonly estimate: { readonly usd: number; readonly gpuSeconds: number; readonly lambdaUsd?: number; readonly storageUsd?: number };
}

/** The decision, with the numbers behind it. */
export interface AdmissionResult {
  readonly teamId: string;
  readonly jobId: string;
  readonly outcome: 'admitted' | 'waiting' | 'rejected';
  /** Set unless admitted. CONCURRENCY_LIMIT is the only waiting code; the others are terminal. */
  readonly code?: AdmissionCode;
  readonly message: string;
  /** The limit hit, what is used of it, and this job's demand on it, in `unit`. */
  readonly limit?: number;
  readonly used?: number;
  readonly estimate?: number;
  readonly unit?: 'jobs' | 'USD' | 'GPU hours' | 'photos';
  /** True when this job had already been decided (a duplicate event): nothing was reserved again. */
  readonly duplicate: boolean;
}

/** A waiting job's decision, with the Step Functions task token its execution waits on (if one was stored). */
export type WokenJob = AdmissionResult & { readonly taskToken?: string };

export interface ReleaseResult {
  /** False when the job held nothing (already released, rejected or unknown): nothing changed. */
  readonly released: boolean;
  /** Jobs of the team taken off the queue and admitted by this release: the caller resumes their executions. */
  readonly admitted: WokenJob[];
  /** Waiting jobs that turned out not to fit the budget any more: the caller fails their executions. */
  readonly rejected: WokenJob[];
}

type JobState = 'waiting' | 'admitted' | 'rejected' | 'released';

interface JobItem {
  state: JobState;
  request: AdmissionRequest;
  estimateMicroUsd: number;
  estimateGpuSeconds: number;
  result: AdmissionResult;
  waitKey?: string;
  /** The task token the job's execution waits on (Admit state, `.waitForTaskToken`). */
  taskToken?: string;
  createdAt: string;
  updatedAt: string;
  chargedMicroUsd?: number;
  chargedGpuSeconds?: number;
}

/** How often a decision is retaken after a concurrent change (or a transaction conflict). */
const MAX_ATTEMPTS = 50;

class Retry extends Error {}

export interface AdmitOptions {
  /**
   * The Step Functions task token the job's execution waits on. Stored on the job item with the
   * decision, so the release that admits a waiting job can resume its execution (SendTaskSuccess).
   * A retried invocation brings a new token: a still-waiting job keeps the newest one.
   */
  readonly taskToken?: string;
}

/** Decides and records admission of one job. Safe to call again for the same job. */
export async function admit(registry: TeamRegistry, request: AdmissionRequest, options: AdmitOptions = {}): Promise<AdmissionResult> {
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const existing = await getJob(registry, request.teamId, request.jobId);
    if (existing) {
      if (
        existing.state === 'waiting' &&
        options.taskToken &&
        existing.taskToken !== options.taskToken &&
        !(await replaceToken(registry, request, options.taskToken))
      ) {
        continue; // admitted or released meanwhile: report what it is now
      }
      return { ...existing.result, duplicate: true };
    }
    const team = await currentTeam(registry, request.teamId);
    if (!team) {
      // Not recorded: an unknown team must not be able to create items in the registry.
      return result(
        request,
        'rejected',
        'TEAM_UNKNOWN',
        `team "${request.teamId}" is not registered: ask the operator to add it (npm run team -- add ${request.teamId})`,
      );
    }
    try {
      return await decide(registry, team, request, options.taskToken);
    } catch (error) {
      if (!(error instanceof Retry)) throw error;
      await backoff(attempt);
    }
  }
  throw new Error(`admission of ${request.teamId}/${request.jobId} did not settle after ${MAX_ATTEMPTS} attempts (heavy contention); retry later`);
}

/** Keeps the newest task token of a still-waiting job; false when the job stopped waiting meanwhile. */
async function replaceToken(registry: TeamRegistry, request: Pick<AdmissionRequest, 'teamId' | 'jobId'>, taskToken: string): Promise<boolean> {
  try {
    await registry.doc.send(
      new UpdateCommand({
        TableName: registry.tableName,
        Key: jobKey(request.teamId, request.jobId),
        UpdateExpression: 'SET taskToken = :token',
        ConditionExpression: '#state = :waiting',
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':token': taskToken, ':waiting': 'waiting' },
      }),
    );
    return true;
  } catch (error) {
    if ((error as Error).name === 'ConditionalCheckFailedException') return false;
    throw error;
  }
}

async function decide(registry: TeamRegistry, team: TeamRecord, request: AdmissionRequest, taskToken?: string): Promise<AdmissionResult> {
  const { config, usage } = team;
  const terminal = staticCheck(config, request) ?? budgetCheck(team, request);
  const now = registry.now().toISOString();
  const estimateMicroUsd = toMicroUsd(request.estimate.usd);
  const jobBase = {
    request,
    estimateMicroUsd,
    estimateGpuSeconds: request.estimate.gpuSeconds,
    createdAt: now,
    updatedAt: now,
    ...(taskToken ? { taskToken } : {}),
  };
  const putJob = (item: Omit<JobItem, keyof typeof jobBase>): TransactItem => ({
    Put: {
      TableName: registry.tableName,
      Item: { ...jobKey(request.teamId, request.jobId), ...jobBase, ...item },
      ConditionExpression: 'attribute_not_exists(pk)',
    },
  });

  if (terminal) {
    await transact(registry, [putJob({ state: 'rejected', result: terminal })]);
    return terminal;
  }
  if (usage.running >= config.maxConcurrentJobs) {
    const waiting = result(
      request,
      'waiting',
      'CONCURRENCY_LIMIT',
      `team "${config.teamId}" already runs ${usage.running} of ${config.maxConcurrentJobs} concurrent jobs: this job waits and starts when one ends`,
      {
        limit: config.maxConcurrentJobs,
        used: usage.running,
        estimate: 1,
        unit: 'jobs',
      },
    );
    const waitKey = `WAIT#${now}#${request.jobId}`;
    await transact(registry, [
      putJob({ state: 'waiting', result: waiting, waitKey }),
      { Put: { TableName: registry.tableName, Item: { pk: teamKey(config.teamId).pk, sk: waitKey, jobId: request.jobId } } },
      {
        // Queue only while the team is still full; otherwise decide again (see the module comment).
        ConditionCheck: {
          TableName: registry.tableName,
          Key: teamKey(config.teamId),
          ConditionExpression: '#running >= maxConcurrentJobs',
          ExpressionAttributeNames: { '#running': 'running' },
        },
      },
    ]);
    return waiting;
  }
  const admitted = result(
    request,
    'admitted',
    undefined,
    `admitted: $${request.estimate.usd.toFixed(2)} and ${hours(request.estimate.gpuSeconds)} GPU h reserved`,
  );
  await transact(registry, [putJob({ state: 'admitted', result: admitted }), reserve(registry, team, request)]);
  return admitted;
}

/** Limits that do not change while a job waits; a failure is terminal. */
function staticCheck(config: TeamConfig, r: AdmissionRequest): AdmissionResult | undefined {
  if (config.suspended) return result(r, 'rejected', 'TEAM_SUSPENDED', `team "${config.teamId}" is suspended: ask the operator to resume it`);
  if (!(config.allowedKinds as string[]).includes(r.kind)) {
    return result(
      r,
      'rejected',
      'KIND_NOT_ALLOWED',
      `kind "${r.kind}" is not allowed for team "${config.teamId}" (allowed: ${config.allowedKinds.join(', ')})`,
    );
  }
  if (!(config.allowedOptimizers as string[]).includes(r.optimizer)) {
    return result(
      r,
      'rejected',
      'OPTION_NOT_ALLOWED',
      `training.optimizer "${r.optimizer}" is not allowed for team "${config.teamId}" (allowed: ${config.allowedOptimizers.join(', ')})`,
    );
  }
  if (!(config.allowedNetworks as string[]).includes(r.network)) {
    return result(
      r,
      'rejected',
      'OPTION_NOT_ALLOWED',
      `training.network "${r.network}" is not allowed for team "${config.teamId}" (allowed: ${config.allowedNetworks.join(', ')})`,
    );
  }
  if (r.targetSteps > config.maxTargetSteps) {
    return result(
      r,
      'rejected',
      'OPTION_NOT_ALLOWED',
      `training.targetSteps ${r.targetSteps} is above team "${config.teamId}"'s limit of ${config.maxTargetSteps}: lower it`,
    );
  }
  if (r.photos > config.maxPhotosPerJob) {
    return result(
      r,
      'rejected',
      'PHOTO_LIMIT',
      `${r.photos} photos exceed team "${config.teamId}"'s limit of ${config.maxPhotosPerJob} per job: submit fewer photos`,
      {
        limit: config.maxPhotosPerJob,
        used: 0,
        estimate: r.photos,
        unit: 'photos',
      },
    );
  }
  return undefined;
}

/** Month-to-date committed money (spent + reserved) plus this job must stay within the budget, in dollars and GPU hours. */
function budgetCheck({ config, usage }: TeamRecord, r: AdmissionRequest): AdmissionResult | undefined {
  if (usage.committedMicroUsd + toMicroUsd(r.estimate.usd) > toMicroUsd(config.monthlyBudgetUsd)) {
    return result(
      r,
      'rejected',
      'BUDGET_EXHAUSTED',
      `team "${config.teamId}" has committed $${fromMicroUsd(usage.committedMicroUsd).toFixed(2)} of its $${config.monthlyBudgetUsd} monthly budget; this job's estimate of $${r.estimate.usd.toFixed(2)} does not fit`,
      {
        limit: config.monthlyBudgetUsd,
        used: fromMicroUsd(usage.committedMicroUsd),
        estimate: r.estimate.usd,
        unit: 'USD',
      },
    );
  }
  if (usage.committedGpuSeconds + r.estimate.gpuSeconds > gpuBudgetSeconds(config)) {
    return result(
      r,
      'rejected',
      'BUDGET_EXHAUSTED',
      `team "${config.teamId}" has committed ${hours(usage.committedGpuSeconds)} of its ${config.monthlyGpuHours} monthly GPU hours; this job's estimate of ${hours(r.estimate.gpuSeconds)} h does not fit`,
      {
        limit: config.monthlyGpuHours,
        used: usage.committedGpuSeconds / 3600,
        estimate: r.estimate.gpuSeconds / 3600,
        unit: 'GPU hours',
      },
    );
  }
  return undefined;
}

const gpuBudgetSeconds = (config: TeamConfig) => Math.floor(config.monthlyGpuHours * 3600);
const hours = (seconds: number) => (seconds / 3600).toFixed(2);

/** The team update that takes a slot and reserves the estimate, valid only if what we read still holds. */
function reserve(registry: TeamRegistry, { config, usage }: TeamRecord, r: AdmissionRequest): TransactItem {
  const micro = toMicroUsd(r.estimate.usd);
  return {
    Update: {
      TableName: registry.tableName,
      Key: teamKey(config.teamId),
      UpdateExpression: 'ADD #running :one, reservedMicroUsd :usd, committedMicroUsd :usd, reservedGpuSeconds :gpu, committedGpuSeconds :gpu',
      ConditionExpression: [
        'attribute_exists(pk)',
        'suspended = :false',
        '#running < maxConcurrentJobs',
        'usageMonth = :month',
        'monthlyBudgetUsd = :budget',
        'committedMicroUsd <= :usdRoom',
        'monthlyGpuHours = :gpuBudget',
        'committedGpuSeconds <= :gpuRoom',
      ].join(' AND '),
      ExpressionAttributeNames: { '#running': 'running' },
      ExpressionAttributeValues: {
        ':one': 1,
        ':usd': micro,
        ':gpu': r.estimate.gpuSeconds,
        ':false': false,
        ':month': usage.usageMonth,
        ':budget': config.monthlyBudgetUsd,
        ':usdRoom': toMicroUsd(config.monthlyBudgetUsd) - micro,
        ':gpuBudget': config.monthlyGpuHours,
        ':gpuRoom': gpuBudgetSeconds(config) - r.estimate.gpuSeconds,
      },
    },
  };
}

/** What a job actually cost, charged at release instead of its estimate. */
export interface Charge {
  readonly usd: number;
  readonly gpuSeconds: number;
}

/**
 * Ends a job's hold on the team (cancel, failure or success): frees its slot, replaces its reserved
 * estimate by `charge` (zero when nothing ran), then admits the oldest waiting jobs that now fit.
 * A job still waiting is taken off the queue. Calling it again changes nothing.
 */
export async function release(registry: TeamRegistry, teamId: string, jobId: string, charge: Charge = { usd: 0, gpuSeconds: 0 }): Promise<ReleaseResult> {
  let released = false;
  for (let attempt = 0; ; attempt++) {
    const job = await getJob(registry, teamId, jobId);
    if (!job || job.state === 'released' || job.state === 'rejected') break;
    await currentTeam(registry, teamId); // rolls the month first, so the charge lands in the current one
    const now = registry.now().toISOString();
    const chargedMicroUsd = toMicroUsd(charge.usd);
    const markReleased = (from: JobState): TransactItem => ({
      Update: {
        TableName: registry.tableName,
        Key: jobKey(teamId, jobId),
        UpdateExpression: 'SET #state = :released, updatedAt = :now, chargedMicroUsd = :usd, chargedGpuSeconds = :gpu',
        ConditionExpression: '#state = :from',
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: {
          ':released': 'released',
          ':now': now,
          ':from': from,
          ':usd': from === 'admitted' ? chargedMicroUsd : 0,
          ':gpu': from === 'admitted' ? charge.gpuSeconds : 0,
        },
      },
    });
    const items: TransactItem[] =
      job.state === 'waiting'
        ? [markReleased('waiting'), { Delete: { TableName: registry.tableName, Key: { pk: teamKey(teamId).pk, sk: job.waitKey! } } }]
        : [
            markReleased('admitted'),
            {
              Update: {
                TableName: registry.tableName,
                Key: teamKey(teamId),
                UpdateExpression:
                  'ADD #running :minusOne, reservedMicroUsd :unreserveUsd, spentMicroUsd :usd, committedMicroUsd :deltaUsd, reservedGpuSeconds :unreserveGpu, spentGpuSeconds :gpu, committedGpuSeconds :deltaGpu',
                ExpressionAttributeNames: { '#running': 'running' },
                ExpressionAttributeValues: {
                  ':minusOne': -1,
                  ':unreserveUsd': -job.estimateMicroUsd,
                  ':usd': chargedMicroUsd,
                  ':deltaUsd': chargedMicroUsd - job.estimateMicroUsd,
                  ':unreserveGpu': -job.estimateGpuSeconds,
                  ':gpu': charge.gpuSeconds,
                  ':deltaGpu': charge.gpuSeconds - job.estimateGpuSeconds,
                },
              },
            },
          ];
    try {
      await transact(registry, items);
      released = true;
      break;
    } catch (error) {
      if (!(error instanceof Retry) || attempt >= MAX_ATTEMPTS) throw error;
      await backoff(attempt);
    }
  }
  const woken = await admitWaiting(registry, teamId);
  return { released, ...woken };
}

/**
 * Admits the team's waiting jobs, oldest first, while slots are free. A job that no longer fits the
 * budget is rejected (BUDGET_EXHAUSTED) and the next one is tried; a full or suspended team stops.
 * Called by release, and by the admin command when a team is resumed or its limits raised.
 */
export async function admitWaiting(registry: TeamRegistry, teamId: string): Promise<Omit<ReleaseResult, 'released'>> {
  const admitted: WokenJob[] = [];
  const rejected: WokenJob[] = [];
  for (let attempt = 0; attempt < MAX_ATTEMPTS; ) {
    const team = await currentTeam(registry, teamId);
    if (!team || team.config.suspended || team.usage.running >= team.config.maxConcurrentJobs) break;
    const [head] = await registry.items(teamId, 'WAIT#');
    if (!head) break;
    const job = await getJob(registry, teamId, head.jobId as string);
    if (job?.state !== 'waiting') {
      attempt++;
      await backoff(attempt);
      continue;
    }
    const now = registry.now().toISOString();
    const terminal = budgetCheck(team, job.request);
    const outcome = terminal ?? result(job.request, 'admitted', undefined, `admitted after waiting: $${job.request.estimate.usd.toFixed(2)} reserved`);
    const items: TransactItem[] = [
      { Delete: { TableName: registry.tableName, Key: { pk: teamKey(teamId).pk, sk: job.waitKey! }, ConditionExpression: 'attribute_exists(pk)' } },
      {
        Update: {
          TableName: registry.tableName,
          Key: jobKey(teamId, job.request.jobId),
          UpdateExpression: 'SET #state = :to, #result = :result, updatedAt = :now',
          // The token read is still the job's (a retried Admit replaces it): the caller resumes the right task.
          ConditionExpression: job.taskToken ? '#state = :waiting AND taskToken = :token' : '#state = :waiting',
          ExpressionAttributeNames: { '#state': 'state', '#result': 'result' },
          ExpressionAttributeValues: {
            ':to': terminal ? 'rejected' : 'admitted',
            ':result': outcome,
            ':now': now,
            ':waiting': 'waiting',
            ...(job.taskToken ? { ':token': job.taskToken } : {}),
          },
        },
      },
    ];
    if (!terminal) items.push(reserve(registry, team, job.request));
    try {
      await transact(registry, items);
      (terminal ? rejected : admitted).push({ ...outcome, ...(job.taskToken ? { taskToken: job.taskToken } : {}) });
    } catch (error) {
      if (!(error instanceof Retry)) throw error;
      // Another release took this job or the slot: look again.
      attempt++;
      await backoff(attempt);
    }
  }
  return { admitted, rejected };
}

/** The team, with its month rolled over when a new UTC month began (outstanding reservations carry over). */
async function currentTeam(registry: TeamRegistry, teamId: string): Promise<TeamRecord | undefined> {
  const team = await registry.get(teamId);
  const month = monthOf(registry.now());
  if (!team || team.usage.usageMonth >= month) return team;
  try {
    await registry.doc.send(
      new UpdateCommand({
        TableName: registry.tableName,
        Key: teamKey(teamId),
        UpdateExpression:
          'SET usageMonth = :month, spentMicroUsd = :zero, committedMicroUsd = reservedMicroUsd, spentGpuSeconds = :zero, committedGpuSeconds = reservedGpuSeconds',
        ConditionExpression: 'usageMonth = :old',
        ExpressionAttributeValues: { ':month': month, ':old': team.usage.usageMonth, ':zero': 0 },
      }),
    );
  } catch (error) {
    if ((error as Error).name !== 'ConditionalCheckFailedException') throw error;
  }
  return registry.get(teamId);
}

/** A job's admission record: its state and what it reserved (undefined when it never reached admission). */
export async function admissionOf(
  registry: TeamRegistry,
  teamId: string,
  jobId: string,
): Promise<Pick<JobItem, 'state' | 'request' | 'estimateMicroUsd' | 'estimateGpuSeconds' | 'result' | 'chargedMicroUsd' | 'chargedGpuSeconds'> | undefined> {
  return getJob(registry, teamId, jobId);
}

async function getJob(registry: TeamRegistry, teamId: string, jobId: string): Promise<JobItem | undefined> {
  const out = await registry.doc.send(new GetCommand({ TableName: registry.tableName, Key: jobKey(teamId, jobId), ConsistentRead: true }));
  return out.Item as JobItem | undefined;
}

/** Runs a transaction; a failed condition or a conflict becomes {@link Retry} (the caller decides again). */
async function transact(registry: TeamRegistry, items: TransactItem[]): Promise<void> {
  try {
    await registry.doc.send(new TransactWriteCommand({ TransactItems: items }));
  } catch (error) {
    const name = (error as Error).name;
    if (name === 'TransactionCanceledException' || name === 'TransactionConflictException' || name === 'ConditionalCheckFailedException') {
      throw new Retry(`${name}: ${(error as Error).message}`);
    }
    throw error;
  }
}

function result(
  r: Pick<AdmissionRequest, 'teamId' | 'jobId'>,
  outcome: AdmissionResult['outcome'],
  code: AdmissionCode | undefined,
  message: string,
  numbers: Pick<AdmissionResult, 'limit' | 'used' | 'estimate' | 'unit'> = {},
): AdmissionResult {
  return { teamId: r.teamId, jobId: r.jobId, outcome, ...(code ? { code } : {}), message, ...numbers, duplicate: false };
}

async function backoff(attempt: number): Promise<void> {
  await new Promise((r) => setTimeout(r, Math.random() * Math.min(200, 5 * 2 ** attempt)));
}
