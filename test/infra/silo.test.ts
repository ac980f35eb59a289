import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../infra/config';
import { resourcesOfType, synth } from './helpers';

const SILO = { team: 'acme', accountBudgetUsd: 500, alertEmails: ['finance@acme.example', 'ops@acme.example'] };

describe('silo mode', () => {
  const s = synth({ silo: SILO, maxVcpus: 32 });

  it("alerts on the whole account's monthly cost, unfiltered, to the team", () => {
    const budgets = resourcesOfType(s.json, 'AWS::Budgets::Budget');
    expect(budgets).toHaveLength(1);
    const [, budget] = budgets[0]!;
    expect(budget.Properties.Budget).toEqual({ BudgetType: 'COST', TimeUnit: 'MONTHLY', BudgetLimit: { Amount: 500, Unit: 'USD' } });
    const subscribers = SILO.alertEmails.map((Address) => ({ SubscriptionType: 'EMAIL', Address }));
    expect(budget.Properties.NotificationsWithSubscribers).toEqual([
      {
        Notification: { NotificationType: 'ACTUAL', Threshold: 80, ComparisonOperator: 'GREATER_THAN', ThresholdType: 'PERCENTAGE' },
        Subscribers: subscribers,
      },
      {
        Notification: { NotificationType: 'FORECASTED', Threshold: 100, ComparisonOperator: 'GREATER_THAN', ThresholdType: 'PERCENTAGE' },
        Subscribers: subscribers,
      },
    ]);
  });

  it('keeps the vCPU ceiling as the hard limit across the GPU compute environments', () => {
    const total = resourcesOfType(s.json, 'AWS::Batch::ComputeEnvironment').reduce((sum, [, ce]) => sum + ce.Properties.ComputeResources.MaxvCpus, 0);
    expect(total).toBe(32);
  });

  it("tags the stack's resources with the team, so a consolidated bill splits by team too", () => {
    for (const type of ['AWS::DynamoDB::Table', 'AWS::StepFunctions::StateMachine', 'AWS::Lambda::Function', 'AWS::S3::Bucket']) {
      for (const [, r] of resourcesOfType(s.json, type)) {
        expect(r.Properties.Tags ?? r.Properties.TagsList ?? []).toEqual(expect.arrayContaining([{ Key: 'team', Value: 'acme' }]));
      }
    }
  });

  it('has no account budget in pool mode', () => {
    expect(resourcesOfType(synth().json, 'AWS::Budgets::Budget')).toEqual([]);
  });

  it('refuses an invalid silo setting, naming the field', () => {
    expect(() => loadConfig({ silo: { ...SILO, alertEmails: [] } })).toThrow(/silo\.alertEmails/);
    expect(() => loadConfig({ silo: { ...SILO, team: 'Acme Corp' } })).toThrow(/silo\.team/);
    expect(() => loadConfig({ silo: { ...SILO, accountBudgetUsd: 0 } })).toThrow(/silo\.accountBudgetUsd/);
    expect(() => loadConfig(JSON.stringify({ silo: { ...SILO, budget: 1 } }))).toThrow(/silo: unknown|silo.*budget|Unrecognized/i);
  });
});
