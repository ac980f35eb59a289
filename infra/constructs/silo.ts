import { Tags } from 'aws-cdk-lib';
import * as budgets from 'aws-cdk-lib/aws-budgets';
import { Construct } from 'constructs';
import type { SiloConfig } from '../config';

/** Thresholds of the account budget alert: 80 % of actual spend, 100 % of forecast spend. */
export const SILO_ALERTS = [
  { notificationType: 'ACTUAL', threshold: 80 },
  { notificationType: 'FORECASTED', threshold: 100 },
] as const;

/**
 * Silo mode's cost scope: an account-level monthly COST budget (no filter: everything the team's
 * account spends, GPU or not) e-mailing the team, and the team's tag on every resource of the stack
 * so a consolidated bill splits by team as well as by account. The vCPU ceiling (`maxVcpus`) is the
 * hard limit; the budget is the alarm.
 */
export class SiloBudget extends Construct {
  /** The AWS::Budgets::Budget. */
  public readonly budget: budgets.CfnBudget;

  constructor(scope: Construct, id: string, silo: SiloConfig) {
    super(scope, id);
    this.budget = new budgets.CfnBudget(this, 'AccountBudget', {
      budget: {
        budgetType: 'COST',
        timeUnit: 'MONTHLY',
        budgetLimit: { amount: silo.accountBudgetUsd, unit: 'USD' },
      },
      notificationsWithSubscribers: SILO_ALERTS.map((alert) => ({
        notification: { ...alert, comparisonOperator: 'GREATER_THAN', thresholdType: 'PERCENTAGE' },
        subscribers: silo.alertEmails.map((address) => ({ subscriptionType: 'EMAIL', address })),
      })),
    });
    Tags.of(scope).add('team', silo.team);
  }
}
