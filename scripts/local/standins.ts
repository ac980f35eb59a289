/**
 * Fast in-process stand-ins for the GPU images, for runs where only the boundary matters (the
 * load bench, fault tests of the orchestration): each reads normalize/plan.json and writes, under
 * each stage's own prefix, the files the real container publishes (caption .txt files and
 * captions.json; one checkpoint per epoch and the final LoRA; evaluate's grid), reporting progress
 * in status.json as the containers do. The `train` job is the caption stage, then the train stage
 * (`python -m avatar_job caption train`), each reporting as itself; a retried job does not caption
 * again once captions.json is there, as the captioner does not. The container code itself is tested with its own tests and
 * through the real entrypoints (test/workflow/containers.test.ts, faults.test.ts).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { type DatasetPlan, DatasetPlanSchema } from '../../lambdas/shared/contract';
import { keys } from '../../lambdas/shared/keys';
import { getJson, getValidJson, putBytes, putJson } from '../../lambdas/shared/s3';
import { writeStatus } from '../../lambdas/shared/status';
import type { ContainerSpec } from './batch';

export interface StandInOptions {
  readonly s3: () => S3Client;
  readonly artifactsBucket: string;
  /** Wall time each training epoch takes, in ms (0: none). */
  readonly epochMs?: number;
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });

/** The container body for `stage`: exit 0 on success, 143 when stopped with SIGTERM. */
export function gpuStandIn(options: StandInOptions): (spec: ContainerSpec, signal: AbortSignal) => Promise<number> {
  return async (spec, signal) => {
    const s3 = options.s3();
    const bucket = options.artifactsBucket;
    const job = { teamId: spec.env.AVATAR_TEAM_ID!, jobId: spec.env.AVATAR_JOB_ID! };
    const plan: DatasetPlan = await getValidJson(s3, bucket, keys.plan(job), DatasetPlanSchema);
    const progress = (stage: 'caption' | 'train' | 'evaluate', fraction: number, message: string) =>
      writeStatus(s3, bucket, job, { state: 'running', stage, progress: { fraction, message } });
    if (spec.stage === 'train') {
      const captions = keys.stage(job, 'caption');
      if ((await getJson(s3, bucket, `${captions}captions.json`)) === undefined) {
        await progress('caption', 0, `caption starting (attempt ${spec.attempt})`);
        for (const image of plan.images) {
          await putBytes(
            s3,
            bucket,
            `${captions}${plan.plan.folder}/${image.replace(/\.png$/, '.txt')}`,
            `photo of ${plan.spec.token}, a ${plan.spec.classWord}`,
            'text/plain',
          );
        }
        await putJson(s3, bucket, `${captions}captions.json`, { captions: plan.images.map((image) => ({ image, caption: `photo of ${plan.spec.token}` })) });
        await progress('caption', 1, `captioned ${plan.images.length} images`);
      }
      if (signal.aborted) return 143;
      const dir = keys.stage(job, 'train');
      await progress('train', 0, `train starting (attempt ${spec.attempt})`);
      const epochs = plan.plan.epochs;
      for (let epoch = 1; epoch <= epochs; epoch++) {
        await sleep(options.epochMs ?? 0, signal);
        if (signal.aborted) return 143;
        const name = epoch === epochs ? `${plan.outputName}.safetensors` : `${plan.outputName}-${String(epoch).padStart(6, '0')}.safetensors`;
        await putBytes(s3, bucket, `${dir}${name}`, `epoch ${epoch}`, 'application/octet-stream');
        await progress('train', epoch / epochs, `epoch ${epoch}/${epochs}`);
      }
    } else if (spec.stage === 'evaluate') {
      await progress('evaluate', 0, `evaluate starting (attempt ${spec.attempt})`);
      await putBytes(s3, bucket, `${keys.stage(job, 'evaluate')}grid.png`, 'grid', 'image/png');
    } else {
      throw new Error(`no stand-in for stage ${spec.stage}`);
    }
    return 0;
  };
}
