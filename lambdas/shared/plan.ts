/**
 * The training plan (docs/training.md, Steps, repeats and epochs): the steps formula
 *   total_steps = images x repeats x epochs / batch
 * choosing repeats and epochs so the total lands near the target, with more repeats than epochs
 * and 5-20 epochs (a checkpoint each).
 */
import type { JobSpec, Plan } from './contract';

export const MIN_EPOCHS = 5;
export const MAX_EPOCHS = 20;
/** Steps of distance one missing repeat is worth when choosing repeats over epochs. */
const REPEAT_PENALTY = 50;

/** 768 when most usable photos exceed 768x768, else 512 (docs/training.md, Crops and resolution). */
export function trainingResolution(sizes: ReadonlyArray<{ width: number; height: number }>, requested: 512 | 768 | 'auto'): 512 | 768 {
  if (requested !== 'auto') return requested;
  const large = sizes.filter((s) => s.width > 768 && s.height > 768).length;
  return large * 2 > sizes.length ? 768 : 512;
}

export function planTraining(spec: JobSpec, numImages: number, resolution: 512 | 768): Plan {
  const t = spec.training;
  const batch = t.batchSize;
  const steps = (repeats: number, epochs: number) => Math.ceil((numImages * repeats * epochs) / batch);
  let best: { repeats: number; epochs: number; score: number } | undefined;
  const epochRange = t.epochs ? [t.epochs] : range(MIN_EPOCHS, MAX_EPOCHS);
  for (const epochs of epochRange) {
    const repeats = t.repeats ?? Math.max(1, Math.round((t.targetSteps * batch) / (numImages * epochs)));
    // Distance from the target plus a penalty for each epoch not outnumbered by repeats (prefer
    // more repeats than epochs); strict `<` keeps the fewest epochs on a tie.
    const score = Math.abs(steps(repeats, epochs) - t.targetSteps) + Math.max(0, epochs - repeats + 1) * REPEAT_PENALTY;
    if (!best || score < best.score) best = { repeats, epochs, score };
  }
  const { repeats, epochs } = best!;
  const totalSteps = steps(repeats, epochs);
  return {
    numImages,
    repeats,
    epochs,
    batchSize: batch,
    totalSteps,
    resolution,
    folder: `${repeats}_${spec.token}`,
    arithmetic: `${numImages} images x ${repeats} repeats x ${epochs} epochs / batch ${batch} = ${totalSteps} steps (target ${t.targetSteps})`,
  };
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}
