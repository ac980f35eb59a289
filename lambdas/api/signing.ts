/**
 * Links signed at request time whose stated expiry is true: a presigned URL or POST stops working
 * when the credentials that signed it expire, whatever its own expiry says, so the lifetime is
 * min(configured, credentials' expiration - margin).
 *
 * In Lambda the environment credentials state no expiration, so result links are signed with
 * credentials whose expiration is known: a session of the read-only results signing role
 * ({@link assumedRoleCredentials}). Assumed from the function's own role session, that is role
 * chaining, which AWS caps at one hour: links live at most an hour.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { AssumeRoleCommand, type STSClient } from '@aws-sdk/client-sts';

/** Temporary credentials as the SDK clients take them (`credentials` of S3Client). */
export interface TemporaryCredentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
  readonly expiration: Date;
}

/** Kept off the credentials' end: clocks differ and a link handed out must still work when clicked. */
const MARGIN_SECONDS = 30;
/**
 * When the credential provider states no expiration (plain environment variables, as in Lambda),
 * nothing proves how long they live: links are capped at this, and the README says so.
 */
export const UNKNOWN_EXPIRY_CAP_SECONDS = 900;
/** The longest session of a role assumed from another role's session (role chaining). */
export const ROLE_CHAINING_MAX_SECONDS = 3600;

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

export interface AssumedRoleOptions {
  /** Session length asked for; role chaining caps it at an hour. */
  readonly durationSeconds?: number;
  /**
   * A new session is taken once the cached one has less than this left, so every link signed lives
   * at least this long (or the configured lifetime, if shorter). Default: half the session.
   */
  readonly renewBelowSeconds?: number;
  readonly now?: () => Date;
}

/**
 * Credentials of `roleArn`, from AssumeRole, kept until they have less than `renewBelowSeconds`
 * left. They carry their `expiration`, which {@link linkLifetime} reads.
 */
export function assumedRoleCredentials(sts: Pick<STSClient, 'send'>, roleArn: string, options: AssumedRoleOptions = {}): () => Promise<TemporaryCredentials> {
  const duration = Math.min(options.durationSeconds ?? ROLE_CHAINING_MAX_SECONDS, ROLE_CHAINING_MAX_SECONDS);
  const renewBelowMs = (options.renewBelowSeconds ?? duration / 2) * 1000;
  const now = options.now ?? (() => new Date());
  let cached: TemporaryCredentials | undefined;
  let pending: Promise<TemporaryCredentials> | undefined;
  const renew = async (): Promise<TemporaryCredentials> => {
    const out = await sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: 'avatar-api-results', DurationSeconds: duration }));
    const c = out.Credentials;
    if (!c?.AccessKeyId || !c.SecretAccessKey || !c.Expiration) throw new Error(`AssumeRole of ${roleArn} returned no credentials`);
    cached = { accessKeyId: c.AccessKeyId, secretAccessKey: c.SecretAccessKey, sessionToken: c.SessionToken, expiration: c.Expiration };
    return cached;
  };
  return async () => {
    if (cached?.expiration && cached.expiration.getTime() - now().getTime() > renewBelowMs) return cached;
    // Concurrent requests share one AssumeRole call.
    pending ??= renew().finally(() => {
      pending = undefined;
    });
    return pending;
  };
}
