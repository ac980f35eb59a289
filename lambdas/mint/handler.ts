/**
 * mint: job-scoped S3 credentials for one stage of one job (isolation by credentials,
 * docs/architecture.md). The state machine creates a secret per execution, gives each stage its own
 * stage secret derived from it, and registers the SHA-256 of each on the team registry
 * (`pk=TEAM#<teamId>, sk=SECRET#<jobId>`, map `stageSecrets`); only the state machine writes it.
 * A stage presents its secret with its stage and job ids; mint checks it and assumes that stage's
 * data role with the job's session policy (lambdas/shared/session-policy.ts), so what the stage gets
 * reaches its stage's keys of job J of team T only, whatever its code does.
 *
 * Payload `{ "stage", "teamId", "jobId", "secret" }`; result `{ accessKeyId, secretAccessKey,
 * sessionToken, expiration }`. A refusal is the error `MintRefused`, whose message never carries
 * the secret.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { AssumeRoleCommand, STSClient } from '@aws-sdk/client-sts';
import { GetCommand } from '@aws-sdk/lib-dynamodb';
import { z } from 'zod';
import { IdSchema } from '../shared/contract';
import { requireEnv } from '../shared/env';
import { DATA_STAGES, type DataStage, jobSessionPolicy } from '../shared/session-policy';
import { teamsDocumentClient } from '../shared/teams';

/** The registry item holding a job's secret hash: a sort key no team, job, wait or cost item uses. */
export const secretKey = (teamId: string, jobId: string) => ({ pk: `TEAM#${teamId}`, sk: `SECRET#${jobId}` });

/** How long minted credentials live; GPU jobs ask again before they expire. */
export const CREDENTIALS_SECONDS = 3600;

export const MintRequestSchema = z
  .object({
    stage: z.enum(DATA_STAGES),
    teamId: IdSchema,
    jobId: IdSchema,
    // States.UUID(): 36 characters; the bounds only keep junk out.
    secret: z.string().min(16).max(256),
  })
  .strict();
export type MintRequest = z.infer<typeof MintRequestSchema>;

export interface MintedCredentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken: string;
  /** ISO-8601. */
  readonly expiration: string;
}

/** The caller may not have credentials for this job; the message says why (never the secret). */
export class MintRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MintRefused';
  }
}

export interface MintDeps {
  readonly registry: { send: (command: GetCommand) => Promise<{ Item?: Record<string, unknown> }> };
  readonly tableName: string;
  readonly sts: Pick<STSClient, 'send'>;
  /** Each data stage's role ARN. */
  readonly roles: Readonly<Record<string, string>>;
  readonly buckets: { readonly artifacts: string; readonly inbox: string };
  /** A secret registered longer ago than this belongs to an execution that has ended (its timeout). */
  readonly maxAgeSeconds: number;
  readonly now: () => Date;
}

const sha256 = (text: string): Buffer => createHash('sha256').update(text, 'utf8').digest();

export async function mint(deps: MintDeps, event: unknown): Promise<MintedCredentials> {
  const parsed = MintRequestSchema.safeParse(event);
  if (!parsed.success) {
    // Names the fields only: the values (the secret among them) stay out of the message.
    const fields = [...new Set(parsed.error.issues.map((i) => i.path.join('.') || '(root)'))].join(', ');
    throw new MintRefused(`invalid request: check ${fields}`);
  }
  const { stage, teamId, jobId, secret } = parsed.data;
  const job = `job ${jobId} of team ${teamId}`;
  const { Item: item } = await deps.registry.send(new GetCommand({ TableName: deps.tableName, Key: secretKey(teamId, jobId), ConsistentRead: true }));
  if (!item) throw new MintRefused(`no running execution registered a secret for ${job}`);
  const hash = (item.stageSecrets as Record<string, unknown> | undefined)?.[stage];
  const registered = typeof hash === 'string' && /^[0-9a-f]{64}$/.test(hash) ? Buffer.from(hash, 'hex') : undefined;
  // Constant time: the comparison reveals nothing of the registered hash.
  if (!registered || !timingSafeEqual(sha256(secret), registered))
    throw new MintRefused(`the secret is not the one registered for the ${stage} stage of ${job}`);
  const registeredAt = Date.parse(String(item?.registeredAt));
  if (!Number.isFinite(registeredAt) || deps.now().getTime() - registeredAt > deps.maxAgeSeconds * 1000) {
    throw new MintRefused(`the execution of ${job} has ended (its secret is older than the execution timeout)`);
  }
  const roleArn = deps.roles[stage];
  if (!roleArn) throw new Error(`mint: no data role configured for stage ${stage}`);
  const out = await deps.sts.send(
    new AssumeRoleCommand({
      RoleArn: roleArn,
      RoleSessionName: sessionName(stage, jobId),
      Policy: JSON.stringify(jobSessionPolicy(stage, teamId, jobId, deps.buckets)),
      DurationSeconds: CREDENTIALS_SECONDS,
    }),
  );
  const c = out.Credentials;
  if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration) throw new Error('mint: AssumeRole returned no credentials');
  return { accessKeyId: c.AccessKeyId, secretAccessKey: c.SecretAccessKey, sessionToken: c.SessionToken, expiration: c.Expiration.toISOString() };
}

/** `<stage>-<jobId>`, at most 64 characters (STS's limit); CloudTrail shows it for every S3 call. */
export function sessionName(stage: DataStage, jobId: string): string {
  return `${stage}-${jobId}`.slice(0, 64);
}

let deps: MintDeps | undefined;
function depsFromEnv(): MintDeps {
  deps ??= {
    registry: teamsDocumentClient(),
    tableName: requireEnv('TEAMS_TABLE'),
    sts: new STSClient({}),
    roles: JSON.parse(requireEnv('DATA_ROLE_ARNS')) as Record<string, string>,
    buckets: { artifacts: requireEnv('ARTIFACTS_BUCKET_ARN'), inbox: requireEnv('INBOX_BUCKET_ARN') },
    maxAgeSeconds: Number(requireEnv('SECRET_MAX_AGE_SECONDS')),
    now: () => new Date(),
  };
  return deps;
}

export const handler = (event: unknown): Promise<MintedCredentials> => mint(depsFromEnv(), event);
