/**
 * Bounded concurrency as the stages use it (p-map): at most `limit` calls in flight, results in input order,
 * and no new call started once one has failed (a failed upload must not be followed by more uploads
 * the caller no longer waits for).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import pMap from 'p-map';
import { describe, expect, it } from 'vitest';

/** The options every stage passes to p-map. */
const run = <T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>) => pMap(items, fn, { concurrency: limit, stopOnError: true });

describe('bounded concurrency', () => {
  it('keeps at most the limit in flight and returns results in input order', async () => {
    let inFlight = 0;
    let peak = 0;
    const out = await run([30, 10, 20, 5, 15, 0], 2, async (ms) => {
      peak = Math.max(peak, ++inFlight);
      await sleep(ms);
      inFlight--;
      return ms * 2;
    });
    expect(out).toEqual([60, 20, 40, 10, 30, 0]);
    expect(peak).toBe(2);
  });

  it('starts no more work after one call has rejected', async () => {
    const started: number[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const result = run([0, 1, 2, 3, 4, 5, 6, 7], 2, async (i) => {
      started.push(i);
      if (i === 0) {
        await sleep(5); // fail while the second call is in flight
        throw new Error('upload 0 failed');
      }
      await gate; // every other call waits until the rejection has been seen
      return i;
    });
    await expect(result).rejects.toThrow('upload 0 failed');
    const startedBeforeRejection = started.length;
    release();
    await new Promise((resolve) => setImmediate(resolve)); // let the calls still in flight finish
    expect(startedBeforeRejection).toBe(2);
    expect(started.slice(startedBeforeRejection)).toEqual([]);
  });
});
