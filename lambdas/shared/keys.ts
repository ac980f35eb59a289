/**
 * The S3 key layout, in one place. Inbox and artifacts buckets share the job prefix
 * `teams/<teamId>/jobs/<jobId>/`; every stage writes under its own sub-prefix.
 */
import { IdSchema, type Stage } from './contract';
import { InvalidInputError } from './errors';

export const SPEC_FILE = 'job.json';
export const STATUS_FILE = 'status.json';
export const MANIFEST_FILE = 'manifest.json';
export const PHOTOS_DIR = 'photos';

export interface JobRef {
  readonly teamId: string;
  readonly jobId: string;
}

export function jobPrefix({ teamId, jobId }: JobRef): string {
  return `teams/${IdSchema.parse(teamId)}/jobs/${IdSchema.parse(jobId)}/`;
}

export const keys = {
  spec: (job: JobRef) => `${jobPrefix(job)}${SPEC_FILE}`,
  photosPrefix: (job: JobRef) => `${jobPrefix(job)}${PHOTOS_DIR}/`,
  status: (job: JobRef) => `${jobPrefix(job)}${STATUS_FILE}`,
  manifest: (job: JobRef) => `${jobPrefix(job)}${MANIFEST_FILE}`,
  /** A stage's own sub-prefix in the artifacts bucket: each stage writes only there. */
  stage: (job: JobRef, stage: Stage) => `${jobPrefix(job)}${stage}/`,
  validateReport: (job: JobRef) => `${jobPrefix(job)}validate/report.json`,
  contactSheet: (job: JobRef) => `${jobPrefix(job)}validate/contact-sheet.png`,
  /** The training plan and resolved spec the GPU containers read. */
  plan: (job: JobRef) => `${jobPrefix(job)}normalize/plan.json`,
  /** A dataset image (or user caption) in kohya's `<repeats>_<token>` folder. */
  datasetFile: (job: JobRef, folder: string, name: string) => `${jobPrefix(job)}normalize/${folder}/${name}`,
};

const SPEC_KEY = /^teams\/([^/]+)\/jobs\/([^/]+)\/job\.json$/;

/** Parses the trigger key `teams/<teamId>/jobs/<jobId>/job.json`; anything else is refused. */
export function parseSpecKey(key: string): JobRef {
  const match = SPEC_KEY.exec(key);
  const teamId = match && IdSchema.safeParse(match[1]);
  const jobId = match && IdSchema.safeParse(match[2]);
  if (!match || !teamId?.success || !jobId?.success) {
    throw new InvalidInputError(
      'BAD_KEY',
      `"${key}" is not a job spec key: upload the spec as teams/<teamId>/jobs/<jobId>/job.json with ids of lowercase letters, digits and "-"`,
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
      `"${key}" is not an accepted photo key: use teams/<teamId>/jobs/<jobId>/photos/<name> with a name of letters, digits, ".", "_", "-" or spaces, and no sub-folders`,
      key,
    );
  }
  return name;
}
