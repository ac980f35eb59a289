/**
 * The contract between the job definitions and the images: Batch's `Command` replaces the image's
 * CMD, so each command must be a whole `python -m <package> <subcommand>` that the package accepts,
 * and the Dockerfile must not add an ENTRYPOINT in front of it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { resourcesOfType, synth, type Synthesized } from './helpers';
import { itNeeding } from '../helpers/suites';

const ROOT = join(__dirname, '..', '..');
const PYTHON = join(ROOT, '.venv', 'bin', 'python');

describe('job definitions and container images', () => {
  let commands: string[][];

  beforeAll(() => {
    const s: Synthesized = synth();
    commands = resourcesOfType(s.json, 'AWS::Batch::JobDefinition').map(([, r]) => r.Properties.ContainerProperties.Command);
  });

  it('run caption, train and evaluate as python -m <package> <stage command>', () => {
    expect(commands.sort()).toEqual([
      ['python', '-m', 'captioner', 'run'],
      ['python', '-m', 'trainer', 'evaluate'],
      ['python', '-m', 'trainer', 'train'],
    ]);
  });

  it.each(['captioner', 'trainer'])('containers/%s/Dockerfile has no ENTRYPOINT that would prefix the command', (image) => {
    const dockerfile = readFileSync(join(ROOT, 'containers', image, 'Dockerfile'), 'utf8');
    expect(dockerfile).not.toMatch(/^\s*ENTRYPOINT/m);
    expect(dockerfile).toMatch(new RegExp(`^CMD \\["python", "-m", "${image}", "\\w+"\\]`, 'm'));
  });

  itNeeding('each command is one the package accepts (python -m <package> --help)', existsSync(PYTHON) ? undefined : `${PYTHON} is missing: run "bash scripts/python-env.sh"`, () => {
    for (const [, , pkg, sub] of commands) {
      const help = spawnSync(PYTHON, ['-m', pkg, '--help'], { encoding: 'utf8', env: { ...process.env, PYTHONPATH: join(ROOT, 'containers', pkg, 'src') } });
      expect(help.status, help.stderr).toBe(0);
      expect(help.stdout).toMatch(new RegExp(`\\{[^}]*\\b${sub}\\b[^}]*\\}`));
    }
  });
});
