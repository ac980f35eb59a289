/**
 * Offline face detection: BlazeFace from `@vladmandic/human` (MIT; weights ship inside the npm
 * package) on TensorFlow.js's WASM backend. Nothing is downloaded at run time. About 35-100 ms per
 * photo on one CPU core.
 *
 * Detection runs in one worker thread, so it overlaps the decoding and encoding of other photos on
 * the main thread (libvips) instead of queueing behind them. The worker is this same module: in the
 * Lambda bundle it is `index.js` itself (esbuild inlines this file), and the branch below, gated on
 * `workerData`, turns that copy into the detector. Started on first use, it loads the model once and
 * keeps it across warm invocations; it is unref'd while idle, so it never keeps a process alive.
 */
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
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

/**
 * The detector itself failed (model files missing from the bundle, worker crashed): a deployment
 * fault that must fail the job, not a photo to reject as damaged.
 */
export class FaceDetectorError extends Error {
  override readonly name = 'FaceDetectorError';
}

/** Marks the worker's `workerData`, so only the detector thread serves requests. */
const WORKER_ROLE = 'intakeFaceDetector';

interface DetectRequest {
  readonly id: number;
  readonly width: number;
  readonly height: number;
  /** RGB bytes, transferred (not copied) to the worker. */
  readonly data: ArrayBuffer;
}

type DetectReply = { readonly id: number; readonly faces: DetectedFace[] } | { readonly id: number; readonly error: string };

// ---- main thread: a client of the worker ----

let worker: Worker | undefined;
const pending = new Map<number, { resolve(faces: DetectedFace[]): void; reject(error: Error): void }>();
let nextId = 0;

/** Faces in an RGB image, best first, detected in the worker (started and model loaded on first call). */
export function detectFaces(img: RawRgb): Promise<DetectedFace[]> {
  const detector = worker ?? startWorker();
  // An exactly-sized copy of our own: the caller keeps its buffer, ours moves to the worker for free.
  const pixels = new Uint8Array(img.data);
  const request: DetectRequest = { id: nextId++, width: img.width, height: img.height, data: pixels.buffer };
  return new Promise((resolve, reject) => {
    pending.set(request.id, { resolve, reject });
    detector.ref(); // an answer is awaited: keep the process alive for it
    detector.postMessage(request, [request.data]);
  });
}

/** The detector thread's id while one runs (tests check that detection really left the main thread). */
export function faceWorkerThreadId(): number | undefined {
  return worker?.threadId;
}

function startWorker(): Worker {
  const options = { workerData: { [WORKER_ROLE]: true } };
  // From source (tsx, vitest) this file is .ts, which Node cannot start a worker on: a one-line
  // entry registers tsx's loader first. The bundle is plain .js and starts directly.
  const started = __filename.endsWith('.ts')
    ? new Worker(`require(${JSON.stringify(require.resolve('tsx/cjs'))}); require(${JSON.stringify(__filename)});`, { ...options, eval: true })
    : new Worker(__filename, options);
  started.unref();
  started.on('message', (reply: DetectReply) => {
    const waiter = pending.get(reply.id);
    pending.delete(reply.id);
    if (pending.size === 0) started.unref();
    if ('error' in reply) waiter?.reject(new FaceDetectorError(`face detection failed: ${reply.error}`));
    else waiter?.resolve(reply.faces);
  });
  // A crashed worker fails what it held; the next call starts a fresh one.
  const fail = (error: Error) => {
    if (worker === started) worker = undefined;
    for (const waiter of pending.values()) waiter.reject(error);
    pending.clear();
  };
  started.on('error', (error) => fail(new FaceDetectorError(`the face detector worker failed: ${error.message}`)));
  started.on('exit', (code) => fail(new FaceDetectorError(`the face detector worker exited (code ${code})`)));
  worker = started;
  return started;
}

// ---- worker thread: the detector itself ----

if (!isMainThread && (workerData as Record<string, unknown> | null)?.[WORKER_ROLE]) serveDetections();

function serveDetections(): void {
  const port = parentPort!;
  // One detection at a time: the model is shared, and its WASM runs on this one thread anyway.
  let queue = Promise.resolve();
  port.on('message', (request: DetectRequest) => {
    queue = queue.then(async () => {
      try {
        const faces = await detectFacesHere({ data: new Uint8Array(request.data), width: request.width, height: request.height });
        port.postMessage({ id: request.id, faces } satisfies DetectReply);
      } catch (error) {
        port.postMessage({ id: request.id, error: (error as Error).message ?? String(error) } satisfies DetectReply);
      }
    });
  });
}

let human: Promise<HumanLike> | undefined;

/**
 * Faces in an RGB image, best first, detected on the calling thread (the worker's job; also lets
 * tests compare against the worker). Loads the model on first call (~50 ms), then reuses it.
 */
export async function detectFacesHere(img: { data: Uint8Array; width: number; height: number }): Promise<DetectedFace[]> {
  human ??= loadHuman();
  const h = await human;
  const tensor = h.tf.tensor3d(img.data, [img.height, img.width, 3], 'int32');
  try {
    const result = await h.detect(tensor);
    return result.face
      .map((f) => ({ left: f.box[0], top: f.box[1], width: f.box[2], height: f.box[3], score: f.boxScore ?? f.score }))
      .sort((a, b) => b.score - a.score);
  } finally {
    tensor.dispose();
  }
}

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
