/**
 * The S3 key layout, defined once: every key a stage reads or writes, as a template. The Lambdas
 * build keys from it (keys.ts), the stack derives its IAM key patterns from it (access.ts), and the
 * GPU containers read the same templates from the generated
 * `containers/common/src/avatar_job/layout.json` (`npm run schema`; a test fails when it is stale).
 *
 * Templates name their variable parts `{name}`; `{epoch:06d}` is zero-padded to six digits (Python's
 * `str.format` reads the same spec). Keys are relative to the job prefix unless the entry says
 * otherwise; a template ending in `/` is a folder.
 */
import type { Stage } from './contract';

/** The folder each stage writes under, inside the job prefix: the stage's name. */
const dir = <S extends Exclude<Stage, 'finalize'>>(stage: S) => `${stage}/` as const;

const VALIDATE = dir('validate');
const NORMALIZE = dir('normalize');
const CAPTION = dir('caption');
const TRAIN = dir('train');
const EVALUATE = dir('evaluate');

const TEAMS = 'teams/';

export const LAYOUT = {
  /** Bucket-level: every team's data (both buckets); lifecycle rules and listing stay inside it. */
  teams: TEAMS,
  /** Bucket-level: everything of one team (both buckets). */
  teamPrefix: `${TEAMS}{teamId}/`,
  /** Bucket-level: a team's jobs (the job API lists them). */
  teamJobs: `${TEAMS}{teamId}/jobs/`,
  /** Bucket-level: one job's folder in both buckets; every other job key is relative to it. */
  jobPrefix: `${TEAMS}{teamId}/jobs/{jobId}/`,
  /** Bucket-level (artifacts): the job API's Idempotency-Key records, `{hash}` the key's sha256. */
  idempotency: `${TEAMS}{teamId}/idempotency/`,
  idempotencyKey: `${TEAMS}{teamId}/idempotency/{hash}.json`,
  /** Bucket-level (artifacts): what the job API's erasure removed, ids only. */
  tombstones: `${TEAMS}{teamId}/tombstones/`,
  tombstone: `${TEAMS}{teamId}/tombstones/{jobId}.json`,
  /** Bucket-level (artifacts): base models the operator uploads. */
  models: 'models/',

  /** Inbox: the job spec, uploaded last; its arrival starts the job. */
  spec: 'job.json',
  /** Inbox: the customer's photos. */
  photos: 'photos/',
  photo: 'photos/{name}',

  /** Artifacts: rewritten at every transition by the stage that runs. */
  status: 'status.json',
  /** Artifacts: written by finalize, with presigned URLs of the results. */
  manifest: 'manifest.json',
  /** Artifacts: the job API's record of a created job (spec, declared photos, webhook). */
  request: 'request.json',
  /** Artifacts: the job API's webhook delivery attempts. */
  notify: 'notify/',
  webhookDelivery: 'notify/webhook-{eventId}.json',
  /** Artifacts: the job's last announced state (lambdas/announce), replaced only by a conditional write. */
  lastState: 'notify/last-state.json',

  validate: VALIDATE,
  validateReport: `${VALIDATE}report.json`,
  contactSheet: `${VALIDATE}contact-sheet.png`,
  /** Each accepted photo's dataset crop, so normalize copies instead of decoding again. */
  crops: `${VALIDATE}crops/`,
  crop: `${VALIDATE}crops/{name}`,

  normalize: NORMALIZE,
  /** kohya's `<repeats>_<token>` dataset folder: images and user captions. */
  datasetFolder: `${NORMALIZE}{folder}/`,
  datasetFile: `${NORMALIZE}{folder}/{name}`,
  /** The training plan and resolved spec the GPU containers read; written last by normalize. */
  plan: `${NORMALIZE}plan.json`,

  caption: CAPTION,
  captionFolder: `${CAPTION}{folder}/`,
  captionFile: `${CAPTION}{folder}/{stem}.txt`,
  /** Every caption of the job; written last by the caption stage. */
  captions: `${CAPTION}captions.json`,

  train: TRAIN,
  /** kohya's checkpoint after each epoch but the last (`--save_every_n_epochs 1`). */
  checkpoint: `${TRAIN}{name}-{epoch:06d}.safetensors`,
  /** kohya's final LoRA, after the last epoch. */
  finalModel: `${TRAIN}{name}.safetensors`,
  /** The newest resume state (`--save_state`), read back after a Spot reclaim. */
  trainState: `${TRAIN}state/`,
  /** One published state: kohya's state folder (`stateName`/`finalStateName`) and its files. */
  statePrefix: `${TRAIN}state/{state}/`,
  /** Written last, once the state's upload is verified: only a state with one is resumed from. */
  stateManifest: `${TRAIN}state/{state}/.complete.json`,
  /** kohya's state folder names (not keys): after epoch NNNNNN, and after the last epoch. */
  stateName: '{name}-{epoch:06d}-state',
  finalStateName: '{name}-state',
  diary: `${TRAIN}diary.json`,
  datasetToml: `${TRAIN}dataset.toml`,
  configToml: `${TRAIN}config.toml`,

  evaluate: EVALUATE,
  /** The X/Y grid (numbered `grid-<i>.png` when there are several prompts), and the base model alone. */
  grid: `${EVALUATE}grid.png`,
  base: `${EVALUATE}base.png`,
  /** Each grid cell's own image. */
  cells: `${EVALUATE}cells/`,
  cell: `${EVALUATE}cells/{file}`,
  /** The avatar pack at the recommended checkpoint and strength, and its contact sheet. */
  pack: `${EVALUATE}pack/`,
  packImage: `${EVALUATE}pack/{file}`,
  packSheet: `${EVALUATE}pack.png`,
  scores: `${EVALUATE}scores.json`,
  report: `${EVALUATE}report.html`,
} as const;

export type LayoutEntry = keyof typeof LAYOUT;

/** Entries that are bucket-level rather than relative to the job prefix. */
export const BUCKET_LEVEL = ['teams', 'teamPrefix', 'teamJobs', 'jobPrefix', 'idempotency', 'idempotencyKey', 'tombstones', 'tombstone', 'models'] as const;
/** Layout entries relative to the job prefix. */
export type JobEntry = Exclude<LayoutEntry, (typeof BUCKET_LEVEL)[number]>;

const PLACEHOLDER = /\{([A-Za-z]+)(?::0(\d)d)?\}/g;

/**
 * Fills a template's `{placeholders}`. A value must be one plain path segment (no `/`, not `.` or
 * `..`), so no caller can reach outside the folder a template names.
 */
export function fillKey(template: string, values: Readonly<Record<string, string | number>>): string {
  return template.replace(PLACEHOLDER, (_, name: string, width?: string) => {
    const value = values[name];
    if (value === undefined) throw new Error(`key template ${template} needs {${name}}`);
    const text = width ? String(value).padStart(Number(width), '0') : String(value);
    if (text === '' || text === '.' || text === '..' || text.includes('/')) {
      throw new Error(`{${name}} of key template ${template} must be one path segment, got "${text}"`);
    }
    return text;
  });
}

/**
 * The IAM/EventBridge wildcard pattern of a template: placeholders become `*` (or their value, when
 * `values` has one: a job-scoped policy), and a folder (trailing `/`) covers everything under it.
 */
export function keyPattern(template: string, values: Readonly<Record<string, string>> = {}): string {
  const filled = template.replace(PLACEHOLDER, (whole, name: string) => (values[name] === undefined ? whole : fillKey(whole, values)));
  const pattern = filled.replace(PLACEHOLDER, '*');
  return pattern.endsWith('/') ? `${pattern}*` : pattern;
}

/** A template as people read it in messages: `teams/<teamId>/jobs/<jobId>/job.json`. */
export function keyHint(template: string): string {
  return template.replace(PLACEHOLDER, '<$1>');
}

/**
 * A regular expression matching keys of a template, capturing each placeholder by name (`{epoch:06d}`
 * only as six digits). Placeholders match one path segment. With `rest`, the template is a prefix and
 * whatever follows it is captured as `rest`.
 */
export function keyRegExp(template: string, { rest = false } = {}): RegExp {
  let source = '';
  let last = 0;
  for (const m of template.matchAll(PLACEHOLDER)) {
    source += escapeRegExp(template.slice(last, m.index)) + (m[2] ? `(?<${m[1]}>\\d{${m[2]}})` : `(?<${m[1]}>[^/]+)`);
    last = m.index + m[0].length;
  }
  return new RegExp(`^${source}${escapeRegExp(template.slice(last))}${rest ? '(?<rest>.*)' : ''}$`);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The layout as the containers read it (`layout.json`): the templates and which are bucket-level. */
export function layoutJson(): string {
  const document = {
    $comment: 'Generated from lambdas/shared/layout.ts by `npm run schema`; do not edit.',
    bucketLevel: BUCKET_LEVEL,
    templates: LAYOUT,
  };
  return `${JSON.stringify(document, null, 2)}\n`;
}

/** Where the generated layout is committed: beside the containers' shared job runtime. */
export const LAYOUT_TARGETS = ['containers/common/src/avatar_job/layout.json'];
