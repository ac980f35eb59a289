/**
 * Step Functions' execution API, locally, for the `start` handler: StartExecution runs the state
 * machine with {@link startWorkflow}, with Step Functions' naming rules (a name in use by a running
 * execution with the same input returns that execution; otherwise a reused name is
 * ExecutionAlreadyExists), StopExecution aborts it, and every terminal status is published as the
 * EventBridge "Step Functions Execution Status Change" event the reconcile rule would receive.
 */
import { randomUUID } from 'node:crypto';
import type { S3Client } from '@aws-sdk/client-s3';
import type { SFNClient } from '@aws-sdk/client-sfn';
import type { StartDeps } from '../../lambdas/start/handler';
import { PLACEHOLDER_ACCOUNT, PLACEHOLDER_REGION, type StateMachineDefinition } from './definition';
import { type Execution, type RunOptions, type RunResult, startWorkflow } from './workflow';

export type ExecutionStatus = 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'TIMED_OUT' | 'ABORTED';

/** The EventBridge event Step Functions emits on an execution status change (detail-type "Step Functions Execution Status Change"). */
export interface ExecutionStatusChangeEvent {
  version: '0';
  id: string;
  'detail-type': 'Step Functions Execution Status Change';
  source: 'aws.states';
  account: string;
  time: string;
  region: string;
  resources: string[];
  detail: {
    executionArn: string;
    stateMachineArn: string;
    name: string;
    status: ExecutionStatus;
    startDate: number;
    stopDate: number | null;
    input: string;
    inputDetails: { included: boolean };
    output: string | null;
    outputDetails: { included: boolean } | null;
    error: string | null;
    cause: string | null;
  };
}

export interface LocalExecution {
  readonly name: string;
  readonly arn: string;
  readonly input: string;
  readonly startDate: number;
  status: ExecutionStatus;
  readonly handle: Execution;
  /** Resolves with the run and after the status-change event was handled. */
  readonly finished: Promise<RunResult>;
}

function statusOf(result: RunResult): ExecutionStatus {
  if (result.succeeded) return 'SUCCEEDED';
  if (result.error === 'ABORTED') return 'ABORTED';
  if (result.error === 'States.Timeout' && result.cause === 'the execution ran past its TimeoutSeconds') return 'TIMED_OUT';
  return 'FAILED';
}

/** The event for an execution that reached `status`. */
export function executionStatusChangeEvent(
  execution: Pick<LocalExecution, 'name' | 'arn' | 'input' | 'startDate'>,
  stateMachineArn: string,
  status: ExecutionStatus,
  result?: RunResult,
): ExecutionStatusChangeEvent {
  return {
    version: '0',
    id: randomUUID(),
    'detail-type': 'Step Functions Execution Status Change',
    source: 'aws.states',
    account: PLACEHOLDER_ACCOUNT,
    time: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    region: PLACEHOLDER_REGION,
    resources: [execution.arn],
    detail: {
      executionArn: execution.arn,
      stateMachineArn,
      name: execution.name,
      status,
      startDate: execution.startDate,
      stopDate: status === 'RUNNING' ? null : Date.now(),
      input: execution.input,
      inputDetails: { included: true },
      output: result?.succeeded ? JSON.stringify(result.output) : null,
      outputDetails: result?.succeeded ? { included: true } : null,
      error: result && !result.succeeded && status === 'FAILED' ? (result.error ?? null) : null,
      cause: result && !result.succeeded && status === 'FAILED' ? (result.cause ?? null) : null,
    },
  };
}

export class LocalStepFunctions {
  readonly executions = new Map<string, LocalExecution>();
  /** How many times an execution was actually started per name: more than 1 is a duplicate run. */
  readonly launches = new Map<string, number>();

  constructor(
    private readonly definition: StateMachineDefinition,
    readonly stateMachineArn: string,
    private readonly runOptions: RunOptions,
    /** The EventBridge rule's target for terminal status changes (the reconcile Lambda), if any. */
    private readonly onStatusChange?: (event: ExecutionStatusChangeEvent) => Promise<unknown>,
  ) {}

  /** The start handler's deps with this state machine in place of Step Functions. */
  startDeps(s3: S3Client, buckets: { inbox: string; artifacts: string }, now: () => Date = () => new Date()): StartDeps {
    return {
      s3,
      sfn: this as unknown as SFNClient,
      inboxBucket: buckets.inbox,
      artifactsBucket: buckets.artifacts,
      stateMachineArn: this.stateMachineArn,
      now,
    };
  }

  /** The subset of SFNClient.send the handlers use: StartExecution and StopExecution. */
  async send(command: { constructor: { name: string }; input: Record<string, unknown> }): Promise<unknown> {
    const kind = command.constructor.name;
    if (kind === 'StartExecutionCommand') return this.startExecution(command.input as { name: string; input?: string });
    if (kind === 'StopExecutionCommand') {
      const arn = (command.input as { executionArn: string }).executionArn;
      const execution = [...this.executions.values()].find((e) => e.arn === arn);
      if (!execution) throw Object.assign(new Error(`Execution Does Not Exist: '${arn}'`), { name: 'ExecutionDoesNotExist' });
      execution.handle.stop();
      return { stopDate: new Date() };
    }
    throw new Error(`${kind} is not emulated locally`);
  }

  private startExecution({ name, input = '{}' }: { name: string; input?: string }): { executionArn: string; startDate: Date } {
    const existing = this.executions.get(name);
    if (existing) {
      // Step Functions: idempotent for a running execution with the same input; otherwise the name is taken.
      if (existing.status === 'RUNNING' && existing.input === input) return { executionArn: existing.arn, startDate: new Date(existing.startDate) };
      throw Object.assign(new Error(`Execution Already Exists: '${existing.arn}'`), { name: 'ExecutionAlreadyExists' });
    }
    const arn = `arn:aws:states:${PLACEHOLDER_REGION}:${PLACEHOLDER_ACCOUNT}:execution:${this.stateMachineArn.split(':').at(-1)}:${name}`;
    this.launches.set(name, (this.launches.get(name) ?? 0) + 1);
    const handle = startWorkflow(this.definition, JSON.parse(input), this.runOptions);
    const startDate = Date.now();
    const execution: LocalExecution = {
      name,
      arn,
      input,
      startDate,
      status: 'RUNNING',
      handle,
      finished: handle.result.then(async (result) => {
        execution.status = statusOf(result);
        await this.onStatusChange?.(executionStatusChangeEvent(execution, this.stateMachineArn, execution.status, result));
        return result;
      }),
    };
    this.executions.set(name, execution);
    return { executionArn: arn, startDate: new Date(startDate) };
  }
}
