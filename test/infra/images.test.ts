/**
 * The contract between the job definitions and the images: Batch's `Command` replaces the image's
 * CMD, so each command must be a whole `python -m <package> <subcommand>` that the package accepts,
 * and the Dockerfile must not add an ENTRYPOINT in front of it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { itNeeding } from '../helpers/suites';
import { resourcesOfType, type Synthesized, synth } from './helpers';

const ROOT = join(__dirname, '..', '..');
const PYTHON = join(ROOT, '.venv', 'bin', 'python');

describe('job definitions and container images', () => {
  let commands: string[][];

  beforeAll(() => {
    const s: Synthesized = synth();
    commands = resourcesOfType(s.json, 'AWS::Batch::JobDefinition').map(([, r]) => r.Properties.ContainerProperties.Command);
  });

  it('run caption+train and evaluate as python -m <package> <stage command(s)>', () => {
    expect(commands.sort()).toEqual([
      ['python', '-m', 'avatar_job', 'caption', 'train'],
      ['python', '-m', 'trainer', 'evaluate'],
    ]);
  });

  it('the one GPU image (containers/trainer/Dockerfile) has no ENTRYPOINT that would prefix the command', () => {
    const dockerfile = readFileSync(join(ROOT, 'containers/trainer/Dockerfile'), 'utf8');
    expect(dockerfile).not.toMatch(/^\s*ENTRYPOINT/m);
    expect(dockerfile).toMatch(/^CMD \["python", "-m", "trainer", "\w+"\]/m);
    expect(existsSync(join(ROOT, 'containers/captioner/Dockerfile'))).toBe(false);
  });

  itNeeding(
    'each command is one the package accepts (python -m <package> --help)',
    existsSync(PYTHON) ? undefined : `${PYTHON} is missing: run "bash scripts/python-env.sh"`,
    () => {
      // The image puts common/src and both packages' src on PYTHONPATH.
      const pythonPath = ['common', 'captioner', 'trainer'].map((p) => join(ROOT, 'containers', p, 'src')).join(':');
      for (const [, , pkg, ...subs] of commands) {
        const help = spawnSync(PYTHON, ['-m', pkg!, '--help'], { encoding: 'utf8', env: { ...process.env, PYTHONPATH: pythonPath } });
        expect(help.status, help.stderr).toBe(0);
        for (const sub of subs) expect(help.stdout).toMatch(new RegExp(`\\{[^}]*\\b${sub}\\b[^}]*\\}`));
      }
    },
  );
});
