import { describe, expect, it } from 'vitest';
import { TokenBuckets } from '../../lambdas/api/rate-limit';

describe('per-team token bucket', () => {
  it('allows a burst, then refills at the rate; teams do not share a bucket', () => {
    let now = 0;
    const buckets = new TokenBuckets({ burst: 3, perSecond: 2 }, () => now);
    expect([1, 2, 3, 4].map(() => buckets.take('alpha'))).toEqual([0, 0, 0, 1]);
    expect(buckets.take('beta')).toBe(0); // alpha's burst does not touch beta
    now += 500; // one token back
    expect(buckets.take('alpha')).toBe(0);
    expect(buckets.take('alpha')).toBe(1);
    now += 60_000; // refills up to the burst, not beyond
    expect([1, 2, 3, 4].map(() => buckets.take('alpha'))).toEqual([0, 0, 0, 1]);
  });
});
