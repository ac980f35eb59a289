/**
 * Per-team rate limits, in two layers:
 * - {@link TokenBuckets}: in memory, per Lambda instance (or local server process). Free, and it
 *   turns a team's burst away before it costs a DynamoDB write, but each warm instance has its own.
 * - {@link RegistryWindows}: the exact limit across every instance, a fixed-window counter per team
 *   in the team registry at one conditional write per request that passed the first layer.
 * The HTTP API stage's throttling (infra/constructs/api.ts) stays the ceiling over all teams.
 */
import { UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { type TeamRegistry, teamKey } from '../shared/teams';

export interface RateLimit {
  /** Requests a team may burst. */
  readonly burst: number;
  /** Tokens added per second. */
  readonly perSecond: number;
}

export class TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    private readonly limit: RateLimit,
    private readonly now: () => number = Date.now,
  ) {}

  /** Takes a token; returns 0 when allowed, else the seconds to wait. */
  take(team: string): number {
    const now = this.now();
    const bucket = this.buckets.get(team) ?? { tokens: this.limit.burst, at: now };
    bucket.tokens = Math.min(this.limit.burst, bucket.tokens + ((now - bucket.at) / 1000) * this.limit.perSecond);
    bucket.at = now;
    this.buckets.set(team, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 0;
    }
    return Math.ceil((1 - bucket.tokens) / this.limit.perSecond);
  }
}

/** Where the app takes a team's request from its global allowance: 0 when allowed, else seconds to wait. */
export interface GlobalRateLimit {
  take(team: string): Promise<number>;
}

/**
 * A team's global allowance: `burst` requests per window of `burst / perSecond` seconds (the token
 * bucket's long-run rate), counted in the registry item `RATE#<window start>` under the team, which
 * DynamoDB's TTL removes an hour later. The counter only moves while it is under the limit
 * (a conditional ADD), so refused requests do not push the window further.
 */
export class RegistryWindows implements GlobalRateLimit {
  readonly windowMs: number;

  constructor(
    private readonly registry: TeamRegistry,
    private readonly limit: RateLimit,
  ) {
    this.windowMs = Math.max(1, Math.ceil(limit.burst / limit.perSecond)) * 1000;
  }

  async take(team: string): Promise<number> {
    const now = this.registry.now().getTime();
    const start = Math.floor(now / this.windowMs) * this.windowMs;
    try {
      await this.registry.doc.send(
        new UpdateCommand({
          TableName: this.registry.tableName,
          Key: { pk: teamKey(team).pk, sk: `RATE#${start}` },
          UpdateExpression: 'ADD #n :one SET expiresAt = :expires',
          ConditionExpression: 'attribute_not_exists(#n) OR #n < :limit',
          ExpressionAttributeNames: { '#n': 'requests' },
          ExpressionAttributeValues: { ':one': 1, ':limit': this.limit.burst, ':expires': Math.floor(start / 1000) + 3600 },
        }),
      );
      return 0;
    } catch (error) {
      if ((error as Error).name !== 'ConditionalCheckFailedException') throw error;
      return Math.max(1, Math.ceil((start + this.windowMs - now) / 1000));
    }
  }
}
