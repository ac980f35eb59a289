/**
 * Photo quality measures on raw pixels: sharpness (variance of a Laplacian), exposure (mean
 * luminance, blown highlights) and a perceptual difference hash for near-duplicates.
 */
import sharp from 'sharp';

/** An upright sRGB image as interleaved 8-bit RGB. */
export interface RawRgb {
  readonly data: Buffer;
  readonly width: number;
  readonly height: number;
}

export interface QualityScores {
  sharpness: number;
  brightness: number;
  clipped: number;
  dhash: string;
}

const rawInput = (img: RawRgb) => sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } });

export async function measureQuality(img: RawRgb): Promise<QualityScores> {
  // A fixed scale makes sharpness comparable between a 12 MP photo and a 600 px one.
  const grey = await rawInput(img)
    .resize(512, 512, { fit: 'inside', withoutEnlargement: true })
    .greyscale()
    .raw()
    .toBuffer({ resolveWithObject: true });
  const { data, info } = grey;
  let sum = 0;
  let clipped = 0;
  for (let i = 0; i < data.length; i++) {
    sum += data[i]!;
    if (data[i]! >= 250) clipped++;
  }
  return {
    sharpness: round(laplacianVariance(data, info.width, info.height), 1),
    brightness: round(sum / data.length / 255, 3),
    clipped: round(clipped / data.length, 3),
    dhash: await differenceHash(img),
  };
}

/** Variance of the 4-neighbour Laplacian: edges make it large, blur flattens it. */
export function laplacianVariance(grey: Uint8Array, width: number, height: number): number {
  let sum = 0;
  let sumSq = 0;
  let n = 0;
  for (let y = 1; y < height - 1; y++) {
    for (let x = 1; x < width - 1; x++) {
      const i = y * width + x;
      const v = grey[i - 1]! + grey[i + 1]! + grey[i - width]! + grey[i + width]! - 4 * grey[i]!;
      sum += v;
      sumSq += v * v;
      n++;
    }
  }
  if (n === 0) return 0;
  const mean = sum / n;
  return sumSq / n - mean * mean;
}

/** dHash: shrink to 9x8 grey and record whether each pixel is brighter than its right neighbour. */
export async function differenceHash(img: RawRgb): Promise<string> {
  const small = await rawInput(img).greyscale().resize(9, 8, { fit: 'fill' }).raw().toBuffer();
  let bits = 0n;
  for (let y = 0; y < 8; y++) {
    for (let x = 0; x < 8; x++) bits = (bits << 1n) | (small[y * 9 + x]! > small[y * 9 + x + 1]! ? 1n : 0n);
  }
  return bits.toString(16).padStart(16, '0');
}

export function hammingDistance(a: string, b: string): number {
  let x = BigInt(`0x${a}`) ^ BigInt(`0x${b}`);
  let count = 0;
  for (; x; x &= x - 1n) count++;
  return count;
}

function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
