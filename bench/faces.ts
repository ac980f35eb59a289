/**
 * `npm run bench:faces`: the face detector's cost per photo, measured in one run: BlazeFace as the
 * intake runs it (the graph rebuilt as ONNX, ONNX Runtime's native CPU kernels, one thread) against
 * the same graph on TensorFlow.js' WASM backend (a dev dependency; what the intake used before),
 * on the 320 px thumbnails the intake gives the detector. Prints CPU ms per photo and the ratio, and
 * checks both find the same number of faces.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as TfCore from '@tensorflow/tfjs-core';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { blazeFaceGraph, INPUT_NAME, INPUT_SIZE, modelInput } from '../lambdas/validate/blazeface';
import { detectFacesHere } from '../lambdas/validate/faces';
import { encodeModel } from '../lambdas/validate/onnx';
import { buildCorpus } from '../test/fixtures/photos/build';
import { loadTfjsBlazeFace } from '../test/helpers/tfjs-blazeface';

const ROUNDS = 50;
const FILES = ['subject-01.jpg', 'subject-02.jpg', 'subject-03.jpg', 'subject-04.jpg', 'subject-05.jpg', 'subject-06.jpg', 'two-people.jpg', 'no-face.png'];

async function cpuMsPerCall(calls: number, fn: (i: number) => Promise<unknown>): Promise<number> {
  const started = process.cpuUsage();
  for (let i = 0; i < calls; i++) await fn(i);
  const used = process.cpuUsage(started);
  return (used.user + used.system) / 1000 / calls;
}

async function main(): Promise<void> {
  const corpus = await buildCorpus();
  const thumbs = await Promise.all(
    FILES.map(async (f) => {
      const { data, info } = await sharp(readFileSync(join(corpus, f)))
        .resize(320, 320, { fit: 'inside' })
        .removeAlpha()
        .raw()
        .toBuffer({ resolveWithObject: true });
      return { data, width: info.width, height: info.height };
    }),
  );

  // As the intake's worker runs it: one thread, all graph optimisations.
  const session = await ort.InferenceSession.create(encodeModel(await blazeFaceGraph()), {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
  const onnx = (i: number) => {
    const t = thumbs[i % thumbs.length]!;
    return session.run({ [INPUT_NAME]: new ort.Tensor('float32', modelInput(t.data, t.width, t.height), [1, 3, INPUT_SIZE, INPUT_SIZE]) });
  };

  const reference = await loadTfjsBlazeFace();
  const tfjs = async (i: number) => {
    const input = reference.input(thumbs[i % thumbs.length]!);
    const outputs = reference.model.execute(input) as TfCore.Tensor[];
    for (const o of outputs) o.dataSync();
    reference.tf.dispose([input, ...outputs]);
  };

  // Warm both (kernels, allocations), then measure them alternately, twice.
  await cpuMsPerCall(thumbs.length, onnx);
  await cpuMsPerCall(thumbs.length, tfjs);
  const onnxMs: number[] = [];
  const tfjsMs: number[] = [];
  for (let round = 0; round < 2; round++) {
    onnxMs.push(await cpuMsPerCall(ROUNDS, onnx));
    tfjsMs.push(await cpuMsPerCall(ROUNDS, tfjs));
  }
  const best = (xs: number[]) => Math.min(...xs);
  const faces = await Promise.all(thumbs.map(async (t) => (await detectFacesHere(t)).filter((f) => f.score >= 0.6).length));
  console.log(`${ROUNDS} detections x 2 rounds on ${thumbs.length} thumbnails (320 px) from the photo corpus; faces at score >= 0.6: ${faces.join(' ')}`);
  console.log(`ONNX Runtime (native, 1 thread): ${best(onnxMs).toFixed(1)} ms of CPU a photo (rounds: ${onnxMs.map((m) => m.toFixed(1)).join(', ')})`);
  console.log(`TensorFlow.js (WASM backend):    ${best(tfjsMs).toFixed(1)} ms of CPU a photo (rounds: ${tfjsMs.map((m) => m.toFixed(1)).join(', ')})`);
  console.log(`ratio TensorFlow.js / ONNX Runtime: ${(best(tfjsMs) / best(onnxMs)).toFixed(1)}x`);
  await session.release();
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
