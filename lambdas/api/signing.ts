/**
 * Links signed at request time whose stated expiry is true: a presigned URL or POST stops working
 * when the credentials that signed it expire, whatever its own expiry says, so the lifetime is
 * min(configured, credentials' expiration - margin).
 */
import type { S3Client } from '@aws-sdk/client-s3';

/** Kept off the credentials' end: clocks differ and a link handed out must still work when clicked. */
const MARGIN_SECONDS = 30;
/**
 * When the credential provider states no expiration (plain environment variables, as in Lambda),
 * nothing proves how long they live: links are capped at this, and the README says so.
 */
export const UNKNOWN_EXPIRY_CAP_SECONDS = 900;

export interface LinkLifetime {
  readonly seconds: number;
  readonly expiresAt: Date;
}

export async function linkLifetime(s3: S3Client, configuredSeconds: number, now: Date): Promise<LinkLifetime> {
  const credentials = await s3.config.credentials();
  const expiration = credentials.expiration;
  let seconds = configuredSeconds;
  if (expiration) seconds = Math.min(seconds, Math.floor((expiration.getTime() - now.getTime()) / 1000) - MARGIN_SECONDS);
  else seconds = Math.min(seconds, UNKNOWN_EXPIRY_CAP_SECONDS);
  if (seconds < 1) throw new Error('the signing credentials expire too soon to sign a usable link');
  return { seconds, expiresAt: new Date(now.getTime() + seconds * 1000) };
}
