import { describe, expect, it } from 'vitest';
import { isClientError, systemFailureRecord } from '../../lambdas/shared/metrics';

describe('SystemFailures metric', () => {
  it('is an embedded-metric-format record CloudWatch turns into Avatar/SystemFailures by stack', () => {
    const record = systemFailureRecord(
      { job: { teamId: 't', jobId: 'j' }, stage: 'train', code: 'TIMEOUT', source: 'reconcile' },
      'AvatarStack',
      new Date('2026-11-26T12:00:00Z'),
    );
    expect(record).toEqual({
      _aws: {
        Timestamp: Date.parse('2026-11-26T12:00:00Z'),
        CloudWatchMetrics: [{ Namespace: 'Avatar', Dimensions: [['Stack']], Metrics: [{ Name: 'SystemFailures', Unit: 'Count' }] }],
      },
      Stack: 'AvatarStack',
      SystemFailures: 1,
      level: 'error',
      message: 'system failure',
      teamId: 't',
      jobId: 'j',
      stage: 'train',
      code: 'TIMEOUT',
      source: 'reconcile',
    });
  });

  it("treats only our handlers' InvalidInputError as a client error", () => {
    expect(isClientError('InvalidInputError')).toBe(true);
    for (const type of ['States.Timeout', 'States.TaskFailed', 'TransientError', 'Lambda.ServiceException', 'Error']) {
      expect(isClientError(type)).toBe(false);
    }
  });
});
