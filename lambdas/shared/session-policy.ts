/**
 * Job-scoped session policies: isolation by credentials (docs/architecture.md).
 *
 * The data roles grant `teams/*\/jobs/*\/<folder>/*`: IAM's `*` also matches `/`, so on their own
 * they reach every team's jobs and, through nested keys, other stages' folders. The mint function
 * (lambdas/mint) assumes a stage's data role with the policy below as the session policy; the
 * effective permission is the intersection, i.e. exactly job J of team T. Team and job ids cannot
 * contain `/` (IdSchema), so the prefixes below are exact.
 */
import { type AccessBucket, type Grant, STAGE_ACCESS } from './access';
import { IdSchema } from './contract';
import { keyPattern } from './layout';

/**
 * The stages that act on one job of one execution and get their S3 access only through mint (one
 * data role each). `train` is the GPU job that runs the caption stage too. The others (start, api,
 * announce, notify, reconcile) act on jobs named by requests or events and keep their own grants.
 */
export const DATA_STAGES = ['validate', 'normalize', 'admit', 'train', 'evaluate', 'finalize', 'mark-failed'] as const;
export type DataStage = (typeof DATA_STAGES)[number];

/** The GPU jobs a session policy is minted for (`train` runs the caption stage too). */
export type GpuStage = 'train' | 'evaluate';

/** The ARNs of the buckets a stage's grants name; a string is the artifacts bucket alone. */
export type BucketArns = string | { readonly artifacts: string; readonly inbox?: string };

/** STS refuses a session policy whose plaintext is longer than this. */
export const SESSION_POLICY_MAX_CHARS = 2048;

export interface SessionPolicy {
  Version: string;
  Statement: object[];
}

/**
 * The session policy for `stage` working on job `jobId` of team `teamId`: the stage's own grants
 * (lambdas/shared/access.ts, which its data role has too) with this job's ids in place of the
 * wildcards. A listing is limited to the job's folders the stage writes in that bucket (train its
 * resume state, a retried caption its own captions), or, when it writes none there, to those it reads
 * (validate the job's uploads, finalize the job's outputs).
 */
export function jobSessionPolicy(stage: DataStage, teamId: string, jobId: string, buckets: BucketArns): SessionPolicy {
  const ids = { teamId: IdSchema.parse(teamId), jobId: IdSchema.parse(jobId) };
  const arns = typeof buckets === 'string' ? { artifacts: buckets } : buckets;
  const arnOf = (bucket: AccessBucket): string => {
    const arn = arns[bucket];
    if (!arn) throw new Error(`jobSessionPolicy: the ${stage} stage's grants name the ${bucket} bucket; pass its ARN`);
    return arn;
  };
  const grants = STAGE_ACCESS[stage] as readonly Grant[];
  const folders = (bucket: AccessBucket, action: 's3:PutObject' | 's3:GetObject') =>
    grants.flatMap((g) => ('bucket' in g && g.bucket === bucket && g.actions.includes(action) ? g.keys.filter((k) => k.endsWith('/')) : []));
  // The plaintext of a session policy may not exceed 2,048 characters (STS); with two 63-character ids
  // train's grants would not fit. So statements with the same actions are merged, carry no Sid, and
  // name the objects in any bucket (`arn:aws:s3:::*/<key>`): the data role already names the bucket
  // of each grant, and the effective permission is the intersection of the two.
  const byActions = new Map<string, string[]>();
  const statements: object[] = [];
  for (const grant of grants) {
    if ('list' in grant) {
      const written = folders(grant.list, 's3:PutObject');
      const listed = written.length ? written : folders(grant.list, 's3:GetObject');
      statements.push({
        Effect: 'Allow',
        Action: 's3:ListBucket',
        Resource: arnOf(grant.list),
        // `prefix/*` in StringLike also matches `prefix/` itself.
        Condition: { StringLike: { 's3:prefix': listed.map((folder) => keyPattern(folder, ids)) } },
      });
      continue;
    }
    const actions = [...grant.actions].sort().join(',');
    const resources = byActions.get(actions) ?? [];
    for (const key of grant.keys) {
      const resource = `${anyBucket(arnOf(grant.bucket))}/${keyPattern(key, ids)}`;
      if (!resources.includes(resource)) resources.push(resource);
    }
    byActions.set(actions, resources);
  }
  const objects = [...byActions].map(([actions, resources]) => ({ Effect: 'Allow', Action: actions.split(','), Resource: resources }));
  return { Version: '2012-10-17', Statement: [...objects, ...statements] };
}

/** `arn:<partition>:s3:::*` for a bucket ARN: every bucket of its partition. */
function anyBucket(bucketArn: string): string {
  const match = /^(arn:[a-z-]+:s3:::)[a-z0-9.-]+$/.exec(bucketArn);
  if (!match) throw new Error(`jobSessionPolicy: not a bucket ARN: ${bucketArn}`);
  return `${match[1]}*`;
}
