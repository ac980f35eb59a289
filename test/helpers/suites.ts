/**
 * Tests that need a local component (the moto endpoint, cfn-lint, the photo corpus tools, heif-enc).
 * Where the component is missing they skip, with a title that says why and how to get it; under
 * `CI=true` they fail instead, so a CI machine that lacks a component cannot pass by skipping.
 */
import { describe, it } from 'vitest';
import { MOTO_MISSING, motoBinary } from '../../scripts/local/moto';

/** `run` when the component is there; otherwise `fail` under CI and `skip` elsewhere. */
export type Availability = 'run' | 'skip' | 'fail';

/** Decides for a component that is missing for the reason `missing` (`undefined`: present). */
export function availability(missing: string | undefined, env: NodeJS.ProcessEnv = process.env): Availability {
  if (!missing) return 'run';
  return env.CI === 'true' || env.CI === '1' ? 'fail' : 'skip';
}

function missingUnderCi(missing: string): never {
  throw new Error(`${missing}. CI=true: a missing local component fails the run instead of skipping it`);
}

/** A describe block that needs a local component; `missing` says what is missing and how to get it. */
export function describeNeeding(name: string, missing: string | undefined, fn: () => void): void {
  switch (availability(missing)) {
    case 'run':
      describe(name, fn);
      return;
    case 'skip':
      describe.skip(`${name} (skipped: ${missing})`, fn);
      return;
    case 'fail':
      describe(name, () => it('has its local component', () => missingUnderCi(missing!)));
  }
}

/** One test that needs a local component, as {@link describeNeeding}. */
export function itNeeding(name: string, missing: string | undefined, fn: () => unknown): void {
  switch (availability(missing)) {
    case 'run':
      it(name, fn);
      return;
    case 'skip':
      it.skip(`${name} (skipped: ${missing})`, fn);
      return;
    case 'fail':
      it(name, () => missingUnderCi(missing!));
  }
}

/** Why moto cannot run here, or `undefined` when it can. */
export function motoMissing(): string | undefined {
  return motoBinary() ? undefined : MOTO_MISSING;
}

/** A describe block that runs against moto (see {@link describeNeeding}). */
export function describeWithMoto(name: string, fn: () => void): void {
  describeNeeding(name, motoMissing(), fn);
}
