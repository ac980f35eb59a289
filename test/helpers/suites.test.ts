/**
 * The helper that lets a test skip for a missing local component: skipped on a developer's machine,
 * failed under CI=true. The subprocess runs vitest on a fixture suite as CI would.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { availability } from './suites';

const ROOT = join(__dirname, '..', '..');

function runFixture(env: Record<string, string>) {
  const { CI: _ci, FIXTURE_MISSING: _missing, ...base } = process.env;
  const run = spawnSync(
    join(ROOT, 'node_modules', '.bin', 'vitest'),
    ['run', '--config', join(__dirname, 'fixtures', 'vitest.config.ts'), '--reporter', 'verbose'],
    {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...base, ...env, NO_COLOR: '1' },
      timeout: 60_000,
    },
  );
  return { status: run.status, output: `${run.stdout}${run.stderr}` };
}

describe('availability', () => {
  it('runs a test whose component is present, in CI or not', () => {
    expect(availability(undefined, { CI: 'true' })).toBe('run');
    expect(availability(undefined, {})).toBe('run');
  });

  it('skips a test whose component is missing outside CI', () => {
    expect(availability('moto_server not found', {})).toBe('skip');
    expect(availability('moto_server not found', { CI: 'false' })).toBe('skip');
  });

  it('fails a test whose component is missing under CI=true', () => {
    expect(availability('moto_server not found', { CI: 'true' })).toBe('fail');
    expect(availability('moto_server not found', { CI: '1' })).toBe('fail');
  });
});

describe('a suite whose component is missing, run by vitest', () => {
  it('fails under CI=true, naming what is missing', () => {
    const { status, output } = runFixture({ CI: 'true', FIXTURE_MISSING: 'widget-server not found' });
    expect(status).toBe(1);
    expect(output).toContain('widget-server not found. CI=true: a missing local component fails the run');
    expect(output).toMatch(/2 failed/);
  });

  it('is skipped outside CI, saying why in its title', () => {
    const { status, output } = runFixture({ FIXTURE_MISSING: 'widget-server not found' });
    expect(status).toBe(0);
    expect(output).toContain('a test that needs the widget (skipped: widget-server not found)');
    expect(output).toMatch(/2 skipped/);
  });

  it('runs when the component is there, under CI=true too', () => {
    const { status, output } = runFixture({ CI: 'true' });
    expect(status).toBe(0);
    expect(output).toMatch(/2 passed/);
  });
});
