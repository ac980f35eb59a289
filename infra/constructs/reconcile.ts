import { Duration } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as destinations from 'aws-cdk-lib/aws-lambda-destinations';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';

/** Execution end states that can leave status.json unfinished (see `lambdas/reconcile/handler.ts`). */
export const RECONCILED_EXECUTION_STATUSES = ['TIMED_OUT', 'ABORTED', 'FAILED'] as const;

/** Props of {@link Reconcile}. */
export interface ReconcileProps {
  /** The job workflow whose ends are watched. */
  readonly stateMachine: sfn.IStateMachine;
  /** `lambdas/reconcile`. */
  readonly reconcileFunction: lambda.IFunction;
  /** Where events that could not be delivered or handled go (alarmed). */
  readonly deadLetterQueue: sqs.IQueue;
}

/**
 * Sends the workflow's "Step Functions Execution Status Change" events for TIMED_OUT, ABORTED and
 * FAILED to the reconcile function, which writes a terminal status.json for a job whose status still
 * says queued or running. Undeliverable events, and invocations that still fail after Lambda's
 * asynchronous retries, go to the dead-letter queue (alarmed), so no execution end is lost silently.
 */
export class Reconcile extends Construct {
  /** The EventBridge rule. */
  public readonly rule: events.Rule;

  constructor(scope: Construct, id: string, props: ReconcileProps) {
    super(scope, id);
    this.rule = new events.Rule(this, 'ExecutionEnded', {
      description: 'Records a truthful terminal status.json when an avatar execution times out, is stopped or fails',
      eventPattern: {
        source: ['aws.states'],
        detailType: ['Step Functions Execution Status Change'],
        detail: {
          status: [...RECONCILED_EXECUTION_STATUSES],
          stateMachineArn: [props.stateMachine.stateMachineArn],
        },
      },
    });
    props.reconcileFunction.configureAsyncInvoke({
      onFailure: new destinations.SqsDestination(props.deadLetterQueue),
      retryAttempts: 2,
    });
    this.rule.addTarget(
      new targets.LambdaFunction(props.reconcileFunction, {
        deadLetterQueue: props.deadLetterQueue,
        maxEventAge: Duration.hours(2),
        retryAttempts: 8,
      }),
    );
  }
}
