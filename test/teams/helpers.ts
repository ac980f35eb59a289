import { TEAM_DEFAULTS, type TeamConfig, type TeamRegistry } from '../../lambdas/shared/teams';
import { freshRegistry as localRegistry } from '../../scripts/local/teams';

export { admissionRequest } from '../../scripts/local/teams';

/** A registry table on the local endpoint, fresh per call, on a fixed clock unless `now` is given. */
export function freshRegistry(endpoint: string, now: () => Date = () => new Date('2026-12-02T10:00:00Z')): Promise<TeamRegistry> {
  return localRegistry(endpoint, { now });
}

export function team(teamId: string, overrides: Partial<TeamConfig> = {}): TeamConfig {
  return { ...TEAM_DEFAULTS, teamId, ...overrides };
}
