/** Suites that need a local component skip with a title that says why and how to get it. */
import { describe } from 'vitest';
import { MOTO_MISSING, motoBinary } from '../../scripts/local/moto';

/** A describe block that runs against moto, or is skipped with the reason in its title. */
export function describeWithMoto(name: string, fn: () => void): void {
  const available = !!motoBinary();
  describe.skipIf(!available)(available ? name : `${name} (skipped: ${MOTO_MISSING})`, fn);
}
