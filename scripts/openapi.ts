/** `npm run -s openapi`: prints the job API's OpenAPI 3.1 document, generated from the route schemas. */
import { S3Client } from '@aws-sdk/client-s3';
import { SFNClient } from '@aws-sdk/client-sfn';
import { createApp, openApiInfo } from '../lambdas/api/app';
import { localKeys } from '../lambdas/api/auth';

/** The document; the app is built with inert clients (nothing is called to describe the routes). */
export function openApiDocument(): Record<string, unknown> {
  const app = createApp({
    deps: {
      s3: new S3Client({ region: 'us-east-1' }),
      sfn: new SFNClient({ region: 'us-east-1' }),
      inboxBucket: 'inbox',
      artifactsBucket: 'artifacts',
      stateMachineArn: 'arn:aws:states:us-east-1:123456789012:stateMachine:avatar',
      urlExpirySeconds: 3600,
      uploadExpirySeconds: 900,
      maxPhotoBytes: 1,
      now: () => new Date(),
    },
    auth: { issuer: 'none', keys: localKeys({ keys: [] }), teamScopePrefix: 'avatar/team:' },
    rateLimit: { burst: 1, perSecond: 1 },
  });
  return app.getOpenAPI31Document(openApiInfo) as unknown as Record<string, unknown>;
}

if (require.main === module) console.log(JSON.stringify(openApiDocument(), null, 2));
