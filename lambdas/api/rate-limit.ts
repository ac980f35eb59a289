/**
 * Per-team token bucket, in memory, per Lambda instance (or local server process).
 *
 * Limits of this choice: each warm Lambda instance has its own buckets, so a team's effective rate
 * is `rate x concurrent instances`; a cold start refills the bucket. It stops one team's burst from
 * monopolising an instance at no cost per request; the hard global ceiling is the HTTP API stage's
 * throttling (set in infra/constructs/api.ts). A DynamoDB bucket would be exact at one conditional
 * write per request.
 */
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
