/**
 * The EventBridge event sent on every job state change (default bus), and the payload of the
 * per-job webhook: one schema for both.
 *
 * `source`: `avatar.jobs`; `detail-type`: `Avatar Job State Change`; `detail`: {@link JobStateChangeSchema}.
 * Rule pattern for one team's finished jobs:
 * `{ "source": ["avatar.jobs"], "detail-type": ["Avatar Job State Change"], "detail": { "teamId": ["acme"], "state": ["succeeded", "failed", "cancelled"] } }`.
 * Published by `announce` (lambdas/announce/handler.ts) from the artifacts bucket's events for every
 * status.json write, whoever wrote it, with {@link jobStateChangeEntry}.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { ErrorInfoSchema, IdSchema, JOB_STATES, StageSchema, type Status } from './contract';

export const EVENT_SOURCE = 'avatar.jobs';
export const JOB_STATE_CHANGE = 'Avatar Job State Change';

export const JobStateChangeSchema = z
  .object({
    /** Version of this detail schema; a breaking change gets a new one. */
    version: z.literal(1),
    /** Stable per transition (hash of job, state, stage, time): receivers deduplicate on it. */
    eventId: z.string().regex(/^[0-9a-f]{32}$/),
    teamId: IdSchema,
    jobId: IdSchema,
    state: z.enum(JOB_STATES),
    stage: StageSchema,
    /** The state before this change; absent for the first. */
    previousState: z.enum(JOB_STATES).optional(),
    /** status.json's updatedAt for this change. */
    at: z.string(),
    error: ErrorInfoSchema.optional(),
  })
  .strict();
export type JobStateChange = z.infer<typeof JobStateChangeSchema>;

/** A state change worth an event: the state or the stage moved (progress updates are not events). */
export function stateChange(status: Status, previous: Status | undefined): JobStateChange | undefined {
  if (previous && previous.state === status.state && previous.stage === status.stage) return undefined;
  return JobStateChangeSchema.parse({
    version: 1,
    eventId: createHash('sha256').update(`${status.teamId}/${status.jobId}/${status.state}/${status.stage}/${status.updatedAt}`).digest('hex').slice(0, 32),
    teamId: status.teamId,
    jobId: status.jobId,
    state: status.state,
    stage: status.stage,
    ...(previous ? { previousState: previous.state } : {}),
    at: status.updatedAt,
    ...(status.error ? { error: status.error } : {}),
  });
}

/** A PutEvents entry for a change (EventBridge's PutEventsRequestEntry shape). */
export function jobStateChangeEntry(change: JobStateChange, eventBusName = 'default') {
  return { Source: EVENT_SOURCE, DetailType: JOB_STATE_CHANGE, Detail: JSON.stringify(change), EventBusName: eventBusName, Time: new Date(change.at) };
}

/** The JSON Schema of `detail`, for the README and for consumers (e.g. an EventBridge schema registry). */
export function jobStateChangeJsonSchema(): unknown {
  return z.toJSONSchema(JobStateChangeSchema);
}
