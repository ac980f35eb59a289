/**
 * `avatar`: the job API from a terminal. `npx avatar --help` from a clone after set-up.
 * The API's address and token: --api-url/--api-token or AVATAR_API_URL/AVATAR_API_TOKEN
 * (`--token` is the LoRA's trigger word). With --json every command prints one JSON object.
 * Exit codes: 0 done; 1 the API (or an upload) refused, with its code; 2 bad arguments.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, extname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { SingleBar } from 'cli-progress';
import { Command, Option } from 'commander';
import { DEFAULT_CLASS_WORDS, KINDS, type Kind } from '../../lambdas/shared/contract';

const CONTENT_TYPES: Record<string, string> = {
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.png': 'image/png',
  '.webp': 'image/webp',
  '.heic': 'image/heic',
  '.heif': 'image/heif',
  '.avif': 'image/avif',
  '.tif': 'image/tiff',
  '.tiff': 'image/tiff',
  '.gif': 'image/gif',
};
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

class CliError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

interface Common {
  apiUrl?: string;
  apiToken?: string;
  json?: boolean;
}

function connection(opts: Common) {
  const url = opts.apiUrl ?? process.env.AVATAR_API_URL;
  const token = opts.apiToken ?? process.env.AVATAR_API_TOKEN;
  if (!url) throw new CliError('NO_API_URL', 'the API address is missing: pass --api-url <url> or set AVATAR_API_URL', 2);
  if (!token)
    throw new CliError(
      'NO_API_TOKEN',
      'the API token is missing: pass --api-token <token> or set AVATAR_API_TOKEN (locally: npm run -s api:token -- --team alpha)',
      2,
    );
  return { url: url.replace(/\/+$/, ''), token };
}

async function call<T>(opts: Common, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
  const { url, token } = connection(opts);
  let res: Response;
  try {
    res = await fetch(`${url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
  } catch (error) {
    throw new CliError('API_UNREACHABLE', `cannot reach ${url} (${(error as Error).message}): check --api-url`);
  }
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : {};
  } catch {
    throw new CliError(`HTTP_${res.status}`, `the API answered ${res.status} with a body that is not JSON`);
  }
  if (!res.ok) {
    const error = (parsed as { error?: { code?: string; message?: string } }).error;
    throw new CliError(error?.code ?? `HTTP_${res.status}`, error?.message ?? `the API answered ${res.status}`);
  }
  return parsed as T;
}

function print(opts: Common, value: unknown, human: string): void {
  console.log(opts.json ? JSON.stringify(value) : human);
}

function withCommon(command: Command): Command {
  return command
    .option('--api-url <url>', 'job API address (or AVATAR_API_URL)')
    .option('--api-token <token>', 'bearer token (or AVATAR_API_TOKEN)')
    .option('--json', 'print one JSON object');
}

function bar(opts: Common, format: string): SingleBar | undefined {
  // Progress goes to stderr, and only to a terminal-free --json-less run: stdout stays parseable.
  if (opts.json) return undefined;
  return new SingleBar({ format, stream: process.stderr, hideCursor: false, noTTYOutput: true, notTTYSchedule: 1000 });
}

interface UploadTarget {
  name: string;
  url: string;
  fields: Record<string, string>;
  contentType: string;
}

async function submit(dir: string, opts: Common & { token: string; kind: string; classWord?: string; start: boolean; idempotencyKey?: string }) {
  connection(opts);
  if (!(KINDS as readonly string[]).includes(opts.kind)) throw new CliError('BAD_ARGUMENT', `--kind must be one of ${KINDS.join(', ')}`, 2);
  const folder = resolve(dir);
  if (!statSync(folder, { throwIfNoEntry: false })?.isDirectory()) throw new CliError('BAD_ARGUMENT', `${dir} is not a folder of photos`, 2);
  const files = readdirSync(folder)
    .filter((f) => CONTENT_TYPES[extname(f).toLowerCase()] && statSync(join(folder, f)).isFile())
    .sort();
  if (files.length === 0) throw new CliError('BAD_ARGUMENT', `${dir} holds no photos (${Object.keys(CONTENT_TYPES).join(' ')})`, 2);
  const kind = opts.kind as Kind;
  const created = await call<{ jobId: string; uploads: UploadTarget[] }>(
    opts,
    'POST',
    '/jobs',
    {
      spec: { token: opts.token, classWord: opts.classWord ?? DEFAULT_CLASS_WORDS[kind], kind },
      photos: files.map((name) => ({ name, contentType: CONTENT_TYPES[extname(name).toLowerCase()] })),
    },
    { 'idempotency-key': opts.idempotencyKey ?? randomUUID() },
  );
  const progress = bar(opts, 'uploading [{bar}] {value}/{total} photos');
  progress?.start(created.uploads.length, 0);
  for (const target of created.uploads) {
    const form = new FormData();
    for (const [k, v] of Object.entries(target.fields)) form.append(k, v);
    form.append('file', new Blob([readFileSync(join(folder, target.name))], { type: target.contentType }));
    const res = await fetch(target.url, { method: 'POST', body: form });
    if (!res.ok) {
      progress?.stop();
      const code = /<Code>([^<]+)<\/Code>/.exec(await res.text())?.[1] ?? `HTTP_${res.status}`;
      throw new CliError(code, `upload of ${target.name} refused by storage (${res.status} ${code}); job ${created.jobId} is not started`);
    }
    progress?.increment();
  }
  progress?.stop();
  if (opts.start) await call(opts, 'POST', `/jobs/${created.jobId}/start`);
  print(opts, { jobId: created.jobId }, created.jobId);
}

interface JobView {
  jobId: string;
  state: string;
  stage?: string;
  status?: { progress?: { fraction: number; message: string; epoch?: number; epochs?: number; loss?: number }; error?: { code: string; message: string } };
}

function describe(job: JobView): string {
  const p = job.status?.progress;
  const parts = [`${job.jobId}: ${job.state}`, job.stage ? `stage ${job.stage}` : '', p ? `${Math.round(p.fraction * 100)}% ${p.message}` : ''];
  if (p?.epoch !== undefined) parts.push(`epoch ${p.epoch}/${p.epochs ?? '?'}`);
  if (p?.loss !== undefined) parts.push(`loss ${p.loss.toFixed(4)}`);
  if (job.status?.error) parts.push(`${job.status.error.code}: ${job.status.error.message}`);
  return parts.filter(Boolean).join(', ');
}

async function status(jobId: string, opts: Common & { watch?: boolean; interval: string }) {
  let job = await call<JobView>(opts, 'GET', `/jobs/${encodeURIComponent(jobId)}`);
  if (opts.watch) {
    const progress = bar(opts, '{stage} [{bar}] {percentage}% {message}');
    progress?.start(100, 0, { stage: job.stage ?? job.state, message: '' });
    while (!TERMINAL.has(job.state)) {
      const p = job.status?.progress;
      const extra = [p?.message, p?.epoch !== undefined ? `epoch ${p.epoch}/${p.epochs ?? '?'}` : '', p?.loss !== undefined ? `loss ${p.loss.toFixed(4)}` : '']
        .filter(Boolean)
        .join(', ');
      progress?.update(Math.round((p?.fraction ?? 0) * 100), { stage: job.stage ?? job.state, message: extra });
      await new Promise((r) => setTimeout(r, Number(opts.interval) * 1000));
      job = await call<JobView>(opts, 'GET', `/jobs/${encodeURIComponent(jobId)}`);
    }
    progress?.stop();
  }
  print(opts, job, describe(job));
  if (opts.watch && job.state !== 'succeeded') process.exitCode = 1;
}

interface ResultsView {
  state: string;
  recommendation?: { tag: string; reason: string };
  urlExpiresAt: string;
  artifacts: Array<{ name: string; size: number; sha256?: string; url: string }>;
}

async function results(jobId: string, opts: Common & { out?: string }) {
  const manifest = await call<ResultsView>(opts, 'GET', `/jobs/${encodeURIComponent(jobId)}/results`);
  const lines = manifest.artifacts.map((a) => `${a.name.padEnd(50)} ${String(a.size).padStart(10)} bytes`);
  if (opts.out) {
    const out = resolve(opts.out);
    const progress = bar(opts, 'downloading [{bar}] {value}/{total} files');
    progress?.start(manifest.artifacts.length, 0);
    for (const a of manifest.artifacts) {
      const target = resolve(out, a.name);
      if (!target.startsWith(`${out}/`)) throw new CliError('BAD_ARTIFACT_NAME', `the API listed an artifact outside the output folder: ${a.name}`);
      mkdirSync(dirname(target), { recursive: true });
      const res = await fetch(a.url);
      if (!res.ok || !res.body)
        throw new CliError(`HTTP_${res.status}`, `download of ${a.name} failed (${res.status}); links expire at ${manifest.urlExpiresAt}: run results again`);
      await pipeline(Readable.fromWeb(res.body as WebReadableStream), createWriteStream(target));
      const bytes = readFileSync(target);
      if (bytes.length !== a.size) throw new CliError('SIZE_MISMATCH', `${a.name}: ${bytes.length} bytes downloaded, ${a.size} listed`);
      if (a.sha256 && createHash('sha256').update(bytes).digest('hex') !== a.sha256)
        throw new CliError('CHECKSUM_MISMATCH', `${a.name}: sha256 differs from the manifest`);
      progress?.increment();
    }
    progress?.stop();
    lines.push(`downloaded ${manifest.artifacts.length} files to ${out}`);
  }
  const lora = manifest.artifacts.find((a) => a.name.startsWith('train/') && a.name.endsWith('.safetensors') && !/-\d+\.safetensors$/.test(a.name));
  if (manifest.recommendation) lines.push(`prompt tag: ${manifest.recommendation.tag} (${manifest.recommendation.reason})`);
  else if (lora) lines.push(`prompt tag: <lora:${lora.name.slice('train/'.length, -'.safetensors'.length)}:1>`);
  else lines.push(`no LoRA yet (job ${manifest.state}); links expire at ${manifest.urlExpiresAt}`);
  print(opts, manifest, lines.join('\n'));
}

export function program(): Command {
  const cli = new Command('avatar').description('Train a LoRA from photos through the avatar job API').showHelpAfterError();
  withCommon(cli.command('submit <dir>').description('create a job from a folder of photos, upload them and start it'))
    .requiredOption('--token <token>', 'the trigger word the LoRA binds to (a rare word such as "ohwx")')
    .addOption(new Option('--kind <kind>', 'what the photos show').choices([...KINDS]).default('character'))
    .option('--class-word <word>', 'what the subject is ("man", "dog"); default from --kind')
    .option('--idempotency-key <key>', 'retry-safe key: the same key returns the same job')
    .option('--no-start', 'create and upload only')
    .action((dir, opts) => submit(dir, opts));
  withCommon(cli.command('status <job>').description("a job's status"))
    .option('--watch', 'follow it until it ends (exit 0 only when it succeeded)')
    .option('--interval <seconds>', 'poll interval with --watch', '2')
    .action((job, opts) => status(job, opts));
  withCommon(cli.command('results <job>').description('result links; --out downloads them'))
    .option('--out <dir>', 'download every artifact here')
    .action((job, opts) => results(job, opts));
  withCommon(cli.command('cancel <job>').description('stop a job')).action(async (job, opts) => {
    const out = await call<JobView>(opts, 'POST', `/jobs/${encodeURIComponent(job)}/cancel`);
    print(opts, out, describe(out));
  });
  withCommon(cli.command('delete <job>').description("erase a job's photos and results (every version)")).action(async (job, opts) => {
    const out = await call<{ jobId: string; removed: Record<string, number> }>(opts, 'DELETE', `/jobs/${encodeURIComponent(job)}`);
    print(opts, out, `${out.jobId}: erased (${Object.values(out.removed).reduce((a, b) => a + b, 0)} object versions)`);
  });
  withCommon(cli.command('usage').description("your team's month-to-date usage against its budget")).action(async (opts) => {
    const out = await call<unknown>(opts, 'GET', '/usage');
    print(opts, out, JSON.stringify(out, null, 2));
  });
  return cli;
}

export async function main(argv: string[]): Promise<number> {
  const cli = program().exitOverride();
  try {
    await cli.parseAsync(argv);
    return Number(process.exitCode ?? 0);
  } catch (error) {
    const e = error as Error & { code?: string; exitCode?: number };
    if (e.code?.startsWith('commander.')) return e.code === 'commander.helpDisplayed' || e.code === 'commander.version' ? 0 : 2;
    const code = error instanceof CliError ? error.code : 'CLI_FAILED';
    const json = argv.includes('--json');
    if (json) console.log(JSON.stringify({ error: { code, message: e.message } }));
    console.error(`error: ${code}: ${e.message}`);
    return error instanceof CliError ? error.exitCode : 1;
  }
}

if (require.main === module) main(process.argv).then((code) => process.exit(code));
