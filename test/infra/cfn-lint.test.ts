import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeNeeding } from '../helpers/suites';
import { synth } from './helpers';

const CFN_LINT = path.join(__dirname, '..', '..', '.venv', 'bin', 'cfn-lint');
const outdir = mkdtempSync(path.join(tmpdir(), 'avatar-cfn-lint-'));
afterAll(() => rmSync(outdir, { recursive: true, force: true }));

interface LintMatch {
  Rule: { Id: string };
  Level: string;
  Message: string;
  Location: { Path: unknown[] };
}

const CFN_LINT_MISSING = existsSync(CFN_LINT) ? undefined : `${CFN_LINT} is missing: run "bash scripts/python-env.sh"`;

describeNeeding('cfn-lint', CFN_LINT_MISSING, () => {
  it('finds no errors (E-codes) in the synthesized template', () => {
    const { app, stack } = synth({ alarmEmail: 'ops@example.com' }, { outdir });
    const assembly = app.synth();
    const templatePath = path.join(assembly.directory, stack.templateFile);
    expect(JSON.parse(readFileSync(templatePath, 'utf8')).Resources).toBeDefined();

    let stdout: string;
    try {
      stdout = execFileSync(CFN_LINT, ['--format', 'json', '--', templatePath], { encoding: 'utf8' });
    } catch (err) {
      // cfn-lint exits non-zero whenever it reports anything; the JSON is still on stdout.
      stdout = (err as { stdout: string }).stdout;
    }
    const matches = JSON.parse(stdout) as LintMatch[];
    const errors = matches.filter((m) => m.Rule.Id.startsWith('E')).map((m) => `${m.Rule.Id} ${m.Message} @ ${m.Location.Path.join('/')}`);
    expect(errors).toEqual([]);
  });
});
