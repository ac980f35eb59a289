/**
 * The README's first command, as a person runs it: `npm run local` (here the same script through
 * tsx, in a scratch folder) on a machine without a GPU validates, normalizes and stops before
 * captioning with exit code 3 and status.json saying why.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { StatusSchema } from '../../lambdas/shared/contract';
import { describeWithMoto } from '../helpers/suites';

const ROOT = join(__dirname, '..', '..');

function runLocal(args: string[], cwd: string) {
  return spawnSync(join(ROOT, 'node_modules', '.bin', 'tsx'), [join(ROOT, 'scripts', 'local.ts'), ...args], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, AVATAR_LOCAL_GPU: 'off', AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
    timeout: 120_000,
  });
}

describeWithMoto('npm run local', () => {
  it('runs the demo job through validate and normalize, then stops before captioning with exit 3', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'avatar-local-'));
    const out = join(cwd, 'run');

    const result = runLocal(['--job', 'cli-demo', '--out', out], cwd);

    expect(result.status, result.stderr).toBe(3);
    expect(result.stdout).toMatch(/✓ Validate[\s\S]*✓ Normalize[\s\S]*▶ Train/);
    expect(result.stdout).toContain('stopped before captioning (exit 3)');
    expect(result.stdout).toContain('validate: 12 of 12 photos accepted');
    expect(result.stdout).toMatch(/plan: 12 images x \d+ repeats x \d+ epochs \/ batch 1 = \d+ steps/);
    const status = StatusSchema.parse(JSON.parse(readFileSync(join(out, 'status.json'), 'utf8')));
    expect(status).toMatchObject({ teamId: 'local', jobId: 'cli-demo', state: 'failed', stage: 'train', error: { code: 'GPU_UNAVAILABLE' } });
    expect(existsSync(join(out, 'validate', 'report.json'))).toBe(true);
    expect(existsSync(join(out, 'normalize', 'plan.json'))).toBe(true);
    const folder = readdirSync(join(out, 'normalize')).find((d) => /^\d+_zwxdemo$/.test(d));
    expect(readdirSync(join(out, 'normalize', folder!)).filter((f) => f.endsWith('.png'))).toHaveLength(12);
  });

  it('refuses a common-word token before doing anything, exit 2', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'avatar-local-'));

    const result = runLocal(['--photos', cwd, '--token', 'man'], cwd);

    expect(result.status).toBe(2);
    expect(result.stderr).toContain('token: the token is a common word');
  });
});
