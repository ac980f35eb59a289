/**
 * Job-scoped session policies for the GPU stages (design: see the team report / issue 10, item 5).
 *
 * The stage roles grant `teams/*\/jobs/*\/<folder>/*`: IAM's `*` also matches `/`, so on their own
 * they reach every team's jobs and, through nested keys, other stages' folders. A trusted minting
 * component (not wired yet) assumes the stage role with the policy below as the session policy;
 * the effective permission is the intersection, i.e. exactly job J of team T. Team and job ids
 * cannot contain `/` (IdSchema), so the prefixes below are exact.
 */
import { IdSchema } from './contract';

/** What each GPU stage may do inside its own job, mirroring the role grants of infra/constructs/gpu-batch.ts. */
export const GPU_STAGE_ACCESS = {
  caption: { read: ['normalize/*'], write: ['caption/*'], delete: [] as string[], models: false },
  train: { read: ['normalize/*', 'caption/*', 'train/*'], write: ['train/*'], delete: ['train/state/*'], models: true },
  evaluate: { read: ['train/*', 'normalize/plan.json'], write: ['evaluate/*'], delete: [] as string[], models: true },
} as const;
export type GpuStage = keyof typeof GPU_STAGE_ACCESS;

/** The session policy for `stage` working on job `jobId` of team `teamId` in the artifacts bucket. */
export function jobSessionPolicy(stage: GpuStage, teamId: string, jobId: string, artifactsBucketArn: string): { Version: string; Statement: object[] } {
  const access = GPU_STAGE_ACCESS[stage];
  const job = `${artifactsBucketArn}/teams/${IdSchema.parse(teamId)}/jobs/${IdSchema.parse(jobId)}/`;
  const statements: object[] = [
    { Sid: 'Status', Effect: 'Allow', Action: ['s3:GetObject', 's3:PutObject'], Resource: [`${job}status.json`] },
    { Sid: 'Read', Effect: 'Allow', Action: ['s3:GetObject'], Resource: access.read.map((f) => `${job}${f}`) },
    { Sid: 'Write', Effect: 'Allow', Action: ['s3:PutObject'], Resource: access.write.map((f) => `${job}${f}`) },
  ];
  if (access.delete.length) statements.push({ Sid: 'Delete', Effect: 'Allow', Action: ['s3:DeleteObject'], Resource: access.delete.map((f) => `${job}${f}`) });
  if (stage === 'train') {
    // train lists its own resume state (the role lists teams/*).
    const prefix = `teams/${teamId}/jobs/${jobId}/train/`;
    statements.push({ Sid: 'List', Effect: 'Allow', Action: ['s3:ListBucket'], Resource: [artifactsBucketArn], Condition: { StringLike: { 's3:prefix': [prefix, `${prefix}*`] } } });
  }
  if (access.models) statements.push({ Sid: 'Models', Effect: 'Allow', Action: ['s3:GetObject'], Resource: [`${artifactsBucketArn}/models/*`] });
  return { Version: '2012-10-17', Statement: statements };
}
