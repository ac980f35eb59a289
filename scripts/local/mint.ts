/**
 * The mint function for local runs and tests: an endpoint that speaks the Lambda Invoke wire
 * protocol (`POST /2015-03-31/functions/<name>/invocations`; a thrown error comes back with
 * `X-Amz-Function-Error`) and runs the real mint handler in-process against the local endpoint's
 * DynamoDB (the registry) and STS. There is no Lambda runtime locally (moto's needs Docker).
 * Point a stage at it with `MINT_FUNCTION` and `AWS_ENDPOINT_URL_LAMBDA` ({@link LocalMint.env}).
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { STSClient } from '@aws-sdk/client-sts';
import { type MintDeps, mint } from '../../lambdas/mint/handler';
import { DATA_STAGES } from '../../lambdas/shared/session-policy';
import { teamsDocumentClient } from '../../lambdas/shared/teams';
import { LOCAL_CREDENTIALS, LOCAL_REGION } from './moto';

/** moto's default account. */
const MOTO_ACCOUNT = '123456789012';

export interface LocalMint {
  /** What a stage needs in its environment to ask this mint. */
  readonly env: { MINT_FUNCTION: string; AWS_ENDPOINT_URL_LAMBDA: string };
  /** Every invocation's payload, in order. */
  readonly invocations: Array<Record<string, unknown>>;
  stop(): Promise<void>;
}

export async function startLocalMint(options: {
  /** The local AWS endpoint (moto). */
  endpoint: string;
  /** The registry table the state machine registers the stage secrets in. */
  tableName: string;
  buckets: { inbox: string; artifacts: string };
}): Promise<LocalMint> {
  const config = { endpoint: options.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS };
  const deps: MintDeps = {
    registry: teamsDocumentClient(config),
    tableName: options.tableName,
    sts: new STSClient(config),
    roles: Object.fromEntries(DATA_STAGES.map((stage) => [stage, `arn:aws:iam::${MOTO_ACCOUNT}:role/avatar-${stage}-data`])),
    buckets: { inbox: `arn:aws:s3:::${options.buckets.inbox}`, artifacts: `arn:aws:s3:::${options.buckets.artifacts}` },
    maxAgeSeconds: 12 * 3600,
    now: () => new Date(),
  };
  const invocations: Array<Record<string, unknown>> = [];
  const server = createServer(async (req, res) => {
    let body = '';
    for await (const chunk of req) body += chunk;
    const payload = JSON.parse(body || '{}') as Record<string, unknown>;
    invocations.push(payload);
    // The result first: headers go out only once mint has answered or thrown.
    let status: { body: unknown; error?: string };
    try {
      status = { body: await mint(deps, payload) };
    } catch (error) {
      const e = error as Error;
      status = { body: { errorType: e.name, errorMessage: e.message }, error: 'Unhandled' };
    }
    res
      .writeHead(200, { 'content-type': 'application/json', ...(status.error ? { 'x-amz-function-error': status.error } : {}) })
      .end(JSON.stringify(status.body));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    env: { MINT_FUNCTION: 'avatar-mint-local', AWS_ENDPOINT_URL_LAMBDA: `http://127.0.0.1:${(server.address() as AddressInfo).port}` },
    invocations,
    stop: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
