/**
 * The contact sheet: every accepted photo as the dataset crop it trains on (green), every rejected
 * one as a thumbnail labelled with its reason (red), so a person can review the checks at a glance.
 * Labels are SVG text composited by sharp (librsvg with the system's DejaVu/sans fonts).
 */

import pMap from 'p-map';
import sharp from 'sharp';
import type { RawRgb } from './quality';
import type { PhotoEntry } from './report';

const TILE = 180;
const LABEL = 34;
const GAP = 10;
const COLUMNS = 6;
const HEADER = 40;
const TILES_IN_FLIGHT = 4;

export interface SheetTile {
  readonly entry: PhotoEntry;
  /** Raw RGB thumbnail of the upright photo and its scale, when the photo could be decoded. */
  readonly thumb?: { image: RawRgb; scale: number };
}

export async function renderContactSheet(tiles: readonly SheetTile[], title: string): Promise<Buffer> {
  // Accepted first, in dataset order, so the sheet reads like the dataset.
  const ordered = [...tiles].sort((a, b) => Number(b.entry.status === 'accepted') - Number(a.entry.status === 'accepted'));
  const rows = Math.max(1, Math.ceil(ordered.length / COLUMNS));
  const width = COLUMNS * (TILE + GAP) + GAP;
  const height = HEADER + rows * (TILE + LABEL + GAP) + GAP;
  // The tiles are small independent resizes: a few at a time, like the photos themselves.
  const tileImages = await pMap(ordered, async ({ entry, thumb }) => (thumb ? tileImage(entry, thumb) : undefined), {
    concurrency: TILES_IN_FLIGHT,
    stopOnError: true,
  });
  const layers: sharp.OverlayOptions[] = [];
  const texts: string[] = [`<text x="${GAP}" y="26" font-size="18" font-weight="bold" fill="#222">${escapeXml(title)}</text>`];
  for (const [i, { entry }] of ordered.entries()) {
    const x = GAP + (i % COLUMNS) * (TILE + GAP);
    const y = HEADER + Math.floor(i / COLUMNS) * (TILE + LABEL + GAP);
    const ok = entry.status === 'accepted';
    const colour = ok ? '#1a7f37' : '#cf222e';
    const tile = tileImages[i];
    texts.push(`<rect x="${x - 2}" y="${y - 2}" width="${TILE + 4}" height="${TILE + 4}" fill="none" stroke="${colour}" stroke-width="3"/>`);
    // Centred in its square: a thumbnail of a 4:3 photo leaves bands of the page colour.
    if (tile) layers.push({ ...tile, left: x + Math.floor((TILE - tile.raw.width) / 2), top: y + Math.floor((TILE - tile.raw.height) / 2) });
    else texts.push(`<text x="${x + TILE / 2}" y="${y + TILE / 2}" font-size="14" text-anchor="middle" fill="#888">not an image</text>`);
    const name = entry.file.length > 26 ? `${entry.file.slice(0, 24)}…` : entry.file;
    texts.push(`<text x="${x}" y="${y + TILE + 15}" font-size="12" fill="#222">${escapeXml(name)}</text>`);
    const label = ok ? `OK -> ${entry.output ?? ''}` : entry.code;
    texts.push(`<text x="${x}" y="${y + TILE + 30}" font-size="12" font-weight="bold" fill="${colour}">${escapeXml(label)}</text>`);
  }
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="DejaVu Sans, sans-serif">${texts.join('')}</svg>`;
  layers.push({ input: Buffer.from(svg), left: 0, top: 0 });
  return sharp({ create: { width, height, channels: 3, background: '#f6f8fa' } })
    .composite(layers)
    .png({ compressionLevel: 6 })
    .toBuffer();
}

async function tileImage(entry: PhotoEntry, thumb: { image: RawRgb; scale: number }): Promise<sharp.OverlayOptions & { raw: sharp.CreateRaw }> {
  const { width, height } = thumb.image;
  let image = sharp(thumb.image.data, { raw: { width, height, channels: 3 } });
  if (entry.status === 'accepted' && entry.crop) {
    const left = Math.min(Math.round(entry.crop.left * thumb.scale), width - 1);
    const top = Math.min(Math.round(entry.crop.top * thumb.scale), height - 1);
    image = image.extract({
      left,
      top,
      width: Math.max(1, Math.min(Math.round(entry.crop.width * thumb.scale), width - left)),
      height: Math.max(1, Math.min(Math.round(entry.crop.height * thumb.scale), height - top)),
    });
  }
  // `inside`, not `contain`: letterboxing in libvips is an extra embed step (~0.7 ms a tile).
  const { data, info } = await image.resize(TILE, TILE, { fit: 'inside' }).raw().toBuffer({ resolveWithObject: true });
  return { input: data, raw: { width: info.width, height: info.height, channels: info.channels } };
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
