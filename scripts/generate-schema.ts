/** Writes the contract's JSON Schema into each container (`npm run schema`). */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { SCHEMA_TARGETS, contractJsonSchema } from '../lambdas/shared/schema';

const root = join(__dirname, '..');
const text = contractJsonSchema();
for (const target of SCHEMA_TARGETS) {
  mkdirSync(dirname(join(root, target)), { recursive: true });
  writeFileSync(join(root, target), text);
  console.log(`wrote ${target}`);
}
