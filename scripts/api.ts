/**
 * `npm run api -- --port <p> [--gpu-wait <seconds>]`: the job API on this machine, over the local AWS
 * endpoint (moto) and the local state machine runner, with demo teams alpha and beta.
 * Get a token with `npm run -s api:token -- --team alpha`. GPU stages stop with GPU_UNAVAILABLE
 * (after --gpu-wait seconds, a Batch job waiting for capacity). Ctrl-C stops it; moto keeps
 * everything in memory, so the jobs go with it.
 *
 * Webhooks of local jobs are sent as in AWS (https, public addresses only). For a receiver on this
 * machine: `--webhook-loopback` also allows https to 127.0.0.1 and ::1, and `--webhook-ca <pem>`
 * trusts that receiver's own certificate. Both are options of this local server only.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ALLOW_LOOPBACK_FOR_TESTS } from '../lambdas/shared/webhook';
import { startLocalApi } from './api/local-server';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: '8787' },
      'gpu-wait': { type: 'string', default: '0' },
      'webhook-loopback': { type: 'boolean' },
      'webhook-ca': { type: 'string' },
    },
  });
  const port = Number(values.port);
  const gpuWait = Number(values['gpu-wait']);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port ${values.port}: use a port number`);
  if (!(gpuWait >= 0)) throw new Error(`--gpu-wait ${values['gpu-wait']}: use seconds >= 0`);
  const webhook = {
    ...(values['webhook-ca'] ? { ca: readFileSync(values['webhook-ca']) } : {}),
    ...(values['webhook-loopback'] ? { [ALLOW_LOOPBACK_FOR_TESTS]: true } : {}),
  };
  const api = await startLocalApi({ port, gpuWaitMs: gpuWait * 1000, log: (line) => console.log(line), webhook });
  console.log(`job API listening on ${api.url} (local AWS endpoint ${api.moto.endpoint}); teams alpha and beta`);
  console.log(`token: npm run -s api:token -- --team alpha   then: AVATAR_API_URL=${api.url} AVATAR_API_TOKEN=<token> npx avatar --help`);
  const shutdown = () => {
    api.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', shutdown);
  process.once('SIGTERM', shutdown);
}

main().catch((error) => {
  console.error(`error: ${(error as Error).message}`);
  process.exit(1);
});
