/**
 * mark-failed: every Catch in the state machine ends here. It turns the Step Functions error of the
 * failed stage into status.json `failed` with a stable code, a message that says what to do, and the
 * offending input when known. A GPU container that already wrote its own failure detail keeps it.
 * Failures the customer cannot fix also count one `SystemFailures` metric (shared/metrics.ts).
 */
import { z } from 'zod';
import { type Accounting, accountingFromEnv, endJob } from '../shared/accounting';
import { type ErrorInfo, ErrorInfoSchema, ExecutionInputSchema, type Stage, StageSchema, type Status } from '../shared/contract';
import { toLambdaError } from '../shared/errors';
import { contextFromEnv, type StageContext } from '../shared/handler';
import { emitSystemFailure, isClientError } from '../shared/metrics';
import { readStatus, writeStatus } from '../shared/status';

const StepFunctionsError = z.object({ Error: z.string().default('States.TaskFailed'), Cause: z.string().optional() });
export const MarkFailedInputSchema = ExecutionInputSchema.extend({
  /** `{ "<stage>": { Error, Cause } }`, from each task's Catch (`ResultPath: $.failure.<stage>`). */
  failure: z.record(z.string(), StepFunctionsError),
});
export type MarkFailedInput = z.input<typeof MarkFailedInputSchema>;

const BATCH_STAGES: ReadonlySet<Stage> = new Set(['caption', 'train', 'evaluate']);
/** The stages a state's GPU job runs, when more than its own (infra/constructs/workflow.ts). */
const STAGES_OF_STATE: Partial<Record<Stage, readonly Stage[]>> = { train: ['caption', 'train'] };

/**
 * The reasons the job queue cancels a job that waited in RUNNABLE too long (its
 * jobStateTimeLimitActions, infra/constructs/gpu-batch.ts); Batch puts them in the job's StatusReason.
 */
const CAPACITY_REASON = /\b(CAPACITY|MISCONFIGURATION):[A-Z_]+/;

/**
 * The exit code of a GPU job that got no job-scoped credentials from the mint function
 * (containers/common/src/avatar_job/credentials.py EXIT_NO_CREDENTIALS): without S3 access it cannot
 * write its own failure, so this is all the workflow learns; its log says refused or unavailable.
 */
export const EXIT_NO_CREDENTIALS = 3;

/** Stable code of a GPU job cancelled for want of capacity. */
export const GPU_CAPACITY_UNAVAILABLE = 'GPU_CAPACITY_UNAVAILABLE';

function parseJson(text: string | undefined): unknown {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Reads the error that a stage raised into code, message and offending input. */
export function describeFailure(stage: Stage, error: string, cause: string | undefined): ErrorInfo {
  const parsed = parseJson(cause) as Record<string, unknown> | undefined;
  // A Lambda that runs past its own timeout fails the state before the state's TimeoutSeconds does:
  // Step Functions reports it as Lambda.Unknown with the runtime's "Task timed out after N seconds".
  const lambdaTimedOut = parsed?.errorType === 'Sandbox.Timedout' || /Task timed out after/.test(String(parsed?.errorMessage ?? ''));
  if (error === 'States.Timeout' || lambdaTimedOut) {
    return {
      code: 'TIMEOUT',
      message: `the ${stage} stage ran past its time limit and was stopped; retry the job, and if it recurs use fewer photos or steps`,
    };
  }
  if (error === 'Local.GpuUnavailable') {
    return { code: 'GPU_UNAVAILABLE', message: String(parsed?.errorMessage ?? cause ?? 'no GPU available') };
  }
  // Our Lambda handlers put code/message/input as JSON in errorMessage (see shared/errors.ts).
  const detail = ErrorInfoSchema.safeParse(parseJson(parsed?.errorMessage as string | undefined));
  if (detail.success) return detail.data;
  const capacity = BATCH_STAGES.has(stage) && typeof parsed?.StatusReason === 'string' ? CAPACITY_REASON.exec(parsed.StatusReason) : null;
  if (capacity) {
    return {
      code: GPU_CAPACITY_UNAVAILABLE,
      message:
        `no GPU instance became available for the ${stage} stage (AWS Batch: ${capacity[0]}), so the job was cancelled before any GPU time was billed; ` +
        'submit it again later. If it recurs, the operator should check the EC2 vCPU quotas for G instances (on-demand and Spot), and the instanceTypes and maxVcpus settings',
    };
  }
  if (BATCH_STAGES.has(stage) && parsed && ('StatusReason' in parsed || 'Status' in parsed)) {
    const attempts = (parsed.Attempts as Array<{ Container?: { ExitCode?: number; Reason?: string } }> | undefined) ?? [];
    const last = attempts.at(-1)?.Container;
    if (last?.ExitCode === EXIT_NO_CREDENTIALS) {
      return {
        code: 'CREDENTIALS_UNAVAILABLE',
        message:
          `the ${stage} GPU job got no job-scoped credentials from the mint function (refused because the job was stopped or had ended, ` +
          "or the function kept failing), so it could not read the job's files; submit the job again, and if it recurs see the job's CloudWatch log stream",
      };
    }
    const reason = [parsed.StatusReason, last?.Reason, last?.ExitCode !== undefined ? `exit code ${last.ExitCode}` : undefined].filter(Boolean).join('; ');
    return {
      code: 'BATCH_JOB_FAILED',
      message: `the ${stage} GPU job failed after ${attempts.length} attempt(s): ${reason || 'no reason given'}; see the job's CloudWatch log stream`,
    };
  }
  const message = typeof parsed?.errorMessage === 'string' ? parsed.errorMessage : (cause ?? error);
  return {
    code: error
      .replace(/^.*\./, '')
      .replace(/([a-z])([A-Z])/g, '$1_$2')
      .toUpperCase(),
    message: `${stage} failed: ${message}`,
  };
}

/**
 * The status stage of a failed state. Admit is no pipeline stage (no S3 prefix, no container): it
 * gates caption, and its failures (admission codes, a wait past the execution's time) are
 * recorded at `caption`, as its queued status is.
 */
function stageOfState(name: string): Stage {
  return name === 'admit' ? 'caption' : StageSchema.catch('validate').parse(name);
}

export async function markFailed(ctx: StageContext, input: z.output<typeof MarkFailedInputSchema>, accounting?: Accounting): Promise<Status> {
  const [name, failure] = Object.entries(input.failure)[0] ?? ['validate', { Error: 'States.TaskFailed', Cause: undefined }];
  let stage = stageOfState(name);
  const previous = await readStatus(ctx.s3, ctx.artifactsBucket, ctx.job);
  // A container reports its failure in status.json before exiting; that beats Batch's summary. The
  // Train state's job runs the caption stage first, so a failure reported by caption is kept as caption's.
  const reported = previous?.state === 'failed' && (STAGES_OF_STATE[stage] ?? [stage]).includes(previous.stage) ? previous : undefined;
  const error =
    name === 'admit' && failure.Error === 'States.Timeout'
      ? {
          code: 'TIMEOUT',
          message: `the job waited for a free slot of team "${ctx.job.teamId}" longer than the workflow allows and was stopped; submit it again when fewer of the team's jobs run, or ask the operator to raise its concurrency limit`,
        }
      : (reported?.error ?? describeFailure(stage, failure.Error, failure.Cause));
  if (reported) stage = reported.stage;
  console.log(JSON.stringify({ level: 'error', message: 'job failed', stage, ...ctx.job, error }));
  if (!isClientError(failure.Error)) emitSystemFailure({ job: ctx.job, stage, code: error.code, source: 'mark-failed' });
  // What ran is charged and the slot freed before the terminal status is written.
  const cost = accounting ? (await endJob(accounting, ctx.job)).cost : undefined;
  return writeStatus(
    ctx.s3,
    ctx.artifactsBucket,
    ctx.job,
    { state: 'failed', stage, error, finishedAt: ctx.now().toISOString(), ...(cost ? { cost } : {}) },
    ctx.now(),
  );
}

export async function handler(event: unknown): Promise<Status> {
  try {
    const input = MarkFailedInputSchema.parse(event);
    // Even after a stage failed, the execution's secret gets mark-failed its own credentials for the job.
    return await markFailed(await contextFromEnv('mark-failed', { teamId: input.teamId, jobId: input.jobId }, input.jobSecret), input, accountingFromEnv());
  } catch (error) {
    throw toLambdaError(error);
  }
}
