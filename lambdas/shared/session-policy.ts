/**
 * Job-scoped session policies for the GPU stages (design: see the team report / issue 10, item 5).
 *
 * The stage roles grant `teams/*\/jobs/*\/<folder>/*`: IAM's `*` also matches `/`, so on their own
 * they reach every team's jobs and, through nested keys, other stages' folders. A trusted minting
 * component (not wired yet) assumes the stage role with the policy below as the session policy;
 * the effective permission is the intersection, i.e. exactly job J of team T. Team and job ids
 * cannot contain `/` (IdSchema), so the prefixes below are exact.
 */
import { type Grant, STAGE_ACCESS } from './access';
import { IdSchema } from './contract';
import { keyPattern } from './layout';

/** The GPU jobs a session policy is minted for (`train` runs the caption stage too). */
export type GpuStage = 'train' | 'evaluate';

/**
 * The session policy for `stage` working on job `jobId` of team `teamId` in the artifacts bucket: the
 * stage's own grants (lambdas/shared/access.ts, which the role has too) with this job's ids in place of
 * the wildcards, and its listing limited to the folders it writes.
 */
export function jobSessionPolicy(stage: GpuStage, teamId: string, jobId: string, artifactsBucketArn: string): { Version: string; Statement: object[] } {
  const ids = { teamId: IdSchema.parse(teamId), jobId: IdSchema.parse(jobId) };
  const grants = STAGE_ACCESS[stage] as readonly Grant[];
  // The role lists teams/*; the session lists only the folders it writes (train its resume state, a retried caption its own captions).
  const ownFolders = grants.flatMap((g) => ('actions' in g && g.actions.includes('s3:PutObject') ? g.keys.filter((k) => k.endsWith('/')) : []));
  const statements = grants.map((grant, i) => {
    if ('list' in grant) {
      const prefixes = ownFolders.map((folder) => keyPattern(folder, ids).replace(/\*$/, ''));
      return {
        Sid: `List${i}`,
        Effect: 'Allow',
        Action: ['s3:ListBucket'],
        Resource: [artifactsBucketArn],
        Condition: { StringLike: { 's3:prefix': prefixes.flatMap((p) => [p, `${p}*`]) } },
      };
    }
    return {
      Sid: `Objects${i}`,
      Effect: 'Allow',
      Action: [...grant.actions],
      Resource: grant.keys.map((key) => `${artifactsBucketArn}/${keyPattern(key, ids)}`),
    };
  });
  return { Version: '2012-10-17', Statement: statements };
}
