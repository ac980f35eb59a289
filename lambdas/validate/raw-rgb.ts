/** Pixel helpers on raw RGB buffers that need no libvips pipeline (and load no sharp: the face worker uses them). */
import type { RawRgb } from './quality';
import type { Box } from './report';

/** The `region` of an RGB image, copied row by row. */
export function extractRgb(img: RawRgb, region: Box): RawRgb {
  const data = Buffer.allocUnsafe(region.width * region.height * 3);
  for (let y = 0; y < region.height; y++) {
    const from = ((region.top + y) * img.width + region.left) * 3;
    img.data.copy(data, y * region.width * 3, from, from + region.width * 3);
  }
  return { data, width: region.width, height: region.height };
}
