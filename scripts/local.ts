/**
 * `npm run local -- --photos <dir> --token <token> [--kind character] [--class-word man] [--out <dir>]`
 * `npm run local` alone runs a demo: an `object` job on 12 generated photos, token `zwxdemo`.
 *
 * Runs the main job on this machine: starts the local AWS endpoint (moto), uploads the photos and a
 * job.json with the embedded defaults to the inbox, fires the real `start` handler, then executes the
 * synthesized state machine definition locally. Lambda stages run their real code against the local
 * endpoint; Batch stages run the container images with Docker on an NVIDIA GPU when there is one.
 *
 * Exit codes: 0 the job succeeded; 3 validate and normalize succeeded and the run stopped before
 * captioning because this machine has no Docker engine or no NVIDIA GPU; 1 the job failed (status.json
 * says why); 2 bad arguments.
 */
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { CreateStateMachineCommand, SFNClient } from '@aws-sdk/client-sfn';
import { DEFAULT_CLASS_WORDS, describeIssues, type JobSpecInput, JobSpecSchema, KINDS, type Kind } from '../lambdas/shared/contract';
import { jobPrefix, keys } from '../lambdas/shared/keys';
import { getBytes, getJson, listAll, putBytes, putJson } from '../lambdas/shared/s3';
import { readStatus } from '../lambdas/shared/status';
import { start } from '../lambdas/start/handler';
import { ReportSchema } from '../lambdas/validate/report';
import { stateMachineDefinition, synthesizeTemplate } from './local/definition';
import { syntheticPhotos } from './local/demo-photos';
import { checkGpu, dockerRunner, noGpuRunner } from './local/gpu';
import { configureHandlers, LOCAL_CREDENTIALS, LOCAL_REGION, startMoto } from './local/moto';
import { emptyJobQueue, localTeams } from './local/teams';
import { runWorkflow } from './local/workflow';

export const EXIT = { succeeded: 0, failed: 1, usage: 2, noGpu: 3 } as const;

const INBOX = 'avatar-local-inbox';
const ARTIFACTS = 'avatar-local-artifacts';

class UsageError extends Error {}

async function writeDemoPhotos(dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  for (const p of await syntheticPhotos(12)) writeFileSync(join(dir, p.name), p.bytes);
}

function parse() {
  const { values } = parseArgs({
    options: {
      photos: { type: 'string' },
      token: { type: 'string' },
      kind: { type: 'string', default: 'character' },
      'class-word': { type: 'string' },
      team: { type: 'string', default: 'local' },
      job: { type: 'string' },
      out: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(
      readFileSync(__filename, 'utf8')
        .split('*/')[0]
        .replace(/^\/\*\*?|^ \* ?/gm, ''),
    );
    process.exit(0);
  }
  const demo = !values.photos;
  if (demo) {
    if (values.token || values['class-word']) throw new UsageError('--photos <dir> is required with --token or --class-word');
    Object.assign(values, { photos: join('.local', 'demo-photos'), token: 'zwxdemo', kind: 'object', 'class-word': 'toy' });
  }
  if (!values.token) throw new UsageError('--token <token> is required: a short rare lowercase word such as "ohwx"');
  if (!(KINDS as readonly string[]).includes(values.kind!)) throw new UsageError(`--kind must be one of ${KINDS.join(', ')}`);
  const kind = values.kind as Kind;
  const spec: JobSpecInput = { token: values.token, classWord: values['class-word'] ?? DEFAULT_CLASS_WORDS[kind], kind };
  const parsed = JobSpecSchema.safeParse(spec);
  if (!parsed.success) throw new UsageError(describeIssues(parsed.error, 'the job spec from your arguments'));
  const photosDir = resolve(values.photos!);
  if (!statSync(photosDir, { throwIfNoEntry: false })?.isDirectory()) throw new UsageError(`--photos ${values.photos} is not a folder`);
  const photos = readdirSync(photosDir).filter((f) => !f.startsWith('.') && statSync(join(photosDir, f)).isFile());
  if (photos.length === 0) throw new UsageError(`--photos ${values.photos} holds no files`);
  const jobId =
    values.job ??
    `local-${new Date()
      .toISOString()
      .replace(/[^0-9]/g, '')
      .slice(0, 14)}`;
  const out = resolve(values.out ?? join('.local', 'runs', values.team!, jobId));
  return { spec, photosDir, photos, job: { teamId: values.team!, jobId }, out, demo };
}

async function main(): Promise<number> {
  let args: ReturnType<typeof parse>;
  try {
    if (!process.argv.includes('--photos')) await writeDemoPhotos(join('.local', 'demo-photos'));
    args = parse();
  } catch (error) {
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      console.error(
        `error: ${(error as Error).message}\nusage: npm run local -- --photos <dir> --token <token> [--kind character|style|object] [--class-word <word>] [--out <dir>]`,
      );
      return EXIT.usage;
    }
    throw error;
  }
  const { spec, photosDir, photos, job, out, demo } = args;
  const log = (line: string) => console.log(line);
  if (demo)
    log(`demo run: ${photos.length} generated photos in ${photosDir}, an object job with token "${spec.token}" (use --photos <dir> --token <t> for your own)`);

  const moto = await startMoto();
  try {
    configureHandlers(moto.endpoint, { inboxBucket: INBOX, artifactsBucket: ARTIFACTS, urlExpirySeconds: 3600 });
    // The job's team, registered with local limits: the Admit state admits it against them.
    const teams = await localTeams(moto.endpoint, [job.teamId]);
    log(`local AWS endpoint (moto): ${moto.endpoint}`);
    await moto.createBucket(INBOX);
    await moto.createBucket(ARTIFACTS);
    const s3 = moto.s3();

    log(`uploading ${photos.length} photos from ${photosDir} to s3://${INBOX}/${keys.photosPrefix(job)}`);
    for (const name of photos) await putBytes(s3, INBOX, `${keys.photosPrefix(job)}${name}`, readFileSync(join(photosDir, name)), 'application/octet-stream');
    await putJson(s3, INBOX, keys.spec(job), spec); // last: its arrival is the trigger

    const template = synthesizeTemplate();
    const definition = stateMachineDefinition(template);
    const sfn = new SFNClient({ endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    const machine = await sfn.send(
      new CreateStateMachineCommand({ name: 'avatar-local', roleArn: 'arn:aws:iam::123456789012:role/local', definition: JSON.stringify(definition) }),
    );
    const started = await start(
      { 'detail-type': 'Object Created', source: 'aws.s3', detail: { bucket: { name: INBOX }, object: { key: keys.spec(job) } } },
      { s3, sfn, inboxBucket: INBOX, artifactsBucket: ARTIFACTS, stateMachineArn: machine.stateMachineArn!, now: () => new Date() },
    );
    log(`start: execution ${started.executionName}`);

    const gpu = checkGpu();
    log(gpu.ok ? `GPU: ${gpu.reason}` : `GPU: none (${gpu.reason}); the run will stop before captioning`);
    const cacheDir = join(dirname(out), '..', 'cache');
    mkdirSync(cacheDir, { recursive: true });
    // No GPU: no Batch job runs, so the job is charged nothing (its estimate is charged when a GPU run has no Batch records to read).
    if (!gpu.ok) process.env.JOB_QUEUE = await emptyJobQueue(moto.endpoint);
    const batch = gpu.ok
      ? dockerRunner({ template, endpoint: moto.endpoint, inboxBucket: INBOX, artifactsBucket: ARTIFACTS, cacheDir, log })
      : noGpuRunner(gpu);

    const failedStates = new Set<string>(); // a caught failure still exits its state: print ✗ only
    const result = await runWorkflow(definition, started.job, {
      batch,
      taskTokens: teams.taskTokens,
      onEvent: (e) => {
        if (e.type === 'StateEntered') failedStates.delete(e.state!);
        if (e.type === 'StateFailed') failedStates.add(e.state!);
        if (e.type === 'StateEntered') log(`▶ ${e.state}`);
        else if (e.type === 'StateExited' && !failedStates.has(e.state!)) log(`✓ ${e.state}`);
        else if (e.type === 'StateRetried') log(`↻ ${e.state} retried`);
        else if (e.type === 'StateFailed') log(`✗ ${e.state}: ${e.error}: ${e.cause}`);
      },
    });

    // moto keeps everything in memory: copy the job's artifacts out before it stops.
    const prefix = jobPrefix(job);
    const objects = await listAll(s3, ARTIFACTS, prefix);
    for (const o of objects) {
      const target = join(out, o.key.slice(prefix.length));
      mkdirSync(dirname(target), { recursive: true });
      writeFileSync(target, await getBytes(s3, ARTIFACTS, o.key));
    }
    const status = await readStatus(s3, ARTIFACTS, job);
    log(`\nartifacts (s3://${ARTIFACTS}/${prefix} copied to ${out}):`);
    for (const o of objects) log(`  ${o.key.slice(prefix.length).padEnd(48)} ${String(o.size).padStart(10)} bytes`);
    const report = ReportSchema.safeParse(await getJson(s3, ARTIFACTS, keys.validateReport(job)));
    if (report.success) {
      const { summary, plan } = report.data;
      const reasons = Object.entries(summary.reasons)
        .map(([code, n]) => `${code} ${n}`)
        .join(', ');
      log(
        `\nvalidate: ${summary.accepted} of ${summary.files} photos accepted${reasons ? ` (rejected: ${reasons})` : ''}; details in validate/report.json and validate/contact-sheet.png`,
      );
      if (plan) log(`plan: ${plan.arithmetic}`);
      for (const warning of summary.warnings) log(`warning: ${warning}`);
    }
    log(`\nstatus.json: ${JSON.stringify(status, null, 2)}`);

    if (result.succeeded && status?.state === 'succeeded') {
      log(`\njob succeeded: manifest at ${join(out, basename(keys.manifest(job)))}`);
      return EXIT.succeeded;
    }
    if (status?.error?.code === 'GPU_UNAVAILABLE') {
      log(`\nstopped before captioning (exit ${EXIT.noGpu}): ${status.error.message}`);
      return EXIT.noGpu;
    }
    log(`\njob failed at ${status?.stage ?? 'an unknown stage'} (exit ${EXIT.failed}): ${status?.error?.message ?? result.cause}`);
    return EXIT.failed;
  } finally {
    await moto.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(EXIT.failed);
  },
);
