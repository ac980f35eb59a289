/**
 * Where to cut each photo. Crops are square: kohya would bucket other ratios, but one square bucket
 * keeps batch sizes honest and matches the 512/768 training resolution.
 */
import sharp from 'sharp';
import type { DetectedFace } from './faces';
import type { RawRgb } from './quality';
import type { Box } from './report';

/** Crop side as a multiple of the face: head, shoulders and upper body with some background. */
const FACE_TO_CROP = 5;
/** Where the face centre sits, from the crop's top: leaves room for the body below. */
const FACE_HEIGHT = 0.38;

/**
 * A square crop around the dominant face (docs/training.md, Crops: face and body dominate, some background).
 * Never smaller than `floor` pixels when the photo allows, so crops are not upscaled much.
 */
export function faceCrop(width: number, height: number, face: Box, floor: number): Box {
  const short = Math.min(width, height);
  const faceSize = Math.max(face.width, face.height);
  const side = Math.round(Math.min(short, Math.max(faceSize * FACE_TO_CROP, Math.min(short, floor))));
  const cx = face.left + face.width / 2;
  const cy = face.top + face.height / 2;
  return {
    left: clamp(Math.round(cx - side / 2), 0, width - side),
    top: clamp(Math.round(cy - side * FACE_HEIGHT), 0, height - side),
    width: side,
    height: side,
  };
}

/** The largest square on the most salient region (sharp's attention strategy), in `scale`-d pixels. */
export async function attentionCrop(img: RawRgb, scale: number, width: number, height: number): Promise<Box> {
  const side = Math.min(img.width, img.height);
  const { info } = await sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
    .resize(side, side, { fit: 'cover', position: sharp.strategy.attention })
    .raw()
    .toBuffer({ resolveWithObject: true });
  const short = Math.min(width, height);
  // sharp reports negative offsets for the strategy's crop.
  const left = Math.abs(info.cropOffsetLeft ?? 0) * scale;
  const top = Math.abs(info.cropOffsetTop ?? 0) * scale;
  return { left: clamp(Math.round(left), 0, width - short), top: clamp(Math.round(top), 0, height - short), width: short, height: short };
}

/** A centred square: the crop when nothing better is known. */
export function centreCrop(width: number, height: number): Box {
  const side = Math.min(width, height);
  return { left: Math.floor((width - side) / 2), top: Math.floor((height - side) / 2), width: side, height: side };
}

/** True when the point lies inside the box. */
export function contains(box: Box, x: number, y: number): boolean {
  return x >= box.left && x < box.left + box.width && y >= box.top && y < box.top + box.height;
}

/** Maps a detector box from working-image pixels to upright-photo pixels. */
export function scaleBox(face: DetectedFace, scale: number, width: number, height: number): Box & { score: number } {
  const left = clamp(Math.round(face.left * scale), 0, width - 1);
  const top = clamp(Math.round(face.top * scale), 0, height - 1);
  return {
    left,
    top,
    width: clamp(Math.round(face.width * scale), 1, width - left),
    height: clamp(Math.round(face.height * scale), 1, height - top),
    score: Math.round(face.score * 1000) / 1000,
  };
}

function clamp(value: number, min: number, max: number): number {
  return Math.max(min, Math.min(max, value));
}
