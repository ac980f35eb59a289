import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DatasetPlanSchema } from '../../lambdas/shared/contract';
import { contractJsonSchema, SCHEMA_TARGETS } from '../../lambdas/shared/schema';

const root = join(__dirname, '..', '..');

describe('generated JSON Schema for the containers', () => {
  it.each(SCHEMA_TARGETS)('%s is up to date with lambdas/shared/contract.ts (run `npm run schema`)', (target) => {
    expect(readFileSync(join(root, target), 'utf8')).toBe(contractJsonSchema());
  });

  it('describes plan.json with the fields the containers read', () => {
    const schema = JSON.parse(contractJsonSchema()).$defs.DatasetPlan;
    expect(schema.required).toEqual(expect.arrayContaining(['teamId', 'jobId', 'spec', 'plan', 'outputName', 'images']));
    expect(schema.properties.spec.properties.training.properties.optimizer.enum).toContain('AdamW8bit');
    expect(schema.additionalProperties).toBe(false);
  });

  it('matches the shared recipe fixture that pytest reads too', () => {
    const fixture = JSON.parse(readFileSync(join(root, 'test/fixtures/contract/plan-recipe-25.json'), 'utf8'));
    expect(DatasetPlanSchema.parse(fixture)).toEqual(fixture);
  });
});
