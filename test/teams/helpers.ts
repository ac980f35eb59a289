/** A registry table on the local endpoint, fresh per call. */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { createTeamsTable, TEAM_DEFAULTS, type TeamConfig, TeamRegistry, teamsDocumentClient } from '../../lambdas/shared/teams';
import { LOCAL_CREDENTIALS, LOCAL_REGION } from '../helpers/moto';

let tables = 0;

export async function freshRegistry(endpoint: string, now: () => Date = () => new Date('2026-12-02T10:00:00Z')): Promise<TeamRegistry> {
  const config = { endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS };
  const tableName = `teams-${process.pid}-${++tables}`;
  await createTeamsTable(new DynamoDBClient(config), tableName);
  return new TeamRegistry(teamsDocumentClient(config), tableName, now);
}

export function team(teamId: string, overrides: Partial<TeamConfig> = {}): TeamConfig {
  return { ...TEAM_DEFAULTS, teamId, ...overrides };
}
