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
  return photo
    .pipeline()
    .extract(crop)
    .resize(resolution, resolution, { fit: 'cover', kernel: sharp.kernel.lanczos3 })
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
