/**
 * The face detector's model is converted at load time from human's TensorFlow.js graph to ONNX
 * (lambdas/validate/blazeface.ts). TensorFlow.js (a dev dependency, WASM backend) runs the original
 * graph as the reference: the converted model must give the same outputs on real photos, and the
 * input preparation and non-maximum suppression must match TensorFlow.js' own.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { GraphModel } from '@tensorflow/tfjs-converter';
import type * as TfCore from '@tensorflow/tfjs-core';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blazeFaceGraph, INPUT_NAME, INPUT_SIZE, modelInput } from '../../lambdas/validate/blazeface';
import { detectFacesHere, detectFacesTiled, nonMaxSuppression } from '../../lambdas/validate/faces';
import { encodeModel } from '../../lambdas/validate/onnx';
import { buildCorpus, corpusUnavailable } from '../fixtures/photos/build';
import { describeNeeding } from '../helpers/suites';
import { loadTfjsBlazeFace, type TfjsBlazeFace } from '../helpers/tfjs-blazeface';

const PHOTOS = ['subject-01.jpg', 'subject-03.jpg', 'subject-05.jpg', 'two-people.jpg', 'no-face.png', 'exif-rotated.jpg'];

const skip = corpusUnavailable();
if (skip) console.warn(`BlazeFace conversion tests skipped: ${skip}`);

describeNeeding('BlazeFace converted to ONNX', skip, () => {
  let tf: typeof TfCore;
  let reference: GraphModel;
  let tfInput: TfjsBlazeFace['input'];
  let session: ort.InferenceSession;
  const images: Array<{ file: string; data: Buffer; width: number; height: number }> = [];

  beforeAll(async () => {
    ({ tf, model: reference, input: tfInput } = await loadTfjsBlazeFace());
    session = await ort.InferenceSession.create(encodeModel(await blazeFaceGraph()));
    const corpus = await buildCorpus();
    for (const file of PHOTOS) {
      // The size validate gives the detector (a 320 px thumbnail), upright.
      const { data, info } = await sharp(readFileSync(join(corpus, file)))
        .rotate()
        .resize(320, 320, { fit: 'inside' })
        .removeAlpha()
        .raw()
        .toBuffer({ resolveWithObject: true });
      images.push({ file, data, width: info.width, height: info.height });
    }
  }, 60_000);
  afterAll(async () => session?.release());

  it('prepares the same input as tf.image.resizeBilinear, laid out NCHW', () => {
    for (const img of images) {
      const ours = modelInput(img.data, img.width, img.height);
      const nhwc = tfInput(img);
      const theirs = nhwc.dataSync();
      nhwc.dispose();
      let worst = 0;
      for (let i = 0; i < theirs.length; i++) {
        const [y, x, c] = [Math.floor(i / (INPUT_SIZE * 3)), Math.floor(i / 3) % INPUT_SIZE, i % 3];
        worst = Math.max(worst, Math.abs(theirs[i]! - ours[c * INPUT_SIZE * INPUT_SIZE + y * INPUT_SIZE + x]!));
      }
      expect(worst, img.file).toBeLessThan(1e-5);
    }
  });

  it('gives the outputs of the original TensorFlow.js graph on real photos', async () => {
    for (const img of images) {
      const input = tfInput(img);
      const expected = reference.execute(input) as TfCore.Tensor[];
      input.dispose();
      const got = await session.run({ [INPUT_NAME]: new ort.Tensor('float32', modelInput(img.data, img.width, img.height), [1, 3, INPUT_SIZE, INPUT_SIZE]) });
      expect(Object.keys(got)).toHaveLength(expected.length);
      for (const tensor of expected) {
        const match = Object.values(got).find((t) => t.dims.join() === tensor.shape.join());
        expect(match, `${img.file}: an output of shape [${tensor.shape}]`).toBeDefined();
        const want = tensor.dataSync();
        const have = match!.data as Float32Array;
        // Logits and box regressions (in input pixels, up to ~300): float32 reordering noise only.
        let worst = 0;
        for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(want[i]! - have[i]!) / Math.max(1, Math.abs(want[i]!)));
        expect(worst, `${img.file} [${tensor.shape}]`).toBeLessThan(1e-3);
      }
      tf.dispose(expected);
    }
  });

  it('finds one face per subject photo and two in two-people.jpg', async () => {
    const counts = Object.fromEntries(
      await Promise.all(images.map(async (img) => [img.file, (await detectFacesHere(img)).filter((f) => f.score >= 0.6).length] as const)),
    );
    expect(counts).toEqual({ 'subject-01.jpg': 1, 'subject-03.jpg': 1, 'subject-05.jpg': 1, 'two-people.jpg': 2, 'no-face.png': 0, 'exif-rotated.jpg': 1 });
  });

  it('finds a distant face only in the tiled pass, once although two tiles see it', async () => {
    const { data, info } = await sharp(readFileSync(join(await buildCorpus(), 'far-subject.jpg')))
      .resize(512, 512, { fit: 'inside' })
      .raw()
      .toBuffer({ resolveWithObject: true });
    const working = { data, width: info.width, height: info.height };
    const thumb = await sharp(data, { raw: { width: info.width, height: info.height, channels: 3 } })
      .resize(320)
      .raw()
      .toBuffer({ resolveWithObject: true });
    expect((await detectFacesHere({ data: thumb.data, width: thumb.info.width, height: thumb.info.height })).filter((f) => f.score >= 0.6)).toEqual([]);
    const tiled = (await detectFacesTiled(working)).filter((f) => f.score >= 0.7);
    expect(tiled).toHaveLength(1);
    // The astronaut's face sits at x 700-930 of 1600 (44-58%): inside both the left and right tiles.
    const centre = (tiled[0]!.left + tiled[0]!.width / 2) / working.width;
    expect(centre).toBeGreaterThan(0.44);
    expect(centre).toBeLessThan(0.58);
  });

  it('suppresses overlapping boxes exactly as TensorFlow.js does', () => {
    let seed = 7;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed / 2147483648;
    };
    for (let round = 0; round < 20; round++) {
      const n = 200;
      const boxes = new Float32Array(n * 4);
      const scores = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const [x, y, w, h] = [random() * 200, random() * 200, 5 + random() * 60, 5 + random() * 60];
        boxes.set([x, y, x + w, y + h], i * 4);
        // Some exact ties, to check the order between equal scores.
        scores[i] = round % 2 ? Math.round(random() * 10) / 10 : random();
      }
      const theirs = tf.kernel_impls.nonMaxSuppressionV3Impl(boxes, scores, 10, 0.3, 0.2).selectedIndices;
      expect(nonMaxSuppression(boxes, scores, 10, 0.3, 0.2)).toEqual(theirs);
    }
  });
});

describe('the ONNX graph writer', () => {
  it('names the TensorFlow op it cannot convert', async () => {
    const { mkdtempSync, writeFileSync } = await import('node:fs');
    const dir = mkdtempSync(join(require('node:os').tmpdir(), 'avatar-blazeface-'));
    const model = {
      modelTopology: {
        node: [
          { name: 'input', op: 'Placeholder' },
          { name: 'odd', op: 'Softmax', input: ['input'] },
        ],
      },
      weightsManifest: [{ paths: ['w.bin'], weights: [] }],
    };
    writeFileSync(join(dir, 'model.json'), JSON.stringify(model));
    writeFileSync(join(dir, 'w.bin'), Buffer.alloc(0));
    await expect(blazeFaceGraph(join(dir, 'model.json'))).rejects.toThrow('odd: TensorFlow op Softmax is not supported by this converter');
  });

  it('writes a model ONNX Runtime loads and runs, with the attribute values given', async () => {
    // y = MaxPool(Relu(x + b)) on a 1x1x2x2 input, with a float initializer.
    const bytes = encodeModel({
      name: 'tiny',
      nodes: [
        { op: 'Add', inputs: ['x', 'b'], outputs: ['sum'] },
        { op: 'Relu', inputs: ['sum'], outputs: ['relu'] },
        { op: 'MaxPool', inputs: ['relu'], outputs: ['y'], attrs: { kernel_shape: [2, 2], strides: [2, 2], auto_pad: 'VALID' } },
      ],
      initializers: [{ name: 'b', dims: [1, 1, 2, 2], data: Float32Array.from([1, -10, 0.5, 300]) }],
      inputs: [{ name: 'x', dims: [1, 1, 2, 2] }],
      outputs: [{ name: 'y', dims: [1, 1, 1, 1] }],
    });
    const tiny = await ort.InferenceSession.create(bytes);
    const out = await tiny.run({ x: new ort.Tensor('float32', Float32Array.from([2, 3, -4, -299.5]), [1, 1, 2, 2]) });
    expect(Array.from(out.y!.data as Float32Array)).toEqual([3]); // max(relu(3), relu(-7), relu(-3.5), relu(0.5))
    await tiny.release();
  });
});
