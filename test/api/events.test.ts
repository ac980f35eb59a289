import { describe, expect, it } from 'vitest';
import type { Status } from '../../lambdas/shared/contract';
import { EVENT_SOURCE, JOB_STATE_CHANGE, JobStateChangeSchema, jobStateChangeEntry, jobStateChangeJsonSchema, stateChange } from '../../lambdas/shared/events';

const base: Status = {
  teamId: 'alpha',
  jobId: 'j1',
  state: 'running',
  stage: 'train',
  createdAt: '2026-01-01T00:00:00.000Z',
  updatedAt: '2026-01-01T00:10:00.000Z',
};

describe('job state change events', () => {
  it('one event per state or stage change, none for progress', () => {
    const failed: Status = { ...base, state: 'failed', updatedAt: '2026-01-01T00:20:00.000Z', error: { code: 'GPU_UNAVAILABLE', message: 'no GPU' } };
    const change = stateChange(failed, base)!;
    expect(change).toMatchObject({
      version: 1,
      teamId: 'alpha',
      jobId: 'j1',
      state: 'failed',
      stage: 'train',
      previousState: 'running',
      at: failed.updatedAt,
      error: { code: 'GPU_UNAVAILABLE' },
    });
    expect(change.eventId).toMatch(/^[0-9a-f]{32}$/);
    expect(stateChange(failed, base)!.eventId).toBe(change.eventId); // stable: receivers deduplicate
    expect(stateChange({ ...base, progress: { fraction: 0.5, message: 'epoch 2' }, updatedAt: '2026-01-01T00:11:00.000Z' }, base)).toBeUndefined();
    expect(stateChange({ ...base, stage: 'evaluate' }, base)?.stage).toBe('evaluate');
    expect(stateChange(base, undefined)?.previousState).toBeUndefined();
  });

  it('builds the PutEvents entry with the documented source and detail type', () => {
    const entry = jobStateChangeEntry(stateChange(base, undefined)!);
    expect(entry).toMatchObject({ Source: 'avatar.jobs', DetailType: 'Avatar Job State Change', EventBusName: 'default' });
    expect(JobStateChangeSchema.parse(JSON.parse(entry.Detail))).toMatchObject({ jobId: 'j1', state: 'running' });
    expect([EVENT_SOURCE, JOB_STATE_CHANGE]).toEqual(['avatar.jobs', 'Avatar Job State Change']);
  });

  it('publishes a JSON Schema of the detail', () => {
    const schema = jobStateChangeJsonSchema() as { required: string[]; properties: Record<string, { enum?: string[] }> };
    expect(schema.required).toEqual(expect.arrayContaining(['version', 'eventId', 'teamId', 'jobId', 'state', 'stage', 'at']));
    expect(schema.properties.state.enum).toContain('cancelled');
  });
});
