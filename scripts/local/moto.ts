/**
 * The local AWS endpoint for tests and local runs: moto's server on a free loopback port.
 * It emulates S3 (objects, listing, versioning, conditional writes) and checks presigned-URL
 * expiry; it does not enforce IAM, so least-privilege is asserted on the template instead.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';

export interface Moto {
  readonly endpoint: string;
  /** An S3 client bound to this endpoint with dummy credentials. */
  s3(): S3Client;
  createBucket(name: string): Promise<void>;
  stop(): Promise<void>;
}

const ROOT = join(__dirname, '..', '..');

/** The moto_server binary: `AVATAR_MOTO_SERVER`, else the repo venv made by scripts/python-env.sh. */
export function motoBinary(): string | undefined {
  const candidates = [process.env.AVATAR_MOTO_SERVER, join(ROOT, '.venv', 'bin', 'moto_server')];
  return candidates.find((c): c is string => !!c && existsSync(c));
}

export const MOTO_MISSING = 'moto_server not found: run `bash scripts/python-env.sh` (CI does) to create .venv with the local AWS endpoint';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export const LOCAL_CREDENTIALS = { accessKeyId: 'testing', secretAccessKey: 'testing' };
export const LOCAL_REGION = 'us-east-1';

export interface StartMotoOptions {
  /**
   * Serialise DynamoDB requests (scripts/local/moto_serial.py): moto's DynamoDB is not atomic under
   * concurrent requests, real DynamoDB is. Needed by anything that sends DynamoDB writes concurrently.
   */
  readonly serializeDynamoDb?: boolean;
  /** Reaches the server, e.g. `INITIAL_NO_AUTH_ACTION_COUNT` to make it enforce IAM after that many requests. */
  readonly env?: Record<string, string>;
}

export async function startMoto(options: StartMotoOptions = {}): Promise<Moto> {
  const binary = motoBinary();
  if (!binary) throw new Error(MOTO_MISSING);
  const port = await freePort();
  const hostPort = ['-H', '127.0.0.1', '-p', String(port)];
  // The wrapper runs on the Python next to moto_server (same venv).
  const [command, args] = options.serializeDynamoDb ? [join(dirname(binary), 'python'), [join(__dirname, 'moto_serial.py'), ...hostPort]] : [binary, hostPort];
  const child: ChildProcess = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...options.env } });
  let stderr = '';
  child.stderr?.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  const endpoint = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`moto_server exited with ${child.exitCode}: ${stderr}`);
    try {
      const res = await fetch(`${endpoint}/moto-api/`);
      if (res.status < 500) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill();
      throw new Error(`moto_server did not start on ${endpoint} within 30 s: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const s3 = () => new S3Client({ endpoint, forcePathStyle: true, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
  return {
    endpoint,
    s3,
    async createBucket(name) {
      await s3().send(new CreateBucketCommand({ Bucket: name }));
    },
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/**
 * Points the in-process Lambda handlers at a local endpoint: they read their buckets and settings
 * from the environment, as the CDK stack sets them in Lambda.
 */
export function configureHandlers(endpoint: string, env: { inboxBucket: string; artifactsBucket: string; urlExpirySeconds: number }): void {
  Object.assign(process.env, {
    AWS_ENDPOINT_URL_S3: endpoint,
    AWS_ACCESS_KEY_ID: LOCAL_CREDENTIALS.accessKeyId,
    AWS_SECRET_ACCESS_KEY: LOCAL_CREDENTIALS.secretAccessKey,
    AWS_REGION: LOCAL_REGION,
    INBOX_BUCKET: env.inboxBucket,
    ARTIFACTS_BUCKET: env.artifactsBucket,
    URL_EXPIRY_SECONDS: String(env.urlExpirySeconds),
  });
}
