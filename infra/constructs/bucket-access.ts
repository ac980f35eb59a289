import { Validations } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { type AccessStage, type Grant, JOB_PREFIX_PATTERN, LIST_PREFIX, type ObjectAction, STAGE_ACCESS } from '../../lambdas/shared/access';
import { keyPattern } from '../../lambdas/shared/layout';
import { iam5ResourceFinding } from './nag';

/** The job prefix every stage shares, `teams/*\/jobs/*` in both buckets (lambdas/shared/layout.ts). */
export const JOB_PREFIX = JOB_PREFIX_PATTERN;

export type { ObjectAction };

/** The buckets a stage's grants name (lambdas/shared/access.ts); a stage may need only one. */
export interface StageBuckets {
  readonly inbox?: s3.IBucket;
  readonly artifacts: s3.IBucket;
}

/**
 * Grants `grantee` exactly what `STAGE_ACCESS[stage]` lists: the IAM key patterns derived from the
 * key layout, so no stage's keys are typed twice.
 */
export function grantStageAccess(grantee: iam.Role, buckets: StageBuckets, stage: AccessStage): void {
  const bucket = (name: keyof StageBuckets): s3.IBucket => {
    const found = buckets[name];
    if (!found) throw new Error(`grantStageAccess: the ${stage} stage's grants name the ${name} bucket; pass it`);
    return found;
  };
  for (const grant of STAGE_ACCESS[stage] as readonly Grant[]) {
    if ('list' in grant) {
      grantList(grantee, bucket(grant.list), [LIST_PREFIX]);
    } else {
      grantObjects(
        grantee,
        bucket(grant.bucket),
        grant.actions,
        grant.keys.map((key) => keyPattern(key)),
        grant.why,
      );
    }
  }
}

/**
 * Grants `actions` on the objects of `bucket` matching each key pattern (e.g. `teams/*\/jobs/*\/status.json`)
 * and nothing else. The `*` in those keys stands for team and job ids the role cannot know in
 * advance; cdk-nag's AwsSolutions-IAM5 reports each one, so each pattern is acknowledged on the
 * grantee, with the reason, right where it is granted.
 */
export function grantObjects(grantee: iam.Role, bucket: s3.IBucket, actions: readonly ObjectAction[], keyPatterns: readonly string[], reason: string): void {
  grantee.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: [...actions],
      resources: keyPatterns.map((pattern) => bucket.arnForObjects(pattern)),
    }),
  );
  for (const pattern of keyPatterns) {
    acknowledgeWildcard(grantee, bucket, pattern, reason);
  }
}

/**
 * Grants `s3:ListBucket` on `bucket`, limited by an `s3:prefix` condition to `prefixes`
 * (e.g. `teams/*`), so a stage can discover the objects of a job without listing the bucket.
 */
export function grantList(grantee: iam.Role, bucket: s3.IBucket, prefixes: readonly string[]): void {
  grantee.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['s3:ListBucket'],
      resources: [bucket.bucketArn],
      conditions: { StringLike: { 's3:prefix': [...prefixes] } },
    }),
  );
}

function acknowledgeWildcard(grantee: iam.Role, bucket: s3.IBucket, pattern: string, reason: string): void {
  Validations.of(grantee).acknowledge({
    id: iam5ResourceFinding(bucket, bucket.bucketArn, `/${pattern}`),
    reason: `${reason} (key pattern ${pattern})`,
  });
}
