/**
 * Distinct, sharp, well-exposed synthetic photos for the demo run and pipeline tests of `object` jobs (no face rule):
 * each is a different seeded arrangement of shapes over a textured background, so no two are
 * near-duplicates. The intake's own tests use real photos; these only need to pass it.
 */
import sharp from 'sharp';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

export async function syntheticPhoto(seed: number, size = 1024): Promise<Buffer> {
  const r = rng(seed * 7919 + 17);
  const colour = () => `rgb(${40 + Math.floor(r() * 180)},${40 + Math.floor(r() * 180)},${40 + Math.floor(r() * 180)})`;
  const shapes: string[] = [];
  for (let i = 0; i < 40; i++) {
    const x = Math.floor(r() * size);
    const y = Math.floor(r() * size);
    const w = 20 + Math.floor(r() * size * 0.3);
    shapes.push(
      r() < 0.5
        ? `<circle cx="${x}" cy="${y}" r="${w / 2}" fill="${colour()}" stroke="black" stroke-width="3"/>`
        : `<rect x="${x}" y="${y}" width="${w}" height="${w * (0.5 + r())}" fill="${colour()}" stroke="white" stroke-width="3"/>`,
    );
  }
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}"><rect width="100%" height="100%" fill="${colour()}"/>${shapes.join('')}</svg>`;
  return sharp(Buffer.from(svg)).jpeg({ quality: 90 }).toBuffer();
}

export async function syntheticPhotos(count: number, size = 1024): Promise<Array<{ name: string; bytes: Buffer }>> {
  return Promise.all(
    Array.from({ length: count }, async (_, i) => ({ name: `photo-${String(i + 1).padStart(2, '0')}.jpg`, bytes: await syntheticPhoto(i + 1, size) })),
  );
}
