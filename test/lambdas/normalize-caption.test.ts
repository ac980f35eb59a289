/**
 * Normalize cleans user captions and copies crops; it must not pull in the image stack. The bundle
 * check runs esbuild the way the Lambda bundling does (lib/aws-lambda-nodejs: bundle, node, CJS).
 */
import { join } from 'node:path';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';
import { cleanCaption } from '../../lambdas/normalize/caption';

const ROOT = join(__dirname, '..', '..');

describe('normalize', () => {
  it('turns a user caption into one line of plain text', () => {
    const raw = new TextEncoder().encode('  photo of ohwx,\r\n a man\tin a red\u0000shirt \n\n');
    expect(cleanCaption(raw)).toBe('photo of ohwx, a man in a red shirt');
  });

  it('cuts an overlong caption at 1000 characters', () => {
    expect(cleanCaption(new TextEncoder().encode('a'.repeat(5000)))).toHaveLength(1000);
  });

  it('bundles without sharp or any other image module', async () => {
    const result = await build({
      entryPoints: [join(ROOT, 'lambdas', 'normalize', 'handler.ts')],
      bundle: true,
      platform: 'node',
      format: 'cjs',
      target: 'node22',
      write: false,
      metafile: true,
      logLevel: 'silent',
    });
    const inputs = Object.keys(result.metafile.inputs);
    expect(inputs).toContain('lambdas/normalize/caption.ts');
    expect(
      inputs.filter(
        (f) => /node_modules\/(sharp|heic-decode|onnxruntime-node|@vladmandic)\//.test(f) || /lambdas\/validate\/(render|decode|analyze)\.ts$/.test(f),
      ),
    ).toEqual([]);
  });
});
