/**
 * AWS Batch, locally, at the boundary the state machine sees: SubmitJob, the job states
 * (SUBMITTED -> PENDING -> RUNNABLE -> STARTING -> RUNNING -> SUCCEEDED | FAILED), attempts under
 * the job definition's retry strategy as the synthesized template writes it (Attempts,
 * EvaluateOnExit), the queue's job-state time limit actions, `AWS_BATCH_JOB_ATTEMPT`, the
 * statusReason strings Batch writes, TerminateJob, and the `.sync` failure Step Functions raises
 * (`States.TaskFailed` with the job description as Cause).
 *
 * A container is a local process (or an in-process stand-in) started with the job definition's
 * command and environment. Every process of a container carries a marker in its environment, so
 * "stop the container" reaches its children too, as a container's PID namespace would, and a test
 * can assert that nothing is left running.
 *
 * Faults that cannot be caused here for real (a Spot reclaim, an image pull failure, no GPU
 * capacity) are injected through {@link BatchEmulatorOptions.faults} and produce the job record
 * Batch would write for them.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { PLACEHOLDER_ACCOUNT, PLACEHOLDER_REGION } from './definition';
import { BatchJobFailed, type BatchRunner, type SubmitJobParameters } from './workflow';

type Template = { Resources: Record<string, { Type: string; Properties?: Record<string, unknown> }> };

export type JobStatus = 'SUBMITTED' | 'PENDING' | 'RUNNABLE' | 'STARTING' | 'RUNNING' | 'SUCCEEDED' | 'FAILED';

/** One attempt as DescribeJobs reports it (PascalCase, as Step Functions passes it on). */
export interface AttemptDetail {
  Container: { ExitCode?: number; Reason?: string; LogStreamName?: string };
  StartedAt?: number;
  StoppedAt?: number;
  StatusReason?: string;
}

/** A job as DescribeJobs reports it: what `.sync` returns on success and puts in Cause on failure. */
export interface JobDetail {
  JobId: string;
  JobName: string;
  JobQueue: string;
  JobDefinition: string;
  Status: JobStatus;
  StatusReason?: string;
  Attempts: AttemptDetail[];
  CreatedAt: number;
  StartedAt?: number;
  StoppedAt?: number;
  RetryStrategy?: RetryStrategy;
}

interface RetryStrategy {
  Attempts?: number;
  EvaluateOnExit?: Array<{ Action: string; OnStatusReason?: string; OnReason?: string; OnExitCode?: string }>;
}

interface JobStateTimeLimitAction {
  Action: string;
  MaxTimeSeconds: number;
  Reason: string;
  State: string;
}

/** The statusReason strings Batch writes (AWS Batch user guide, "Jobs stuck in RUNNABLE"; job attempts). */
export const BATCH_REASONS = {
  essentialContainerExited: 'Essential container in task exited',
  taskFailedToStart: 'Task failed to start',
  /** A Spot reclaim, or any loss of the host; `Host EC2*` in a retry strategy matches it. */
  hostTerminated: (instanceId: string) => `Host EC2 (instance ${instanceId}) terminated.`,
  cannotPull: (image: string) =>
    `CannotPullContainerError: Error response from daemon: pull access denied for ${image}, repository does not exist or may require 'docker login'`,
  /** While the job waits in RUNNABLE for capacity. */
  insufficientCapacity: (instanceType: string) =>
    `CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity requested for instance type [${instanceType}]`,
  /** After a queue's jobStateTimeLimitActions cancelled the job (ECS-backed queues). */
  canceledByTimeLimit: (reason: string) => `Canceled by JobStateTimeLimit action due to reason: ${reason}`,
} as const;

/**
 * What happens to one attempt, decided by the test. Each is a fault this machine cannot cause:
 * - `imagePull`: the image cannot be pulled; the container never starts.
 * - `noCapacity`: no instance can be had; the job waits in RUNNABLE with Batch's capacity reason
 *   until the queue's time limit action cancels it (or something terminates it).
 * - `spotReclaim`: the container starts; when `at` resolves, the Spot instance is reclaimed (with
 *   `graceful: false` the host is lost outright: SIGKILL whatever the Spot draining setting).
 */
export type AttemptFault =
  | { kind: 'imagePull' }
  | { kind: 'noCapacity'; reason?: string }
  | { kind: 'spotReclaim'; at: (container: Container) => Promise<void>; graceful?: false };

/** What a container is started with: the job definition's command and the merged environment. */
export interface ContainerSpec {
  readonly stage: string;
  readonly jobId: string;
  readonly jobName: string;
  readonly attempt: number;
  readonly command: string[];
  readonly env: Record<string, string>;
  /** Set in every process of this container; how its processes are found and stopped. */
  readonly marker: string;
}

/** A running container. */
export interface Container {
  readonly spec: ContainerSpec;
  /** Resolves when the container's main process has exited (never rejects). */
  readonly exited: Promise<{ exitCode: number | null; signal: string | null }>;
  /** `docker kill -s`: a signal to the main process only (what ECS sends first). */
  signal(signal: 'SIGTERM' | 'SIGKILL'): void;
  /** Subscribe to the container's output, line by line (stdout and stderr). */
  onLine(listener: (line: string) => void): void;
  /** For an in-process stand-in: whether its body still runs (a process is found through its marker instead). */
  readonly busy?: () => boolean;
}

export type ContainerLauncher = (spec: ContainerSpec) => Container;

/** Env var carrying the container marker; children inherit it. */
export const CONTAINER_MARKER_ENV = 'AVATAR_LOCAL_BATCH_CONTAINER';

/** Pids of live processes whose environment carries `marker` (Linux /proc). */
export function processesWithMarker(marker: string): number[] {
  const needle = `${CONTAINER_MARKER_ENV}=${marker}`;
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const environ = readFileSync(`/proc/${entry}/environ`, 'latin1');
      if (!environ.split('\0').includes(needle)) continue;
      const stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
      if (/^\d+ \(.*\) Z /.test(stat)) continue; // a zombie waits for its parent's wait(), it runs nothing
      pids.push(Number(entry));
    } catch {
      // exited meanwhile, or not ours to read
    }
  }
  return pids;
}

function killMarked(marker: string, signal: NodeJS.Signals): void {
  for (const pid of processesWithMarker(marker)) {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/**
 * Runs the job definition's command as a local process (the command's `python` is replaced by
 * `python`), with `env(spec)` added to Batch's environment: the local stand-in for the image.
 */
export function processContainer(options: {
  python: string;
  env?: (spec: ContainerSpec) => Record<string, string>;
  log?: (line: string) => void;
}): ContainerLauncher {
  return (spec) => {
    const [program, ...args] = spec.command;
    const child: ChildProcess = spawn(program === 'python' ? options.python : program!, args, {
      env: { ...process.env, ...spec.env, ...options.env?.(spec), [CONTAINER_MARKER_ENV]: spec.marker, PYTHONUNBUFFERED: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const listeners: Array<(line: string) => void> = [];
    for (const stream of [child.stdout!, child.stderr!]) {
      let buffer = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        buffer += chunk;
        const lines = buffer.split(/\r?\n|\r/);
        buffer = lines.pop() ?? '';
        for (const line of lines) {
          options.log?.(`[${spec.stage}#${spec.attempt}] ${line}`);
          for (const l of listeners) l(line);
        }
      });
    }
    const exited = new Promise<{ exitCode: number | null; signal: string | null }>((resolve) => {
      child.once('error', () => resolve({ exitCode: 127, signal: null }));
      child.once('exit', (exitCode, signal) => resolve({ exitCode, signal }));
    });
    return {
      spec,
      exited,
      signal: (signal) => child.kill(signal),
      onLine: (listener) => listeners.push(listener),
    };
  };
}

/**
 * An in-process stand-in for an image: `body` does at the S3 boundary what the container would.
 * SIGTERM aborts `signal`; SIGKILL aborts it too and ends the container at once. A body cannot be
 * killed mid-call, so it must return soon after `signal` aborts: `busy()` tells whether it has.
 */
export function functionContainer(body: (spec: ContainerSpec, signal: AbortSignal) => Promise<number | undefined>): ContainerLauncher {
  return (spec) => {
    const term = new AbortController();
    let kill!: (r: { exitCode: number | null; signal: string | null }) => void;
    const killed = new Promise<{ exitCode: number | null; signal: string | null }>((resolve) => (kill = resolve));
    let running = true;
    const ran = body(spec, term.signal).then(
      (code) => ({ exitCode: code ?? 0, signal: null }),
      (error: Error) => {
        console.error(`[${spec.stage}#${spec.attempt}] ${error.stack ?? error.message}`);
        return { exitCode: 1, signal: null };
      },
    );
    void ran.finally(() => (running = false));
    return {
      spec,
      exited: Promise.race([ran, killed]),
      signal: (signal) => {
        term.abort();
        if (signal === 'SIGKILL') kill({ exitCode: null, signal });
      },
      onLine: () => undefined,
      busy: () => running,
    };
  };
}

export interface BatchEmulatorOptions {
  /** Starts the container of an attempt. */
  readonly launch: ContainerLauncher;
  /** The fault to inject into an attempt, if any. */
  readonly faults?: (job: { stage: string; jobName: string; attempt: number; env: Record<string, string> }) => AttemptFault | undefined;
  /**
   * Local milliseconds per template second for the queue's job-state time limits (a 30-minute
   * RUNNABLE limit must not take 30 minutes here). Default 1.
   */
  readonly msPerTemplateSecond?: number;
  /** ECS_CONTAINER_STOP_TIMEOUT: SIGTERM to SIGKILL, in ms. Default 30 000 (the ECS default). */
  readonly stopTimeoutMs?: number;
  /** The environment every job gets besides the job definition's (local endpoint, buckets). */
  readonly env?: Record<string, string>;
  readonly log?: (line: string) => void;
}

/** One emulated job and its history. */
export interface EmulatedJob {
  readonly detail: JobDetail;
  readonly stage: string;
  /** Every status the job went through, in order. */
  readonly transitions: JobStatus[];
  /** The container of the current attempt while one runs. */
  container?: Container;
  /** Resolves when the job is SUCCEEDED or FAILED. */
  readonly done: Promise<JobDetail>;
}

const TERMINAL: ReadonlySet<JobStatus> = new Set(['SUCCEEDED', 'FAILED']);

/** Batch's retry-strategy patterns: exact, or a prefix when they end in `*`. */
function matches(pattern: string, value: string): boolean {
  return pattern.endsWith('*') ? value.startsWith(pattern.slice(0, -1)) : value === pattern;
}

/** RETRY or EXIT for a failed attempt: the first EvaluateOnExit entry whose conditions all match; none: RETRY. */
export function evaluateOnExit(strategy: RetryStrategy | undefined, attempt: AttemptDetail): 'RETRY' | 'EXIT' {
  for (const rule of strategy?.EvaluateOnExit ?? []) {
    if (rule.OnStatusReason !== undefined && !matches(rule.OnStatusReason, attempt.StatusReason ?? '')) continue;
    if (rule.OnReason !== undefined && !matches(rule.OnReason, attempt.Container.Reason ?? '')) continue;
    if (rule.OnExitCode !== undefined && !matches(rule.OnExitCode, String(attempt.Container.ExitCode ?? ''))) continue;
    return rule.Action.toUpperCase() === 'EXIT' ? 'EXIT' : 'RETRY';
  }
  return 'RETRY';
}

/** Whether a statement list allows `action` (exact or `service:*`/`*`); resources are not checked. */
function allows(statements: Array<{ Effect?: string; Action?: string | string[] }>, action: string): boolean {
  const service = action.split(':')[0];
  return statements.some((s) => {
    if (s.Effect !== 'Allow') return false;
    const actions = Array.isArray(s.Action) ? s.Action : [s.Action];
    return actions.some((a) => a === action || a === '*' || a === `${service}:*`);
  });
}

/** What the template configures for Batch, read once. */
export function batchConfig(template: Template) {
  const jobDefinitions = new Map<string, { retry?: RetryStrategy; command: string[]; env: Record<string, string> }>();
  const queueActions: JobStateTimeLimitAction[] = [];
  let stateMachinePolicy: Array<{ Effect?: string; Action?: string | string[] }> = [];
  let userData = '';
  for (const [id, resource] of Object.entries(template.Resources)) {
    const p = resource.Properties ?? {};
    if (resource.Type === 'AWS::Batch::JobDefinition') {
      const container = p.ContainerProperties as { Command?: string[]; Environment?: Array<{ Name: string; Value: unknown }> } | undefined;
      const env: Record<string, string> = {};
      for (const e of container?.Environment ?? []) if (typeof e.Value === 'string') env[e.Name] = e.Value;
      jobDefinitions.set(id, { retry: p.RetryStrategy as RetryStrategy | undefined, command: container?.Command ?? [], env });
    } else if (resource.Type === 'AWS::Batch::JobQueue') {
      queueActions.push(...((p.JobStateTimeLimitActions as JobStateTimeLimitAction[] | undefined) ?? []));
    } else if (resource.Type === 'AWS::IAM::Policy' && /StateMachineRole/.test(id)) {
      stateMachinePolicy = stateMachinePolicy.concat((p.PolicyDocument as { Statement: typeof stateMachinePolicy }).Statement);
    } else if (resource.Type === 'AWS::EC2::LaunchTemplate') {
      userData += JSON.stringify(p);
    }
  }
  return {
    jobDefinitions,
    queueActions,
    /** Step Functions stops a `.sync` job on StopExecution only when its role may call TerminateJob. */
    stateMachineMayTerminate: allows(stateMachinePolicy, 'batch:TerminateJob'),
    /** Without ECS Spot draining, a reclaim kills the container with no SIGTERM. */
    spotDraining: userData.includes('ECS_ENABLE_SPOT_INSTANCE_DRAINING=true'),
  };
}

export class BatchEmulator {
  /** Every job submitted, by job id. */
  readonly jobs = new Map<string, EmulatedJob>();
  /** TerminateJob calls Step Functions was refused (its role lacks batch:TerminateJob). */
  readonly deniedTerminations: string[] = [];
  readonly config: ReturnType<typeof batchConfig>;
  private readonly waiters = new Map<string, () => void>();
  private readonly containers: Container[] = [];
  private sequence = 0;

  constructor(
    template: Template,
    private readonly options: BatchEmulatorOptions,
  ) {
    this.config = batchConfig(template);
  }

  /** Jobs not yet SUCCEEDED or FAILED. */
  active(): EmulatedJob[] {
    return [...this.jobs.values()].filter((j) => !TERMINAL.has(j.detail.Status));
  }

  /** Live processes (pids) and busy in-process stand-ins (markers) of every container this emulator started. */
  liveProcesses(): Array<number | string> {
    return this.containers.flatMap((c): Array<number | string> => (c.busy ? (c.busy() ? [c.spec.marker] : []) : processesWithMarker(c.spec.marker)));
  }

  /** Waits until no job is active and no container process is alive (or throws after `timeoutMs`). */
  async settled(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.active().length > 0 || this.liveProcesses().length > 0) {
      if (Date.now() > deadline) {
        throw new Error(
          `Batch emulator not settled: active ${this.active()
            .map((j) => `${j.detail.JobName}=${j.detail.Status}`)
            .join(', ')}; processes ${this.liveProcesses().join(', ')}`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** SubmitJob: returns the job id at once; the job moves on by itself. */
  submitJob(stage: string, params: SubmitJobParameters): EmulatedJob {
    const logicalId = params.JobDefinition.split(':').at(-1)!;
    const definition = this.config.jobDefinitions.get(logicalId);
    if (!definition)
      throw Object.assign(new Error(`ClientException: job definition ${params.JobDefinition} does not exist`), { name: 'Batch.ClientException' });
    if (params.JobName.length > 128) {
      throw Object.assign(new Error(`ClientException: Job name should be at most 128 characters (got ${params.JobName.length})`), {
        name: 'Batch.ClientException',
      });
    }
    const jobId = `${String(++this.sequence).padStart(8, '0')}-local-${stage}`;
    const detail: JobDetail = {
      JobId: jobId,
      JobName: params.JobName,
      JobQueue: params.JobQueue,
      JobDefinition: params.JobDefinition,
      Status: 'SUBMITTED',
      Attempts: [],
      CreatedAt: Date.now(),
      RetryStrategy: definition.retry,
    };
    const env = { ...definition.env, ...this.options.env };
    for (const e of params.ContainerOverrides?.Environment ?? []) env[e.Name] = e.Value;
    const job: EmulatedJob = { detail, stage, transitions: ['SUBMITTED'], done: undefined as never };
    (job as { done: Promise<JobDetail> }).done = this.lifecycle(job, definition.command, env);
    this.jobs.set(jobId, job);
    return job;
  }

  /** TerminateJob: a job not yet running fails at once; a running one is stopped (SIGTERM, then SIGKILL). */
  terminateJob(jobId: string, reason: string): void {
    const job = this.jobs.get(jobId);
    if (!job || TERMINAL.has(job.detail.Status)) return;
    (job as { terminated?: string }).terminated = reason;
    if (job.container) this.stopContainer(job.container, true);
    this.waiters.get(jobId)?.();
  }

  /**
   * Simulates a Spot reclaim of the host running `jobId` (not something a local run can cause):
   * with ECS Spot draining the container gets SIGTERM and the stop timeout, without it nothing.
   */
  reclaim(jobId: string, graceful = true): void {
    const job = this.jobs.get(jobId);
    if (!job?.container) throw new Error(`job ${jobId} has no running container to reclaim`);
    (job as { reclaimed?: boolean }).reclaimed = true;
    this.stopContainer(job.container, graceful && this.config.spotDraining);
  }

  /** The `.sync` integration: submit, wait, return the description or throw States.TaskFailed; TerminateJob on stop. */
  runner(): BatchRunner {
    return async (stage, params, context) => {
      const job = this.submitJob(stage, params);
      const onStop = () => {
        if (this.config.stateMachineMayTerminate) this.terminateJob(job.detail.JobId, 'Execution was stopped by Step Functions');
        else this.deniedTerminations.push(job.detail.JobId);
      };
      context?.signal.addEventListener('abort', onStop, { once: true });
      try {
        const detail = await job.done;
        if (detail.Status === 'FAILED') throw new BatchJobFailed(detail);
        return detail;
      } finally {
        context?.signal.removeEventListener('abort', onStop);
      }
    };
  }

  private markerPrefix(jobId: string): string {
    return `${process.pid}-${jobId}`;
  }

  private set(job: EmulatedJob, status: JobStatus, reason?: string): void {
    job.detail.Status = status;
    if (reason !== undefined) job.detail.StatusReason = reason;
    job.transitions.push(status);
  }

  /** Sleeps until `ms` passed (forever when undefined) or the job is terminated; true if terminated. */
  private async wait(job: EmulatedJob, ms?: number): Promise<boolean> {
    if ((job as { terminated?: string }).terminated) return true;
    return new Promise((resolve) => {
      const timer =
        ms === undefined
          ? undefined
          : setTimeout(() => {
              this.waiters.delete(job.detail.JobId);
              resolve(false);
            }, ms);
      this.waiters.set(job.detail.JobId, () => {
        clearTimeout(timer);
        this.waiters.delete(job.detail.JobId);
        resolve(true);
      });
    });
  }

  private stopContainer(container: Container, graceful: boolean): void {
    const marker = container.spec.marker;
    if (!graceful) {
      container.signal('SIGKILL');
      killMarked(marker, 'SIGKILL');
      return;
    }
    container.signal('SIGTERM');
    const timer = setTimeout(() => {
      container.signal('SIGKILL');
      killMarked(marker, 'SIGKILL');
    }, this.options.stopTimeoutMs ?? 30_000);
    void container.exited.then(() => clearTimeout(timer));
  }

  private async lifecycle(job: EmulatedJob, command: string[], env: Record<string, string>): Promise<JobDetail> {
    await Promise.resolve(); // SubmitJob returns before the job moves
    const d = job.detail;
    const maxAttempts = d.RetryStrategy?.Attempts ?? 1;
    const terminated = () => (job as { terminated?: string }).terminated;
    this.set(job, 'PENDING');
    for (let attempt = 1; ; attempt++) {
      this.set(job, 'RUNNABLE');
      const fault = this.options.faults?.({ stage: job.stage, jobName: d.JobName, attempt, env });
      if (fault?.kind === 'noCapacity') {
        const reason = fault.reason ?? 'CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY';
        d.StatusReason = reason.startsWith('CAPACITY:') ? BATCH_REASONS.insufficientCapacity('g5.xlarge') : `${reason} - the job cannot be placed`;
        const action = this.config.queueActions.find((a) => a.State === 'RUNNABLE' && a.Reason === reason && a.Action === 'CANCEL');
        const limit = action ? action.MaxTimeSeconds * (this.options.msPerTemplateSecond ?? 1) : undefined;
        if (!(await this.wait(job, limit))) return this.finish(job, 'FAILED', BATCH_REASONS.canceledByTimeLimit(reason));
      }
      if (terminated()) return this.finish(job, 'FAILED', terminated());
      this.set(job, 'STARTING');
      const started = Date.now();
      let result: AttemptDetail;
      if (fault?.kind === 'imagePull') {
        result = {
          Container: { Reason: BATCH_REASONS.cannotPull(`${PLACEHOLDER_ACCOUNT}.dkr.ecr.${PLACEHOLDER_REGION}.amazonaws.com/avatar-${job.stage}`) },
          StatusReason: BATCH_REASONS.taskFailedToStart,
          StartedAt: started,
          StoppedAt: Date.now(),
        };
      } else {
        d.StartedAt ??= started;
        this.set(job, 'RUNNING');
        const spec: ContainerSpec = {
          stage: job.stage,
          jobId: d.JobId,
          jobName: d.JobName,
          attempt,
          command,
          env: { ...env, AWS_BATCH_JOB_ID: d.JobId, AWS_BATCH_JOB_ATTEMPT: String(attempt), AWS_BATCH_JQ_NAME: d.JobQueue.split('/').at(-1)! },
          marker: `${this.markerPrefix(d.JobId)}-${attempt}`,
        };
        const container = this.options.launch(spec);
        this.containers.push(container);
        job.container = container;
        (job as { reclaimed?: boolean }).reclaimed = false;
        if (fault?.kind === 'spotReclaim') void fault.at(container).then(() => job.container === container && this.reclaim(d.JobId, fault.graceful ?? true));
        const exit = await container.exited;
        if (!container.busy) killMarked(spec.marker, 'SIGKILL'); // the container ends with its main process
        job.container = undefined;
        const stopped = Date.now();
        const container_ = { ExitCode: exit.exitCode ?? undefined, LogStreamName: `${job.stage}/default/${d.JobId}` };
        if ((job as { reclaimed?: boolean }).reclaimed) {
          result = {
            Container: container_,
            StatusReason: BATCH_REASONS.hostTerminated(`i-0${d.JobId.slice(0, 8)}local${attempt}`),
            StartedAt: started,
            StoppedAt: stopped,
          };
        } else {
          result = {
            Container: exit.signal === 'SIGKILL' ? { ...container_, Reason: 'OutOfMemoryError: Container killed due to memory usage' } : container_,
            StatusReason: BATCH_REASONS.essentialContainerExited,
            StartedAt: started,
            StoppedAt: stopped,
          };
          if (terminated()) {
            d.Attempts.push(result);
            return this.finish(job, 'FAILED', terminated());
          }
          if (exit.exitCode === 0) {
            d.Attempts.push(result);
            return this.finish(job, 'SUCCEEDED', BATCH_REASONS.essentialContainerExited);
          }
        }
      }
      d.Attempts.push(result);
      d.StatusReason = result.StatusReason;
      this.options.log?.(
        `batch: ${d.JobName} attempt ${attempt} failed: ${result.StatusReason}; ${result.Container.Reason ?? `exit ${result.Container.ExitCode}`}`,
      );
      if (terminated() || attempt >= maxAttempts || evaluateOnExit(d.RetryStrategy, result) === 'EXIT') {
        return this.finish(job, 'FAILED', terminated() ?? result.StatusReason);
      }
    }
  }

  private finish(job: EmulatedJob, status: 'SUCCEEDED' | 'FAILED', reason: string | undefined): JobDetail {
    job.detail.StoppedAt = Date.now();
    this.set(job, status, reason);
    return job.detail;
  }
}
