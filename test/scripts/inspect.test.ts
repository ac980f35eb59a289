/**
 * `npm run inspect`, as a person runs it, on the intake corpus: the table, the JSON report with each
 * file's code, and --out with the report, the contact sheet and the cropped kohya dataset.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { beforeAll, expect, it } from 'vitest';
import { buildCorpus, CORPUS_MAX_FILE_BYTES, corpusUnavailable, EXPECTED, EXPECTED_HEIC, heifEncAvailable } from '../fixtures/photos/build';
import { describeNeeding } from '../helpers/suites';

const ROOT = join(__dirname, '..', '..');
const unavailable = corpusUnavailable();

function inspect(args: string[]) {
  return spawnSync(join(ROOT, 'node_modules', '.bin', 'tsx'), [join(ROOT, 'scripts', 'inspect.ts'), ...args], {
    encoding: 'utf8',
    // The corpus's oversized file is built to pass this per-file limit, as in the intake tests.
    env: { ...process.env, VALIDATE_MAX_FILE_BYTES: String(CORPUS_MAX_FILE_BYTES) },
    timeout: 180_000,
  });
}

describeNeeding('npm run inspect', unavailable, () => {
  let corpus: string;
  let out: string;
  let json: { photos: Array<{ file: string; code: string; status: string; output?: string }>; plan?: { folder: string; resolution: number } };

  beforeAll(async () => {
    corpus = await buildCorpus();
    out = mkdtempSync(join(tmpdir(), 'avatar-inspect-'));
    const run = inspect([corpus, '--kind', 'character', '--token', 'ohwx', '--json', '--out', out]);
    expect(run.status, run.stderr).toBe(0);
    json = JSON.parse(run.stdout);
  });

  it('reports every file with its expected code', () => {
    const expected = { ...EXPECTED, ...(heifEncAvailable() ? EXPECTED_HEIC : {}) };
    const codes = Object.fromEntries(json.photos.map((p) => [p.file, p.code]));
    // Pairs of the same photo at the same size keep one, and which one is a tie-break: of two
    // byte-identical photos the first in name order, and of the EXIF-rotated photo and the intake
    // tests' upright reference of it (`*.ref`, an ordinary file here) the sharper by a hair. So
    // those are checked as pairs; the resized duplicate always loses to its larger original.
    const pairs = [
      ['subject-01.jpg', 'copy-of-subject-01.jpg'],
      ['exif-rotated.jpg', 'exif-rotated.upright.png.ref'],
    ];
    for (const pair of pairs) expect(pair.map((f) => codes[f]).sort(), pair.join(' + ')).toEqual(['ACCEPTED', 'DUPLICATE']);
    for (const [file, code] of Object.entries(expected).filter(([f]) => !pairs.flat().includes(f))) expect(codes[file], file).toBe(code);
    expect(
      Object.keys(codes)
        .filter((f) => !f.endsWith('.ref'))
        .sort(),
    ).toEqual(Object.keys(expected).sort());
  });

  it('writes the report, the contact sheet and one dataset PNG per accepted photo at the plan resolution', async () => {
    const accepted = json.photos.filter((p) => p.status === 'accepted');
    expect(JSON.parse(readFileSync(join(out, 'report.json'), 'utf8')).photos).toHaveLength(json.photos.length);
    expect((await sharp(join(out, 'contact-sheet.png')).metadata()).format).toBe('png');
    const folder = join(out, json.plan!.folder);
    const pngs = readdirSync(folder)
      .filter((f) => f.endsWith('.png'))
      .sort();
    expect(pngs).toEqual(accepted.map((p) => p.output!).sort());
    const meta = await sharp(join(folder, pngs[0]!)).metadata();
    expect([meta.width, meta.height]).toEqual([json.plan!.resolution, json.plan!.resolution]);
    expect(meta.exif).toBeUndefined();
  });

  it('prints a table for people', () => {
    const run = inspect([corpus, '--kind', 'character']);
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^file\s+result\s+format/m);
    expect(run.stdout).toMatch(/two-people\.jpg\s+MULTIPLE_FACES/);
    expect(run.stdout).toMatch(/plan: \d+ images x \d+ repeats x \d+ epochs/);
  });

  it('exits 2 with usage when the folder is missing', () => {
    const run = inspect([]);
    expect(run.status).toBe(2);
    expect(run.stderr).toContain('usage: npm run inspect');
    expect(existsSync(out)).toBe(true);
  });
});
