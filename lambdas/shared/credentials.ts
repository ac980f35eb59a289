/**
 * The S3 client of a workflow stage. Deployed (`MINT_FUNCTION` set), its credentials are minted for
 * the one job of the execution (lambdas/mint: the stage's data role limited to that job), so even a
 * compromised stage reaches nothing of other jobs. Unset (local runs, tests), the ambient credentials.
 */
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { S3Client } from '@aws-sdk/client-s3';
import type { MintedCredentials } from '../mint/handler';
import type { JobRef } from './keys';
import { s3Client } from './s3';
import type { DataStage } from './session-policy';

/** Invokes mint with a payload and returns its result, or throws its error. */
export type MintInvoker = (payload: { stage: DataStage; teamId: string; jobId: string; secret: string }) => Promise<MintedCredentials>;

let lambda: LambdaClient | undefined;

/** Invokes the function `functionName` (mint) synchronously; a function error is rethrown under its own name. */
export function lambdaMint(functionName: string): MintInvoker {
  return async (payload) => {
    lambda ??= new LambdaClient({});
    const out = await lambda.send(new InvokeCommand({ FunctionName: functionName, Payload: new TextEncoder().encode(JSON.stringify(payload)) }));
    const body = out.Payload ? (JSON.parse(new TextDecoder().decode(out.Payload)) as Record<string, unknown>) : {};
    if (out.FunctionError) {
      const error = new Error(
        `mint refused ${payload.stage} credentials for job ${payload.jobId} of team ${payload.teamId}: ${String(body.errorMessage ?? out.FunctionError)}`,
      );
      error.name = typeof body.errorType === 'string' ? body.errorType : 'MintFailed';
      throw error;
    }
    return body as unknown as MintedCredentials;
  };
}

/** A stage's S3 client and, when minted, when its credentials expire (presigned URLs die with them). */
export interface JobS3 {
  readonly s3: S3Client;
  readonly expiresAt?: Date;
}

/** The stage's S3 client for `job`: minted when `mint` is given (deployed), else the shared ambient one. */
export async function jobS3Client(stage: DataStage, job: JobRef, secret: string | undefined, mint: MintInvoker | undefined): Promise<JobS3> {
  if (!mint) return { s3: s3Client() };
  if (!secret) {
    const error = new Error(`the ${stage} stage of job ${job.jobId} got no jobSecret from the state machine: it cannot get S3 credentials`);
    error.name = 'MintRefused';
    throw error;
  }
  const c = await mint({ stage, teamId: job.teamId, jobId: job.jobId, secret });
  const expiresAt = new Date(c.expiration);
  const s3 = new S3Client({
    credentials: { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey, sessionToken: c.sessionToken, expiration: expiresAt },
  });
  return { s3, expiresAt };
}

/** The mint invoker of a deployed function (env `MINT_FUNCTION`), or none locally. */
export function mintFromEnv(): MintInvoker | undefined {
  const name = process.env.MINT_FUNCTION;
  return name ? lambdaMint(name) : undefined;
}
