/**
 * Named errors. The class name becomes the Lambda error type that Step Functions Retry/Catch match;
 * `code` is the stable machine-readable reason written to status.json.
 */
import type { ErrorInfo } from './contract';

export class AppError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly input?: string,
  ) {
    super(message);
    this.name = new.target.name;
  }

  info(): ErrorInfo {
    return { code: this.code, message: this.message, ...(this.input ? { input: this.input } : {}) };
  }
}

/** The client's input is wrong: retrying cannot help; the message says what to change. */
export class InvalidInputError extends AppError {}

/** An AWS call failed in a way that may pass (throttling, 5xx): Step Functions retries it. */
export class TransientError extends AppError {}

const TRANSIENT = new Set([
  'SlowDown',
  'ServiceUnavailable',
  'InternalError',
  'RequestTimeout',
  'Throttling',
  'ThrottlingException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'TimeoutError',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
]);

/** Maps an AWS SDK failure (after the SDK's own retries) to TransientError when it may pass. */
export function classifyAwsError(error: unknown): unknown {
  if (error instanceof AppError || !(error instanceof Error)) return error;
  const meta = (error as { $metadata?: { httpStatusCode?: number }; code?: string }).$metadata;
  const status = meta?.httpStatusCode ?? 0;
  const code = (error as { code?: string }).code ?? error.name;
  if (TRANSIENT.has(code) || status >= 500 || status === 429) {
    return new TransientError('AWS_TRANSIENT', `${error.name}: ${error.message}`);
  }
  return error;
}

/**
 * Lambda serialises only `errorType` and `errorMessage`; the structured details ride in the message
 * as JSON so MarkFailed can write code, message and offending input to status.json.
 */
export function toLambdaError(error: unknown): Error {
  const classified = classifyAwsError(error);
  if (classified instanceof AppError) {
    const wire = new Error(JSON.stringify(classified.info()));
    wire.name = classified.name;
    return wire;
  }
  return classified instanceof Error ? classified : new Error(String(classified));
}
