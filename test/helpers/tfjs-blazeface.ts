/**
 * The reference the ONNX face detector is checked and benchmarked against: human's BlazeFace graph
 * run as it was before, by TensorFlow.js (dev dependencies) on its WASM backend, with the input
 * prepared the TensorFlow.js way (bilinear resize to 256x256, scaled to [-1, 1], NHWC).
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { GraphModel } from '@tensorflow/tfjs-converter';
import type * as TfCore from '@tensorflow/tfjs-core';
import { blazeFacePath, INPUT_SIZE } from '../../lambdas/validate/blazeface';

export interface TfjsBlazeFace {
  readonly tf: typeof TfCore;
  readonly model: GraphModel;
  /** The model input for interleaved RGB bytes; the caller disposes it. */
  input(img: { data: Uint8Array; width: number; height: number }): TfCore.Tensor4D;
}

export async function loadTfjsBlazeFace(): Promise<TfjsBlazeFace> {
  const tf = require('@tensorflow/tfjs-core') as typeof TfCore;
  const wasm = require('@tensorflow/tfjs-backend-wasm') as typeof import('@tensorflow/tfjs-backend-wasm');
  wasm.setWasmPaths(`${join(dirname(require.resolve('@tensorflow/tfjs-backend-wasm')), '..', 'dist')}/`);
  if (!(await tf.setBackend('wasm'))) throw new Error('the TensorFlow.js WASM backend failed to initialise');
  const { loadGraphModel } = require('@tensorflow/tfjs-converter') as typeof import('@tensorflow/tfjs-converter');
  const json = JSON.parse(readFileSync(blazeFacePath(), 'utf8')) as {
    modelTopology: object;
    weightsManifest: Array<{ paths: string[]; weights: TfCore.io.WeightsManifestEntry[] }>;
  };
  const weightData = new Uint8Array(Buffer.concat(json.weightsManifest.flatMap((g) => g.paths.map((p) => readFileSync(join(dirname(blazeFacePath()), p))))))
    .buffer;
  const model = await loadGraphModel({
    load: async () => ({ modelTopology: json.modelTopology, weightSpecs: json.weightsManifest.flatMap((g) => g.weights), weightData }),
  });
  const input = (img: { data: Uint8Array; width: number; height: number }) =>
    tf.tidy(() => {
      const pixels = tf.cast(tf.expandDims(tf.tensor3d(img.data, [img.height, img.width, 3], 'int32'), 0), 'float32') as TfCore.Tensor4D;
      return tf.sub(tf.div(tf.image.resizeBilinear(pixels, [INPUT_SIZE, INPUT_SIZE]), 127.5), 1) as TfCore.Tensor4D;
    });
  return { tf, model, input };
}
