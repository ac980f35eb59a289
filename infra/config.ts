import { z } from 'zod';
import { IdSchema } from '../lambdas/shared/contract';
import { LAYOUT } from '../lambdas/shared/layout';

/** The base model train and evaluate read unless the deployment names another (artifacts bucket). */
export const DEFAULT_BASE_MODEL_KEY = `${LAYOUT.models}sd15/v1-5-pruned-emaonly.safetensors`;

/**
 * Silo mode: the stack deployed into one team's own AWS account. Its cost scope is the account
 * itself: an account-level AWS Budgets alert (every cost in the account, no tag filter) and the
 * vCPU ceiling `maxVcpus`. See the README, "Pool or silo".
 */
export const SiloConfigSchema = z
  .object({
    /** The team the account belongs to (register it with `npm run team -- add` after the deploy). */
    team: IdSchema,
    /** Monthly spend of the whole account, in US dollars, that the alert watches. */
    accountBudgetUsd: z.number().positive().max(1_000_000),
    /** Where the account budget alerts go (AWS Budgets allows 10 subscribers per alert). */
    alertEmails: z.array(z.email()).min(1).max(10),
  })
  .strict();
export type SiloConfig = z.infer<typeof SiloConfigSchema>;

/** GPU instance families the Batch job definitions are sized for (one NVIDIA GPU, >= 16 GiB host memory). */
export const SUPPORTED_GPU_FAMILIES = ['g5', 'g6', 'g6e'] as const;

/**
 * Sizes that carry exactly one GPU and at least the 4 vCPU / 16 GiB the job definitions need,
 * with their vCPU counts (the same for every supported family).
 */
const SIZE_VCPUS = { xlarge: 4, '2xlarge': 8, '4xlarge': 16, '8xlarge': 32, '16xlarge': 64 } as const;
const SUPPORTED_SIZES = Object.keys(SIZE_VCPUS) as (keyof typeof SIZE_VCPUS)[];

/** vCPUs of a supported instance type name such as `g5.2xlarge`. */
export function instanceVcpus(instanceType: string): number | undefined {
  const size = instanceType.split('.')[1];
  return size !== undefined && Object.hasOwn(SIZE_VCPUS, size) ? SIZE_VCPUS[size as keyof typeof SIZE_VCPUS] : undefined;
}

const instanceTypePattern = new RegExp(`^(${SUPPORTED_GPU_FAMILIES.join('|')})\\.(${SUPPORTED_SIZES.join('|')})$`);

/**
 * Deployment configuration, read from the CDK context key `avatar`.
 * Every field has a default so the stack deploys as-is.
 */
export const AvatarConfigSchema = z
  .object({
    /** Days an uploaded raw photo (inbox `teams/` prefix) is kept before S3 deletes it. */
    rawPhotoRetentionDays: z.number().int().min(1).max(3650).default(30),
    /**
     * Days everything the pipeline writes for a job (artifacts `teams/` prefix: status, face crops,
     * dataset, captions, checkpoints, resume state, LoRA, grid, manifest) is kept before S3 deletes it.
     */
    jobDataRetentionDays: z.number().int().min(1).max(3650).default(30),
    /**
     * Hard spend ceiling: the most vCPUs the GPU compute environments may run at once, together.
     * With `spot` on it is split: Spot gets the larger half, on-demand the rest.
     */
    maxVcpus: z.number().int().min(4).max(1024).default(16),
    /**
     * Warm path: vCPUs of GPU instances kept running while idle, so a job skips the instance start,
     * image pull and model fetch (~6 minutes, estimated). 0 (the default) scales to zero; 4 keeps one
     * g5.xlarge (~$730/month on demand). Applied to the first compute environment in the queue's order.
     */
    minVcpus: z.number().int().min(0).max(1024).default(0),
    /**
     * Minutes a GPU job may wait in RUNNABLE for capacity (no Spot/on-demand capacity, a vCPU quota,
     * or no instance type that fits) before Batch cancels it and the job fails with GPU_CAPACITY_UNAVAILABLE.
     * Batch accepts 10 minutes to 24 hours.
     */
    gpuWaitMinutes: z
      .number()
      .int()
      .min(10)
      .max(24 * 60)
      .default(30),
    /** EC2 instance types for the GPU compute environments (single-GPU g5/g6/g6e sizes). */
    instanceTypes: z
      .array(
        z.string().regex(instanceTypePattern, {
          message: `must be a single-GPU instance type of family ${SUPPORTED_GPU_FAMILIES.join('/')} (e.g. g5.xlarge)`,
        }),
      )
      .min(1)
      .default(['g5.xlarge', 'g5.2xlarge']),
    /** Try Spot capacity first and fall back to on-demand; false runs on-demand only. */
    spot: z.boolean().default(true),
    /** Lifetime of the presigned download URLs finalize writes into the manifest (SigV4 maximum 7 days). */
    urlExpirySeconds: z.number().int().min(60).max(604_800).default(3600),
    /** Where CloudWatch alarms are emailed; no subscription when absent. */
    alarmEmail: z.email().optional(),
    /** Whole-execution timeout of the state machine, in hours. */
    executionTimeoutHours: z
      .number()
      .int()
      .min(1)
      .max(24 * 7)
      .default(12),
    /** Size of the encrypted gp3 root volume of each GPU instance (images plus model cache). */
    rootVolumeGiB: z.number().int().min(100).max(16_384).default(200),
    /** Artifacts-bucket key of the base model the operator uploads (under `models/`). */
    baseModelKey: z
      .string()
      .regex(new RegExp(`^${LAYOUT.models}[A-Za-z0-9._\\-/]+$`), { message: `must be an artifacts-bucket key under ${LAYOUT.models}` })
      .default(DEFAULT_BASE_MODEL_KEY),
    /** Deploy for one team in its own account (absent: pool mode, many teams in one account). */
    silo: SiloConfigSchema.optional(),
  })
  .strict()
  .superRefine((config, ctx) => {
    // A ceiling below the smallest instance would leave every job RUNNABLE forever.
    // Refinements also run when fields already failed; report only the cross-field problem here.
    const vcpus = config.instanceTypes.map(instanceVcpus);
    if (vcpus.length === 0 || vcpus.some((v) => v === undefined)) return;
    const smallest = Math.min(...(vcpus as number[]));
    // With Spot on, each of the two environments gets part of the ceiling and must fit one instance.
    const needed = config.spot ? 2 * smallest : smallest;
    if (config.maxVcpus >= 4 && config.maxVcpus < needed) {
      ctx.addIssue({
        code: 'custom',
        path: ['maxVcpus'],
        message: config.spot
          ? `must be at least ${needed}: with spot on, the ceiling is split between the Spot and on-demand environments and each needs room for the smallest configured instance type (${smallest} vCPUs); raise maxVcpus or set spot to false`
          : `must be at least ${smallest}, the vCPUs of the smallest configured instance type`,
      });
    }
  })
  .superRefine((config, ctx) => {
    // The warm instances run in the first environment, which gets only part of maxVcpus with Spot on.
    const first = splitVcpus(config.maxVcpus, config.spot);
    const ceiling = config.spot ? first.spot : first.onDemand;
    if (config.minVcpus > ceiling) {
      ctx.addIssue({
        code: 'custom',
        path: ['minVcpus'],
        message: `must be at most ${ceiling}, the ceiling of the ${config.spot ? 'Spot' : 'on-demand'} environment that keeps the warm instances (maxVcpus ${config.maxVcpus}${config.spot ? ', split with on-demand' : ''}); raise maxVcpus or lower minVcpus`,
      });
    }
  })
  .superRefine((config, ctx) => {
    // Job data must outlive the longest job plus the life of the download links finalize signs.
    const neededHours = config.executionTimeoutHours + config.urlExpirySeconds / 3600;
    if (config.jobDataRetentionDays * 24 < neededHours) {
      ctx.addIssue({
        code: 'custom',
        path: ['jobDataRetentionDays'],
        message: `must cover executionTimeoutHours plus urlExpirySeconds (${Math.ceil(neededHours / 24)} days), or outputs expire before the job ends or its links do`,
      });
    }
  });

/** vCPU ceilings of the two compute environments; their sum never exceeds `maxVcpus`. */
export function splitVcpus(maxVcpus: number, spot: boolean): { spot: number; onDemand: number } {
  if (!spot) return { spot: 0, onDemand: maxVcpus };
  const onDemand = Math.floor(maxVcpus / 2);
  return { spot: maxVcpus - onDemand, onDemand };
}

/** Validated deployment configuration with all defaults applied. */
export type AvatarConfig = z.infer<typeof AvatarConfigSchema>;

/** The CDK context key holding the configuration. */
export const CONFIG_CONTEXT_KEY = 'avatar';

/**
 * Validates raw configuration (an object, a JSON string or undefined) and applies defaults.
 * @throws Error naming every invalid field, e.g. `Invalid avatar config: maxVcpus: ...`.
 */
export function loadConfig(raw: unknown): AvatarConfig {
  let value: unknown = raw ?? {};
  if (typeof value === 'string') {
    try {
      value = JSON.parse(value);
    } catch (err) {
      throw new Error(`Invalid avatar config: context "${CONFIG_CONTEXT_KEY}" is not valid JSON (${(err as Error).message})`);
    }
  }
  const parsed = AvatarConfigSchema.safeParse(value);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      const field = issue.path.length > 0 ? issue.path.join('.') : '(root)';
      return `${field}: ${issue.message}`;
    });
    throw new Error(`Invalid avatar config: ${problems.join('; ')}`);
  }
  return parsed.data;
}
