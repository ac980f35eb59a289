/**
 * Offline face detection: the BlazeFace model that `@vladmandic/human` ships (MIT; graph and weights
 * sit in the npm package's models/ folder, read from disk), rebuilt as an ONNX graph (blazeface.ts)
 * and run by ONNX Runtime's native CPU kernels; human's own JS is not loaded. Nothing is downloaded at
 * run time. About 7 ms of CPU a photo (TensorFlow.js' WASM backend took ~25 ms for the same graph).
 *
 * Detection runs in one worker thread, so it overlaps the decoding and encoding of other photos on
 * the main thread (libvips) instead of queueing behind them. The worker is this same module: in the
 * Lambda bundle it is `index.js` itself (esbuild inlines this file), and the branch below, gated on
 * `workerData`, turns that copy into the detector. Started on first use, it loads the model once and
 * keeps it across warm invocations; it is unref'd while idle, so it never keeps a process alive.
 */
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { blazeFaceGraph, INPUT_NAME, INPUT_SIZE, modelInput } from './blazeface';
import { encodeModel } from './onnx';
import type { RawRgb } from './quality';
import { extractRgb } from './raw-rgb';

export interface DetectedFace {
  /** Box in the pixels of the image given to `detectFaces`. */
  readonly left: number;
  readonly top: number;
  readonly width: number;
  readonly height: number;
  readonly score: number;
}

/**
 * The detector itself failed (model files missing from the bundle, worker crashed): a deployment
 * fault that must fail the job, not a photo to reject as damaged.
 */
export class FaceDetectorError extends Error {
  override readonly name = 'FaceDetectorError';
}

/** Marks the worker's `workerData`, so only the detector thread serves requests. */
const WORKER_ROLE = 'validateFaceDetector';

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

/** Side of each tile of the second pass, as a fraction of the image's width and height. */
const TILE_FRACTION = 0.6;

/**
 * Faces too small for one pass over the whole image: BlazeFace sees every photo squeezed to
 * 256x256, where a face under ~10% of the frame (a full-body shot, a distant subject) is too small
 * to find. Four overlapping tiles, each 60% of the image a side, enlarge it 1.7x; their faces are
 * mapped back and merged (a face in an overlap is found twice). Costs four detections, so the
 * validate runs it only when the whole-image pass finds no face.
 */
export async function detectFacesTiled(img: RawRgb, detect: (tile: RawRgb) => Promise<DetectedFace[]> = detectFaces): Promise<DetectedFace[]> {
  const tw = Math.max(1, Math.round(img.width * TILE_FRACTION));
  const th = Math.max(1, Math.round(img.height * TILE_FRACTION));
  const tiles = [0, img.width - tw].flatMap((left) => [0, img.height - th].map((top) => ({ left, top })));
  const found = await Promise.all(
    tiles.map(async ({ left, top }) =>
      (await detect(extractRgb(img, { left, top, width: tw, height: th }))).map((f) => ({ ...f, left: f.left + left, top: f.top + top })),
    ),
  );
  const faces = found.flat();
  const corners = Float32Array.from(faces.flatMap((f) => [f.left, f.top, f.left + f.width, f.top + f.height]));
  const keep = nonMaxSuppression(
    corners,
    Float32Array.from(faces, (f) => f.score),
    MAX_FACES,
    IOU_THRESHOLD,
    0,
  );
  return keep.map((i) => faces[i]!);
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

type Ort = typeof import('onnxruntime-node');

/** Detector settings carried over from human's face.detector config, which validate used before ONNX Runtime. */
const MAX_FACES = 10;
const MIN_CONFIDENCE = 0.2;
const IOU_THRESHOLD = 0.3;
/** BlazeFace boxes are tight around the features; widened by this factor, then squared. */
const BOX_SCALE = 1.4;
/**
 * The model's two heads: a 16x16 grid of stride 16 with 2 anchors a cell, and an 8x8 grid of
 * stride 32 with 6; anchors are listed in that order, row by row, and every anchor sits at its
 * cell's centre, in pixels of the 256x256 input.
 */
const HEADS = [
  { stride: 16, perCell: 2 },
  { stride: 32, perCell: 6 },
].map(({ stride, perCell }) => ({ stride, perCell, grid: INPUT_SIZE / stride, count: (INPUT_SIZE / stride) ** 2 * perCell }));
const ANCHORS = HEADS.reduce((n, h) => n + h.count, 0);

interface Detector {
  readonly ort: Ort;
  readonly session: import('onnxruntime-node').InferenceSession;
  /** Anchor centres, x then y, in model input pixels. */
  readonly anchors: Float32Array;
}

let detector: Promise<Detector> | undefined;

/**
 * Faces in an RGB image, best first, detected on the calling thread (the worker's job; also lets
 * tests compare against the worker). Builds the model on first call (~100 ms), then reuses it.
 *
 * BlazeFace (the front-camera model shipped by `@vladmandic/human`, see blazeface.ts): the image is
 * resized to 256x256 (aspect not kept, as human does), scaled to [-1, 1] and run through the graph;
 * each anchor's regression gives a box centre offset and size; the boxes go through non-maximum
 * suppression, then are mapped back to the image, widened 1.4x around their centre and squared, and
 * clamped to the image, with the score rounded to 2 decimals: the arithmetic of human 3.3's
 * detector-only face path.
 */
export async function detectFacesHere(img: { data: Uint8Array; width: number; height: number }): Promise<DetectedFace[]> {
  detector ??= loadDetector();
  const { ort, session, anchors } = await detector;
  const { width, height } = img;
  const results = await session.run({ [INPUT_NAME]: new ort.Tensor('float32', modelInput(img.data, width, height), [1, 3, INPUT_SIZE, INPUT_SIZE]) });
  // Each head has a [1, anchors, 1] logit output and a [1, anchors, 16] regression output.
  const output = (count: number, depth: number) => {
    const found = Object.values(results).find((t) => t.dims[1] === count && t.dims[2] === depth);
    if (!found)
      throw new Error(
        `BlazeFace has no [1, ${count}, ${depth}] output (got ${Object.values(results)
          .map((t) => `[${t.dims}]`)
          .join(' ')})`,
      );
    return found.data as Float32Array;
  };
  const scores = new Float32Array(ANCHORS);
  let a = 0;
  for (const head of HEADS) {
    for (const logit of output(head.count, 1)) scores[a++] = 1 / (1 + Math.exp(-logit));
  }
  // Corners [x1, y1, x2, y2] in input pixels.
  const corners = new Float32Array(ANCHORS * 4);
  a = 0;
  for (const head of HEADS) {
    const reg = output(head.count, 16);
    for (let i = 0; i < head.count; i++, a++) {
      const cx = reg[i * 16]! + anchors[a * 2]!;
      const cy = reg[i * 16 + 1]! + anchors[a * 2 + 1]!;
      const halfW = reg[i * 16 + 2]! / 2;
      const halfH = reg[i * 16 + 3]! / 2;
      corners[a * 4] = cx - halfW;
      corners[a * 4 + 1] = cy - halfH;
      corners[a * 4 + 2] = cx + halfW;
      corners[a * 4 + 3] = cy + halfH;
    }
  }
  const fx = width / INPUT_SIZE;
  const fy = height / INPUT_SIZE;
  const faces: DetectedFace[] = [];
  for (const i of nonMaxSuppression(corners, scores, MAX_FACES, IOU_THRESHOLD, MIN_CONFIDENCE)) {
    // To image pixels, widened around the centre, then squared on the longer side.
    const x1 = corners[i * 4]! * fx;
    const y1 = corners[i * 4 + 1]! * fy;
    const x2 = corners[i * 4 + 2]! * fx;
    const y2 = corners[i * 4 + 3]! * fy;
    const [cx, cy] = [x1 + (x2 - x1) / 2, y1 + (y2 - y1) / 2];
    const [halfW, halfH] = [(BOX_SCALE * Math.abs(x2 - x1)) / 2, (BOX_SCALE * Math.abs(y2 - y1)) / 2];
    const [ex1, ey1, ex2, ey2] = [cx - halfW, cy - halfH, cx + halfW, cy + halfH];
    const [sizeW, sizeH] = [Math.abs(ex2 - ex1), Math.abs(ey2 - ey1)];
    if (!(Math.round(sizeW) > 0 && Math.round(sizeH) > 0)) continue; // a degenerate box
    const [sx, sy] = [ex1 + (ex2 - ex1) / 2, ey1 + (ey2 - ey1) / 2];
    const half = Math.max(sizeW, sizeH) / 2;
    const [left, top, right, bottom] = [Math.round(sx - half), Math.round(sy - half), Math.round(sx + half), Math.round(sy + half)];
    // The reported score has 2 decimals, and must itself pass the threshold (0.2049 does not).
    const score = Math.round(100 * scores[i]!) / 100;
    if (!(score > MIN_CONFIDENCE)) continue;
    // Clamped to the image (a face at the edge keeps its visible part).
    faces.push({
      left: Math.trunc(Math.max(0, left)),
      top: Math.trunc(Math.max(0, top)),
      width: Math.trunc(Math.min(width, right) - Math.max(0, left)),
      height: Math.trunc(Math.min(height, bottom) - Math.max(0, top)),
      score,
    });
  }
  // Stable: equal rounded scores keep the detector's (unrounded) order.
  return faces.sort((p, q) => q.score - p.score);
}

/**
 * Greedy non-maximum suppression over [x1, y1, x2, y2] boxes: candidates above `minScore`, best
 * first (equal scores in index order), each kept unless it overlaps a kept box by IoU >= `maxIou`.
 */
export function nonMaxSuppression(boxes: Float32Array, scores: Float32Array, maxOutput: number, maxIou: number, minScore: number): number[] {
  const order: number[] = [];
  for (let i = 0; i < scores.length; i++) if (scores[i]! > minScore) order.push(i);
  order.sort((p, q) => scores[q]! - scores[p]! || p - q);
  const kept: number[] = [];
  for (const i of order) {
    if (kept.length >= maxOutput) break;
    if (kept.every((j) => iou(boxes, i, j) < maxIou)) kept.push(i);
  }
  return kept;
}

function iou(boxes: Float32Array, i: number, j: number): number {
  const [ax1, ay1, ax2, ay2] = [
    Math.min(boxes[i * 4]!, boxes[i * 4 + 2]!),
    Math.min(boxes[i * 4 + 1]!, boxes[i * 4 + 3]!),
    Math.max(boxes[i * 4]!, boxes[i * 4 + 2]!),
    Math.max(boxes[i * 4 + 1]!, boxes[i * 4 + 3]!),
  ];
  const [bx1, by1, bx2, by2] = [
    Math.min(boxes[j * 4]!, boxes[j * 4 + 2]!),
    Math.min(boxes[j * 4 + 1]!, boxes[j * 4 + 3]!),
    Math.max(boxes[j * 4]!, boxes[j * 4 + 2]!),
    Math.max(boxes[j * 4 + 1]!, boxes[j * 4 + 3]!),
  ];
  const areaA = (ax2 - ax1) * (ay2 - ay1);
  const areaB = (bx2 - bx1) * (by2 - by1);
  if (areaA <= 0 || areaB <= 0) return 0;
  const inter = Math.max(Math.min(ax2, bx2) - Math.max(ax1, bx1), 0) * Math.max(Math.min(ay2, by2) - Math.max(ay1, by1), 0);
  return inter / (areaA + areaB - inter);
}

async function loadDetector(): Promise<Detector> {
  // Loaded here, in the worker only: the main thread never pays for ONNX Runtime.
  const ort = require('onnxruntime-node') as Ort;
  // One thread: the other cores are decoding photos, and per-photo CPU time is what counts.
  const session = await ort.InferenceSession.create(encodeModel(await blazeFaceGraph()), {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
  const anchors = new Float32Array(ANCHORS * 2);
  let a = 0;
  for (const { stride, perCell, grid } of HEADS) {
    for (let y = 0; y < grid; y++) {
      for (let x = 0; x < grid; x++) {
        for (let n = 0; n < perCell; n++, a++) {
          anchors[a * 2] = stride * (x + 0.5);
          anchors[a * 2 + 1] = stride * (y + 0.5);
        }
      }
    }
  }
  return { ort, session, anchors };
}
