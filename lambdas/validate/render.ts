/** Turns an accepted photo into its dataset image: upright, sRGB, cropped, resized, metadata-free PNG. */
import sharp from 'sharp';
import type { ValidateConfig } from './config';
import { type OpenedPhoto, openPhoto, toRgb } from './decode';
import type { RawRgb } from './quality';
import { extractRgb } from './raw-rgb';
import type { Box } from './report';

/** The largest training resolution: validate keeps each crop at up to this side until the job's resolution is known. */
export const MAX_RESOLUTION = 768;

/** Renders one photo's dataset image from its bytes (tests check single photos through it; validate renders from its own decode). */
export async function renderDatasetImage(bytes: Buffer, crop: Box, resolution: number, config: Pick<ValidateConfig, 'maxPixels'>): Promise<Buffer> {
  const photo = await openPhoto(bytes, config);
  return encodeDatasetImage(await cropPhoto(photo, crop, resolution), resolution);
}

/**
 * The crop as RGB at `side` px (or its own size when smaller: never upscaled here). Cut from
 * `decoded`, an upright copy of the photo already in memory, when that copy holds the crop at `side`
 * px or more; otherwise the photo is decoded again, shrunk first so the crop lands at about `side`
 * (libvips then decodes a JPEG at 1/2-1/8 scale where it can).
 */
export async function cropPhoto(photo: OpenedPhoto, crop: Box, side: number, decoded?: RawRgb): Promise<RawRgb> {
  if (crop.left + crop.width > photo.width || crop.top + crop.height > photo.height) {
    throw new Error(`crop ${JSON.stringify(crop)} lies outside the ${photo.width}x${photo.height} photo`);
  }
  const target = Math.min(side, crop.width);
  let source = decoded;
  if (!source || crop.width * (source.width / photo.width) < target - 0.5) {
    const scale = Math.min(1, target / crop.width);
    const width = Math.max(1, Math.round(photo.width * scale));
    const height = Math.max(1, Math.round(photo.height * scale));
    source = await toRgb(photo.pipeline().resize(width, height, { fit: 'fill' }));
  }
  const sx = source.width / photo.width;
  const sy = source.height / photo.height;
  const left = Math.min(Math.round(crop.left * sx), source.width - 1);
  const top = Math.min(Math.round(crop.top * sy), source.height - 1);
  const region = {
    left,
    top,
    width: Math.max(1, Math.min(Math.round(crop.width * sx), source.width - left)),
    height: Math.max(1, Math.min(Math.round(crop.height * sy), source.height - top)),
  };
  // Already at size (every crop of the whole short side): a row copy, without a libvips pipeline.
  if (region.width === target && region.height === target) return extractRgb(source, region);
  const { data, info } = await sharp(source.data, { raw: { width: source.width, height: source.height, channels: 3 } })
    .extract(region)
    .resize(target, target, { fit: 'fill', kernel: sharp.kernel.lanczos3 })
    .raw()
    .toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

/**
 * The dataset PNG at the training resolution. sharp writes no EXIF, XMP, GPS or ICC data unless asked
 * (`withMetadata`/`keepMetadata` are never called), so the output carries pixels only; the input is
 * already 8-bit sRGB (`toRgb` converted CMYK, grey and 16-bit photos).
 */
export async function encodeDatasetImage(img: RawRgb, resolution: number): Promise<Buffer> {
  let image = sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } });
  if (img.width !== resolution || img.height !== resolution) image = image.resize(resolution, resolution, { fit: 'fill', kernel: sharp.kernel.lanczos3 });
  // zlib level 1: half the encode time of level 6 (~16 vs ~32 ms at 768 px here) for ~15% more bytes;
  // the dataset is transient training input, read once by the trainer.
  return image.png({ compressionLevel: 1 }).toBuffer();
}
