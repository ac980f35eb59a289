/** The API's record of a created job, `teams/<t>/jobs/<j>/request.json` (artifacts bucket). */
import { z } from 'zod';
import { type JobRef, jobKey } from '../shared/keys';

export const RequestRecordSchema = z.object({
  teamId: z.string(),
  jobId: z.string(),
  createdAt: z.string(),
  requestHash: z.string(),
  idempotencyKey: z.string().optional(),
  spec: z.unknown(),
  photos: z.array(z.object({ name: z.string(), contentType: z.string() })),
  /** The per-job signing secret is handed to the caller at creation and kept here for the sender. */
  webhook: z.object({ url: z.string(), secret: z.string() }).optional(),
});
export type RequestRecord = z.infer<typeof RequestRecordSchema>;

export const requestKey = (job: JobRef) => jobKey(job, 'request');
