import { App, Stack, Validations } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import { beforeAll, describe, expect, it } from 'vitest';
import { type Synthesized, synth } from './helpers';

let s: Synthesized;
beforeAll(() => {
  s = synth({ alarmEmail: 'ops@example.com' });
});

const findings = (scope: App) =>
  new AwsSolutionsChecks()
    .validateScope(scope)
    .violations.map((v) => `${v.severity} ${v.ruleName} at ${v.violatingResources.map((r) => r.constructPath).join(', ')}`);

describe('cdk-nag AwsSolutions', () => {
  it('reports no unacknowledged errors or warnings on the stack', () => {
    expect(findings(s.app)).toEqual([]);
  });

  it('does report a finding on an unacknowledged resource (the check can fail)', () => {
    const app = new App();
    new s3.Bucket(new Stack(app, 'Probe'), 'Plain');
    expect(findings(app).some((f) => f.includes('AwsSolutions-S1'))).toBe(true);
  });

  it('gives every acknowledgement a specific reason', () => {
    const reasons: string[] = [];
    for (const node of s.stack.node.findAll()) {
      for (const entry of node.node.metadata) {
        if (entry.type === Validations.ACKNOWLEDGED_RULES_METADATA_KEY) {
          for (const [id, reason] of Object.entries(entry.data as Record<string, unknown>)) {
            if (id.includes('AwsSolutions-')) reasons.push(String(reason));
          }
        }
      }
    }
    expect(reasons.length).toBeGreaterThan(0);
    for (const reason of reasons) expect(reason.length).toBeGreaterThan(40);
  });
});
