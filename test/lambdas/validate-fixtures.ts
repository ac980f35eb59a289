/** Shared set-up for the validate tests: the corpus, a moto S3 endpoint, and a job uploaded to it. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import type { JobSpecInput } from '../../lambdas/shared/contract';
import type { StageContext } from '../../lambdas/shared/handler';
import { keys } from '../../lambdas/shared/keys';
import { putBytes, putJson } from '../../lambdas/shared/s3';
import { DEFAULT_CONFIG, type ValidateConfig } from '../../lambdas/validate/config';
import { CORPUS_MAX_FILE_BYTES } from '../fixtures/photos/build';

export const INBOX = 'inbox';
export const ARTIFACTS = 'artifacts';
export const NOW = new Date('2025-01-02T03:04:05Z');

/** Corpus limits: the oversized file is built to pass this per-file limit. */
export const TEST_CONFIG: ValidateConfig = { ...DEFAULT_CONFIG, maxFileBytes: CORPUS_MAX_FILE_BYTES };

export function context(s3: S3Client, jobId: string, teamId = 'team-a'): StageContext {
  return { s3, inboxBucket: INBOX, artifactsBucket: ARTIFACTS, job: { teamId, jobId }, now: () => NOW };
}

/** Uploads a spec and corpus files (optionally renamed: `[corpusName, uploadName]`) to the inbox. */
export async function uploadJob(
  ctx: StageContext,
  corpus: string,
  files: ReadonlyArray<string | [string, string]>,
  spec: JobSpecInput = { token: 'ohwx', classWord: 'man' },
  extra: Record<string, string> = {},
): Promise<void> {
  for (const file of files) {
    const [from, to] = typeof file === 'string' ? [file, file] : file;
    await putBytes(ctx.s3, INBOX, `${keys.photosPrefix(ctx.job)}${to}`, readFileSync(join(corpus, from)), 'application/octet-stream');
  }
  for (const [name, text] of Object.entries(extra)) await putBytes(ctx.s3, INBOX, `${keys.photosPrefix(ctx.job)}${name}`, text, 'text/plain');
  await putJson(ctx.s3, INBOX, keys.spec(ctx.job), spec);
}
