/**
 * The one operator metric the handlers emit: `Avatar/SystemFailures`, a job that ended for a reason
 * the customer cannot fix (a GPU job failure, a timeout, no GPU capacity, an internal error). Client
 * input errors (a bad photo set, an invalid job.json) are not counted, so they never page anyone.
 * Written as a CloudWatch embedded-metric-format log line: Lambda's log pipeline turns it into the
 * metric, with no PutMetricData call or permission.
 */
import type { JobRef } from './keys';

export const METRICS_NAMESPACE = 'Avatar';
export const SYSTEM_FAILURE_METRIC = 'SystemFailures';
/** Dimension naming the stack, so two deployments in one account alarm separately. */
export const STACK_DIMENSION = 'Stack';

/** Error types our handlers raise for input the customer must fix (shared/errors.ts). */
const CLIENT_ERROR_TYPES: ReadonlySet<string> = new Set(['InvalidInputError']);

/** True when a stage failed because of the customer's input, not the system. */
export function isClientError(errorType: string): boolean {
  return CLIENT_ERROR_TYPES.has(errorType);
}

export interface SystemFailure {
  readonly job: JobRef;
  readonly stage: string;
  readonly code: string;
  /** Which handler recorded it (`mark-failed`, `reconcile`). */
  readonly source: string;
}

/** The EMF log line for one system failure (returned for tests; printed by {@link emitSystemFailure}). */
export function systemFailureRecord(failure: SystemFailure, stackName = process.env.METRICS_STACK_NAME ?? 'local', now = new Date()): Record<string, unknown> {
  return {
    _aws: {
      Timestamp: now.getTime(),
      CloudWatchMetrics: [{ Namespace: METRICS_NAMESPACE, Dimensions: [[STACK_DIMENSION]], Metrics: [{ Name: SYSTEM_FAILURE_METRIC, Unit: 'Count' }] }],
    },
    [STACK_DIMENSION]: stackName,
    [SYSTEM_FAILURE_METRIC]: 1,
    level: 'error',
    message: 'system failure',
    ...failure.job,
    stage: failure.stage,
    code: failure.code,
    source: failure.source,
  };
}

export function emitSystemFailure(failure: SystemFailure): void {
  console.log(JSON.stringify(systemFailureRecord(failure)));
}
