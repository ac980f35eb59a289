/**
 * Offline face detection: BlazeFace from `@vladmandic/human` (MIT; weights ship inside the npm
 * package) on TensorFlow.js's WASM backend. Nothing is downloaded at run time. About 35-100 ms per
 * photo on one CPU core at the 1024 px working size.
 */
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Mutex } from './pool';
import type { RawRgb } from './quality';

export interface DetectedFace {
  /** Box in the pixels of the image given to `detectFaces`. */
  readonly left: number;
  readonly top: number;
  readonly width: number;
  readonly height: number;
  readonly score: number;
}

interface HumanLike {
  load(): Promise<void>;
  detect(input: unknown): Promise<{ face: Array<{ score: number; boxScore: number; box: [number, number, number, number] }> }>;
  tf: { tensor3d(data: Int32Array | Uint8Array, shape: [number, number, number], dtype: 'int32'): { dispose(): void } };
}

let human: Promise<HumanLike> | undefined;
// One detection at a time: the model is shared and its WASM runs on the main thread anyway.
const detectLock = new Mutex();

/** Both packages' `exports` maps hide package.json; their main entries sit in `dist/`, so climb one level. */
function packageDir(name: string): string {
  return join(dirname(require.resolve(name)), '..');
}

async function loadHuman(): Promise<HumanLike> {
  const humanDir = packageDir('@vladmandic/human');
  const wasmDir = `${join(packageDir('@tensorflow/tfjs-backend-wasm'), 'dist')}/`;
  installFileFetch();
  // The package's `exports` map has no entry for the WASM build: require it by file path.
  const { Human } = require(join(humanDir, 'dist', 'human.node-wasm.js')) as { Human: new (config: object) => HumanLike };
  const instance = new Human({
    backend: 'wasm',
    wasmPath: wasmDir,
    modelBasePath: `file://${join(humanDir, 'models')}/`,
    debug: false,
    async: false,
    warmup: 'none',
    cacheSensitivity: 0,
    face: {
      enabled: true,
      detector: { enabled: true, rotation: false, maxDetected: 10, minConfidence: 0.2, iouThreshold: 0.3, return: false },
      mesh: { enabled: false },
      iris: { enabled: false },
      description: { enabled: false },
      emotion: { enabled: false },
      antispoof: { enabled: false },
      liveness: { enabled: false },
    },
    body: { enabled: false },
    hand: { enabled: false },
    object: { enabled: false },
    gesture: { enabled: false },
    segmentation: { enabled: false },
    filter: { enabled: false },
  });
  await instance.load();
  return instance;
}

/**
 * Node's fetch cannot read file:// URLs, which is how human and the WASM backend load their model
 * and binaries; answer those from disk and pass everything else through.
 */
function installFileFetch(): void {
  const original = globalThis.fetch;
  if ((original as { fileShim?: boolean }).fileShim) return;
  const shim = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    if (url.startsWith('file://')) {
      const path = decodeURIComponent(url.slice('file://'.length));
      const type = path.endsWith('.wasm') ? 'application/wasm' : 'application/octet-stream';
      return new Response(await readFile(path), { status: 200, headers: { 'content-type': type } });
    }
    return original(input, init);
  };
  globalThis.fetch = Object.assign(shim, { fileShim: true }) as typeof fetch;
}

/** Faces in an RGB image, best first. Loads the model on first call (~50 ms), then reuses it. */
export async function detectFaces(img: RawRgb): Promise<DetectedFace[]> {
  human ??= loadHuman();
  const h = await human;
  return detectLock.run(async () => {
  const tensor = h.tf.tensor3d(img.data, [img.height, img.width, 3], 'int32');
  try {
    const result = await h.detect(tensor);
    return result.face
      .map((f) => ({ left: f.box[0], top: f.box[1], width: f.box[2], height: f.box[3], score: f.boxScore ?? f.score }))
      .sort((a, b) => b.score - a.score);
  } finally {
    tensor.dispose();
  }
  });
}
