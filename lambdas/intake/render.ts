/** Turns an accepted photo into its dataset image: upright, sRGB, cropped, resized, metadata-free PNG. */
import sharp from 'sharp';
import type { IntakeConfig } from './config';
import { openPhoto } from './decode';
import type { Box } from './report';

/**
 * sharp writes no EXIF, XMP, GPS or ICC data unless asked (`withMetadata`/`keepMetadata` are never
 * called), so the output carries pixels only; `toColourspace('srgb')` converts CMYK, grey and 16-bit
 * inputs to 8-bit sRGB first.
 */
export async function renderDatasetImage(bytes: Buffer, crop: Box, resolution: number, config: Pick<IntakeConfig, 'maxPixels'>): Promise<Buffer> {
  const photo = await openPhoto(bytes, config);
  if (crop.left + crop.width > photo.width || crop.top + crop.height > photo.height) {
    throw new Error(`crop ${JSON.stringify(crop)} lies outside the ${photo.width}x${photo.height} photo`);
  }
  // Shrink the whole photo first so the crop lands at about the training size: libvips then
  // decodes a JPEG at 1/2-1/8 scale (shrink-on-load) instead of all 12 MP, a 3-5x saving.
  const scale = Math.min(1, resolution / crop.width);
  const width = Math.max(1, Math.round(photo.width * scale));
  const height = Math.max(1, Math.round(photo.height * scale));
  const { data, info } = await photo.pipeline().resize(width, height, { fit: 'fill' }).toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  const left = Math.min(Math.round(crop.left * scale), info.width - 1);
  const top = Math.min(Math.round(crop.top * scale), info.height - 1);
  return sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels } })
    .extract({
      left,
      top,
      width: Math.max(1, Math.min(Math.round(crop.width * scale), info.width - left)),
      height: Math.max(1, Math.min(Math.round(crop.height * scale), info.height - top)),
    })
    .resize(resolution, resolution, { fit: 'fill', kernel: sharp.kernel.lanczos3 })
    .toColourspace('srgb')
    .removeAlpha()
    .png({ compressionLevel: 6 })
    .toBuffer();
}

/** A user caption made safe for kohya: one line of plain text, bounded length. */
export function cleanCaption(raw: Uint8Array): string {
  return new TextDecoder('utf-8', { fatal: false })
    .decode(raw)
    .replace(/[\u0000-\u001f\u007f]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim()
    .slice(0, 1000);
}
