/**
 * A team's AWS Budgets alert: a monthly COST budget of the team's `monthlyBudgetUsd`, filtered by the
 * `team` cost allocation tag (every GPU job, task and log stream carries it; see README "Cost
 * allocation tags" for the one activation step in the payer account), e-mailing the team's alert
 * addresses at 80 % of actual spend and 100 % of forecast spend. It complements admission (which
 * stops new jobs at the budget) with AWS's own bill, which also sees what the registry cannot.
 *
 * A change replaces the budget (delete, then create): Budgets has no way to replace a budget's
 * notifications in one call; the budget's history view restarts, its alerts do not miss a month.
 */
import { BudgetsClient, CreateBudgetCommand, DeleteBudgetCommand, type Notification, type Subscriber } from '@aws-sdk/client-budgets';
import type { TeamConfig } from '../lambdas/shared/teams';

/** The budget's name: one per team, recognisable in the Billing console. */
export const teamBudgetName = (teamId: string) => `avatar-team-${teamId}`;

/** The alerts: 80 % of actual spend, 100 % of forecast spend. */
export const TEAM_BUDGET_ALERTS: ReadonlyArray<Pick<Notification, 'NotificationType' | 'Threshold'>> = [
  { NotificationType: 'ACTUAL', Threshold: 80 },
  { NotificationType: 'FORECASTED', Threshold: 100 },
];

/** Creates or replaces the team's budget and its alerts. */
export async function putTeamBudget(budgets: Pick<BudgetsClient, 'send'>, accountId: string, config: TeamConfig): Promise<void> {
  await deleteTeamBudget(budgets, accountId, config.teamId);
  const subscribers: Subscriber[] = config.alertEmails.map((Address) => ({ SubscriptionType: 'EMAIL', Address }));
  await budgets.send(
    new CreateBudgetCommand({
      AccountId: accountId,
      Budget: {
        BudgetName: teamBudgetName(config.teamId),
        BudgetType: 'COST',
        TimeUnit: 'MONTHLY',
        BudgetLimit: { Amount: String(config.monthlyBudgetUsd), Unit: 'USD' },
        // A user-defined cost allocation tag filter: `user:<key>$<value>`.
        CostFilters: { TagKeyValue: [`user:team$${config.teamId}`] },
      },
      NotificationsWithSubscribers: subscribers.length
        ? TEAM_BUDGET_ALERTS.map((alert) => ({
            Notification: { ...alert, ComparisonOperator: 'GREATER_THAN', ThresholdType: 'PERCENTAGE' } as Notification,
            Subscribers: subscribers,
          }))
        : [],
    }),
  );
}

/** Deletes the team's budget; a budget that does not exist is fine. */
export async function deleteTeamBudget(budgets: Pick<BudgetsClient, 'send'>, accountId: string, teamId: string): Promise<void> {
  try {
    await budgets.send(new DeleteBudgetCommand({ AccountId: accountId, BudgetName: teamBudgetName(teamId) }));
  } catch (error) {
    if ((error as Error).name !== 'NotFoundException') throw error;
  }
}

export { BudgetsClient };
