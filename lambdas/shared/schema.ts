/**
 * JSON Schema generated from the zod contract for the Python containers, which validate
 * plan.json and every status.json they write against it.
 */
import { z } from 'zod';
import { DatasetPlanSchema, JobSpecSchema, ManifestSchema, StatusSchema } from './contract';

/** Where the generated schema is committed: beside the containers' shared job runtime. */
export const SCHEMA_TARGETS = ['containers/common/src/avatar_job/contract.schema.json'];

export function contractJsonSchema(): string {
  const def = (schema: z.ZodType, io: 'input' | 'output') => {
    const { $schema: _drop, ...rest } = z.toJSONSchema(schema, { io, unrepresentable: 'any' }) as Record<string, unknown>;
    return rest;
  };
  const document = {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $comment: 'Generated from lambdas/shared/contract.ts by `npm run schema`; do not edit.',
    $defs: {
      JobSpec: def(JobSpecSchema, 'input'),
      DatasetPlan: def(DatasetPlanSchema, 'output'),
      Status: def(StatusSchema, 'output'),
      Manifest: def(ManifestSchema, 'output'),
    },
  };
  return `${JSON.stringify(document, null, 2)}\n`;
}
