import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RegistryWindows, TokenBuckets } from '../../lambdas/api/rate-limit';
import { freshRegistry } from '../../scripts/local/teams';
import { type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';

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

// Against moto's DynamoDB, serialised as real DynamoDB's conditional writes are (scripts/local/moto_serial.py).
describeWithMoto("per-team window in the team registry (every instance's requests together)", () => {
  let moto: Moto;
  beforeAll(async () => {
    moto = await startMoto({ serializeDynamoDb: true });
  });
  afterAll(() => moto?.stop());

  it('admits exactly the burst per window across concurrent instances, per team, and tells how long to wait', async () => {
    let now = new Date('2026-12-02T10:00:00.500Z').getTime();
    const registry = await freshRegistry(moto.endpoint, { now: () => new Date(now) });
    const limit = { burst: 5, perSecond: 1 }; // 5 requests per 5 s window
    // Three "Lambda instances", each with its own limiter object over the one table.
    const instances = [1, 2, 3].map(() => new RegistryWindows(registry, limit));
    expect(instances[0]!.windowMs).toBe(5000);

    const waits = await Promise.all(Array.from({ length: 12 }, (_, i) => instances[i % 3]!.take('alpha')));
    expect(waits.filter((w) => w === 0)).toHaveLength(5);
    // Refused in the window 10:00:00-10:00:05 at 10:00:00.5: 4.5 s left, rounded up.
    expect(waits.filter((w) => w > 0)).toEqual(Array(7).fill(5));
    expect(await instances[1]!.take('beta')).toBe(0); // another team's allowance is its own

    now += 5000; // the next window
    expect(await instances[2]!.take('alpha')).toBe(0);
    const items = await registry.items('alpha', 'RATE#');
    // Refused requests did not count; each window item expires by TTL an hour after its start.
    expect(items.map((i) => [i.sk, i.requests, i.expiresAt])).toEqual([
      [`RATE#${Date.parse('2026-12-02T10:00:00Z')}`, 5, Date.parse('2026-12-02T10:00:00Z') / 1000 + 3600],
      [`RATE#${Date.parse('2026-12-02T10:00:05Z')}`, 1, Date.parse('2026-12-02T10:00:05Z') / 1000 + 3600],
    ]);
  });
});
