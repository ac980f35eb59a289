/**
 * The one configured Powertools logger and metrics instance the handlers share: JSON log lines that
 * carry the stage, team and job, and per-stage metrics written as CloudWatch embedded metric format
 * (EMF) to the function's log, which CloudWatch turns into metrics without an API call or IAM grant.
 */
import { Logger } from '@aws-lambda-powertools/logger';
import { Metrics, MetricUnit } from '@aws-lambda-powertools/metrics';

/** CloudWatch namespace of the stage metrics. */
export const METRICS_NAMESPACE = 'AvatarLora';

// SERVICE_NAME is set on every function by infra/constructs/lambda-function.ts.
const serviceName = process.env.SERVICE_NAME ?? 'avatar';

export const logger = new Logger({ serviceName });
export const metrics = new Metrics({ namespace: METRICS_NAMESPACE, serviceName });

/** How a stage invocation ended. */
export type StageOutcome = 'StageSucceeded' | 'StageFailed';

/**
 * Publishes one invocation's metrics, by stage: a count of 1 under `outcome` and the duration in
 * milliseconds as `StageDuration`.
 */
export function publishStageMetrics(stage: string, outcome: StageOutcome, durationMs: number): void {
  metrics.addDimension('stage', stage);
  metrics.addMetric(outcome, MetricUnit.Count, 1);
  metrics.addMetric('StageDuration', MetricUnit.Milliseconds, Math.round(durationMs));
  metrics.publishStoredMetrics();
}
