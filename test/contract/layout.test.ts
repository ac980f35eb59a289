import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { jobKey as accessKey } from '../../lambdas/shared/access';
import { jobKey, keys } from '../../lambdas/shared/keys';
import { fillKey, keyHint, keyPattern, keyRegExp, LAYOUT, LAYOUT_TARGETS, type LayoutEntry, layoutJson } from '../../lambdas/shared/layout';
import { describeNeeding } from '../helpers/suites';

const root = join(__dirname, '..', '..');
const job = { teamId: 'team-a', jobId: 'job-1' };
const sample = {
  ...job,
  name: 'ohwx',
  folder: '10_ohwx',
  stem: 'ohwx-01',
  epoch: 7,
  state: 'ohwx-000002-state',
  file: 'ohwx-e1-s1.00.png',
  hash: 'ab12',
  eventId: 'ev-1',
};
const entries = Object.keys(LAYOUT) as LayoutEntry[];

describe('generated key layout for the containers', () => {
  it.each(LAYOUT_TARGETS)('%s is up to date with lambdas/shared/layout.ts (run `npm run schema`)', (target) => {
    expect(readFileSync(join(root, target), 'utf8')).toBe(layoutJson());
  });
});

describe('key templates', () => {
  it('name checkpoints as kohya writes them: <name>-NNNNNN.safetensors, the last epoch without a number', () => {
    expect(fillKey(LAYOUT.checkpoint, { name: 'ohwx', epoch: 7 })).toBe('train/ohwx-000007.safetensors');
    expect(fillKey(LAYOUT.finalModel, { name: 'ohwx' })).toBe('train/ohwx.safetensors');
  });

  it("build the Lambdas' keys under the job prefix", () => {
    expect(keys.plan(job)).toBe('teams/team-a/jobs/job-1/normalize/plan.json');
    expect(keys.crop(job, 'ohwx-01.png')).toBe('teams/team-a/jobs/job-1/validate/crops/ohwx-01.png');
    expect(keys.datasetFile(job, '10_ohwx', 'ohwx-01.txt')).toBe('teams/team-a/jobs/job-1/normalize/10_ohwx/ohwx-01.txt');
    expect(jobKey(job, 'captions')).toBe('teams/team-a/jobs/job-1/caption/captions.json');
  });

  it('refuse a value that is not one path segment, and a missing value', () => {
    expect(() => keys.datasetFile(job, '10_ohwx', '../../../x.png')).toThrow(/must be one path segment/);
    expect(() => keys.crop(job, '..')).toThrow(/must be one path segment/);
    expect(() => fillKey(LAYOUT.checkpoint, { name: 'ohwx' })).toThrow(/needs \{epoch\}/);
  });

  it('turn into IAM patterns and messages', () => {
    expect(keyPattern(accessKey('trainState'))).toBe('teams/*/jobs/*/train/state/*');
    expect(keyPattern(accessKey('checkpoint'))).toBe('teams/*/jobs/*/train/*-*.safetensors');
    expect(keyPattern(accessKey('trainState'), job)).toBe('teams/team-a/jobs/job-1/train/state/*');
    expect(() => keyPattern(LAYOUT.jobPrefix, { teamId: '*', jobId: '..' })).toThrow(/one path segment/);
    expect(keyHint(LAYOUT.jobPrefix + LAYOUT.spec)).toBe('teams/<teamId>/jobs/<jobId>/job.json');
  });

  it.each(entries)('%s parses back what it builds', (entry) => {
    const template = LAYOUT[entry];
    const key = fillKey(template, sample);
    const groups = keyRegExp(template).exec(key)?.groups ?? {};
    const used = [...template.matchAll(/\{(\w+)/g)].map((m) => m[1]!);
    expect(groups).toEqual(Object.fromEntries(used.map((n) => [n, fillKey(`{${n}${n === 'epoch' ? ':06d' : ''}}`, sample)])));
    expect(keyRegExp(template).test(`${key}x/y`)).toBe(false);
  });
});

/** The Python module (containers/common/src/avatar_job/layout.py), loaded by path with the system Python. */
function python(script: string): { status: number | null; stdout: string; stderr: string } {
  const prelude = [
    'import importlib.util, json, sys',
    `spec = importlib.util.spec_from_file_location("layout", ${JSON.stringify(join(root, 'containers/common/src/avatar_job/layout.py'))})`,
    'layout = importlib.util.module_from_spec(spec); spec.loader.exec_module(layout)',
  ].join('\n');
  const out = spawnSync('python3', ['-c', `${prelude}\n${script}`], { encoding: 'utf8' });
  return { status: out.status, stdout: out.stdout ?? '', stderr: out.stderr ?? (out.error?.message || '') };
}
const pythonMissing = spawnSync('python3', ['--version']).status === 0 ? undefined : 'python3 not found on PATH: install Python 3';

describeNeeding('avatar_job.layout agrees with layout.ts', pythonMissing, () => {
  it('fills every template exactly as fillKey does', () => {
    const out = python(`values = json.loads(${JSON.stringify(JSON.stringify(sample))})
print(json.dumps({k: layout.fill(t, **values) for k, t in layout.TEMPLATES.items()}))`);
    expect(out.stderr).toBe('');
    expect(JSON.parse(out.stdout)).toEqual(Object.fromEntries(entries.map((e) => [e, fillKey(LAYOUT[e], sample)])));
  });

  it('names checkpoints, reads their epochs back and refuses traversal like the TypeScript side', () => {
    const out = python(`print(json.dumps({
  "checkpoint": layout.checkpoint("ohwx", 7), "final": layout.final_model("ohwx"), "all": layout.checkpoints("ohwx", 3),
  "epochs": [layout.checkpoint_epoch("ohwx", f, 10) for f in ["ohwx-000007.safetensors", "ohwx.safetensors", "other-000007.safetensors", "ohwx-7.safetensors"]],
  "states": [layout.state_epoch("ohwx", f, 10) for f in ["ohwx-000002-state", "ohwx-state", "ohwx-000002", "other-state"]],
  "manifest": layout.state_manifest("ohwx-state"),
  "plan": layout.PLAN, "state": layout.TRAIN_STATE, "captions": layout.CAPTIONS, "dataset": layout.dataset_file("10_ohwx", "a.png"),
}))
try:
    layout.dataset_file("10_ohwx", "../a.png")
except ValueError as e:
    print(e)`);
    expect(out.stderr).toBe('');
    const [doc, error] = out.stdout.trim().split('\n');
    expect(JSON.parse(doc!)).toEqual({
      checkpoint: fillKey(LAYOUT.checkpoint, sample),
      final: fillKey(LAYOUT.finalModel, sample),
      all: ['train/ohwx-000001.safetensors', 'train/ohwx-000002.safetensors', 'train/ohwx.safetensors'],
      epochs: [7, 10, null, null],
      states: [2, 10, null, null],
      manifest: fillKey(LAYOUT.stateManifest, { state: 'ohwx-state' }),
      plan: LAYOUT.plan,
      state: LAYOUT.trainState,
      captions: LAYOUT.captions,
      dataset: fillKey(LAYOUT.datasetFile, { folder: '10_ohwx', name: 'a.png' }),
    });
    expect(error).toMatch(/must be one path segment/);
  });
});
