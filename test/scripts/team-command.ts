import { type SpawnSyncReturns, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { LOCAL_CREDENTIALS, LOCAL_REGION } from '../helpers/moto';

const ROOT = join(__dirname, '..', '..');

/**
 * `npm run team -- <args>` as the operator runs it: a separate process, with local credentials and
 * the registry table in `AVATAR_TEAMS_TABLE`; `env` adds to or overrides that environment.
 */
export function teamCommand(table: string, args: string[], env: Record<string, string> = {}): SpawnSyncReturns<string> {
  return spawnSync(join(ROOT, 'node_modules', '.bin', 'tsx'), [join(ROOT, 'scripts', 'team.ts'), ...args], {
    encoding: 'utf8',
    env: {
      ...process.env,
      AWS_ACCESS_KEY_ID: LOCAL_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: LOCAL_CREDENTIALS.secretAccessKey,
      AWS_REGION: LOCAL_REGION,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      AVATAR_TEAMS_TABLE: table,
      ...env,
    },
    timeout: 60_000,
  });
}
