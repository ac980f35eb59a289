/**
 * The photo checks on the corpus built from real photos: every file gets its expected code, outputs
 * come out upright, 8-bit sRGB and metadata-free, and style jobs skip the face rules.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { JobSpecSchema } from '../../lambdas/shared/contract';
import { analysePhoto, assessJob, checkPhotos, type PhotoSource } from '../../lambdas/validate/analyze';
import { configFromEnv, DEFAULT_CONFIG } from '../../lambdas/validate/config';
import { openPhoto } from '../../lambdas/validate/decode';
import { hammingDistance } from '../../lambdas/validate/quality';
import { renderDatasetImage } from '../../lambdas/validate/render';
import { sniffFormat } from '../../lambdas/validate/sniff';
import { buildCorpus, corpusUnavailable, EXPECTED, EXPECTED_HEIC, heifEncAvailable, p3Original, sampleDir } from '../fixtures/photos/build';
import { describeNeeding, itNeeding } from '../helpers/suites';
import { NOW, TEST_CONFIG } from './validate-fixtures';

const skip = corpusUnavailable();
if (skip) console.warn(`validate corpus tests skipped: ${skip}`);
const HEIC_MISSING = heifEncAvailable() ? undefined : 'heif-enc not installed (Debian package libheif-examples), so there is no real HEIC file to test';

function source(dir: string, file: string): PhotoSource {
  const path = join(dir, file);
  return { file, bytes: statSync(path).size, load: async () => readFileSync(path) };
}

describeNeeding('photo checks on the real-photo corpus', skip, () => {
  let corpus: string;
  beforeAll(async () => {
    corpus = await buildCorpus();
  });

  describe('each corpus file gets its expected per-photo code (character job)', () => {
    // Duplicates are a job-level decision, asserted on the whole job below.
    for (const [file, code] of Object.entries(EXPECTED).filter(([, c]) => c !== 'DUPLICATE')) {
      it(`${file} -> ${code}`, async () => {
        const { entry } = await analysePhoto(source(corpus, file), 'character', TEST_CONFIG);
        expect(entry.code, entry.message).toBe(code);
        if (code !== 'ACCEPTED') expect(entry.message.startsWith(`${file}: `)).toBe(true);
      });
    }
  });

  itNeeding('a real HEIC phone photo is decoded and accepted', HEIC_MISSING, async () => {
    const { entry } = await analysePhoto(source(corpus, 'phone.heic'), 'character', TEST_CONFIG);
    expect([entry.code, entry.format, entry.width, entry.height]).toEqual([EXPECTED_HEIC['phone.heic'], 'heif', 900, 760]);
    const png = await renderDatasetImage(readFileSync(join(corpus, 'phone.heic')), entry.crop!, 512, TEST_CONFIG);
    expect((await sharp(png).metadata()).width).toBe(512);
  });

  itNeeding('a Display P3 HEIC is converted to sRGB', HEIC_MISSING, async () => {
    const bytes = readFileSync(join(corpus, 'phone-p3.heic'));
    expect((await sharp(bytes).metadata()).icc?.length).toBeGreaterThan(0);
    const original = await p3Original(sampleDir()!);
    const decoded = await (await openPhoto(bytes, TEST_CONFIG)).pipeline().png().toBuffer();
    // The stored P3 values read as if they were sRGB: what the photo looked like before the conversion.
    const asStored = await sharp(await sharp(original).withIccProfile('p3').png().toBuffer(), { ignoreIcc: true })
      .png()
      .toBuffer();
    expect(await meanDiff(asStored, original)).toBeGreaterThan(4);
    expect(await meanDiff(decoded, original)).toBeLessThan(2); // HEVC at quality 90 plus one 8-bit colour conversion
  });

  it('finds the one face of an accepted photo and keeps it inside the crop', async () => {
    const { entry } = await analysePhoto(source(corpus, 'subject-03.jpg'), 'character', TEST_CONFIG);
    const face = entry.scores!.face!;
    const crop = entry.crop!;
    expect(entry.scores!.faceCount).toBe(1);
    expect(face.score).toBeGreaterThan(0.6);
    expect(face.left).toBeGreaterThanOrEqual(crop.left);
    expect(face.top).toBeGreaterThanOrEqual(crop.top);
    expect(face.left + face.width).toBeLessThanOrEqual(crop.left + crop.width);
    expect(face.top + face.height).toBeLessThanOrEqual(crop.top + crop.height);
  });

  it('turns an EXIF-rotated photo upright', async () => {
    const { entry } = await analysePhoto(source(corpus, 'exif-rotated.jpg'), 'character', TEST_CONFIG);
    expect([entry.width, entry.height]).toEqual([900, 760]);
    const full = { left: 0, top: 0, width: 760, height: 760 };
    const out = await renderDatasetImage(readFileSync(join(corpus, 'exif-rotated.jpg')), full, 64, TEST_CONFIG);
    const ref = await renderDatasetImage(readFileSync(join(corpus, 'exif-rotated.upright.png.ref')), full, 64, TEST_CONFIG);
    const sideways = await sharp(ref).rotate(90).toBuffer();
    expect(await meanDiff(out, ref)).toBeLessThan(8);
    expect(await meanDiff(out, sideways)).toBeGreaterThan(20);
  });

  it.each(['cmyk.jpg', 'sixteen-bit.png', 'alpha.png', 'greyscale.png'])('writes %s as 8-bit 3-channel sRGB PNG', async (file) => {
    const { entry } = await analysePhoto(source(corpus, file), 'character', TEST_CONFIG);
    const meta = await sharp(await renderDatasetImage(readFileSync(join(corpus, file)), entry.crop!, 512, TEST_CONFIG)).metadata();
    expect([meta.format, meta.channels, meta.depth, meta.space, meta.hasAlpha]).toEqual(['png', 3, 'uchar', 'srgb', false]);
  });

  it('strips EXIF, GPS and ICC metadata from what it writes', async () => {
    const withGps = await sharp(join(corpus, 'subject-04.jpg'))
      .withExif({ IFD0: { Artist: 'someone' }, IFD3: { GPSLatitudeRef: 'N', GPSLatitude: '51/1 30/1 0/1' } })
      .withIccProfile('p3')
      .jpeg()
      .toBuffer();
    const input = await sharp(withGps).metadata();
    expect(input.exif?.includes(Buffer.from('GPS')) || input.exif?.length).toBeTruthy();
    const out = await sharp(await renderDatasetImage(withGps, { left: 0, top: 0, width: 700, height: 700 }, 512, TEST_CONFIG)).metadata();
    expect([out.exif, out.icc, out.xmp, out.iptc]).toEqual([undefined, undefined, undefined, undefined]);
  });

  it('keeps the larger of a resized near-duplicate pair', async () => {
    const spec = JobSpecSchema.parse({ token: 'ohwx', classWord: 'man' });
    const analysed = await Promise.all(['smaller-subject-02.jpg', 'subject-02.jpg'].map((f) => analysePhoto(source(corpus, f), 'character', TEST_CONFIG)));
    expect(hammingDistance(analysed[0]!.entry.scores!.dhash, analysed[1]!.entry.scores!.dhash)).toBeLessThanOrEqual(TEST_CONFIG.duplicateDistance);
    const report = assessJob(analysed, { teamId: 't', jobId: 'j', spec, now: NOW }, TEST_CONFIG);
    expect(report.photos.map((p) => p.code)).toEqual(['DUPLICATE', 'ACCEPTED']);
    expect(report.photos[0]!.message).toContain('a near-duplicate of subject-02.jpg');
  });

  it('warns when one caption file pairs with several photos of the same name', async () => {
    const spec = JobSpecSchema.parse({ token: 'ohwx', classWord: 'man' });
    // As validate pairs them: a.txt goes with every a.* photo (here two different photos).
    const analysed = await Promise.all(
      ['subject-01.jpg', 'subject-03.jpg', 'subject-04.jpg'].map((f, i) =>
        analysePhoto({ ...source(corpus, f), ...(i < 2 ? { caption: 'a.txt' } : {}) }, 'character', TEST_CONFIG),
      ),
    );
    const { summary } = assessJob(analysed, { teamId: 't', jobId: 'j', spec, now: NOW }, TEST_CONFIG);
    expect(summary.warnings.filter((w) => w.includes('a.txt'))).toEqual([
      'a.txt captions 2 photos (subject-01.jpg, subject-03.jpg): rename the photos or give each its own caption if they differ',
    ]);
  });

  it('applies no face rule to a style job and crops on saliency', async () => {
    const files = ['no-face.png', 'two-people.jpg', 'subject-05.jpg'];
    const spec = JobSpecSchema.parse({ token: 'ohwx', classWord: 'painting', kind: 'style' });
    const config = { ...TEST_CONFIG, countRules: { ...TEST_CONFIG.countRules, style: { min: 3, max: 10, idealMin: 5, idealMax: 8 } } };
    const { report, contactSheet, images } = await checkPhotos(
      files.map((f) => source(corpus, f)),
      { teamId: 't', jobId: 'j', spec, now: NOW },
      config,
    );
    expect(report.photos.map((p) => p.code)).toEqual(['ACCEPTED', 'ACCEPTED', 'ACCEPTED']);
    // The dataset images come from validate's own decode, one per accepted photo, at the job's resolution.
    expect([...images.keys()]).toEqual(report.photos.map((p) => p.output));
    for (const png of images.values()) {
      const meta = await sharp(png).metadata();
      expect([meta.format, meta.width, meta.height, meta.channels, meta.exif]).toEqual(['png', report.resolution, report.resolution, 3, undefined]);
    }
    expect(report.photos[0]!.crop).toEqual(expect.objectContaining({ width: 400, height: 400 }));
    expect(report.plan?.folder).toMatch(/^\d+_ohwx$/);
    expect(report.summary.warnings[0]).toContain('3 usable photos');
    expect((await sharp(contactSheet).metadata()).format).toBe('png');
  });

  it('gives every file of a whole job its expected code, with bounded concurrency', async () => {
    const files = Object.keys(EXPECTED);
    const spec = JobSpecSchema.parse({ token: 'ohwx', classWord: 'man' });
    const { report } = await checkPhotos(
      files.map((f) => source(corpus, f)),
      { teamId: 't', jobId: 'j', spec, now: NOW },
      { ...TEST_CONFIG, concurrency: 2 },
    );
    expect(Object.fromEntries(report.photos.map((p) => [p.file, p.code]))).toEqual(EXPECTED);
    const accepted = Object.values(EXPECTED).filter((c) => c === 'ACCEPTED').length;
    expect(report.summary.accepted).toBe(accepted);
    expect(report.summary.reasons.DUPLICATE).toBe(2);
    expect(new Set(report.photos.filter((p) => p.output).map((p) => p.output)).size).toBe(accepted);
  });
});

describe('format sniffing and configuration', () => {
  it('recognises formats by content, not name', () => {
    expect(sniffFormat(Buffer.from('%PDF-1.7 ...'))).toBe('pdf');
    expect(sniffFormat(Buffer.from('  <svg xmlns="http://www.w3.org/2000/svg"></svg>'))).toBe('svg');
    expect(sniffFormat(Buffer.from([0xff, 0xd8, 0xff, 0xe0]))).toBe('jpeg');
    expect(sniffFormat(Buffer.concat([Buffer.from([0, 0, 0, 24]), Buffer.from('ftypheic\0\0\0\0mif1heic')]))).toBe('heif');
    expect(sniffFormat(Buffer.concat([Buffer.from([0, 0, 0, 28]), Buffer.from('ftypavif\0\0\0\0avifmif1miaf')]))).toBe('avif');
  });

  it('reads limits and count rules from the environment, keeping the defaults otherwise', () => {
    const config = configFromEnv({ VALIDATE_MAX_FILE_BYTES: '1000', VALIDATE_CHARACTER_MIN: '5' });
    expect(config.maxFileBytes).toBe(1000);
    expect(config.countRules.character).toEqual({ ...DEFAULT_CONFIG.countRules.character, min: 5 });
    expect(config.maxPixels).toBe(DEFAULT_CONFIG.maxPixels);
    expect(() => configFromEnv({ VALIDATE_MIN_SHARPNESS: 'abc' })).toThrow(/validate config: minSharpness="abc"/);
  });
});

async function meanDiff(a: Buffer, b: Buffer): Promise<number> {
  const [x, y] = await Promise.all([a, b].map((img) => sharp(img).resize(64, 64, { fit: 'fill' }).removeAlpha().raw().toBuffer()));
  let sum = 0;
  for (let i = 0; i < x!.length; i++) sum += Math.abs(x![i]! - y![i]!);
  return sum / x!.length;
}
