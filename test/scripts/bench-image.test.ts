/**
 * `npm run -s bench:image --offline` from the committed snapshot of wheel sizes: the per-layer figures
 * add up, the duplicate CUDA stack is flagged, and the one image is smaller than the two.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(__dirname, '..', '..');

describe('bench:image', () => {
  const run = spawnSync('python3', [join(ROOT, 'bench/image.py'), '--offline'], { encoding: 'utf8' });
  const out = run.stdout;
  const totals = [...out.matchAll(/^\s+([\d.]+) GB compressed\s+([\d.]+) GB unpacked {2}TOTAL$/gm)].map((m) => Number(m[1]));

  it('prints each image with a total, from the dated snapshot', () => {
    expect(run.status, run.stderr).toBe(0);
    const snapshot = JSON.parse(readFileSync(join(ROOT, 'bench/image-sizes.json'), 'utf8'));
    expect(out).toContain(`snapshot of ${snapshot.measured}`);
    expect(totals).toHaveLength(3);
  });

  it('sums each image from its layers', () => {
    for (const section of out.split('\n\n').filter((s) => s.includes('TOTAL'))) {
      const layers = [...section.matchAll(/^\s+([\d.]+) GB compressed.*$/gm)].filter((m) => !m[0].endsWith('TOTAL')).map((m) => Number(m[1]));
      const total = Number(/([\d.]+) GB compressed\s+[\d.]+ GB unpacked {2}TOTAL/.exec(section)![1]);
      expect(Math.abs(layers.reduce((a, b) => a + b, 0) - total)).toBeLessThan(0.01 * layers.length + 0.001);
    }
  });

  it('flags the CUDA stack both images install and the build tools, and keeps the one image under the two', () => {
    expect(out.match(/\[duplicate: in both images before\]/g)?.length).toBe(4);
    expect(out).toMatch(/apt git libgl1 libglib2.0-0 \(est\.\)\s+\[build tool/);
    const [captioner, trainer, one] = totals;
    expect(one).toBeLessThan(captioner + trainer);
    expect(one).toBeLessThan(Math.max(captioner, trainer));
    // No layer of the proposed image passes ~2 GB, so Docker can fetch and unpack them in parallel.
    expect(out.split('now: one image')[1]).not.toContain('> 2 GB');
  });
});
