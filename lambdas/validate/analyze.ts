/**
 * The photo checks shared by the validate Lambda and `npm run inspect`: it works on in-memory bytes
 * behind a `PhotoSource`, so S3 and the file system are mere adapters. Per photo: byte limits, decode
 * by content, quality scores, faces (character jobs) and the crop; per job: near-duplicates, count
 * rules, training resolution and plan, and the dataset images. Each photo is decoded once, to an
 * upright copy just big enough for its crop (JPEG shrink-on-load); the analysis copy, thumbnail and
 * crop all come from it, so normalize never decodes a photo again.
 */
import { createHash } from 'node:crypto';
import pMap from 'p-map';
import sharp from 'sharp';
import type { JobSpec, Kind } from '../shared/contract';
import { LAYOUT } from '../shared/layout';
import { planTraining, trainingResolution } from '../shared/plan';
import type { ValidateConfig } from './config';
import { renderContactSheet } from './contact-sheet';
import { attentionCrop, contains, faceCrop, scaleBox } from './crop';
import { decodeFailure, type OpenedPhoto, openPhoto, toRgb } from './decode';
import { type DetectedFace, detectFaces, detectFacesTiled, FaceDetectorError } from './faces';
import { hammingDistance, measureQuality, QUALITY_SIZE, type RawRgb } from './quality';
import { cropPhoto, encodeDatasetImage, MAX_RESOLUTION } from './render';
import { type PhotoEntry, PhotoRejection, type Report, type Scores } from './report';

/** One uploaded file, wherever it lives. */
export interface PhotoSource {
  /** File name, already checked to be a plain name. */
  readonly file: string;
  /** Size as listed, checked before any byte is read. */
  readonly bytes: number;
  /** The name of the user caption beside the photo, if any. */
  readonly caption?: string;
  load(): Promise<Buffer>;
}

/**
 * Long side of the in-memory working copy every measure runs on (full-size decodes stay short-lived):
 * the scale quality is measured at, so the measure needs no resize of its own.
 */
const WORKING_SIZE = QUALITY_SIZE;
/**
 * Long side of the thumbnail kept for the contact sheet, which is also the copy given to the face
 * detector: BlazeFace resizes every input to 256x256, so a bigger copy only costs tensor conversion
 * and resize time (~15 ms a photo at 640), not detail.
 */
const THUMB_SIZE = 320;

interface Analysed {
  entry: PhotoEntry;
  /** Thumbnail of the upright photo (raw RGB, ~230 KB) and its scale relative to the photo, for the contact sheet. */
  thumb?: { image: RawRgb; scale: number };
  /** Accepted photos: the crop as RGB at up to MAX_RESOLUTION px (<= 1.8 MB), until the job's resolution is known. */
  crop?: RawRgb;
}

export interface CheckedPhotos {
  readonly report: Report;
  readonly contactSheet: Buffer;
  /** The dataset PNG of each accepted photo by its output name; empty when the job has no plan. */
  readonly images: ReadonlyMap<string, Buffer>;
}

export interface PhotoJob {
  readonly teamId: string;
  readonly jobId: string;
  readonly spec: JobSpec;
  readonly now: Date;
}

/** Runs every check on every source, at most `config.concurrency` photos decoded at once. */
export async function checkPhotos(sources: readonly PhotoSource[], job: PhotoJob, config: ValidateConfig): Promise<CheckedPhotos> {
  let jobBytes = 0;
  const budgeted = sources.map((source) => {
    jobBytes += source.bytes;
    return { source, overBudget: jobBytes > config.maxJobBytes };
  });
  const analysed = await pMap(
    budgeted,
    async ({ source, overBudget }) => {
      if (overBudget) {
        return rejected(
          source,
          'JOB_TOO_LARGE',
          `the job's photos pass the ${mb(config.maxJobBytes)} limit for one job at this file: upload fewer or smaller photos`,
        );
      }
      return analysePhoto(source, job.spec.kind, config);
    },
    { concurrency: config.concurrency, stopOnError: true },
  );
  const report = assessJob(analysed, job, config);
  const encodeDataset = async () => {
    const images = new Map<string, Buffer>();
    if (report.plan) {
      const pngs = await pMap(
        report.photos,
        async (entry, i) => {
          const crop = analysed[i]!.crop;
          return entry.status === 'accepted' && crop ? encodeDatasetImage(crop, report.resolution) : undefined;
        },
        { concurrency: config.concurrency, stopOnError: true },
      );
      // In dataset order, whatever order the encodes finished in.
      report.photos.forEach((entry, i) => {
        if (pngs[i]) images.set(entry.output!, pngs[i]);
      });
    }
    for (const a of analysed) delete a.crop;
    return images;
  };
  // The sheet needs only the report and the thumbnails: it renders while the dataset PNGs encode,
  // so its mostly one-threaded composite and encode fill the cores instead of running after them.
  const [images, contactSheet] = await Promise.all([
    encodeDataset(),
    renderContactSheet(
      report.photos.map((entry, i) => ({ entry, thumb: analysed[i]!.thumb })),
      `${job.spec.token} (${job.spec.kind}): ${report.summary.accepted} accepted, ${report.summary.rejected} rejected`,
    ),
  ]);
  return { report, contactSheet, images };
}

/** Checks one photo; every failure becomes a rejected entry, never an exception. */
export async function analysePhoto(source: PhotoSource, kind: Kind, config: ValidateConfig): Promise<Analysed> {
  if (source.bytes > config.maxFileBytes) {
    return rejected(
      source,
      'FILE_TOO_LARGE',
      `the file is ${mb(source.bytes)}, over the ${mb(config.maxFileBytes)} limit per photo: upload a smaller export (e.g. JPEG at full resolution)`,
    );
  }
  let bytes: Buffer;
  try {
    bytes = await source.load();
  } catch (error) {
    if (error instanceof PhotoRejection) return rejected(source, error.code, error.message);
    throw error;
  }
  const base: PhotoEntry = {
    file: source.file,
    bytes: bytes.length,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    status: 'rejected',
    code: 'CORRUPT',
    message: '',
    ...(source.caption ? { caption: source.caption } : {}),
  };
  let thumb: Analysed['thumb'];
  try {
    const photo = await openPhoto(bytes, config);
    Object.assign(base, { format: photo.format, width: photo.width, height: photo.height });
    const upright = await decodeForCrop(photo);
    const working = await shrinkRgb(upright, WORKING_SIZE);
    const scale = photo.width / working.width;
    const small = await shrinkRgb(working, THUMB_SIZE);
    thumb = { image: small, scale: small.width / photo.width };
    const quality = await measureQuality(working);
    const scores: Scores = { ...quality };
    base.scores = scores;
    const short = Math.min(photo.width, photo.height);
    if (short < config.minShortSide) {
      throw new PhotoRejection(
        'TOO_SMALL',
        `the photo is ${photo.width}x${photo.height}; its short side needs at least ${config.minShortSide} px: upload the full-resolution original`,
      );
    }
    if (quality.brightness < config.minBrightness) {
      throw new PhotoRejection(
        'TOO_DARK',
        `the photo is too dark (mean brightness ${quality.brightness}, need ${config.minBrightness}): use a better-lit shot`,
      );
    }
    if (quality.brightness > config.maxBrightness || quality.clipped > config.maxClipped) {
      throw new PhotoRejection(
        'OVEREXPOSED',
        `the photo is blown out (brightness ${quality.brightness}, ${Math.round(quality.clipped * 100)}% pure white): use a shot with visible detail`,
      );
    }
    // After exposure: a dark photo has weak edges and would read as blurred.
    if (quality.sharpness < config.minSharpness) {
      throw new PhotoRejection(
        'BLURRY',
        `the photo is blurred or out of focus (sharpness ${quality.sharpness}, need ${config.minSharpness}): use a sharper shot`,
      );
    }
    if (kind === 'character') {
      base.crop = await characterCrop(small, working, photo.width, photo.height, scores, config);
    } else {
      base.crop = await attentionCrop(working, scale, photo.width, photo.height);
    }
    const crop = await cropPhoto(photo, base.crop, MAX_RESOLUTION, upright);
    return { entry: { ...base, status: 'accepted', code: 'ACCEPTED', message: 'accepted' }, thumb, crop };
  } catch (error) {
    if (error instanceof FaceDetectorError) throw error;
    const rejection = decodeFailure(error);
    return { entry: { ...base, code: rejection.code, message: `${source.file}: ${rejection.message}` }, thumb };
  }
}

/** The face rules of a character job (docs/training.md, Photos): exactly one dominant face, big enough, alone in the crop. */
async function characterCrop(thumb: RawRgb, working: RawRgb, width: number, height: number, scores: Scores, config: ValidateConfig) {
  const found = async (detect: (img: RawRgb) => Promise<DetectedFace[]>, input: RawRgb, minScore: number) =>
    (await detect(input)).filter((f) => f.score >= minScore).map((f) => scaleBox(f, width / input.width, width, height));
  // The whole photo first; when that finds no face, tiles of the larger working copy look for a small one.
  let faces = await found(detectFaces, thumb, config.minFaceScore);
  if (faces.length === 0) faces = await found(detectFacesTiled, working, config.minTiledFaceScore);
  faces.sort((a, b) => b.width * b.height - a.width * a.height);
  scores.faceCount = faces.length;
  const [main, ...others] = faces;
  if (!main) {
    throw new PhotoRejection(
      'NO_FACE',
      `no face was found: a character job needs photos where the subject's face is visible and not tiny (at least ${Math.round(config.minFaceFraction * 100)}% of the photo's short side)`,
    );
  }
  scores.face = main;
  const mainSize = Math.max(main.width, main.height);
  const rival = others.find((f) => Math.max(f.width, f.height) >= mainSize * config.rivalFaceRatio);
  if (rival) {
    throw new PhotoRejection(
      'MULTIPLE_FACES',
      `${faces.length} faces of similar size were found, so the subject is ambiguous: use photos where the subject is the only person, or crop the others out`,
    );
  }
  const short = Math.min(width, height);
  if (mainSize < short * config.minFaceFraction) {
    throw new PhotoRejection(
      'FACE_TOO_SMALL',
      `the face is ${mainSize} px, under ${Math.round(config.minFaceFraction * 100)}% of the photo's short side: the subject is too far away; use a closer shot`,
    );
  }
  const crop = faceCrop(width, height, main, 512);
  const intruder = others.find((f) => contains(crop, f.left + f.width / 2, f.top + f.height / 2));
  if (intruder) {
    throw new PhotoRejection(
      'MULTIPLE_FACES',
      `another face (${intruder.width} px at ${intruder.left},${intruder.top}) falls inside the crop around the subject: use photos with no one else near the subject`,
    );
  }
  return crop;
}

/**
 * The one decode of a photo: upright, with its short side at MAX_RESOLUTION, so a crop of the whole
 * short side (every object/style crop, many face crops) comes out at training size without
 * upscaling. A 12 MP JPEG decodes at 1/2 scale (shrink-on-load); smaller face crops decode again
 * in cropPhoto at the scale they need.
 */
async function decodeForCrop(photo: OpenedPhoto): Promise<RawRgb> {
  const scale = Math.min(1, MAX_RESOLUTION / Math.min(photo.width, photo.height));
  if (scale === 1) return toRgb(photo.pipeline());
  return toRgb(photo.pipeline().resize(Math.max(1, Math.round(photo.width * scale)), Math.max(1, Math.round(photo.height * scale)), { fit: 'fill' }));
}

/** An RGB copy with its long side at most `size`. */
async function shrinkRgb(img: RawRgb, size: number): Promise<RawRgb> {
  if (Math.max(img.width, img.height) <= size) return img;
  const { data, info } = await sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
    .resize(size, size, { fit: 'inside' })
    .raw()
    .toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

/** Job-level decisions: near-duplicates, the count ceiling, resolution, output names and the plan. */
export function assessJob(analysed: readonly Analysed[], job: PhotoJob, config: ValidateConfig): Report {
  const entries = analysed.map((a) => ({ ...a.entry }));
  const rule = config.countRules[job.spec.kind];

  // Near-duplicates: the best of each group (most pixels, then sharpest; on a tie the first name) stays.
  const rank = (e: PhotoEntry) => (e.width ?? 0) * (e.height ?? 0) * 1e6 + (e.scores?.sharpness ?? 0);
  const kept: PhotoEntry[] = [];
  for (const entry of entries.filter((e) => e.status === 'accepted').sort((a, b) => rank(b) - rank(a))) {
    const twin = kept.find((k) => k.sha256 === entry.sha256 || hammingDistance(k.scores!.dhash, entry.scores!.dhash) <= config.duplicateDistance);
    if (twin) {
      const how = twin.sha256 === entry.sha256 ? 'an exact copy' : 'a near-duplicate';
      reject(entry, 'DUPLICATE', `${entry.file}: ${how} of ${twin.file}, which is kept (larger or sharper): replace it with a different shot for variety`);
    } else kept.push(entry);
  }
  // Over the ceiling: the sharpest photos stay.
  if (kept.length > rule.max) {
    for (const entry of [...kept].sort((a, b) => b.scores!.sharpness - a.scores!.sharpness).slice(rule.max)) {
      reject(
        entry,
        'OVER_LIMIT',
        `${entry.file}: ${aJob(job.spec.kind)} uses at most ${rule.max} photos and this one is among the least sharp: nothing to do, or upload fewer`,
      );
    }
  }
  const accepted = entries.filter((e) => e.status === 'accepted');
  const digits = Math.max(2, String(accepted.length).length);
  accepted.forEach((e, i) => {
    e.output = `${job.spec.token}-${String(i + 1).padStart(digits, '0')}.png`;
  });
  const resolution = trainingResolution(
    accepted.map((e) => e.crop!),
    job.spec.training.resolution,
  );
  const reasons: Record<string, number> = {};
  for (const e of entries) if (e.status === 'rejected') reasons[e.code] = (reasons[e.code] ?? 0) + 1;
  const warnings: string[] = [];
  if (accepted.length >= rule.min && accepted.length < rule.idealMin) {
    warnings.push(
      `${accepted.length} usable photos: ${aJob(job.spec.kind)} trains best from ${rule.idealMin}-${rule.idealMax}; add more varied shots for better likeness`,
    );
  }
  // Captions pair with photos by name without the extension, so a.txt captions a.jpg and a.png alike.
  const byCaption = new Map<string, string[]>();
  for (const e of accepted) if (e.caption) byCaption.set(e.caption, [...(byCaption.get(e.caption) ?? []), e.file]);
  for (const [caption, files] of byCaption) {
    if (files.length > 1)
      warnings.push(`${caption} captions ${files.length} photos (${files.join(', ')}): rename the photos or give each its own caption if they differ`);
  }
  if (accepted.length > rule.idealMax)
    warnings.push(`${accepted.length} usable photos is above the ideal ${rule.idealMin}-${rule.idealMax}: training takes longer for little gain`);
  return {
    teamId: job.teamId,
    jobId: job.jobId,
    kind: job.spec.kind,
    token: job.spec.token,
    createdAt: job.now.toISOString(),
    summary: { files: entries.length, accepted: accepted.length, rejected: entries.length - accepted.length, reasons, countRule: rule, warnings },
    resolution,
    ...(accepted.length >= rule.min ? { plan: planTraining(job.spec, accepted.length, resolution) } : {}),
    photos: entries,
  };
}

/** The TOO_FEW_PHOTOS message: how many are usable, how many are needed, and why each was dropped. */
export function tooFewMessage(report: Report): string {
  const { accepted, files, countRule } = report.summary;
  const dropped = report.photos.filter((p) => p.status === 'rejected').map((p) => `${p.file}: ${p.code}`);
  return (
    `only ${accepted} of ${files} photos are usable; ${aJob(report.kind)} needs at least ${countRule.min} ` +
    `(${countRule.idealMin}-${countRule.idealMax} is ideal). Dropped: ${dropped.join('; ') || 'none'}. ` +
    `Upload more sharp, well-lit photos (see ${LAYOUT.validateReport} for each reason) and submit the job again.`
  );
}

function reject(entry: PhotoEntry, code: PhotoEntry['code'], message: string): void {
  Object.assign(entry, { status: 'rejected', code, message });
  delete entry.output;
}

function rejected(source: PhotoSource, code: PhotoEntry['code'], message: string): Analysed {
  return {
    entry: {
      file: source.file,
      bytes: source.bytes,
      status: 'rejected',
      code,
      message: `${source.file}: ${message}`,
      ...(source.caption ? { caption: source.caption } : {}),
    },
  };
}

/** "a character job", "an object job". */
function aJob(kind: Kind): string {
  return `${/^[aeiou]/.test(kind) ? 'an' : 'a'} ${kind} job`;
}

function mb(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
