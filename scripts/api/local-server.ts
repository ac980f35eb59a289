/**
 * The job API on this machine: the same app as in Lambda, served by @hono/node-server, over moto
 * (S3 with versioned buckets, Step Functions API) and the local state machine runner.
 *
 * What stands in for AWS here:
 * - The inbox's EventBridge rule: after the API writes job.json, the real `start` handler runs
 *   (StartExecution against moto) and the synthesized state machine runs locally.
 * - StopExecution goes to moto; the local run watches moto's execution status and, once ABORTED,
 *   refuses every further task and stops the local execution, as Step Functions runs no state after
 *   a stop; then the reconcile handler gets the ABORTED status change, as the EventBridge rule
 *   delivers it in AWS, and frees the job's slot or queue place.
 * - The team registry: a DynamoDB table in moto (serialised, as real DynamoDB's conditional writes
 *   are) holding the demo teams alpha and beta, read by the Admit state's handler; its task token is
 *   answered through the local task-token endpoint (scripts/local/teams.ts).
 * - S3's "Object Created" events, the announce rule, the state change rule and their targets: moto's
 *   EventBridge routes them to queues that scripts/local/events.ts reads, calling the real announce and
 *   notify handlers, so a job's webhook is delivered as in AWS.
 * - Batch stages without Docker and a GPU: the job waits `gpuWaitMs` (a Batch job RUNNABLE with no
 *   capacity) and then fails with GPU_UNAVAILABLE, as `npm run local` does; a stop ends the wait.
 */
import type { AddressInfo } from 'node:net';
import { PutBucketVersioningCommand, type S3Client } from '@aws-sdk/client-s3';
import { CreateStateMachineCommand, DescribeExecutionCommand, SFNClient } from '@aws-sdk/client-sfn';
import { serve } from '@hono/node-server';
import { createApp } from '../../lambdas/api/app';
import { localKeys } from '../../lambdas/api/auth';
import { RegistryWindows } from '../../lambdas/api/rate-limit';
import { reconcile } from '../../lambdas/reconcile/handler';
import { accountingFromEnv } from '../../lambdas/shared/accounting';
import type { JobRef } from '../../lambdas/shared/keys';
import { TEAM_DEFAULTS } from '../../lambdas/shared/teams';
import type { WebhookOptions } from '../../lambdas/shared/webhook';
import { start } from '../../lambdas/start/handler';
import { stateMachineDefinition, synthesizeTemplate } from '../local/definition';
import { type LocalEvents, startLocalEvents } from '../local/events';
import { checkGpu, GpuUnavailable } from '../local/gpu';
import { configureHandlers, LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../local/moto';
import { executionStatusChangeEvent } from '../local/sfn';
import { emptyJobQueue, type LocalTeams, localTeams } from '../local/teams';
import { inProcessLambda, startWorkflow } from '../local/workflow';
import { DEMO_TEAMS, LOCAL_ISSUER, localKeyPair, TEAM_SCOPE_PREFIX } from './local-auth';

/** Generous: the local API serves tests and a developer, through the same two layers as in Lambda. */
const LOCAL_RATE_LIMIT = { burst: 200, perSecond: 50 };

export const LOCAL_INBOX = 'avatar-local-inbox';
export const LOCAL_ARTIFACTS = 'avatar-local-artifacts';
export const LOCAL_TEAMS_TABLE = 'avatar-local-teams';

export interface LocalApiOptions {
  readonly port?: number;
  /** How long a GPU stage waits for capacity before GPU_UNAVAILABLE (default 0). */
  readonly gpuWaitMs?: number;
  readonly maxPhotoBytes?: number;
  readonly urlExpirySeconds?: number;
  /** Credentials the API signs links with (default: moto's static test credentials). */
  readonly signingS3?: (moto: Moto) => S3Client;
  readonly log?: (line: string) => void;
  /**
   * notify's sender settings: webhooks stay https-only and public-only unless this says otherwise
   * (an extra trusted CA; the loopback switch, for a receiver on this machine).
   */
  readonly webhook?: Omit<WebhookOptions, 'secret' | 'record'>;
}

export interface LocalApi {
  readonly url: string;
  readonly moto: Moto;
  readonly s3: S3Client;
  /** The state change events announce published (webhooks go out from them). */
  readonly events: LocalEvents;
  /** Settles when the local run of a job ends (for tests). */
  run(job: JobRef): Promise<unknown> | undefined;
  stop(): Promise<void>;
}

class Aborted extends Error {
  constructor() {
    super('the execution was stopped');
    this.name = 'States.Aborted';
  }
}

export async function startLocalApi(options: LocalApiOptions = {}): Promise<LocalApi> {
  const log = options.log ?? (() => undefined);
  const moto = await startMoto({ serializeDynamoDb: true });
  const runs = new Map<string, Promise<unknown>>();
  let server: ReturnType<typeof serve> | undefined;
  let teams: LocalTeams | undefined;
  let events: LocalEvents | undefined;
  try {
    configureHandlers(moto.endpoint, { inboxBucket: LOCAL_INBOX, artifactsBucket: LOCAL_ARTIFACTS, urlExpirySeconds: options.urlExpirySeconds ?? 3600 });
    const s3 = moto.s3();
    for (const bucket of [LOCAL_INBOX, LOCAL_ARTIFACTS]) {
      await moto.createBucket(bucket);
      await s3.send(new PutBucketVersioningCommand({ Bucket: bucket, VersioningConfiguration: { Status: 'Enabled' } }));
    }
    events = await startLocalEvents({ endpoint: moto.endpoint, s3, artifactsBucket: LOCAL_ARTIFACTS, webhook: options.webhook, log });
    const sfn = new SFNClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    const definition = stateMachineDefinition(synthesizeTemplate());
    const machine = await sfn.send(
      new CreateStateMachineCommand({ name: 'avatar-local', roleArn: 'arn:aws:iam::123456789012:role/local', definition: JSON.stringify(definition) }),
    );
    const stateMachineArn = machine.stateMachineArn!;
    // The team registry in moto's DynamoDB, with the demo teams at the registry's default limits, and
    // the task-token endpoint the Admit state waits on.
    teams = await localTeams(
      moto.endpoint,
      DEMO_TEAMS.map((teamId) => ({ teamId, ...TEAM_DEFAULTS })),
      { tableName: LOCAL_TEAMS_TABLE },
    );
    const { registry, taskTokens } = teams;
    // It never submits a GPU job: a job that ends is charged what Batch records for it, nothing.
    process.env.JOB_QUEUE = await emptyJobQueue(moto.endpoint);
    const gpu = checkGpu();
    if (gpu.ok) log(`GPU found (${gpu.reason}), but the local API runs GPU stages as unavailable; use npm run local for a GPU run`);

    const runLocally = async (job: JobRef) => {
      const started = await start(
        {
          'detail-type': 'Object Created',
          source: 'aws.s3',
          detail: { bucket: { name: LOCAL_INBOX }, object: { key: `teams/${job.teamId}/jobs/${job.jobId}/job.json` } },
        },
        { s3, sfn, inboxBucket: LOCAL_INBOX, artifactsBucket: LOCAL_ARTIFACTS, stateMachineArn, now: () => new Date() },
      );
      if (started.duplicate) return;
      const startDate = Date.now();
      const executionArn = `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${started.executionName}`;
      let aborted = false;
      let timer: NodeJS.Timeout | undefined;
      const stopped = new Promise<void>((resolve) => {
        timer = setInterval(async () => {
          const out = await sfn.send(new DescribeExecutionCommand({ executionArn })).catch(() => undefined);
          if (out?.status === 'ABORTED') {
            aborted = true;
            clearInterval(timer);
            resolve();
          }
        }, 200);
      });
      // Asked before every task too, so a stop never depends on the poll's timing.
      const isAborted = async () => {
        if (!aborted) aborted = (await sfn.send(new DescribeExecutionCommand({ executionArn }))).status === 'ABORTED';
        return aborted;
      };
      log(`job ${job.teamId}/${job.jobId}: execution ${started.executionName} running locally`);
      // Lambda calls under way: a stopped execution's last call still finishes, as in AWS.
      const calls = new Set<Promise<unknown>>();
      const execution = startWorkflow(definition, started.job, {
        taskTokens,
        lambda: async (stage, payload) => {
          if (await isAborted()) throw new Aborted();
          const call = inProcessLambda(stage, payload);
          calls.add(call);
          return call.finally(() => calls.delete(call));
        },
        batch: async () => {
          if (await isAborted()) throw new Aborted();
          await Promise.race([stopped, new Promise((r) => setTimeout(r, options.gpuWaitMs ?? 0))]);
          if (await isAborted()) throw new Aborted();
          throw new GpuUnavailable(gpu.ok ? 'the local API does not run GPU containers' : gpu.reason);
        },
      });
      // A stop also ends a state that waits (Admit's task token, a GPU wait).
      void stopped.then(() => execution.stop());
      const run = execution.result.then(async (result) => {
        clearInterval(timer);
        if (aborted) {
          await Promise.allSettled(calls);
          // The ABORTED status change, to reconcile as the EventBridge rule would: it frees the slot.
          const event = executionStatusChangeEvent(
            { name: started.executionName, arn: executionArn, input: JSON.stringify(started.job), startDate },
            stateMachineArn,
            'ABORTED',
          );
          await reconcile(event, { s3, artifactsBucket: LOCAL_ARTIFACTS, now: () => new Date(), accounting: accountingFromEnv() });
        }
        log(`job ${job.teamId}/${job.jobId}: local run ended (${aborted ? 'stopped' : result.succeeded ? 'succeeded' : result.error})`);
        return result;
      });
      runs.set(`${job.teamId}/${job.jobId}`, run);
    };

    const { jwks } = await localKeyPair();
    const app = createApp({
      deps: {
        s3: options.signingS3?.(moto) ?? s3,
        sfn,
        inboxBucket: LOCAL_INBOX,
        artifactsBucket: LOCAL_ARTIFACTS,
        stateMachineArn,
        urlExpirySeconds: options.urlExpirySeconds ?? 3600,
        uploadExpirySeconds: 900,
        maxPhotoBytes: options.maxPhotoBytes ?? 25 * 1024 * 1024,
        now: () => new Date(),
        onSpecWritten: runLocally,
        registry,
      },
      auth: { issuer: LOCAL_ISSUER, keys: localKeys(jwks), teamScopePrefix: TEAM_SCOPE_PREFIX },
      rateLimit: LOCAL_RATE_LIMIT,
      globalRateLimit: new RegistryWindows(registry, LOCAL_RATE_LIMIT),
      teams: registry,
    });
    const listening = new Promise<AddressInfo>((resolve) => {
      server = serve({ fetch: app.fetch, port: options.port ?? 0, hostname: '127.0.0.1' }, (info) => resolve(info));
    });
    const address = await listening;
    return {
      url: `http://127.0.0.1:${address.port}`,
      moto,
      s3,
      events,
      run: (job) => runs.get(`${job.teamId}/${job.jobId}`),
      async stop() {
        await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
        await Promise.allSettled(runs.values());
        await events?.stop();
        await teams?.stop();
        await moto.stop();
      },
    };
  } catch (error) {
    server?.close();
    await events?.stop();
    await teams?.stop();
    await moto.stop();
    throw error;
  }
}
