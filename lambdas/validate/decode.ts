/**
 * Opens a photo from its bytes: recognise the format by content, refuse what is not a still photo,
 * guard against decompression bombs, and hand back an upright (EXIF-rotated), alpha-free pipeline.
 * sharp decodes everything except HEVC-coded HEIC from phones, which goes to WASM libheif.
 */
import { crc32, deflateSync } from 'node:zlib';
import pLimit from 'p-limit';
import sharp from 'sharp';
import type { ValidateConfig } from './config';
import type { RawRgb } from './quality';
import { PhotoRejection } from './report';
import { DECODABLE, type SniffedFormat, sniffFormat } from './sniff';

export interface OpenedPhoto {
  readonly format: SniffedFormat;
  /** Size after EXIF rotation. */
  readonly width: number;
  readonly height: number;
  /** A fresh pipeline over the upright photo, alpha flattened onto white; add steps and an output. */
  pipeline(): sharp.Sharp;
}

const REFUSED: Partial<Record<SniffedFormat, string>> = {
  svg: 'an SVG drawing, not a photo',
  pdf: 'a PDF document, not a photo',
  zip: 'a ZIP archive',
  gzip: 'a compressed archive',
  bmp: 'a BMP bitmap',
  text: 'a text file, not a photo',
  unknown: 'not a recognised image',
};

// libheif's WASM heap grows to ~860 MB for a 12 MP photo: one decode at a time keeps a 2 GB Lambda safe.
const heifLock = pLimit(1);

/** Decodes `bytes` far enough to know it is a usable still photo; throws PhotoRejection otherwise. */
export async function openPhoto(bytes: Buffer, config: Pick<ValidateConfig, 'maxPixels'>): Promise<OpenedPhoto> {
  if (bytes.length === 0) throw new PhotoRejection('EMPTY_FILE', 'the file is empty (0 bytes): upload it again');
  const format = sniffFormat(bytes);
  if (!DECODABLE.has(format)) {
    throw new PhotoRejection('UNSUPPORTED_FORMAT', `the file is ${REFUSED[format] ?? format}: upload JPEG, PNG, WebP, AVIF, TIFF or HEIC photos`);
  }
  const options: sharp.SharpOptions = { limitInputPixels: config.maxPixels, failOn: 'error' };
  let meta: sharp.Metadata;
  try {
    meta = await sharp(bytes, options).metadata();
  } catch (error) {
    throw decodeFailure(error);
  }
  const width = meta.width ?? 0;
  const height = meta.height ?? 0;
  if (width * height > config.maxPixels) throw bomb(width, height, config.maxPixels);
  if ((meta.pages ?? 1) > 1 && (format === 'gif' || format === 'webp')) {
    throw new PhotoRejection('ANIMATED', `the file is an animated ${format.toUpperCase()} (${meta.pages} frames): upload a still photo`);
  }
  if (format === 'gif') {
    throw new PhotoRejection('UNSUPPORTED_FORMAT', 'the file is a GIF (256 colours, too coarse for training): upload the original JPEG, PNG or HEIC');
  }
  // EXIF orientations 5-8 turn the photo a quarter: width and height swap once it is upright.
  const swap = (meta.orientation ?? 1) >= 5;
  const upright = { width: swap ? height : width, height: swap ? width : height };

  if (meta.format === 'heif' && meta.compression === 'hevc') {
    // libheif applies no colour profile: a phone's Display P3 photo would pass as sRGB, duller.
    const decoded = await heifLock(async () => withProfileApplied(await decodeHevc(bytes), meta.icc));
    const raw = { width: decoded.width, height: decoded.height, channels: 4 as const };
    // libheif applies the container's rotation itself; the decoded pixels are already upright.
    return {
      format,
      width: decoded.width,
      height: decoded.height,
      pipeline: () => sharp(decoded.data, { raw, limitInputPixels: config.maxPixels }).flatten({ background: '#ffffff' }),
    };
  }
  return {
    format: format === 'heif' && meta.compression === 'av1' ? 'avif' : format,
    ...upright,
    // Flatten only when there is alpha: an extra step before resize would cost JPEG shrink-on-load.
    pipeline: () => (meta.hasAlpha ? sharp(bytes, options).rotate().flatten({ background: '#ffffff' }) : sharp(bytes, options).rotate()),
  };
}

async function decodeHevc(bytes: Buffer): Promise<{ width: number; height: number; data: Buffer }> {
  // Loaded on first use: the WASM module costs memory that JPEG-only jobs never need.
  const decode = require('heic-decode') as (input: { buffer: Uint8Array }) => Promise<{ width: number; height: number; data: Uint8ClampedArray }>;
  try {
    const out = await decode({ buffer: bytes });
    return { width: out.width, height: out.height, data: Buffer.from(out.data.buffer, out.data.byteOffset, out.data.byteLength) };
  } catch (error) {
    throw new PhotoRejection('CORRUPT', `the HEIC photo could not be decoded (${(error as Error).message}): export it again from the phone, or as JPEG`);
  }
}

/**
 * Decoded RGBA pixels converted from the colour space their ICC profile describes to sRGB. sharp
 * takes no profile with raw input, so the pixels go through a PNG that carries the profile in an
 * iCCP chunk (stored uncompressed, so cheap), which sharp decodes and converts like any tagged photo.
 */
async function withProfileApplied(
  img: { width: number; height: number; data: Buffer },
  icc: Buffer | undefined,
): Promise<{ width: number; height: number; data: Buffer }> {
  if (!icc?.length) return img;
  const png = await sharp(img.data, { raw: { width: img.width, height: img.height, channels: 4 } })
    .png({ compressionLevel: 0 })
    .toBuffer();
  const { data, info } = await sharp(withIccChunk(png, icc), { limitInputPixels: false }).ensureAlpha().raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 4 || info.width !== img.width || info.height !== img.height)
    throw new Error(`profile conversion gave ${info.width}x${info.height}x${info.channels}`);
  return { width: info.width, height: info.height, data };
}

/** `png` with an iCCP chunk (PNG spec 11.3.3.3) holding `icc`, placed right after IHDR as the spec requires. */
function withIccChunk(png: Buffer, icc: Buffer): Buffer {
  const IHDR_END = 8 + 8 + 13 + 4; // signature, IHDR length+type, IHDR data, CRC
  if (png.toString('latin1', 12, 16) !== 'IHDR') throw new Error('not a PNG: IHDR is not the first chunk');
  const body = Buffer.concat([Buffer.from('icc\0', 'latin1'), Buffer.from([0]), deflateSync(icc)]); // name, NUL, method 0 (zlib)
  const chunk = Buffer.alloc(12 + body.length);
  chunk.writeUInt32BE(body.length, 0);
  chunk.write('iCCP', 4, 'latin1');
  body.copy(chunk, 8);
  chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + body.length)), 8 + body.length);
  return Buffer.concat([png.subarray(0, IHDR_END), chunk, png.subarray(IHDR_END)]);
}

function bomb(width: number, height: number, limit: number): PhotoRejection {
  return new PhotoRejection(
    'TOO_MANY_PIXELS',
    `the image declares ${width}x${height} pixels, over the ${(limit / 1e6).toFixed(0)} MP limit: upload a photo of at most ${(limit / 1e6).toFixed(0)} megapixels`,
  );
}

/** Runs `pipeline` to interleaved 8-bit sRGB, so every measure and crop sees one layout. */
export async function toRgb(pipeline: sharp.Sharp): Promise<RawRgb> {
  const { data, info } = await pipeline.toColourspace('srgb').removeAlpha().raw().toBuffer({ resolveWithObject: true });
  if (info.channels === 3) return { data, width: info.width, height: info.height };
  // Grey inputs can come back with one band; widen to RGB.
  const rgb = await sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels } })
    .toColourspace('srgb')
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (rgb.info.channels !== 3) throw new Error(`unexpected ${rgb.info.channels}-band image`);
  return { data: rgb.data, width: rgb.info.width, height: rgb.info.height };
}

/** Maps a libvips failure to a rejection; a pixel-limit hit is a bomb, anything else a broken file. */
export function decodeFailure(error: unknown): PhotoRejection {
  if (error instanceof PhotoRejection) return error;
  const message = (error as Error).message ?? String(error);
  if (/pixel limit/i.test(message)) {
    return new PhotoRejection('TOO_MANY_PIXELS', `the image has more pixels than the limit allows (${message.trim()}): upload a smaller photo`);
  }
  const detail = message.split('\n')[0]!.trim().slice(0, 160);
  return new PhotoRejection('CORRUPT', `the image could not be decoded (${detail}): the file is damaged or truncated; upload the original again`);
}
