import { type Duration, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import type { Construct } from 'constructs';

/**
 * Scheduling priority of each GPU stage inside a team's share (higher runs first): a job that
 * already spent GPU time finishes before another one starts, which frees its slot and turns its
 * reservation into a charge sooner.
 */
export const STAGE_PRIORITY = { caption: 10, train: 20, evaluate: 30 } as const;

/** Props of {@link TeamBatchSubmitJob}. */
export interface TeamBatchSubmitJobProps extends tasks.BatchSubmitJobProps {
  /** The GPU stage: tag value and scheduling priority. */
  readonly stage: keyof typeof STAGE_PRIORITY;
  /**
   * The state's own `TimeoutSeconds` (States.Timeout, catchable). CDK's `taskTimeout` would instead
   * become the Batch job's attempt timeout.
   */
  readonly stateTimeout: Duration;
}

/**
 * `BatchSubmitJob` for a fair-share queue. CDK's task has no `ShareIdentifier`,
 * `SchedulingPriorityOverride` or `PropagateTags`, which Batch's SubmitJob takes (Step Functions
 * passes them through), so they are added to the rendered parameters:
 * - `ShareIdentifier` = `$.teamId` (a fair-share queue refuses a job without one);
 * - `SchedulingPriorityOverride` = {@link STAGE_PRIORITY};
 * - `Tags` team, job, stage with `PropagateTags`, so the ECS task (and its cost) carries them too.
 * Tagging at submit needs `batch:TagResource` on the job, granted here.
 */
export class TeamBatchSubmitJob extends tasks.BatchSubmitJob {
  private readonly stage: keyof typeof STAGE_PRIORITY;
  private readonly stateTimeout: Duration;

  constructor(scope: Construct, id: string, props: TeamBatchSubmitJobProps) {
    super(scope, id, props);
    this.stage = props.stage;
    this.stateTimeout = props.stateTimeout;
    this.taskPolicies?.push(
      new iam.PolicyStatement({
        actions: ['batch:TagResource'],
        resources: [Stack.of(this).formatArn({ service: 'batch', resource: 'job', resourceName: '*' })],
      }),
    );
  }

  public override toStateJson(topLevelQueryLanguage?: sfn.QueryLanguage): object {
    return { ...super.toStateJson(topLevelQueryLanguage), TimeoutSeconds: this.stateTimeout.toSeconds() };
  }

  // biome-ignore lint/suspicious/noExplicitAny: the override keeps the signature of CDK's BatchSubmitJob._renderTask
  protected override _renderTask(topLevelQueryLanguage?: sfn.QueryLanguage): any {
    const rendered = super._renderTask(topLevelQueryLanguage);
    if (!rendered.Parameters) throw new Error('TeamBatchSubmitJob supports JSONPath state machines only');
    rendered.Parameters = {
      ...rendered.Parameters,
      'ShareIdentifier.$': '$.teamId',
      SchedulingPriorityOverride: STAGE_PRIORITY[this.stage],
      PropagateTags: true,
      Tags: { 'team.$': '$.teamId', 'job.$': '$.jobId', stage: this.stage },
    };
    return rendered;
  }
}
