import { Validations } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { iam5ResourceFinding } from './nag';

/** The key layout every stage shares: `teams/<team>/jobs/<job>/...` in both buckets. */
export const JOB_PREFIX = 'teams/*/jobs/*';

/** Object actions a stage may be granted; exact names only, so no `s3:*`-style wildcard slips in. */
export type ObjectAction = 's3:GetObject' | 's3:GetObjectVersion' | 's3:PutObject' | 's3:DeleteObject';

/**
 * Grants `actions` on the objects of `bucket` matching each key pattern (e.g. `teams/*\/jobs/*\/status.json`)
 * and nothing else. The `*` in those keys stands for team and job ids the role cannot know in
 * advance; cdk-nag's AwsSolutions-IAM5 reports each one, so each pattern is acknowledged on the
 * grantee, with the reason, right where it is granted.
 */
export function grantObjects(
  grantee: iam.Role,
  bucket: s3.IBucket,
  actions: readonly ObjectAction[],
  keyPatterns: readonly string[],
  reason: string,
): void {
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
