/**
 * The job API in Lambda, behind an API Gateway HTTP API. Settings come from the environment the CDK
 * stack sets (infra/constructs/api.ts).
 */
import { S3Client } from '@aws-sdk/client-s3';
import { SFNClient } from '@aws-sdk/client-sfn';
import { STSClient } from '@aws-sdk/client-sts';
import { handle } from 'hono/aws-lambda';
import { requireEnv } from '../shared/env';
import { s3Client } from '../shared/s3';
import { TeamRegistry, teamsDocumentClient } from '../shared/teams';
import { createApp } from './app';
import { remoteKeys, TEAM_SCOPE_PREFIX } from './auth';
import { RegistryWindows } from './rate-limit';
import { assumedRoleCredentials } from './signing';

const issuer = requireEnv('AUTH_ISSUER');
const signingRole = process.env.RESULTS_SIGNING_ROLE_ARN;
const registry = new TeamRegistry(teamsDocumentClient(), requireEnv('TEAMS_TABLE'));
const rateLimit = { burst: Number(process.env.RATE_BURST ?? 20), perSecond: Number(process.env.RATE_PER_SECOND ?? 5) };
const app = createApp({
  deps: {
    s3: s3Client(),
    sfn: new SFNClient({}),
    inboxBucket: requireEnv('INBOX_BUCKET'),
    artifactsBucket: requireEnv('ARTIFACTS_BUCKET'),
    stateMachineArn: requireEnv('STATE_MACHINE_ARN'),
    urlExpirySeconds: Number(requireEnv('URL_EXPIRY_SECONDS')),
    // Result links signed with a session of the read-only signing role: its expiry is known, so links
    // live up to an hour instead of the 15 minutes environment credentials allow.
    ...(signingRole ? { resultsS3: new S3Client({ credentials: assumedRoleCredentials(new STSClient({}), signingRole) }) } : {}),
    uploadExpirySeconds: Number(process.env.UPLOAD_EXPIRY_SECONDS ?? 900),
    maxPhotoBytes: Number(process.env.MAX_PHOTO_BYTES ?? 25 * 1024 * 1024),
    now: () => new Date(),
    registry,
  },
  auth: {
    issuer,
    keys: remoteKeys(process.env.AUTH_JWKS_URL ?? `${issuer}/.well-known/jwks.json`),
    teamScopePrefix: process.env.AUTH_TEAM_SCOPE_PREFIX ?? TEAM_SCOPE_PREFIX,
  },
  teams: registry,
  rateLimit,
  globalRateLimit: new RegistryWindows(registry, rateLimit),
});

export const handler = handle(app);
