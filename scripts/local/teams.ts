/**
 * The team registry for local runs and workflow tests: a fresh table on the local endpoint (moto's
 * DynamoDB), the teams registered, the local task-token endpoint for the Admit state, and the
 * environment the handlers read (as the CDK stack sets it in Lambda). There is no Batch locally:
 * JOB_QUEUE names a queue the endpoint does not have, so a job's GPU cost falls back to its
 * admission estimate, marked `estimated`.
 */
import { BatchClient, CreateComputeEnvironmentCommand, CreateJobQueueCommand } from '@aws-sdk/client-batch';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { AdmissionRequest } from '../../lambdas/shared/admission';
import { createTeamsTable, TEAM_DEFAULTS, type TeamConfig, TeamRegistry, teamsDocumentClient } from '../../lambdas/shared/teams';
import { LOCAL_CREDENTIALS, LOCAL_REGION } from './moto';
import { startTaskTokens, type TaskTokens } from './task-tokens';

export interface LocalTeams {
  readonly registry: TeamRegistry;
  readonly taskTokens: TaskTokens;
  stop(): Promise<void>;
}

let tables = 0;

/** Generous limits: a local run is admitted unless a test sets tighter ones. */
const LOCAL_LIMITS: Partial<TeamConfig> = { maxConcurrentJobs: 10, monthlyBudgetUsd: 1000, monthlyGpuHours: 1000 };

export async function localTeams(
  endpoint: string,
  teams: Array<string | (Partial<TeamConfig> & { teamId: string })>,
  /** `tableName`: a fixed name for the registry table (the local API's, which tests open by name); by default a fresh one. */
  options: { tableName?: string } = {},
): Promise<LocalTeams> {
  const tableName = options.tableName ?? `avatar-teams-local-${process.pid}-${++tables}`;
  const registry = await freshRegistry(endpoint, { tableName });
  for (const t of teams) await registry.add({ ...TEAM_DEFAULTS, ...LOCAL_LIMITS, ...(typeof t === 'string' ? { teamId: t } : t) });
  const taskTokens = await startTaskTokens();
  Object.assign(process.env, {
    TEAMS_TABLE: tableName,
    JOB_QUEUE: 'local-no-batch',
    AWS_ENDPOINT_URL_DYNAMODB: endpoint,
    AWS_ENDPOINT_URL_BATCH: endpoint,
    AWS_ENDPOINT_URL_SFN: taskTokens.endpoint,
  });
  return { registry, taskTokens, stop: () => taskTokens.stop() };
}

/** A new, empty registry table on the local endpoint (`tableName`, or a fresh name per call); `now` is the registry's clock. */
export async function freshRegistry(endpoint: string, options: { tableName?: string; now?: () => Date } = {}): Promise<TeamRegistry> {
  const config = { endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS };
  const tableName = options.tableName ?? `avatar-teams-local-${process.pid}-${++tables}`;
  await createTeamsTable(new DynamoDBClient(config), tableName);
  return new TeamRegistry(teamsDocumentClient(config), tableName, options.now);
}

/** An admission request for a 20-photo character job with the recipe's 1875 steps; `over` changes any field. */
export function admissionRequest(teamId: string, jobId: string, over: Partial<AdmissionRequest> = {}): AdmissionRequest {
  return {
    teamId,
    jobId,
    kind: 'character',
    photos: 20,
    optimizer: 'AdamW8bit',
    network: 'lora',
    targetSteps: 1875,
    estimate: { usd: 1.5, gpuSeconds: 1800 },
    ...over,
  };
}

/**
 * An empty Batch job queue in moto, to set as JOB_QUEUE for a run that submits no GPU job (the local
 * API; `npm run local` without a GPU): the accounting's cost lookup (ListJobs by job name) finds
 * nothing, so an ending job is charged nothing rather than its admission estimate (which is charged
 * when Batch cannot be read). Returns the queue's name.
 */
export async function emptyJobQueue(endpoint: string): Promise<string> {
  // The compute environment's service role must exist; moto's IAM speaks the query protocol (no IAM
  // client among the dependencies; moto does not check the signature, only the service it names).
  const role = await fetch(endpoint, {
    method: 'POST',
    body: new URLSearchParams({ Action: 'CreateRole', Version: '2010-05-08', RoleName: 'avatar-local-batch', AssumeRolePolicyDocument: '{}' }),
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `AWS4-HMAC-SHA256 Credential=${LOCAL_CREDENTIALS.accessKeyId}/20260101/${LOCAL_REGION}/iam/aws4_request, SignedHeaders=host, Signature=local`,
    },
  });
  const roleArn = /<Arn>([^<]+)<\/Arn>/.exec(await role.text())?.[1];
  if (!role.ok || !roleArn) throw new Error(`moto: CreateRole for the local job queue failed (HTTP ${role.status})`);
  const batch = new BatchClient({ endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
  const ce = await batch.send(
    new CreateComputeEnvironmentCommand({ computeEnvironmentName: 'avatar-local', type: 'UNMANAGED', state: 'ENABLED', serviceRole: roleArn }),
  );
  const queue = await batch.send(
    new CreateJobQueueCommand({
      jobQueueName: 'avatar-local-gpu',
      priority: 1,
      state: 'ENABLED',
      computeEnvironmentOrder: [{ order: 1, computeEnvironment: ce.computeEnvironmentArn! }],
    }),
  );
  return queue.jobQueueName!;
}
