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

/** An 8-bit single-band image. */
interface Grey {
  readonly data: Buffer;
  readonly width: number;
  readonly height: number;
}

/**
 * A pipeline over a grey image that stays grey: without `b-w` as the pipeline colour space, sharp
 * widens one band to sRGB on input and converts back (in float) on output, which costs more than the
 * resize itself.
 */
const greyInput = (img: Grey) => sharp(img.data, { raw: { width: img.width, height: img.height, channels: 1 } }).pipelineColourspace('b-w');

/** libvips' sRGB -> B_W conversion of an RGB image (sharp's `greyscale()`), done once per photo. */
async function toGrey(img: RawRgb): Promise<Grey> {
  const { data, info } = await rawInput(img).greyscale().raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 1) throw new Error(`greyscale gave ${info.channels} bands`);
  return { data, width: info.width, height: info.height };
}

/**
 * Long side the sharpness and exposure are measured at: a fixed scale makes sharpness comparable
 * between a 12 MP photo and a 600 px one. An image given at this size or smaller is measured as is.
 */
export const QUALITY_SIZE = 512;

export async function measureQuality(img: RawRgb): Promise<QualityScores> {
  // sharp converts to grey before it resizes: the measured copy and the hash both start from this one
  // grey image, which gives the same pixels as two separate `greyscale().resize()` pipelines.
  const grey = await toGrey(img);
  const atScale = async (): Promise<Grey> => {
    if (Math.max(grey.width, grey.height) <= QUALITY_SIZE) return grey;
    const { data, info } = await greyInput(grey)
      .resize(QUALITY_SIZE, QUALITY_SIZE, { fit: 'inside' })
      .toColourspace('b-w')
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 1) throw new Error(`the grey copy has ${info.channels} bands`);
    return { data, width: info.width, height: info.height };
  };
  const [{ data, ...info }, dhash] = await Promise.all([atScale(), hashGrey(grey)]);
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
    dhash,
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
  return hashGrey(await toGrey(img));
}

async function hashGrey(grey: Grey): Promise<string> {
  const small = await greyInput(grey).resize(9, 8, { fit: 'fill' }).toColourspace('b-w').raw().toBuffer();
  if (small.length !== 72) throw new Error(`the hash image has ${small.length} bytes, not 9x8`);
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
