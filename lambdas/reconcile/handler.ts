/**
 * reconcile: an execution that ends without passing through MarkFailed (its own timeout skips every
 * Catch; a stop skips everything; MarkFailed itself can fail) would leave status.json `queued` or
 * `running` forever. EventBridge's "Step Functions Execution Status Change" events for TIMED_OUT,
 * ABORTED and FAILED land here, and a job whose status is not terminal yet gets a truthful one:
 * TIMED_OUT -> failed/TIMEOUT, ABORTED -> cancelled/CANCELLED, FAILED -> failed/INTERNAL_ERROR.
 *
 * A terminal status is never rewritten: the write is conditional on the ETag that was read. A
 * malformed event is logged and ignored; retrying it could never succeed.
 */

import type { S3Client } from '@aws-sdk/client-s3';
import { z } from 'zod';
import { type Accounting, accountingFromEnv, endJob } from '../shared/accounting';
import { type ErrorInfo, IdSchema, type Status, TERMINAL_STATES } from '../shared/contract';
import { requireEnv } from '../shared/env';
import type { JobRef } from '../shared/keys';
import { emitSystemFailure } from '../shared/metrics';
import { s3Client } from '../shared/s3';
import { readStatusVersioned, replaceStatusIfUnchanged } from '../shared/status';

export const RECONCILED_STATUSES = ['TIMED_OUT', 'ABORTED', 'FAILED'] as const;

const ExecutionEndedEvent = z.object({
  'detail-type': z.literal('Step Functions Execution Status Change'),
  detail: z.object({
    status: z.enum(RECONCILED_STATUSES),
    executionArn: z.string(),
    /** The execution input, as a JSON string. */
    input: z.string(),
    error: z.string().nullish(),
    cause: z.string().nullish(),
  }),
});
/** The fields of the execution input reconcile needs (start may add others). */
const JobInput = z.object({ teamId: IdSchema, jobId: IdSchema });

export interface ReconcileDeps {
  readonly s3: S3Client;
  readonly artifactsBucket: string;
  readonly now: () => Date;
  /** The team's accounting: charge what ran, free the slot or the queue place, resume waiting jobs. */
  readonly accounting?: Accounting;
}

export type ReconcileResult =
  | { readonly action: 'ignored'; readonly reason: string }
  | { readonly action: 'already-terminal'; readonly job: JobRef; readonly state: Status['state'] }
  | { readonly action: 'written'; readonly job: JobRef; readonly status: Status };

/** What an execution's end means for its job: state, code and a message that says what to do. */
export function terminalFor(
  status: (typeof RECONCILED_STATUSES)[number],
  stage: Status['stage'],
  error?: string | null,
): { state: 'failed' | 'cancelled'; error: ErrorInfo } {
  switch (status) {
    case 'TIMED_OUT':
      return {
        state: 'failed',
        error: {
          code: 'TIMEOUT',
          message: `the job ran past the workflow's time limit during the ${stage} stage and was stopped; retry it, and if it recurs use fewer photos or steps`,
        },
      };
    case 'ABORTED':
      return {
        state: 'cancelled',
        error: {
          code: 'CANCELLED',
          message: `the job was stopped during the ${stage} stage before it finished; submit it again with a new jobId to re-run it`,
        },
      };
    case 'FAILED':
      return {
        state: 'failed',
        error: {
          code: 'INTERNAL_ERROR',
          message: `the workflow failed during the ${stage} stage without recording why (${error ?? 'no error name'}); the operator has been alerted; retry with a new jobId`,
        },
      };
  }
}

const MAX_ATTEMPTS = 3;

export async function reconcile(event: unknown, deps: ReconcileDeps): Promise<ReconcileResult> {
  const parsed = ExecutionEndedEvent.safeParse(event);
  let input: unknown;
  if (parsed.success) {
    try {
      input = JSON.parse(parsed.data.detail.input);
    } catch {
      input = undefined;
    }
  }
  const job = JobInput.safeParse(input);
  if (!parsed.success || !job.success) {
    const reason = !parsed.success ? 'not an execution status change this function handles' : 'execution input has no valid teamId/jobId';
    console.log(JSON.stringify({ level: 'warn', message: 'malformed execution event ignored', reason, event }));
    return { action: 'ignored', reason };
  }
  const { status: executionStatus, executionArn, error } = parsed.data.detail;
  const ref: JobRef = { teamId: job.data.teamId, jobId: job.data.jobId };
  // Whatever status.json says, an ended execution holds nothing any more: a stopped job waiting for
  // a slot leaves the queue, a timed-out running one frees its slot. Idempotent (MarkFailed may have done it).
  const cost = deps.accounting ? (await endJob(deps.accounting, ref)).cost : undefined;

  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const current = await readStatusVersioned(deps.s3, deps.artifactsBucket, ref);
    if (current.status && TERMINAL_STATES.has(current.status.state)) {
      console.log(JSON.stringify({ level: 'info', message: 'status already terminal', ...ref, state: current.status.state, executionStatus }));
      return { action: 'already-terminal', job: ref, state: current.status.state };
    }
    const stage = current.status?.stage ?? 'validate';
    const terminal = terminalFor(executionStatus, stage, error);
    const at = deps.now().toISOString();
    const next: Status = {
      ...ref,
      state: terminal.state,
      stage,
      createdAt: current.status?.createdAt ?? at,
      updatedAt: at,
      finishedAt: at,
      error: terminal.error,
      ...(cost ? { cost } : {}),
    };
    if (await replaceStatusIfUnchanged(deps.s3, deps.artifactsBucket, ref, next, current.etag)) {
      console.log(JSON.stringify({ level: 'info', message: 'terminal status recorded', ...ref, executionArn, executionStatus, code: terminal.error.code }));
      if (terminal.state === 'failed') emitSystemFailure({ job: ref, stage, code: terminal.error.code, source: 'reconcile' });
      return { action: 'written', job: ref, status: next };
    }
    // Another writer changed status.json between our read and write: decide again on what it wrote.
  }
  throw new Error(`status.json of ${ref.teamId}/${ref.jobId} kept changing; gave up after ${MAX_ATTEMPTS} attempts`);
}

export async function handler(event: unknown): Promise<ReconcileResult> {
  return reconcile(event, { s3: s3Client(), artifactsBucket: requireEnv('ARTIFACTS_BUCKET'), now: () => new Date(), accounting: accountingFromEnv() });
}
