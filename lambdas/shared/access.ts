/**
 * What each stage's role may touch, in terms of the key layout (layout.ts): the stack grants exactly
 * these (infra/constructs/bucket-access.ts `grantStageAccess`), so a layout change moves the IAM key
 * patterns with it. Every stage writes only under its own folder, plus status.json. The GPU entries
 * are per Batch job: `train` runs the caption and train stages, so it has both stages' grants.
 */
import { type JobEntry, keyPattern, LAYOUT } from './layout';

export type AccessBucket = 'inbox' | 'artifacts';
/** Object actions a stage may be granted; exact names only, so no `s3:*`-style wildcard slips in. */
export type ObjectAction = 's3:GetObject' | 's3:GetObjectVersion' | 's3:PutObject' | 's3:DeleteObject' | 's3:DeleteObjectVersion';

/** `actions` on the objects of `bucket` under the key templates `keys`; `why` is told to cdk-nag. */
export interface ObjectGrant {
  readonly bucket: AccessBucket;
  readonly actions: readonly ObjectAction[];
  /** Bucket-level key templates (see {@link jobKey}). */
  readonly keys: readonly string[];
  readonly why: string;
}

/** `s3:ListBucket` on `bucket`, limited to the team prefixes ({@link LIST_PREFIX}). */
export interface ListGrant {
  readonly list: AccessBucket;
}

export type Grant = ObjectGrant | ListGrant;

/** A job-relative layout entry as a bucket-level template. */
export const jobKey = (entry: JobEntry): string => `${LAYOUT.jobPrefix}${LAYOUT[entry]}`;
/** Every key of a job. */
const JOB_ALL = LAYOUT.jobPrefix;

/** The `s3:prefix` a listing role is limited to: the teams' folders, `teams/*`. */
export const LIST_PREFIX = keyPattern(LAYOUT.teams);

/** The job prefix as IAM sees it, `teams/*\/jobs/*` (no trailing slash). */
export const JOB_PREFIX_PATTERN = keyPattern(LAYOUT.jobPrefix).replace(/\/\*$/, '');

const STATUS_REASON = 'Every stage rewrites the status.json of the job it runs; team and job ids are only known at run time';
const API_REASON = 'the job API acts on jobs of the calling team, whose ids are only known per request (the team comes from the verified token)';
const GPU_STATUS_REASON = 'The job reports progress in the status.json of the job it runs';
const status = (why: string): ObjectGrant => ({ bucket: 'artifacts', actions: ['s3:GetObject', 's3:PutObject'], keys: [jobKey('status')], why });
const models = (stage: string): ObjectGrant => ({
  bucket: 'artifacts',
  actions: ['s3:GetObject'],
  keys: [LAYOUT.models],
  why: `${stage} reads the operator-uploaded base models`,
});

/**
 * A writer racing the job's erasure (lambdas/shared/erasure.ts): it lists the tombstone (a listing, so a
 * missing one is certain) and deletes the version it just wrote, its own key only.
 */
const eraseRace = (stage: string, entry: 'lastState' | 'notify'): Grant[] => [
  { list: 'artifacts' },
  {
    bucket: 'artifacts',
    actions: ['s3:DeleteObjectVersion'],
    keys: [jobKey(entry)],
    why: `${stage} takes back its own write when the job was erased meanwhile`,
  },
];

/** Each stage's grants, in the order the stack adds them (the policy statements keep that order). */
export const STAGE_ACCESS = {
  start: [
    {
      bucket: 'artifacts',
      actions: ['s3:PutObject'],
      keys: [jobKey('status')],
      why: 'start records the queued status of the job it starts; team and job ids are only known at run time',
    },
  ],
  validate: [
    { bucket: 'inbox', actions: ['s3:GetObject'], keys: [JOB_ALL], why: 'validate reads the job.json and photos of the job it checks' },
    { list: 'inbox' },
    { bucket: 'artifacts', actions: ['s3:PutObject'], keys: [jobKey('validate')], why: 'validate writes its report and contact sheet under the job' },
    status(STATUS_REASON),
  ],
  normalize: [
    { bucket: 'inbox', actions: ['s3:GetObject'], keys: [JOB_ALL], why: 'normalize reads the user captions uploaded beside the photos of the job' },
    { bucket: 'artifacts', actions: ['s3:GetObject'], keys: [jobKey('validate')], why: 'normalize reads the validate report of the job' },
    { bucket: 'artifacts', actions: ['s3:PutObject'], keys: [jobKey('normalize')], why: 'normalize writes the dataset and plan of the job' },
    status(STATUS_REASON),
  ],
  finalize: [
    { bucket: 'artifacts', actions: ['s3:GetObject'], keys: [JOB_ALL], why: 'finalize reads and presigns every output of the job' },
    { list: 'artifacts' },
    {
      bucket: 'artifacts',
      actions: ['s3:PutObject'],
      keys: [jobKey('manifest'), jobKey('status')],
      why: 'finalize writes the manifest and final status of the job',
    },
  ],
  'mark-failed': [status(STATUS_REASON)],
  admit: [{ bucket: 'artifacts', actions: ['s3:GetObject'], keys: [jobKey('plan')], why: 'admit estimates the job from its plan' }, status(STATUS_REASON)],
  announce: [
    // GetObjectVersion: the event names the version written, which is read rather than the current one.
    {
      bucket: 'artifacts',
      actions: ['s3:GetObject', 's3:GetObjectVersion'],
      keys: [jobKey('status')],
      why: 'announce reads the status.json write an event names; team and job ids are only known at run time',
    },
    {
      bucket: 'artifacts',
      actions: ['s3:GetObject', 's3:PutObject'],
      keys: [jobKey('lastState')],
      why: "announce keeps the job's last announced state next to it (erased with it)",
    },
    ...eraseRace('announce', 'lastState'),
  ],
  reconcile: [status(STATUS_REASON)],
  // One Batch job runs the caption stage and then the train stage (infra/constructs/gpu-jobs.ts).
  train: [
    status(GPU_STATUS_REASON),
    {
      bucket: 'artifacts',
      actions: ['s3:GetObject'],
      keys: [jobKey('normalize'), jobKey('caption')],
      why: 'caption and train read the dataset, user captions and plan normalize wrote; train and a retried caption read the captions',
    },
    { bucket: 'artifacts', actions: ['s3:PutObject'], keys: [jobKey('caption')], why: 'caption writes caption files and captions.json under the job' },
    models('train'),
    {
      bucket: 'artifacts',
      actions: ['s3:GetObject', 's3:PutObject'],
      keys: [jobKey('train')],
      why: 'train writes checkpoints and reads its own state back to resume after a Spot reclaim',
    },
    // Only the newest training state is kept (the trainer deletes the older ones after each upload).
    { bucket: 'artifacts', actions: ['s3:DeleteObject'], keys: [jobKey('trainState')], why: 'train deletes its own superseded resume state' },
    { list: 'artifacts' },
  ],
  evaluate: [
    status(GPU_STATUS_REASON),
    {
      bucket: 'artifacts',
      actions: ['s3:GetObject'],
      keys: [jobKey('train'), jobKey('normalize')],
      why: 'evaluate reads the checkpoints, train diary, plan and training photos (likeness, near-copies) of the job',
    },
    {
      bucket: 'artifacts',
      actions: ['s3:GetObject'],
      keys: [jobKey('contactSheet'), jobKey('captions')],
      why: 'evaluate shows the intake contact sheet and the captions in report.html',
    },
    models('evaluate'),
    { bucket: 'artifacts', actions: ['s3:PutObject'], keys: [jobKey('evaluate')], why: 'evaluate writes its grid, image pack and scores under the job' },
  ],
  api: [
    { bucket: 'inbox', actions: ['s3:PutObject'], keys: [jobKey('photos'), jobKey('spec')], why: API_REASON },
    { bucket: 'artifacts', actions: ['s3:GetObject'], keys: [LAYOUT.teams], why: `${API_REASON}; it reads job records, status and manifests` },
    {
      bucket: 'artifacts',
      actions: ['s3:PutObject'],
      keys: [jobKey('request'), jobKey('status'), LAYOUT.idempotency, LAYOUT.tombstones],
      why: API_REASON,
    },
    { list: 'inbox' },
    { list: 'artifacts' },
  ],
  // The role the job API assumes to sign result links (lambdas/api/signing.ts): read-only, the stage
  // outputs only, so a leaked link or session can reach nothing else (no inbox, records, notify/).
  results: [
    {
      bucket: 'artifacts',
      actions: ['s3:GetObject'],
      keys: [jobKey('validate'), jobKey('normalize'), jobKey('caption'), jobKey('train'), jobKey('evaluate')],
      why: "result links of the calling team's job are signed with this role; team and job ids are only known per request",
    },
  ],
  notify: [
    { bucket: 'artifacts', actions: ['s3:GetObject'], keys: [jobKey('request')], why: 'notify reads the webhook of the job an event names' },
    { bucket: 'artifacts', actions: ['s3:PutObject'], keys: [jobKey('notify')], why: 'notify records delivery attempts next to the job' },
    ...eraseRace('notify', 'notify'),
  ],
} as const satisfies Record<string, readonly Grant[]>;

export type AccessStage = keyof typeof STAGE_ACCESS;

/** The IAM key patterns (`teams/*\/jobs/*\/train/*`) of a stage's grants on `bucket` with `action`. */
export function stagePatterns(stage: AccessStage, bucket: AccessBucket, action: ObjectAction): string[] {
  return (STAGE_ACCESS[stage] as readonly Grant[])
    .filter((g): g is ObjectGrant => 'bucket' in g && g.bucket === bucket && g.actions.includes(action))
    .flatMap((g) => g.keys.map((key) => keyPattern(key)));
}
