/**
 * The job contract: the single source of truth for what a client uploads (`job.json`), what the
 * validate and normalize stages hand to the GPU containers (`normalize/plan.json`), and what every stage reports
 * (`status.json`, `manifest.json`). The containers validate against the JSON Schema generated from
 * this file (`npm run schema`); a test fails when the generated file is stale.
 *
 * Defaults and their reasons: docs/training.md; every number is a per-job option with bounds.
 */
import { z } from 'zod';

/** Pipeline stages, in order. One name per stage: state machine, handler folder, container module, S3 prefix. */
export const STAGES = ['validate', 'normalize', 'caption', 'train', 'evaluate', 'finalize'] as const;
export const StageSchema = z.enum(STAGES);
export type Stage = z.infer<typeof StageSchema>;

/** Path-safe identifier for teams and jobs: also used in S3 keys, execution names and Batch job names. */
export const IdSchema = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'use 1-63 characters: lowercase letters, digits and "-", starting with a letter or digit');

export const KINDS = ['character', 'style', 'object'] as const;
export const KindSchema = z.enum(KINDS);
export type Kind = z.infer<typeof KindSchema>;

/** The class word the command-line tools use when none is given. */
export const DEFAULT_CLASS_WORDS: Record<Kind, string> = { character: 'person', object: 'object', style: 'artwork' };

/**
 * Words a trigger token must not be: the token has to be rare so that it binds to the subject
 * instead of dragging in what the base model already knows.
 */
export const COMMON_WORDS = new Set([
  'man',
  'woman',
  'person',
  'people',
  'boy',
  'girl',
  'child',
  'dog',
  'cat',
  'pet',
  'photo',
  'picture',
  'style',
  'art',
  'face',
  'portrait',
  'the',
  'and',
  'with',
  'sks',
  'token',
  'lora',
  'model',
  'image',
]);

export const TokenSchema = z
  .string()
  .regex(/^[a-z][a-z0-9]{2,15}$/, 'use a short rare lowercase word of 3-16 letters/digits starting with a letter, e.g. "ohwx" or "anantn"')
  .refine((t) => !COMMON_WORDS.has(t), 'the token is a common word; pick a rare made-up word such as "ohwx" so it binds to the subject');

export const ClassWordSchema = z.string().regex(/^[a-z][a-z ]{1,30}[a-z]$/, 'use a plain lowercase class word such as "man", "woman", "dog" or "painting"');

export const CaptioningSchema = z
  .object({
    /** BLIP beam search width (10 by default). */
    numBeams: z.number().int().min(1).max(20).default(10),
    /** Minimum caption length in tokens (25 by default, about two sentences). */
    minLength: z.number().int().min(1).max(75).default(25),
    maxLength: z.number().int().min(5).max(150).default(75),
    /** Prefix added to every caption; `{token}` and `{classWord}` are substituted. */
    prefix: z.string().max(100).default('photo of {token}, '),
    /** Traits shared by every photo (e.g. "black hair"), removed from captions so they bind to the token. */
    commonTraits: z.array(z.string().min(2).max(40)).max(20).default([]),
  })
  .strict()
  .refine((c) => c.maxLength > c.minLength, { message: 'maxLength must be greater than minLength', path: ['maxLength'] })
  .refine((c) => c.prefix.includes('{token}'), { message: 'prefix must contain {token} so captions carry the trigger word', path: ['prefix'] });

export const OPTIMIZERS = ['AdamW8bit', 'AdamW', 'DAdaptation', 'Adafactor', 'Prodigy'] as const;
export const SCHEDULERS = ['polynomial', 'constant', 'cosine', 'cosine_with_restarts', 'linear', 'constant_with_warmup', 'adafactor'] as const;
export const NETWORKS = ['lora', 'locon', 'loha'] as const;

/** Training settings once every default is applied: what the trainer container reads. */
const trainingFields = {
  optimizer: z.enum(OPTIMIZERS),
  /** Separate rates override the global learning rate (1e-4 / 5e-5 by default). */
  unetLr: z.number().positive().max(2),
  textEncoderLr: z.number().min(0).max(2),
  lrScheduler: z.enum(SCHEDULERS),
  lrWarmupSteps: z.number().int().min(0).max(2000),
  /** kohya `--optimizer_args`, `key=value` each. */
  optimizerArgs: z.array(z.string().regex(/^[a-z_]+=[A-Za-z0-9_.()+-]+$/, 'use key=value')).max(8),
  network: z.enum(NETWORKS),
  networkDim: z.number().int().min(1).max(256),
  networkAlpha: z.number().positive().max(256),
  mixedPrecision: z.enum(['bf16', 'fp16', 'no']),
  batchSize: z.number().int().min(1).max(2),
  /** Steps the plan aims for; repeats and epochs are derived from it unless given. */
  targetSteps: z.number().int().min(100).max(10000),
  repeats: z.number().int().min(1).max(100).optional(),
  epochs: z.number().int().min(1).max(50).optional(),
  /** 'auto': 768 when most usable photos exceed 768x768, else 512. */
  resolution: z.union([z.literal('auto'), z.literal(512), z.literal(768)]),
  cacheLatents: z.boolean(),
  colorAug: z.boolean(),
  flipAug: z.boolean(),
  seed: z
    .number()
    .int()
    .min(0)
    .max(2 ** 31 - 1),
};
export const TrainingResolvedSchema = z
  .object(trainingFields)
  .strict()
  .superRefine((t, ctx) => {
    // Optimizer rules (docs/training.md, Optimizer presets), enforced before any GPU minute is spent.
    const fail = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
    const adaptive = t.optimizer === 'DAdaptation' || t.optimizer === 'Prodigy' || t.optimizer === 'Adafactor';
    if (adaptive && t.unetLr !== 1) fail('unetLr', `${t.optimizer} adapts the step size itself: set unetLr to 1`);
    if (adaptive && t.textEncoderLr !== 0.5) fail('textEncoderLr', `${t.optimizer} needs textEncoderLr 0.5`);
    if ((t.optimizer === 'DAdaptation' || t.optimizer === 'Prodigy') && t.lrScheduler !== 'constant') {
      fail('lrScheduler', `${t.optimizer} needs lrScheduler "constant"`);
    }
    if (t.optimizer === 'DAdaptation' && !t.optimizerArgs.includes('decouple=True')) {
      fail('optimizerArgs', 'DAdaptation needs optimizerArgs to include "decouple=True"');
    }
    if (t.optimizer === 'Adafactor') {
      if (t.lrScheduler !== 'adafactor') fail('lrScheduler', 'Adafactor needs lrScheduler "adafactor"');
      for (const arg of ['relative_step=True', 'scale_parameter=True']) {
        if (!t.optimizerArgs.includes(arg)) fail('optimizerArgs', `Adafactor needs optimizerArgs to include "${arg}"`);
      }
    }
    if (t.lrScheduler === 'adafactor' && t.optimizer !== 'Adafactor') {
      fail('lrScheduler', 'the "adafactor" scheduler only works with the Adafactor optimizer');
    }
    if (t.lrScheduler === 'constant' && t.lrWarmupSteps > 0) {
      fail('lrWarmupSteps', 'the constant scheduler takes no warmup: use constant_with_warmup or set lrWarmupSteps to 0');
    }
    if (t.cacheLatents && t.colorAug) {
      fail('colorAug', 'cached latents cannot be combined with colour augmentation: set cacheLatents or colorAug to false');
    }
  });
export type Training = z.infer<typeof TrainingResolvedSchema>;

/** What a job may give: any subset; the rest comes from the optimizer's, network's and kind's defaults. */
export const TrainingInputSchema = z.object(trainingFields).partial().strict();

/** Per-optimizer defaults (docs/training.md, Optimizer presets). */
const OPTIMIZER_DEFAULTS: Record<(typeof OPTIMIZERS)[number], Pick<Training, 'unetLr' | 'textEncoderLr' | 'lrScheduler' | 'optimizerArgs'>> = {
  AdamW8bit: { unetLr: 1e-4, textEncoderLr: 5e-5, lrScheduler: 'polynomial', optimizerArgs: [] },
  AdamW: { unetLr: 1e-4, textEncoderLr: 5e-5, lrScheduler: 'polynomial', optimizerArgs: [] },
  DAdaptation: { unetLr: 1, textEncoderLr: 0.5, lrScheduler: 'constant', optimizerArgs: ['decouple=True'] },
  Adafactor: {
    unetLr: 1,
    textEncoderLr: 0.5,
    lrScheduler: 'adafactor',
    optimizerArgs: ['relative_step=True', 'scale_parameter=True', 'warmup_init=False'],
  },
  Prodigy: { unetLr: 1, textEncoderLr: 0.5, lrScheduler: 'constant', optimizerArgs: ['decouple=True'] },
};

/** Plain LoRA at 128/128 (docs/training.md); LyCORIS variants at the small dim/alpha their authors suggest. */
const NETWORK_DEFAULTS: Record<(typeof NETWORKS)[number], Pick<Training, 'networkDim' | 'networkAlpha'>> = {
  lora: { networkDim: 128, networkAlpha: 128 },
  locon: { networkDim: 16, networkAlpha: 1 },
  loha: { networkDim: 16, networkAlpha: 1 },
};

/** Kind presets: a style has no face whose asymmetry flipping would damage. */
const KIND_DEFAULTS: Record<Kind, Pick<Training, 'flipAug' | 'targetSteps'>> = {
  character: { flipAug: false, targetSteps: 1875 },
  object: { flipAug: false, targetSteps: 1875 },
  style: { flipAug: true, targetSteps: 2500 },
};

export function resolveTraining(kind: Kind, given: z.infer<typeof TrainingInputSchema>): Training {
  const optimizer = given.optimizer ?? 'AdamW8bit';
  const network = given.network ?? 'lora';
  return {
    optimizer,
    ...OPTIMIZER_DEFAULTS[optimizer],
    lrWarmupSteps: 0,
    network,
    ...NETWORK_DEFAULTS[network],
    mixedPrecision: 'bf16',
    batchSize: 1,
    ...KIND_DEFAULTS[kind],
    resolution: 'auto',
    cacheLatents: true,
    colorAug: false,
    seed: 42,
    ...given,
  };
}

const GridPromptsSchema = z.array(z.string().min(3).max(300)).min(1).max(8);

/**
 * The evaluation grid's default prompt per kind. A character job gets docs/training.md's test prompt
 * (a trait to override, red hair, and a medium); objects and styles are asked the same of their kind:
 * the subject somewhere new, the style on a new subject.
 */
export const GRID_PROMPTS: Record<Kind, string[]> = {
  character: ['a portrait of {token}, red hair, handsome face, oil painting, artstation'],
  object: ['a photo of {token}, a {classWord}, on a wooden table in a sunny garden, detailed'],
  style: ['a lighthouse on a cliff at sunset, in the style of {token} {classWord}'],
};

export const EvaluationSchema = z
  .object({
    /**
     * Prompts rendered with every checkpoint; `{token}` and `{classWord}` are substituted.
     * Absent: the job kind's grid prompt ({@link GRID_PROMPTS}).
     */
    prompts: GridPromptsSchema.optional(),
    negativePrompt: z
      .string()
      .max(500)
      .default(
        'ugly, poorly drawn hands, poorly drawn feet, poorly drawn face, out of frame, extra limbs, disfigured, deformed, watermark, signature, bad art, blurry, blurred',
      ),
    /** LoRA strengths, the grid's rows (1.0 down to 0.5 by default). */
    strengths: z.array(z.number().min(0).max(2)).min(1).max(10).default([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]),
    steps: z.number().int().min(1).max(150).default(35),
    cfgScale: z.number().min(1).max(30).default(7),
    sampler: z.enum(['euler_a', 'euler', 'ddim', 'dpmsolver++']).default('euler_a'),
    seed: z
      .number()
      .int()
      .min(0)
      .max(2 ** 31 - 1)
      .default(1234),
    width: z.number().int().min(256).max(1024).multipleOf(64).default(512),
    height: z.number().int().min(256).max(1024).multipleOf(64).default(512),
    /**
     * The avatar pack's prompts, rendered at the recommended checkpoint and strength; `{token}` and
     * `{classWord}` are substituted. Absent: the job kind's default set (containers/trainer prompt_sets.py).
     */
    packPrompts: z.array(z.string().min(3).max(300)).min(1).max(16).optional(),
    /** Seeds per pack prompt (seed, seed+1, ...). Absent: 2. */
    packSeeds: z.number().int().min(1).max(4).optional(),
  })
  .strict();

const specFields = {
  /** Trigger word the LoRA binds the subject to. */
  token: TokenSchema,
  /** What the subject is ("man", "dog", "painting"). */
  classWord: ClassWordSchema,
  /** Optional name for the LoRA files; defaults to the token. */
  outputName: z
    .string()
    .regex(/^[a-z0-9][a-z0-9_-]{0,47}$/, 'use lowercase letters, digits, "_" and "-"')
    .optional(),
};

/** The job spec with every default applied: what `normalize/plan.json` carries to the containers. */
export const ResolvedJobSpecSchema = z
  .object({
    ...specFields,
    kind: KindSchema,
    captioning: CaptioningSchema,
    evaluation: EvaluationSchema.extend({ prompts: GridPromptsSchema }),
    training: TrainingResolvedSchema,
  })
  .strict();
export type JobSpec = z.infer<typeof ResolvedJobSpecSchema>;

/** `teams/<teamId>/jobs/<jobId>/job.json`, uploaded last: its arrival starts the job. */
export const JobSpecSchema = z
  .object({
    ...specFields,
    kind: KindSchema.default('character'),
    captioning: CaptioningSchema.default(CaptioningSchema.parse({})),
    evaluation: EvaluationSchema.default(EvaluationSchema.parse({})),
    training: TrainingInputSchema.default({}),
  })
  .strict()
  .transform((spec) => ({
    ...spec,
    evaluation: { ...spec.evaluation, prompts: spec.evaluation.prompts ?? GRID_PROMPTS[spec.kind] },
    training: resolveTraining(spec.kind, spec.training),
  }))
  // zod types a pipe's input against the previous output exactly; defaults make them differ only in optionality.
  .pipe(ResolvedJobSpecSchema as unknown as z.ZodType<JobSpec, JobSpec>);
export type JobSpecInput = z.input<typeof JobSpecSchema>;

/** Photo count bounds per kind: `ideal` explained in docs/training.md; `min`/`max` are hard limits. */
export const COUNT_RULES: Record<Kind, { min: number; max: number; idealMin: number; idealMax: number }> = {
  character: { min: 10, max: 100, idealMin: 20, idealMax: 50 },
  object: { min: 10, max: 100, idealMin: 20, idealMax: 50 },
  style: { min: 20, max: 300, idealMin: 50, idealMax: 200 },
};

/** The training plan, with its arithmetic written out for the record. */
export const PlanSchema = z
  .object({
    numImages: z.number().int().min(1),
    repeats: z.number().int().min(1),
    epochs: z.number().int().min(1),
    batchSize: z.number().int().min(1),
    totalSteps: z.number().int().min(1),
    resolution: z.union([z.literal(512), z.literal(768)]),
    /** kohya image folder name, `<repeats>_<token>`. */
    folder: z.string(),
    arithmetic: z.string(),
  })
  .strict();
export type Plan = z.infer<typeof PlanSchema>;

/** `normalize/plan.json`: what the GPU containers read. Carries the spec with every default applied. */
export const DatasetPlanSchema = z
  .object({
    teamId: IdSchema,
    jobId: IdSchema,
    spec: ResolvedJobSpecSchema,
    plan: PlanSchema,
    outputName: z.string(),
    /** Dataset image file names inside `normalize/<folder>/`. */
    images: z.array(z.string()).min(1),
    /** Images that arrived with a user caption (`normalize/<folder>/<stem>.txt` written by normalize). */
    userCaptions: z.array(z.string()).default([]),
  })
  .strict();
export type DatasetPlan = z.infer<typeof DatasetPlanSchema>;

/** `cancelled`: the execution was stopped (by an operator or the API) before it finished. */
export const JOB_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
/** States a job never leaves: nothing may rewrite their status.json. */
export const TERMINAL_STATES: ReadonlySet<(typeof JOB_STATES)[number]> = new Set(['succeeded', 'failed', 'cancelled']);

export const ErrorInfoSchema = z
  .object({
    /** Stable machine-readable code, e.g. TOO_FEW_PHOTOS. */
    code: z.string(),
    /** What went wrong and what to do. */
    message: z.string(),
    /** The offending input (a file, a field), when there is one. */
    input: z.string().optional(),
  })
  .strict();
export type ErrorInfo = z.infer<typeof ErrorInfoSchema>;

/**
 * What a job cost, written into its terminal `status.json` and into `manifest.json`: GPU time from
 * AWS Batch's attempt records priced per instance type and Spot/on demand (lambdas/shared/cost.ts).
 */
export const CostSchema = z
  .object({
    /** US dollars, to the micro-dollar. */
    usd: z.number().min(0),
    /** Billed GPU seconds (running time plus start-up, every attempt). */
    gpuSeconds: z.number().min(0),
    /** Dollars per stage (`caption`, `train`, `evaluate`). */
    breakdown: z.record(z.string(), z.number().min(0)),
    /**
     * True when part of the figure is not from Batch's records: an instance type assumed for a
     * reclaimed instance, or the admission estimate charged because the records could not be read.
     */
    estimated: z.boolean(),
  })
  .strict();
export type Cost = z.infer<typeof CostSchema>;

/** `status.json`: rewritten at every transition and by the GPU jobs for progress. */
export const StatusSchema = z
  .object({
    teamId: IdSchema,
    jobId: IdSchema,
    state: z.enum(JOB_STATES),
    stage: StageSchema,
    progress: z
      .object({
        /** 0..1 within the current stage. */
        fraction: z.number().min(0).max(1),
        message: z.string(),
        epoch: z.number().int().optional(),
        epochs: z.number().int().optional(),
        step: z.number().int().optional(),
        totalSteps: z.number().int().optional(),
        loss: z.number().optional(),
        /** The Batch attempt that wrote this status (`AWS_BATCH_JOB_ATTEMPT`, from 1); a Spot reclaim starts the next one. */
        attempt: z.number().int().min(1).optional(),
        /** How many attempts Batch makes in all (the job definitions' retryAttempts). */
        attempts: z.number().int().min(1).optional(),
      })
      .strict()
      .optional(),
    createdAt: z.string(),
    updatedAt: z.string(),
    finishedAt: z.string().optional(),
    error: ErrorInfoSchema.optional(),
    /** What the job cost; set when it ended (succeeded, failed or cancelled) and it had been admitted. */
    cost: CostSchema.optional(),
  })
  .strict();
export type Status = z.infer<typeof StatusSchema>;

export const ManifestSchema = z
  .object({
    teamId: IdSchema,
    jobId: IdSchema,
    createdAt: z.string(),
    urlExpiresAt: z.string(),
    artifacts: z.array(
      z
        .object({
          key: z.string(),
          /** Path relative to the job prefix, e.g. `train/ohwx.safetensors`. */
          name: z.string(),
          stage: z.string(),
          size: z.number().int().min(0),
          sha256: z.string().regex(/^[0-9a-f]{64}$/),
          url: z.string().url(),
        })
        .strict(),
    ),
    /**
     * The checkpoint and strength the evaluate stage recommends (its `scores.json`), with the
     * AUTOMATIC1111 prompt tag `<lora:NAME:STRENGTH>`; absent when the job has no scores.
     */
    recommendation: z
      .object({
        checkpoint: z.string(),
        epoch: z.number().int(),
        strength: z.number(),
        tag: z.string().regex(/^<lora:[^:>]+:[0-9.]+>$/),
        reason: z.string(),
        runnerUp: z.object({ checkpoint: z.string(), epoch: z.number().int(), strength: z.number(), tag: z.string() }).nullable(),
      })
      .optional(),
    /** What the job cost (as in its final status.json); absent when no team accounting ran. */
    cost: CostSchema.optional(),
  })
  .strict();
export type Manifest = z.infer<typeof ManifestSchema>;

/** Execution input, from the `start` function. */
/** The execution's job secret (a `States.UUID()`), shown to the mint function for the job's S3 credentials. */
export const JobSecretSchema = z.string().min(16).max(256);

/** What each workflow stage receives; `jobSecret` is added by the state machine (absent in local tools' calls). */
export const ExecutionInputSchema = z.object({ teamId: IdSchema, jobId: IdSchema, jobSecret: JobSecretSchema.optional() }).strict();
export type ExecutionInput = z.infer<typeof ExecutionInputSchema>;

/** Turns zod issues into one message that names each offending field and says what to do. */
export function describeIssues(error: z.ZodError, file: string): string {
  const parts = error.issues.map((issue) => {
    const where = issue.path.length ? issue.path.join('.') : '(root)';
    if (issue.code === 'unrecognized_keys') {
      return `${where}: unknown field(s) ${issue.keys.map((k) => `"${k}"`).join(', ')}; remove them (allowed fields are in the README's job.json reference)`;
    }
    return `${where}: ${issue.message}`;
  });
  return `${file} is invalid: ${parts.join('; ')}`;
}
