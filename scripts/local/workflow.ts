/**
 * Runs the synthesized state machine definition locally with aws-local-stepfunctions. Lambda task
 * states call the real handler code; Batch task states call an injected runner (the container
 * entrypoint in Docker on a GPU machine, or a test stand-in). Errors cross the boundary the way
 * Step Functions records them, so Retry, Catch and MarkFailed behave as in AWS.
 */
import { join } from 'node:path';
import './polyfill';
import { DynamoDBClient, PutItemCommand, type PutItemCommandInput } from '@aws-sdk/client-dynamodb';
import { StateMachine } from 'aws-local-stepfunctions';
import type { StateMachineDefinition } from './definition';
import type { TaskTokens } from './task-tokens';

const LAMBDA_INVOKE = 'arn:aws:states:::lambda:invoke';
const LAMBDA_INVOKE_CALLBACK = 'arn:aws:states:::lambda:invoke.waitForTaskToken';
const BATCH_SUBMIT_SYNC = 'arn:aws:states:::batch:submitJob.sync';
const DYNAMODB_PUT_ITEM = 'arn:aws:states:::dynamodb:putItem';

/**
 * The DynamoDB PutItem integration (RegisterJobSecret), against the local registry table: the
 * definition names the deployed table, locally it is `TEAMS_TABLE` (scripts/local/teams.ts sets it
 * and the DynamoDB endpoint). Errors get the integration's `DynamoDB.<name>` names.
 */
async function localPutItem(params: PutItemCommandInput): Promise<unknown> {
  const table = process.env.TEAMS_TABLE;
  if (!table) throw new Error('a DynamoDB PutItem state runs against the local registry: set TEAMS_TABLE (scripts/local/teams.ts does)');
  try {
    await new DynamoDBClient({}).send(new PutItemCommand({ ...params, TableName: table }));
    return {};
  } catch (error) {
    const e = error as Error;
    throw Object.assign(new Error(e.message), { name: `DynamoDB.${e.name}` });
  }
}

/** `Validate` -> `validate`, `MarkFailed` -> `mark-failed`: the state name and the handler folder are one name. */
export function stageOf(stateName: string): string {
  return stateName.replace(/([a-z])([A-Z])/g, '$1-$2').toLowerCase();
}

/** The resolved `submitJob` parameters a Batch state sends. */
export interface SubmitJobParameters {
  JobName: string;
  JobQueue: string;
  JobDefinition: string;
  ContainerOverrides?: { Environment?: Array<{ Name: string; Value: string }> };
}

/**
 * Runs one Batch job to completion. Throws a {@link BatchJobFailed} when the job fails. `signal`
 * aborts when the execution stops (StopExecution or its timeout): Step Functions then calls
 * TerminateJob, if its role may.
 */
export type BatchRunner = (stage: string, params: SubmitJobParameters, context?: { signal: AbortSignal }) => Promise<{ JobId: string }>;

/** A Lambda's result, or an error thrown by it, exactly as the Lambda runtime would report it. */
export type LambdaRunner = (stage: string, payload: unknown) => Promise<unknown>;

/** The error `.sync` raises for a failed job; Cause is the job description, as in AWS. */
export class BatchJobFailed extends Error {
  constructor(description: { JobName: string; StatusReason?: string; Attempts: Array<{ Container: { ExitCode?: number; Reason?: string } }> }) {
    super(JSON.stringify({ ...description, Status: 'FAILED' }));
    this.name = 'States.TaskFailed';
  }
}

/** Calls `lambdas/<stage>/handler.ts` in-process, with the Lambda runtime's error serialisation. */
export const inProcessLambda: LambdaRunner = async (stage, payload) => {
  const module = (await import(join(__dirname, '..', '..', 'lambdas', stage, 'handler.ts'))) as { handler: (e: unknown) => Promise<unknown> };
  try {
    return await module.handler(payload);
  } catch (error) {
    const e = error as Error;
    const wire = new Error(JSON.stringify({ errorType: e.name, errorMessage: e.message, trace: [] }));
    wire.name = e.name;
    throw wire;
  }
};

export interface WorkflowEvent {
  readonly type: string;
  readonly state?: string;
  readonly error?: string;
  readonly cause?: string;
}

export interface RunOptions {
  readonly lambda?: LambdaRunner;
  readonly batch: BatchRunner;
  /**
   * The local task-token endpoint (scripts/local/task-tokens.ts), needed by a definition with a
   * `.waitForTaskToken` state: the state invokes its Lambda, then waits until the token is answered.
   */
  readonly taskTokens?: TaskTokens;
  /** Called for each state entered, exited, retried or failed (the local CLI prints them). */
  readonly onEvent?: (event: WorkflowEvent) => void;
}

export interface RunResult {
  readonly succeeded: boolean;
  readonly output?: unknown;
  readonly error?: string;
  readonly cause?: string;
  readonly events: WorkflowEvent[];
}

/**
 * aws-local-stepfunctions gives a Task state with no TimeoutSeconds 60 s (the ASL spec's default);
 * Step Functions gives it 99999999 s. Locally such a task gets the longest timer Node can set.
 */
const AWS_DEFAULT_TASK_TIMEOUT_S = Math.floor((2 ** 31 - 1) / 1000);

function withAwsTaskTimeouts(definition: StateMachineDefinition): StateMachineDefinition {
  const states = Object.fromEntries(
    Object.entries(definition.States).map(([name, state]) => [
      name,
      state.Type === 'Task' && state.TimeoutSeconds === undefined && state.TimeoutSecondsPath === undefined
        ? { ...state, TimeoutSeconds: AWS_DEFAULT_TASK_TIMEOUT_S }
        : state,
    ]),
  );
  return { ...definition, States: states };
}

/** A running execution: `stop()` is StopExecution (the execution ends ABORTED). */
export interface Execution {
  readonly result: Promise<RunResult>;
  stop(): void;
}

export async function runWorkflow(definition: StateMachineDefinition, input: unknown, options: RunOptions): Promise<RunResult> {
  return startWorkflow(definition, input, options).result;
}

export function startWorkflow(definition: StateMachineDefinition, input: unknown, options: RunOptions): Execution {
  const lambda = options.lambda ?? inProcessLambda;
  // Fires when the execution stops or times out, so Batch states can terminate their jobs.
  const stopped = new AbortController();
  const handlers: Record<string, (input: unknown) => Promise<unknown>> = {};
  // One token per execution ($$.Task.Token): the context object is fixed for a local run.
  const taskToken = options.taskTokens?.open();
  const retryIntervals: Record<string, number> = {};
  for (const [name, state] of Object.entries(definition.States)) {
    if (state.Type !== 'Task') continue;
    const stage = stageOf(name);
    retryIntervals[name] = 0; // the intervals are asserted on the template; locally we only care that it retries
    if (state.Resource === LAMBDA_INVOKE) {
      handlers[name] = async (params) => ({ Payload: await lambda(stage, (params as { Payload: unknown }).Payload) });
    } else if (state.Resource === LAMBDA_INVOKE_CALLBACK) {
      const tokens = options.taskTokens;
      if (!tokens) throw new Error(`state ${name} waits for a task token: pass taskTokens (scripts/local/teams.ts sets one up)`);
      // The function's own error fails the task; otherwise the answer to the token is the result.
      handlers[name] = async (params) => {
        await lambda(stage, (params as { Payload: unknown }).Payload);
        return tokens.wait(taskToken!);
      };
    } else if (state.Resource === DYNAMODB_PUT_ITEM) {
      handlers[name] = async (params) => localPutItem(params as PutItemCommandInput);
    } else if (state.Resource === BATCH_SUBMIT_SYNC) {
      handlers[name] = async (params) => options.batch(stage, params as SubmitJobParameters, { signal: stopped.signal });
    } else {
      throw new Error(`state ${name} uses ${state.Resource}, which the local runner does not know`);
    }
  }

  const machine = new StateMachine(withAwsTaskTimeouts(definition) as never, { validationOptions: { checkArn: false } });
  const execution = machine.run(input as never, {
    overrides: { taskResourceLocalHandlers: handlers as never, retryIntervalOverrides: retryIntervals },
    ...(taskToken ? { context: { Task: { Token: taskToken } } as never } : {}),
  });
  const events: WorkflowEvent[] = [];
  const record = (event: WorkflowEvent) => {
    events.push(event);
    options.onEvent?.(event);
  };
  const consume = (async () => {
    for await (const raw of execution.eventLogs) {
      const e = raw as { type: string; state?: { name: string }; Error?: string; Cause?: string };
      if (
        [
          'StateEntered',
          'StateExited',
          'StateRetried',
          'StateFailed',
          'StateCaught',
          'ExecutionFailed',
          'ExecutionSucceeded',
          'ExecutionAborted',
          'ExecutionTimeout',
        ].includes(e.type)
      ) {
        record({ type: e.type, state: e.state?.name, error: e.Error, cause: e.Cause });
      }
    }
  })();
  const result = (async (): Promise<RunResult> => {
    try {
      const output = await execution.result;
      await consume;
      return { succeeded: true, output, events };
    } catch (error) {
      stopped.abort();
      await consume.catch(() => undefined);
      const name = (error as Error).name;
      if (name === 'ExecutionAbortedError') return { succeeded: false, error: 'ABORTED', events };
      if (name === 'ExecutionTimeoutError') return { succeeded: false, error: 'States.Timeout', cause: 'the execution ran past its TimeoutSeconds', events };
      // The execution's own error (the Fail state's, or an uncaught task error) rides in `cause`.
      const failed = (error as { cause?: { name?: string; message?: string; cause?: unknown } }).cause;
      const cause = typeof failed?.cause === 'string' ? failed.cause : failed?.message;
      return { succeeded: false, error: failed?.name ?? name, cause, events };
    }
  })();
  return {
    result,
    stop: () => {
      execution.abort();
      stopped.abort();
    },
  };
}
