/**
 * Prices and throughput figures the cost estimate and the cost ledger use. Defaults are us-east-1
 * list prices (2026) and A10G-class speeds (the README's time and cost model); a deployment overrides any of them
 * (the stack passes them to the functions as `AVATAR_PRICES` JSON).
 */
import { z } from 'zod';
import type { Plan } from './contract';

const InstancePriceSchema = z.object({ onDemandHourlyUsd: z.number().min(0), spotHourlyUsd: z.number().min(0) }).strict();

export const PricesSchema = z
  .object({
    /** Hourly price per instance type. Spot prices move: set what the fleet paid lately. */
    instances: z.record(z.string(), InstancePriceSchema),
    /** Seconds of GPU per training step, by resolution (the plan's `resolution`). */
    secondsPerStep: z.object({ 512: z.number().positive(), 768: z.number().positive() }).strict(),
    /** Seconds a GPU stage spends before its work (instance start, image pull, model load). */
    gpuStartupSeconds: z.number().min(0),
    /** Captioning seconds per photo. */
    captionSecondsPerPhoto: z.number().min(0),
    /** Evaluation seconds per checkpoint (one checkpoint per epoch). */
    evaluateSecondsPerCheckpoint: z.number().min(0),
    /** Lambda: USD per GB-second (x86) and the GB-seconds the Lambda stages spend per photo. */
    lambdaUsdPerGbSecond: z.number().min(0),
    lambdaGbSecondsPerPhoto: z.number().min(0),
    /** S3 Standard USD per GB-month, and the GB a job keeps per photo and per checkpoint. */
    storageUsdPerGbMonth: z.number().min(0),
    storageGbPerPhoto: z.number().min(0),
    storageGbPerCheckpoint: z.number().min(0),
  })
  .strict();
export type Prices = z.infer<typeof PricesSchema>;

export const DEFAULT_PRICES: Prices = {
  instances: {
    'g5.xlarge': { onDemandHourlyUsd: 1.006, spotHourlyUsd: 0.4 },
    'g5.2xlarge': { onDemandHourlyUsd: 1.212, spotHourlyUsd: 0.48 },
    'g6.xlarge': { onDemandHourlyUsd: 0.805, spotHourlyUsd: 0.33 },
    'g6.2xlarge': { onDemandHourlyUsd: 0.978, spotHourlyUsd: 0.4 },
  },
  secondsPerStep: { 512: 0.45, 768: 0.9 },
  gpuStartupSeconds: 240,
  captionSecondsPerPhoto: 2,
  evaluateSecondsPerCheckpoint: 60,
  lambdaUsdPerGbSecond: 0.0000166667,
  lambdaGbSecondsPerPhoto: 1.5,
  storageUsdPerGbMonth: 0.023,
  storageGbPerPhoto: 0.01,
  storageGbPerCheckpoint: 0.15,
};

/** Prices from `AVATAR_PRICES` (JSON, any subset of instance types and figures) over the defaults. */
export function loadPrices(raw: string | undefined = process.env.AVATAR_PRICES): Prices {
  if (!raw) return DEFAULT_PRICES;
  let given: Record<string, unknown>;
  try {
    given = JSON.parse(raw) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`AVATAR_PRICES is not valid JSON (${(err as Error).message}): give an object such as {"instances":{"g5.xlarge":{...}}}`);
  }
  const merged = { ...DEFAULT_PRICES, ...given, instances: { ...DEFAULT_PRICES.instances, ...(given.instances as object | undefined) } };
  const parsed = PricesSchema.safeParse(merged);
  if (!parsed.success) throw new Error(`AVATAR_PRICES is invalid: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

/** What admission reserves for a job. */
export interface CostEstimate {
  /** GPU seconds of caption + train + evaluate, startups included. */
  readonly gpuSeconds: number;
  /** Dollars, rounded up to the micro-dollar. */
  readonly usd: number;
  /** The intake Lambdas' share of `usd` (photos x GB-seconds per photo), charged as this estimate when the job ends. */
  readonly lambdaUsd: number;
  /** Storage's share of `usd` (photos and checkpoints for a month), charged as this estimate when the job ends. */
  readonly storageUsd: number;
  /** The instance type priced (the dearest the team may run on, on demand: an upper bound). */
  readonly pricedInstanceType: string;
  /** One line of arithmetic for status.json and the CLI. */
  readonly arithmetic: string;
}

/** The plan's cost upper bound: every GPU second at the on-demand price of the dearest allowed instance. */
export function estimateJobCost(
  plan: Pick<Plan, 'numImages' | 'totalSteps' | 'epochs' | 'resolution'>,
  instanceTypes: readonly string[],
  prices: Prices,
): CostEstimate {
  const priced = instanceTypes.map((t) => {
    const price = prices.instances[t];
    if (!price) throw new Error(`no price configured for instance type ${t}: add it to AVATAR_PRICES.instances`);
    return { t, hourly: price.onDemandHourlyUsd };
  });
  const dearest = priced.reduce((a, b) => (b.hourly > a.hourly ? b : a));
  const gpuSeconds = Math.ceil(
    3 * prices.gpuStartupSeconds +
      plan.numImages * prices.captionSecondsPerPhoto +
      plan.totalSteps * prices.secondsPerStep[plan.resolution] +
      plan.epochs * prices.evaluateSecondsPerCheckpoint,
  );
  const gpuUsd = (gpuSeconds / 3600) * dearest.hourly;
  const lambdaUsd = plan.numImages * prices.lambdaGbSecondsPerPhoto * prices.lambdaUsdPerGbSecond;
  const storageUsd = (plan.numImages * prices.storageGbPerPhoto + plan.epochs * prices.storageGbPerCheckpoint) * prices.storageUsdPerGbMonth;
  const usd = Math.ceil((gpuUsd + lambdaUsd + storageUsd) * 1e6 - 1e-6) / 1e6;
  return {
    gpuSeconds,
    usd,
    lambdaUsd: Math.ceil(lambdaUsd * 1e6 - 1e-6) / 1e6,
    storageUsd: Math.ceil(storageUsd * 1e6 - 1e-6) / 1e6,
    pricedInstanceType: dearest.t,
    arithmetic: `${gpuSeconds} GPU s x $${dearest.hourly}/h (${dearest.t} on demand) + Lambda $${lambdaUsd.toFixed(6)} + storage $${storageUsd.toFixed(6)} = $${usd.toFixed(6)}`,
  };
}
