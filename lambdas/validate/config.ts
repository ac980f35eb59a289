/**
 * Validate limits and thresholds. Defaults suit a 2048 MB Lambda and phone photos; each can be
 * overridden from the environment (`VALIDATE_<NAME>`) so operators tune them without a code change,
 * and tests pass their own values to the core.
 */
import { COUNT_RULES, type Kind } from '../shared/contract';

export interface ValidateConfig {
  /** Bytes one photo may have (phone HEIC/JPEG are 2-12 MB). */
  readonly maxFileBytes: number;
  /** Bytes all photos of a job may have together; files past it are rejected unread. */
  readonly maxJobBytes: number;
  /** Decoded pixels one photo may have: a decompression-bomb guard passed to sharp's limitInputPixels. */
  readonly maxPixels: number;
  /** Files a job may upload; more and validate refuses the job before reading any. */
  readonly maxFiles: number;
  /** Shortest side an accepted photo needs, after EXIF rotation. */
  readonly minShortSide: number;
  /** Laplacian variance (grey, long side 512) below which a photo counts as blurred. */
  readonly minSharpness: number;
  /** Mean luminance (0..1) below which a photo is too dark. */
  readonly minBrightness: number;
  /** Mean luminance (0..1) above which a photo is washed out. */
  readonly maxBrightness: number;
  /** Fraction of pixels at the top of the range above which a photo counts as blown out. */
  readonly maxClipped: number;
  /** dHash Hamming distance (of 64 bits) at or under which two photos are near-duplicates. */
  readonly duplicateDistance: number;
  /** Face detector score that counts as a face. */
  readonly minFaceScore: number;
  /**
   * The same for a face found only by the tiled second pass (small faces): four more looks at a
   * faceless photo give four more chances of a false hit (a motorcycle part scored 0.64 there, real
   * distant faces 0.70-0.82), so it takes a higher score.
   */
  readonly minTiledFaceScore: number;
  /** Smallest face side, as a fraction of the photo's short side (a far-away subject is too small to learn from). */
  readonly minFaceFraction: number;
  /** A second face at least this big relative to the main one makes the subject ambiguous. */
  readonly rivalFaceRatio: number;
  /**
   * Photos decoded at once: bounds memory. A 12 MP JPEG is decoded to ~2.4 MB (short side 768), or
   * up to ~36 MB when a small face crop needs full resolution; HEIC far more (one at a time).
   */
  readonly concurrency: number;
  /** Photo count rules by kind (docs/training.md: 20-50 for a character, 50-200 for a style). */
  readonly countRules: Record<Kind, { min: number; max: number; idealMin: number; idealMax: number }>;
}

export const DEFAULT_CONFIG: ValidateConfig = {
  maxFileBytes: 30 * 1024 * 1024,
  maxJobBytes: 1024 * 1024 * 1024,
  maxPixels: 50_000_000,
  maxFiles: 400,
  minShortSide: 384,
  minSharpness: 60,
  minBrightness: 0.12,
  maxBrightness: 0.88,
  maxClipped: 0.3,
  duplicateDistance: 6,
  minFaceScore: 0.6,
  minTiledFaceScore: 0.7,
  minFaceFraction: 0.08,
  rivalFaceRatio: 0.6,
  concurrency: 4,
  countRules: COUNT_RULES,
};

const NUMERIC: ReadonlyArray<Exclude<keyof ValidateConfig, 'countRules'>> = [
  'maxFileBytes',
  'maxJobBytes',
  'maxPixels',
  'maxFiles',
  'minShortSide',
  'minSharpness',
  'minBrightness',
  'maxBrightness',
  'maxClipped',
  'duplicateDistance',
  'minFaceScore',
  'minTiledFaceScore',
  'minFaceFraction',
  'rivalFaceRatio',
  'concurrency',
];

/**
 * Defaults overridden by `VALIDATE_MAX_FILE_BYTES`-style variables, and count rules by
 * `VALIDATE_<KIND>_MIN` / `VALIDATE_<KIND>_MAX`. A malformed value is a deployment bug: it throws.
 */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): ValidateConfig {
  const config: Record<string, unknown> = { ...DEFAULT_CONFIG };
  for (const name of NUMERIC) {
    const raw = env[`VALIDATE_${name.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`];
    if (raw !== undefined) config[name] = positiveNumber(name, raw);
  }
  const countRules = { ...DEFAULT_CONFIG.countRules };
  for (const kind of Object.keys(countRules) as Kind[]) {
    const min = env[`VALIDATE_${kind.toUpperCase()}_MIN`];
    const max = env[`VALIDATE_${kind.toUpperCase()}_MAX`];
    countRules[kind] = {
      ...countRules[kind],
      ...(min !== undefined ? { min: positiveNumber(`${kind} min`, min) } : {}),
      ...(max !== undefined ? { max: positiveNumber(`${kind} max`, max) } : {}),
    };
    if (countRules[kind].min > countRules[kind].max) throw new Error(`validate config: ${kind} min is above max`);
  }
  return { ...(config as unknown as ValidateConfig), countRules };
}

function positiveNumber(name: string, raw: string): number {
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`validate config: ${name}="${raw}" is not a positive number`);
  return value;
}
