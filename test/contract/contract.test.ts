import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DatasetPlanSchema, describeIssues, GRID_PROMPTS, JobSpecSchema } from '../../lambdas/shared/contract';
import { parseSpecKey, photoName } from '../../lambdas/shared/keys';
import { planTraining, trainingResolution } from '../../lambdas/shared/plan';

function errorOf(input: unknown): string {
  const parsed = JobSpecSchema.safeParse(input);
  if (parsed.success) throw new Error('expected the spec to be rejected');
  return describeIssues(parsed.error, 'job.json');
}

describe('job.json', () => {
  it('fills the documented defaults (docs/training.md) from a minimal spec', () => {
    const spec = JobSpecSchema.parse({ token: 'ohwx', classWord: 'man' });
    expect(spec.kind).toBe('character');
    expect(spec.captioning).toMatchObject({ numBeams: 10, minLength: 25, prefix: 'photo of {token}, ' });
    expect(spec.training).toMatchObject({
      optimizer: 'AdamW8bit',
      unetLr: 1e-4,
      textEncoderLr: 5e-5,
      lrScheduler: 'polynomial',
      networkDim: 128,
      networkAlpha: 128,
      mixedPrecision: 'bf16',
      batchSize: 1,
    });
    expect(spec.evaluation.strengths).toEqual([1, 0.9, 0.8, 0.7, 0.6, 0.5]);
  });

  it('evaluates each kind with its own grid prompt unless the job gives prompts', () => {
    const grid = (kind: string, evaluation?: object) => JobSpecSchema.parse({ token: 'ohwx', classWord: 'thing', kind, evaluation }).evaluation.prompts;
    expect(grid('character')).toEqual(['a portrait of {token}, red hair, handsome face, oil painting, artstation']);
    expect(grid('object')).toEqual(GRID_PROMPTS.object);
    expect(grid('style')).toEqual(GRID_PROMPTS.style);
    expect(grid('object')).not.toEqual(grid('character'));
    expect(grid('style', { prompts: ['a {classWord} by {token}'] })).toEqual(['a {classWord} by {token}']);
  });

  it('rejects unknown fields, naming each', () => {
    const message = errorOf({ token: 'ohwx', classWord: 'man', learningRate: 1, training: { epoch: 3 } });
    expect(message).toContain('(root): unknown field(s) "learningRate"');
    expect(message).toContain('training: unknown field(s) "epoch"');
  });

  it('rejects a common or malformed trigger token with what to do', () => {
    expect(errorOf({ token: 'man', classWord: 'man' })).toContain('token: the token is a common word');
    expect(errorOf({ token: 'Ohwx!', classWord: 'man' })).toContain('token: use a short rare lowercase word');
  });

  it('applies the DAdaptation and Adafactor presets', () => {
    const d = JobSpecSchema.parse({ token: 'ohwx', classWord: 'man', training: { optimizer: 'DAdaptation' } }).training;
    expect(d).toMatchObject({ lrScheduler: 'constant', unetLr: 1, textEncoderLr: 0.5, optimizerArgs: ['decouple=True'] });
    const a = JobSpecSchema.parse({ token: 'ohwx', classWord: 'man', training: { optimizer: 'Adafactor' } }).training;
    expect(a).toMatchObject({ lrScheduler: 'adafactor', unetLr: 1, textEncoderLr: 0.5 });
    expect(a.optimizerArgs).toEqual(['relative_step=True', 'scale_parameter=True', 'warmup_init=False']);
  });

  it('rejects impossible combinations before any GPU time', () => {
    expect(errorOf({ token: 'ohwx', classWord: 'man', training: { optimizer: 'DAdaptation', lrScheduler: 'polynomial' } })).toContain(
      'training.lrScheduler: DAdaptation needs lrScheduler "constant"',
    );
    expect(errorOf({ token: 'ohwx', classWord: 'man', training: { lrScheduler: 'constant', lrWarmupSteps: 100 } })).toContain(
      'training.lrWarmupSteps: the constant scheduler takes no warmup',
    );
    expect(errorOf({ token: 'ohwx', classWord: 'man', training: { colorAug: true } })).toContain(
      'training.colorAug: cached latents cannot be combined with colour augmentation',
    );
  });
});

describe('training plan', () => {
  const spec = JobSpecSchema.parse({ token: 'anantn', classWord: 'man' });

  it('reproduces the documented 25-photo example: 15 repeats x 5 epochs = 1875 steps', () => {
    expect(planTraining(spec, 25, 512)).toEqual({
      numImages: 25,
      repeats: 15,
      epochs: 5,
      batchSize: 1,
      totalSteps: 1875,
      resolution: 512,
      folder: '15_anantn',
      arithmetic: '25 images x 15 repeats x 5 epochs / batch 1 = 1875 steps (target 1875)',
    });
  });

  it.each([10, 20, 37, 50])('keeps a character at %i photos within 1500-2000 steps, 5-20 epochs, repeats above epochs', (n) => {
    const plan = planTraining(spec, n, 512);
    expect(plan.totalSteps).toBeGreaterThanOrEqual(1500);
    expect(plan.totalSteps).toBeLessThanOrEqual(2000);
    expect(plan.epochs).toBeGreaterThanOrEqual(5);
    expect(plan.epochs).toBeLessThanOrEqual(20);
    expect(plan.repeats).toBeGreaterThan(plan.epochs);
    expect(plan.totalSteps).toBe(n * plan.repeats * plan.epochs);
  });

  it('honours explicit repeats and epochs', () => {
    const fixed = JobSpecSchema.parse({ token: 'anantn', classWord: 'man', training: { repeats: 10, epochs: 8, batchSize: 2 } });
    expect(planTraining(fixed, 30, 768)).toMatchObject({ repeats: 10, epochs: 8, totalSteps: 1200, folder: '10_anantn', resolution: 768 });
  });

  it('picks 768 only when most photos exceed 768x768', () => {
    const big = { width: 1024, height: 1024 };
    const small = { width: 640, height: 900 };
    expect(trainingResolution([big, big, small], 'auto')).toBe(768);
    expect(trainingResolution([big, small], 'auto')).toBe(512);
    expect(trainingResolution([small], 768)).toBe(768);
  });

  it('matches the committed recipe fixture', () => {
    const fixture = DatasetPlanSchema.parse(JSON.parse(readFileSync(join(__dirname, '../fixtures/contract/plan-recipe-25.json'), 'utf8')));
    expect(fixture.plan).toEqual(planTraining(JobSpecSchema.parse({ token: 'anantn', classWord: 'man' }), 25, 512));
    expect(fixture.spec).toEqual(spec);
  });
});

describe('S3 keys', () => {
  it('parses the trigger key and refuses traversal or odd ids', () => {
    expect(parseSpecKey('teams/team-a/jobs/job-1/job.json')).toEqual({ teamId: 'team-a', jobId: 'job-1' });
    expect(() => parseSpecKey('teams/../jobs/job-1/job.json')).toThrow(/not a job spec key/);
    expect(() => parseSpecKey('teams/team-a/jobs/job-1/photos/job.json')).toThrow(/not a job spec key/);
  });

  it('accepts plain photo names only', () => {
    const job = { teamId: 'team-a', jobId: 'job-1' };
    expect(photoName(job, 'teams/team-a/jobs/job-1/photos/IMG 0001.HEIC')).toBe('IMG 0001.HEIC');
    expect(() => photoName(job, 'teams/team-a/jobs/job-1/photos/sub/a.jpg')).toThrow(/no sub-folders/);
    expect(() => photoName(job, 'teams/team-a/jobs/job-1/photos/..a.jpg')).toThrow(/BAD_PHOTO_NAME|not an accepted photo key/);
    expect(() => photoName(job, 'teams/team-b/jobs/job-1/photos/a.jpg')).toThrow(/not an accepted photo key/);
  });
});
