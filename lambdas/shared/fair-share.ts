/**
 * Pushes the registry's fair-share weights into the Batch scheduling policy, so a team added or
 * re-weighted with `npm run team` takes effect without a deploy. Share decay and compute reservation
 * stay as deployed; teams not listed get Batch's default weight 1.
 *
 * Note the drift this makes on purpose: the template deploys the policy with no shares, a redeploy
 * resets them until the next sync (the admin command syncs on every add/update/suspend/resume).
 */
import { type BatchClient, DescribeSchedulingPoliciesCommand, UpdateSchedulingPolicyCommand } from '@aws-sdk/client-batch';
import type { TeamConfig } from './teams';

/** Batch allows at most 500 share identifiers in a policy. */
const MAX_SHARES = 500;

export async function syncFairShareWeights(
  batch: BatchClient,
  policyArn: string,
  teams: readonly Pick<TeamConfig, 'teamId' | 'fairShareWeight'>[],
): Promise<{ shareIdentifier: string; weightFactor: number }[]> {
  if (teams.length > MAX_SHARES) throw new Error(`${teams.length} teams exceed Batch's ${MAX_SHARES} share identifiers per scheduling policy`);
  const current = await batch.send(new DescribeSchedulingPoliciesCommand({ arns: [policyArn] }));
  const policy = current.schedulingPolicies?.[0];
  if (!policy) throw new Error(`scheduling policy ${policyArn} not found: pass the stack output SchedulingPolicyArn`);
  const shareDistribution = [...teams]
    .sort((a, b) => a.teamId.localeCompare(b.teamId))
    .map((t) => ({ shareIdentifier: t.teamId, weightFactor: t.fairShareWeight }));
  await batch.send(
    new UpdateSchedulingPolicyCommand({
      arn: policyArn,
      fairsharePolicy: { ...policy.fairsharePolicy, shareDistribution },
    }),
  );
  return shareDistribution;
}
