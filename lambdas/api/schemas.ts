/**
 * The job API's request and response shapes. They reuse the job contract (job.json, status.json,
 * manifest.json) so the API, the OpenAPI document and the pipeline share one definition.
 */
import { z } from '@hono/zod-openapi';
import { ErrorInfoSchema, IdSchema, JOB_STATES, JobSpecSchema, ManifestSchema, StageSchema, StatusSchema } from '../shared/contract';

/** Content types a photo upload target accepts (S3 refuses any other Content-Type). */
export const PHOTO_CONTENT_TYPES = ['image/jpeg', 'image/png', 'image/webp', 'image/heic', 'image/heif', 'image/avif', 'image/tiff', 'image/gif'] as const;

/** Same rule as the inbox path's photo names (lambdas/shared/keys.ts photoName). */
export const PhotoNameSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$/, 'use a file name of letters, digits, ".", "_", "-" or spaces, without folders')
  .refine((n) => !n.includes('..'), 'a photo name must not contain ".."');

export const ErrorResponseSchema = z.object({ error: ErrorInfoSchema }).openapi('Error');

/**
 * A job spec exactly as job.json takes it. Requests carry it as an object and the server validates it
 * with the contract's JobSpecSchema (messages name each field); the document describes it with the
 * JSON Schema of that same schema's input.
 */
const { $schema: _dialect, ...jobSpecJsonSchema } = z.toJSONSchema(JobSpecSchema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
export const JobSpecInputSchema = z
  .record(z.string(), z.unknown())
  .openapi('JobSpecInput', { ...(jobSpecJsonSchema as object), description: 'The job spec as job.json takes it; validated against the job contract.' });

export const WebhookSchema = z
  .object({
    /** https only; the address it resolves to must be public. */
    url: z
      .string()
      .url()
      .refine((u) => u.startsWith('https://'), 'the webhook url must use https'),
  })
  .strict();

export const CreateJobRequestSchema = z
  .object({
    spec: JobSpecInputSchema,
    /** The photos the caller will upload; one upload target each. */
    photos: z
      .array(z.object({ name: PhotoNameSchema, contentType: z.enum(PHOTO_CONTENT_TYPES) }).strict())
      .min(1)
      .max(300)
      .refine((p) => new Set(p.map((x) => x.name)).size === p.length, 'photo names must be unique'),
    /** Optional per-job webhook for state changes. */
    webhook: WebhookSchema.optional(),
  })
  .strict()
  .openapi('CreateJobRequest');
export type CreateJobRequest = z.infer<typeof CreateJobRequestSchema>;

export const UploadTargetSchema = z
  .object({
    name: z.string(),
    /** POST a multipart form to `url` with `fields` first and the file last (field name `file`). */
    url: z.string().url(),
    fields: z.record(z.string(), z.string()),
    contentType: z.string(),
    /** S3 refuses a file larger than this, or of another content type. */
    maxBytes: z.number().int(),
  })
  .openapi('UploadTarget');

export const CreateJobResponseSchema = z
  .object({
    jobId: IdSchema,
    /** True when the Idempotency-Key matched an earlier request: the same job is returned. */
    replayed: z.boolean(),
    uploads: z.array(UploadTargetSchema),
    /** The upload targets stop working at this time (never later than the signing credentials). */
    uploadsExpireAt: z.string(),
    /** With a webhook: the secret its `X-Avatar-Signature` HMACs are keyed with (keep it). */
    webhook: z.object({ url: z.string(), secret: z.string() }).optional(),
  })
  .openapi('CreateJobResponse');

/** `created`: waiting for uploads and start; then status.json's states. */
export const API_JOB_STATES = ['created', ...JOB_STATES] as const;

export const JobSchema = z
  .object({
    jobId: IdSchema,
    teamId: IdSchema,
    state: z.enum(API_JOB_STATES),
    stage: StageSchema.optional(),
    createdAt: z.string(),
    photos: z.number().int(),
    /** status.json as the pipeline wrote it, once the job has started. */
    status: StatusSchema.optional(),
  })
  .openapi('Job');
export type Job = z.infer<typeof JobSchema>;

export const JobListSchema = z
  .object({
    jobs: z.array(JobSchema),
    /** Pass as `cursor` for the next page; absent on the last page. */
    nextCursor: z.string().optional(),
  })
  .openapi('JobList');

export const ResultsSchema = z
  .object({
    teamId: IdSchema,
    jobId: IdSchema,
    state: z.enum(API_JOB_STATES),
    /** When every `url` below stops working: min(configured lifetime, signing credentials' expiry). */
    urlExpiresAt: z.string(),
    artifacts: z.array(
      z.object({
        key: z.string(),
        name: z.string(),
        stage: z.string(),
        size: z.number().int(),
        /** From manifest.json once the job has succeeded; absent for partial results. */
        sha256: z.string().optional(),
        url: z.string().url(),
      }),
    ),
    /** From manifest.json: the checkpoint and strength evaluate recommends, with its `<lora:NAME:STRENGTH>` tag. */
    recommendation: ManifestSchema.shape.recommendation,
  })
  .openapi('Results');
export type Results = z.infer<typeof ResultsSchema>;

export const DeleteResponseSchema = z
  .object({
    jobId: IdSchema,
    deletedAt: z.string(),
    /** Object versions and delete markers removed, per bucket. */
    removed: z.record(z.string(), z.number().int()),
  })
  .openapi('DeleteResult');

export const UsageSchema = z
  .object({
    teamId: IdSchema,
    /** The UTC month (YYYY-MM) the figures cover. */
    month: z.string(),
    /** Charged cost of jobs that ended this month. */
    spentUsd: z.number(),
    /** Estimates held by jobs still running. */
    reservedUsd: z.number(),
    budgetUsd: z.number(),
    spentGpuHours: z.number(),
    gpuHoursBudget: z.number(),
  })
  .openapi('Usage');

export const JobIdParamSchema = z.object({ id: IdSchema.openapi({ param: { name: 'id', in: 'path' } }) });

export const ListQuerySchema = z.object({
  state: z
    .enum(API_JOB_STATES)
    .optional()
    .openapi({ param: { name: 'state', in: 'query' } }),
  limit: z.coerce
    .number()
    .int()
    .min(1)
    .max(100)
    .default(20)
    .openapi({ param: { name: 'limit', in: 'query' } }),
  cursor: z
    .string()
    .max(2048)
    .optional()
    .openapi({ param: { name: 'cursor', in: 'query' } }),
});

export { JobSpecSchema };
