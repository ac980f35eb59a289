/** Writes the contract's JSON Schema and the key layout into the containers (`npm run schema`). */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { LAYOUT_TARGETS, layoutJson } from '../lambdas/shared/layout';
import { contractJsonSchema, SCHEMA_TARGETS } from '../lambdas/shared/schema';

const root = join(__dirname, '..');
for (const [targets, text] of [
  [SCHEMA_TARGETS, contractJsonSchema()],
  [LAYOUT_TARGETS, layoutJson()],
] as const) {
  for (const target of targets) {
    mkdirSync(dirname(join(root, target)), { recursive: true });
    writeFileSync(join(root, target), text);
    console.log(`wrote ${target}`);
  }
}
