/**
 * `validate/report.json`: one entry per uploaded file (accepted or rejected with a stable code and a
 * message that says what to do), the scores behind each decision, the crop validate cut, a summary, and the training plan with its
 * arithmetic. Normalize reads it back through this schema.
 */
import { z } from 'zod';
import { KindSchema, PlanSchema } from '../shared/contract';
import { type JobRef, keys } from '../shared/keys';

/** Where validate writes an accepted photo's dataset PNG (`output` name), for normalize to copy. */
export function cropKey(job: JobRef, output: string): string {
  return keys.crop(job, output);
}

/** Stable reason codes; clients may switch on them. */
export const REJECT_CODES = [
  'BAD_PHOTO_NAME',
  'EMPTY_FILE',
  'FILE_TOO_LARGE',
  'JOB_TOO_LARGE',
  'UNSUPPORTED_FORMAT',
  'ANIMATED',
  'CORRUPT',
  'TOO_MANY_PIXELS',
  'TOO_SMALL',
  'BLURRY',
  'TOO_DARK',
  'OVEREXPOSED',
  'DUPLICATE',
  'NO_FACE',
  'MULTIPLE_FACES',
  'FACE_TOO_SMALL',
  'OVER_LIMIT',
] as const;
export type RejectCode = (typeof REJECT_CODES)[number];

/** A photo turned down for a reason the client can act on. */
export class PhotoRejection extends Error {
  constructor(
    readonly code: RejectCode,
    message: string,
  ) {
    super(message);
    this.name = 'PhotoRejection';
  }
}

export const BoxSchema = z
  .object({ left: z.number().int().min(0), top: z.number().int().min(0), width: z.number().int().min(1), height: z.number().int().min(1) })
  .strict();
export type Box = z.infer<typeof BoxSchema>;

export const ScoresSchema = z
  .object({
    /** Variance of the Laplacian of the grey image at long side 512: low means blurred. */
    sharpness: z.number(),
    /** Mean luminance, 0 (black) to 1 (white). */
    brightness: z.number(),
    /** Fraction of near-white pixels (blown highlights). */
    clipped: z.number(),
    /** 64-bit difference hash, hex: near-duplicates differ in few bits. */
    dhash: z.string().regex(/^[0-9a-f]{16}$/),
    /** Faces at or above the detector threshold (character jobs only). */
    faceCount: z.number().int().min(0).optional(),
    /** The dominant face, in the upright photo's pixels. */
    face: BoxSchema.extend({ score: z.number() }).optional(),
  })
  .strict();
export type Scores = z.infer<typeof ScoresSchema>;

export const PhotoEntrySchema = z
  .object({
    /** File name under the job's photos/ prefix. */
    file: z.string(),
    bytes: z.number().int().min(0),
    sha256: z.string().optional(),
    /** Format recognised from the content. */
    format: z.string().optional(),
    /** Size after EXIF rotation. */
    width: z.number().int().optional(),
    height: z.number().int().optional(),
    status: z.enum(['accepted', 'rejected']),
    code: z.union([z.literal('ACCEPTED'), z.enum(REJECT_CODES)]),
    message: z.string(),
    scores: ScoresSchema.optional(),
    /** The region (upright pixels) cut out for the dataset image before resizing. */
    crop: BoxSchema.optional(),
    /** Dataset image name for accepted photos, `<token>-NN.png`. */
    output: z.string().optional(),
    /** The user caption file beside the photo, when there is one. */
    caption: z.string().optional(),
  })
  .strict();
export type PhotoEntry = z.infer<typeof PhotoEntrySchema>;

export const ReportSchema = z
  .object({
    teamId: z.string(),
    jobId: z.string(),
    kind: KindSchema,
    token: z.string(),
    createdAt: z.string(),
    summary: z
      .object({
        files: z.number().int(),
        accepted: z.number().int(),
        rejected: z.number().int(),
        /** Rejections per code. */
        reasons: z.record(z.string(), z.number().int()),
        /** Count bounds that applied (the ideal range of docs/training.md plus hard limits). */
        countRule: z.object({ min: z.number(), max: z.number(), idealMin: z.number(), idealMax: z.number() }).strict(),
        /** Advice that does not block the job (e.g. fewer photos than ideal). */
        warnings: z.array(z.string()),
      })
      .strict(),
    resolution: z.union([z.literal(512), z.literal(768)]),
    /** Absent when too few photos were usable and the job failed here. */
    plan: PlanSchema.optional(),
    photos: z.array(PhotoEntrySchema),
  })
  .strict();
export type Report = z.infer<typeof ReportSchema>;
