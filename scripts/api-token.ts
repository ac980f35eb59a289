/**
 * `npm run -s api:token -- --team <id>`: prints a bearer token the local API (`npm run api`) accepts,
 * for team `<id>` (the demo teams are alpha and beta; other teams get 403 TEAM_UNKNOWN).
 */
import { parseArgs } from 'node:util';
import { IdSchema } from '../lambdas/shared/contract';
import { DEMO_TEAMS, localToken } from './api/local-auth';

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { team: { type: 'string' }, expires: { type: 'string', default: '12h' } } });
  const team = IdSchema.safeParse(values.team);
  if (!team.success) {
    console.error(`error: --team <id> is required (demo teams: ${DEMO_TEAMS.join(', ')})`);
    return 2;
  }
  if (!(DEMO_TEAMS as readonly string[]).includes(team.data)) console.error(`warning: the local API only knows teams ${DEMO_TEAMS.join(', ')}`);
  console.log(await localToken(team.data, { expiresIn: values.expires }));
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
