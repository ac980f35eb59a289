/** Recognises a file by its first bytes: names and extensions are whatever the client chose. */

export type SniffedFormat = 'jpeg' | 'png' | 'webp' | 'tiff' | 'heif' | 'avif' | 'gif' | 'svg' | 'pdf' | 'zip' | 'gzip' | 'bmp' | 'text' | 'unknown';

/** Formats validate decodes; everything else is rejected with a reason. */
export const DECODABLE = new Set<SniffedFormat>(['jpeg', 'png', 'webp', 'tiff', 'heif', 'avif', 'gif']);

const HEIF_BRANDS = new Set(['heic', 'heix', 'hevc', 'hevx', 'heim', 'heis', 'hevm', 'hevs', 'mif1', 'msf1', 'mif2']);
const AVIF_BRANDS = new Set(['avif', 'avis']);

export function sniffFormat(bytes: Uint8Array): SniffedFormat {
  const ascii = (from: number, to: number) => String.fromCharCode(...bytes.subarray(from, to));
  const starts = (...sig: number[]) => sig.every((b, i) => bytes[i] === b);
  if (starts(0xff, 0xd8, 0xff)) return 'jpeg';
  if (starts(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return 'png';
  if (ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP') return 'webp';
  if (starts(0x49, 0x49, 0x2a, 0x00) || starts(0x4d, 0x4d, 0x00, 0x2a)) return 'tiff';
  if (ascii(0, 6) === 'GIF87a' || ascii(0, 6) === 'GIF89a') return 'gif';
  if (ascii(4, 8) === 'ftyp') {
    // ISO-BMFF: the major brand, then compatible brands, say what codec the still image uses.
    const boxSize = Math.min(bytes.length, (bytes[0]! << 24) | (bytes[1]! << 16) | (bytes[2]! << 8) | bytes[3]!);
    const brands = [ascii(8, 12)];
    for (let at = 16; at + 4 <= boxSize; at += 4) brands.push(ascii(at, at + 4));
    if (brands.some((b) => AVIF_BRANDS.has(b))) return 'avif';
    if (brands.some((b) => HEIF_BRANDS.has(b))) return 'heif';
    return 'unknown';
  }
  if (ascii(0, 5) === '%PDF-') return 'pdf';
  if (starts(0x50, 0x4b, 0x03, 0x04) || starts(0x50, 0x4b, 0x05, 0x06)) return 'zip';
  if (starts(0x1f, 0x8b)) return 'gzip';
  if (ascii(0, 2) === 'BM') return 'bmp';
  const head = new TextDecoder('utf-8', { fatal: false })
    .decode(bytes.subarray(0, 1024))
    .replace(/^\uFEFF/, '')
    .trimStart();
  if (/^<(\?xml|svg|!DOCTYPE svg)/i.test(head) && /<svg[\s>]/i.test(head)) return 'svg';
  if (bytes.length > 0 && !bytes.subarray(0, 1024).some((b) => b === 0 || b < 0x09)) return 'text';
  return 'unknown';
}
