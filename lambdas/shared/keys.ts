/**
 * Object keys of a job, built from the layout (layout.ts). Inbox and artifacts buckets share the job
 * prefix; every stage writes under its own folder.
 */
import { IdSchema, type Stage } from './contract';
import { InvalidInputError } from './errors';
import { fillKey, type JobEntry, keyHint, keyRegExp, LAYOUT } from './layout';

export interface JobRef {
  readonly teamId: string;
  readonly jobId: string;
}

/** `teams/<teamId>/jobs/<jobId>/`, after checking both ids. */
export function jobPrefix({ teamId, jobId }: JobRef): string {
  return fillKey(LAYOUT.jobPrefix, { teamId: IdSchema.parse(teamId), jobId: IdSchema.parse(jobId) });
}

/** The key of a job-relative layout entry, its placeholders filled from `values`. */
export function jobKey(job: JobRef, entry: JobEntry, values: Record<string, string | number> = {}): string {
  return jobPrefix(job) + fillKey(LAYOUT[entry], values);
}

export const keys = {
  spec: (job: JobRef) => jobKey(job, 'spec'),
  photosPrefix: (job: JobRef) => jobKey(job, 'photos'),
  status: (job: JobRef) => jobKey(job, 'status'),
  manifest: (job: JobRef) => jobKey(job, 'manifest'),
  /** A stage's own folder in the artifacts bucket: each stage writes only there. */
  stage: (job: JobRef, stage: Exclude<Stage, 'finalize'>) => jobKey(job, stage),
  validateReport: (job: JobRef) => jobKey(job, 'validateReport'),
  contactSheet: (job: JobRef) => jobKey(job, 'contactSheet'),
  /** An accepted photo's dataset PNG, written by validate and copied by normalize. */
  crop: (job: JobRef, name: string) => jobKey(job, 'crop', { name }),
  /** The training plan and resolved spec the GPU containers read. */
  plan: (job: JobRef) => jobKey(job, 'plan'),
  /** A dataset image (or user caption) in kohya's `<repeats>_<token>` folder. */
  datasetFile: (job: JobRef, folder: string, name: string) => jobKey(job, 'datasetFile', { folder, name }),
};

const SPEC_KEY = keyRegExp(LAYOUT.jobPrefix + LAYOUT.spec);

/** Parses the trigger key `teams/<teamId>/jobs/<jobId>/job.json`; anything else is refused. */
export function parseSpecKey(key: string): JobRef {
  const match = SPEC_KEY.exec(key)?.groups;
  const teamId = match && IdSchema.safeParse(match.teamId);
  const jobId = match && IdSchema.safeParse(match.jobId);
  if (!match || !teamId?.success || !jobId?.success) {
    throw new InvalidInputError(
      'BAD_KEY',
      `"${key}" is not a job spec key: upload the spec as ${keyHint(LAYOUT.jobPrefix + LAYOUT.spec)} with ids of lowercase letters, digits and "-"`,
      key,
    );
  }
  return { teamId: teamId.data, jobId: jobId.data };
}

/**
 * A photo's file name inside the job's photos/ prefix. Only one level, no traversal, a plain
 * character set: the name ends up in dataset file names and captions.
 */
export function photoName(job: JobRef, key: string): string {
  const prefix = keys.photosPrefix(job);
  const name = key.startsWith(prefix) ? key.slice(prefix.length) : '';
  if (!/^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$/.test(name) || name.includes('..')) {
    throw new InvalidInputError(
      'BAD_PHOTO_NAME',
      `"${key}" is not an accepted photo key: use ${keyHint(LAYOUT.jobPrefix + LAYOUT.photo)} with a name of letters, digits, ".", "_", "-" or spaces, and no sub-folders`,
      key,
    );
  }
  return name;
}
